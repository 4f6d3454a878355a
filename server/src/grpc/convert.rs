//! Small domain → proto helpers shared by the handlers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use strata_client::pb;

use crate::service::admin::{BackendKind, PoolStats, Role};

pub(crate) fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// A client's timestamp, checked.
pub(crate) fn time(t: Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, crate::service::Error> {
    t.map(|t| {
        DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(u32::MAX))
            .ok_or_else(|| crate::service::Error::InvalidArgument("timestamp out of range".into()))
    })
    .transpose()
}

/// A client's duration, checked (non-negative).
pub(crate) fn duration(what: &str, d: prost_types::Duration) -> Result<Duration, crate::service::Error> {
    Duration::try_from(d).map_err(|_| crate::service::Error::InvalidArgument(format!("{what} must not be negative")))
}

/// A required string field, or INVALID_ARGUMENT naming it.
pub(crate) fn required(what: &str, v: String) -> Result<String, crate::service::Error> {
    if v.is_empty() { Err(crate::service::Error::InvalidArgument(format!("{what} is required"))) } else { Ok(v) }
}

/// A List request's page size: `default` when unset, at most 1000, never negative.
pub(crate) fn page_size(n: i32, default: i64) -> Result<i64, crate::service::Error> {
    match n {
        0 => Ok(default),
        n if n < 0 => Err(crate::service::Error::InvalidArgument("page_size must not be negative".into())),
        n => Ok(i64::from(n).min(1000)),
    }
}

pub(crate) fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 0 })
}

pub(crate) fn role(r: Role) -> i32 {
    match r {
        Role::Primary => pb::NodeRole::Primary as i32,
        Role::Replica => pb::NodeRole::Replica as i32,
    }
}

pub(crate) fn backend(b: BackendKind) -> i32 {
    match b {
        BackendKind::Postgres => pb::DatabaseBackend::Postgres as i32,
        BackendKind::Sqlite => pb::DatabaseBackend::Sqlite as i32,
    }
}

pub(crate) fn pool(p: PoolStats) -> pb::PoolStats {
    pb::PoolStats {
        role: role(p.role),
        name: p.name,
        max_size: p.max_size,
        connections: p.connections,
        idle_connections: p.idle,
        in_use_connections: p.connections.saturating_sub(p.idle),
        gets_direct: p.gets_direct,
        gets_waited: p.gets_waited,
        gets_timed_out: p.gets_timed_out,
        wait_time: Some(dur(p.wait_time)),
    }
}

/// A role as the API spells it.
pub(crate) fn proto_role(r: crate::config::Role) -> pb::Role {
    use crate::config::Role as R;
    match r {
        R::Viewer => pb::Role::Viewer,
        R::Operator => pb::Role::Operator,
        R::Admin => pb::Role::Admin,
    }
}

/// A role from the API; None when unset or unknown.
pub(crate) fn auth_role(r: i32) -> Option<crate::config::Role> {
    use crate::config::Role as R;
    match pb::Role::try_from(r).ok()? {
        pb::Role::Unspecified => None,
        pb::Role::Viewer => Some(R::Viewer),
        pb::Role::Operator => Some(R::Operator),
        pb::Role::Admin => Some(R::Admin),
    }
}
