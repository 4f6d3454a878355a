//! Partition upkeep on a real partitioned PostgreSQL table: rows stranded in the default partition
//! rescued, premake, health (gaps, coverage), dropping whole old partitions; refusals on bad input
//! and on SQLite.

use std::time::Duration;

use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use strata_client::partitions::PartitionInterval::Monthly;
use strata_tests::{PgCluster, TestServer, pg::count};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn rescue_premake_health_and_drop_on_postgres() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("parts").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    // Rows from 1 to ~6 months back, none in the current month: all land in the default partition.
    c.batch_execute(
        "CREATE TABLE events (id bigint NOT NULL, at timestamptz NOT NULL, body text) PARTITION BY RANGE (at);
         CREATE TABLE events_default PARTITION OF events DEFAULT;
         CREATE TABLE plain (id int);
         INSERT INTO events SELECT i, date_trunc('month', now(), 'UTC') - make_interval(hours => 1 + i), 'e' || i
           FROM generate_series(1, 4000) i;",
    )
    .await
    .unwrap();
    let total = count(&mut c, "SELECT count(*)::int8 AS n FROM events").await;
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;

    let h = client.partition_health("public", "events").await.unwrap();
    assert_eq!((h.key_column.as_str(), h.key_type.as_str()), ("at", "timestamp with time zone"));
    assert_eq!((h.partitions.len(), h.default_rows), (1, total));
    assert!(h.partitions[0].is_default);

    // Bad input changes nothing.
    for (table, code) in [("events; DROP TABLE events", Code::InvalidArgument), ("plain", Code::FailedPrecondition)] {
        let e = client.ensure_partitions("public", table, Monthly, 3, 0).await.unwrap_err();
        assert_eq!(e.code(), Some(code), "{table}: {e}");
    }
    // A past month whose rows sit in the default partition cannot be created over them.
    let e = client.ensure_partitions("public", "events", Monthly, 0, 2).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("rescue"), "{e}");

    // Rescue: every stranded row moves to a monthly partition, one month per transaction.
    let dry = client.rescue_default_rows("public", "events", Monthly, true).await.unwrap();
    assert_eq!(dry.rows_moved, total);
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events_default").await, total, "dry run moved nothing");
    let r = client.rescue_default_rows("public", "events", Monthly, false).await.unwrap();
    assert_eq!((r.rows_moved, r.rows_left), (total, 0));
    assert_eq!(r.partitions_created.len(), dry.partitions_created.len());
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events").await, total);
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events_default").await, 0);
    // Every row sits in the partition of its month.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*)::int8 AS n FROM events e JOIN pg_class p ON p.oid = e.tableoid
              WHERE p.relname <> 'events_p' || to_char(e.at AT TIME ZONE 'UTC', 'YYYYMM')"
        )
        .await,
        0
    );

    // Premake: the current month and three ahead; rescued months are already covered.
    let (created, skipped) = client.ensure_partitions("public", "events", Monthly, 3, 1).await.unwrap();
    assert_eq!((created.len(), skipped), (4, 1));
    let (again, skipped) = client.ensure_partitions("public", "events", Monthly, 3, 1).await.unwrap();
    assert_eq!((again.len(), skipped), (0, 5), "idempotent");
    let h = client.partition_health("public", "events").await.unwrap();
    assert!(h.gaps.is_empty(), "{:?}", h.gaps);
    assert!(h.coverage_ahead > Duration::from_secs(85 * 86_400), "{:?}", h.coverage_ahead);
    assert_eq!(h.default_rows, 0);

    // A hole shows up as a gap.
    let ranges: Vec<_> = h.partitions.iter().filter(|p| !p.is_default).collect();
    let middle = ranges[ranges.len() / 2].clone();
    c.batch_execute(&format!("DROP TABLE \"{}\"", middle.name)).await.unwrap();
    let h = client.partition_health("public", "events").await.unwrap();
    assert_eq!(h.gaps, vec![(middle.start, middle.end)]);

    // Drop whole partitions older than ~100 days: listed first, then gone with their rows only.
    let older = Duration::from_secs(100 * 86_400);
    let due = client.drop_partitions("public", "events", older, true).await.unwrap();
    assert!(!due.is_empty());
    let limit = chrono::Utc::now() - chrono::Duration::from_std(older).unwrap();
    assert!(due.iter().all(|p| p.end.unwrap() <= limit));
    let kept_rows = count(
        &mut c,
        &format!(
            "SELECT count(*)::int8 AS n FROM events WHERE at >= '{}'",
            due.iter().map(|p| p.end.unwrap()).max().unwrap().to_rfc3339()
        ),
    )
    .await;
    let dropped = client.drop_partitions("public", "events", older, false).await.unwrap();
    assert_eq!(dropped.iter().map(|p| &p.name).collect::<Vec<_>>(), due.iter().map(|p| &p.name).collect::<Vec<_>>());
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events").await, kept_rows);
    let left: Vec<String> =
        client.partition_health("public", "events").await.unwrap().partitions.into_iter().map(|p| p.name).collect();
    assert!(due.iter().all(|d| !left.contains(&d.name)));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_on_sqlite_are_a_clear_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let e = server.client().await.partition_health("main", "events").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    assert!(e.to_string().contains("SQLite has no table partitioning"), "{e}");
    server.stop().await.unwrap();
}

