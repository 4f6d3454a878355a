//! Partition archival: whole partitions of a range-partitioned table, detached, archived like any
//! rows and dropped.

use chrono::{DateTime, Utc};

use super::{
    Mode, Policy, Run, RunKind, Stop, Work, cutoff_of, get_policy, lease_lost, lease_until, run::archive_rows, start,
};
use crate::{
    db::archive::{self as store, TableSpec},
    service::{
        Context, Error, Result,
        partitions::{self as partitioning, Parent},
    },
};

/// Starts archiving whole partitions of the policy's range-partitioned table: each partition
/// entirely older than the policy's cutoff is detached (and recorded, in one transaction), its rows
/// archived into segments exactly like [`run`](fn@super::run) does, then dropped once empty.
pub async fn archive_partitions(ctx: &Context, policy: &str) -> Result<Run> {
    let p = get_policy(ctx, policy).await?;
    if p.spec.mode != Mode::Archive {
        return Err(Error::FailedPrecondition(
            "policy is in purge mode: drop old partitions with DropPartitions instead".into(),
        ));
    }
    if !p.spec.filters.is_empty() {
        return Err(Error::FailedPrecondition(
            "partition archival moves whole partitions: the policy must have no filters".into(),
        ));
    }
    let parent = partitioning::resolve(ctx, &p.spec.schema_name, &p.spec.table_name).await?;
    if parent.key != p.spec.time_column {
        return Err(Error::FailedPrecondition(format!(
            "the policy's time column {:?} is not the partition key {:?}",
            p.spec.time_column, parent.key
        )));
    }
    let cutoff = cutoff_of(ctx, &p);
    start(ctx, p, RunKind::Archive, Some(cutoff), Work::Partitions { parent, cutoff }).await
}

pub(super) async fn archive_partitions_run(
    ctx: &Context,
    p: &Policy,
    run: &Run,
    parent: &Parent,
    cutoff: DateTime<Utc>,
) -> Result<Stop> {
    use crate::db::partitions as parts;
    let due: Vec<_> = partitioning::list(ctx, parent)
        .await?
        .into_iter()
        .filter(|x| !x.is_default && x.end.is_some_and(|e| e <= cutoff))
        .collect();
    for x in &due {
        let mut conn = ctx.db.write().await?;
        if !store::renew_lease(&mut conn, &p.id, &run.id, lease_until(ctx)).await? {
            return Err(lease_lost());
        }
        parts::detach_recorded(&mut conn, &p.id, &parent.schema, &parent.table, &x.name, ctx.now())
            .await
            .map_err(|e| partitioning::ddl_error(&x.name, e))?;
        tracing::info!(partition = %x.name, "detached partition for archival");
    }
    // Also those detached by an earlier, interrupted run.
    let detached = parts::detached(&mut ctx.db.write().await?, &p.id).await?;
    // Every row of a detached partition is due, whatever its age.
    let everything = ctx.now_utc() + chrono::Duration::days(365 * 100);
    for (schema, table) in detached {
        let mut conn = ctx.db.write().await?;
        let sql = store::resolve(
            &mut conn,
            &TableSpec {
                schema_name: &schema,
                table_name: &table,
                time_column: &p.spec.time_column,
                key_columns: &p.spec.key_columns,
                filters: &[],
            },
        )
        .await?
        .map_err(Error::FailedPrecondition)?;
        drop(conn);
        match archive_rows(ctx, p, run, &sql, everything).await? {
            Stop::Done => {}
            stop => return Ok(stop),
        }
        let left = parts::drop_recorded(&mut ctx.db.write().await?, &p.id, &schema, &table).await?;
        if left > 0 {
            return Err(Error::FailedPrecondition(format!(
                "{left} row(s) stayed in detached partition {schema}.{table} (locked?); it is kept for the next run"
            )));
        }
        tracing::info!(partition = %table, "archived and dropped partition");
    }
    Ok(Stop::Done)
}
