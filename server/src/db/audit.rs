//! The audit trail: one row per mutating call and per denied call, written in batches.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{Conn, Error, Result};
use crate::{
    db_run,
    model::auth::{AuditEvent, AuditFilter},
};

#[derive(Queryable)]
struct Stored {
    id: i64,
    occurred_at: NaiveDateTime,
    instance_id: String,
    caller: String,
    auth_method: String,
    client_addr: Option<String>,
    proxy_addr: Option<String>,
    method: String,
    resource: String,
    code: String,
    request_id: Option<String>,
}

impl TryFrom<Stored> for AuditEvent {
    type Error = Error;
    fn try_from(r: Stored) -> Result<Self> {
        Ok(AuditEvent {
            id: r.id,
            occurred_at: r.occurred_at,
            instance_id: r.instance_id,
            caller: r.caller,
            auth_method: r.auth_method.parse()?,
            client_addr: r.client_addr,
            proxy_addr: r.proxy_addr,
            method: r.method,
            resource: r.resource,
            code: r.code,
            request_id: r.request_id,
        })
    }
}

/// Stores `events` in one transaction.
pub async fn insert(conn: &mut Conn, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    macro_rules! row {
        ($t:ident, $e:expr) => {
            (
                $t::occurred_at.eq($e.occurred_at),
                $t::instance_id.eq(&$e.instance_id),
                $t::caller.eq(&$e.caller),
                $t::auth_method.eq($e.auth_method.as_str()),
                $t::client_addr.eq(&$e.client_addr),
                $t::proxy_addr.eq(&$e.proxy_addr),
                $t::method.eq(&$e.method),
                $t::resource.eq(&$e.resource),
                $t::code.eq(&$e.code),
                $t::request_id.eq(&$e.request_id),
            )
        };
    }
    match conn {
        // One multi-row statement per thousand events: a batch costs one round trip.
        Conn::Pg(c) => {
            use super::schema::pg::audit_events as t;
            let c: &mut diesel_async::AsyncPgConnection = &mut *c;
            for chunk in events.chunks(1000) {
                let rows: Vec<_> = chunk.iter().map(|e| row!(t, e)).collect();
                diesel::insert_into(t::table).values(rows).execute(c).await?;
            }
        }
        // Diesel's multi-row insert is not available through the async SQLite wrapper; the rows go
        // in one transaction (one write lock, one sync).
        Conn::Sqlite(c) => {
            use super::schema::sqlite::audit_events as t;
            let c: &mut super::SqliteConn = &mut *c;
            c.transaction::<_, diesel::result::Error, _>(async |c| {
                for e in events {
                    diesel::insert_into(t::table).values(row!(t, e)).execute(&mut *c).await?;
                }
                Ok(())
            })
            .await?;
        }
    }
    Ok(())
}

/// Events newest first, those with an id below `before` when given.
pub async fn list(conn: &mut Conn, f: &AuditFilter, before: Option<i64>, limit: i64) -> Result<Vec<AuditEvent>> {
    let rows = db_run!(conn, {
        use schema::audit_events as t;
        let mut q = t::table.order(t::id.desc()).limit(limit).into_boxed();
        if let Some(b) = before {
            q = q.filter(t::id.lt(b));
        }
        if let Some(c) = &f.caller {
            q = q.filter(t::caller.eq(c.clone()));
        }
        if let Some(m) = &f.method {
            q = q.filter(t::method.eq(m.clone()));
        }
        if let Some(s) = f.since {
            q = q.filter(t::occurred_at.ge(s));
        }
        if let Some(u) = f.until {
            q = q.filter(t::occurred_at.lt(u));
        }
        q.load::<Stored>(conn).await?
    });
    rows.into_iter().map(AuditEvent::try_from).collect()
}

/// Deletes up to `limit` events older than `before`; returns how many.
pub async fn prune(conn: &mut Conn, before: NaiveDateTime, limit: i64) -> Result<usize> {
    Ok(db_run!(conn, {
        use schema::audit_events as t;
        let old: Vec<i64> =
            t::table.filter(t::occurred_at.lt(before)).order(t::id).select(t::id).limit(limit).load(conn).await?;
        if old.is_empty() {
            return Ok(0);
        }
        diesel::delete(t::table.filter(t::id.eq_any(old))).execute(conn).await?
    }))
}