#[derive(QueryableByName)]
struct Doc {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    doc: String,
}

async fn docs(c: &mut diesel_async::AsyncPgConnection) -> std::collections::BTreeMap<i64, String> {
    diesel::sql_query("SELECT id, row_to_json(t)::text AS doc FROM logs t")
        .load::<Doc>(c)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.doc))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_partitions_exports_whole_partitions_then_drops_them() {
    use strata_client::archive::{ArchivePolicy, RunState, SegmentSelection};
    let cluster = PgCluster::shared();
    let db = cluster.create_database("partarch").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE logs (id bigint NOT NULL, at timestamptz NOT NULL, msg text) PARTITION BY RANGE (at)",
    )
    .await
    .unwrap();
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;
    client.ensure_partitions("public", "logs", Monthly, 1, 6).await.unwrap();
    c.batch_execute(
        "INSERT INTO logs SELECT i, now() - make_interval(hours => i), 'log ' || i || ' ü' FROM generate_series(1, 4000) i",
    )
    .await
    .unwrap();
    let original = docs(&mut c).await;
    client
        .create_policy(&ArchivePolicy {
            name: "logs".into(),
            table_name: "logs".into(),
            time_column: "at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(60 * 86_400),
            batch_size: 300,
            ..Default::default()
        })
        .await
        .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(60);
    let before = client.partition_health("public", "logs").await.unwrap().partitions;
    let due: Vec<_> = before.iter().filter(|p| p.end.unwrap() <= cutoff).cloned().collect();
    assert!(due.len() >= 2, "{due:?}");
    let due_rows = original.values().filter(|d| {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap();
        due.iter().any(|p| at >= p.start.unwrap() && at < p.end.unwrap())
    });
    let due_rows = due_rows.count() as i64;

    let run = client.archive_partitions("logs").await.unwrap();
    let run = client.wait_archive_run(&run.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!(run.rows_done, due_rows);
    let after: Vec<String> =
        client.partition_health("public", "logs").await.unwrap().partitions.into_iter().map(|p| p.name).collect();
    assert!(due.iter().all(|p| !after.contains(&p.name)), "due partitions dropped: {after:?}");
    assert_eq!(after.len(), before.len() - due.len());
    // Nothing is left detached or pending.
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM strata.detached_partitions").await, 0);
    // Hot rows + archived rows are exactly the original rows.
    let mut all = docs(&mut c).await;
    client
        .read_archive("logs", &SegmentSelection::default(), |_, rows| {
            for r in rows {
                let id = serde_json::from_str::<serde_json::Value>(&r).unwrap()["id"].as_i64().unwrap();
                assert!(all.insert(id, r).is_none(), "row {id} twice");
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(all, original);

    // Recreate the months and restore: the table is whole again.
    client.ensure_partitions("public", "logs", Monthly, 1, 6).await.unwrap();
    let r = client.restore_archive("logs", &SegmentSelection::default()).await.unwrap();
    let r = client.wait_archive_run(&r.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!((r.state, r.rows_done), (RunState::Succeeded, due_rows));
    assert_eq!(docs(&mut c).await, original);
    server.stop().await.unwrap();
}
