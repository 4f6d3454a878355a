//! Alert persistence: rules, alerts (one open per rule + labels, by a unique index), their event
//! timeline and the notification outbox.
//!
//! Every change of an alert is written with its event and its notifications in one transaction,
//! guarded by a compare-and-set on `updated_at`: an acknowledgement and an evaluation racing on
//! the same alert cannot overwrite each other, the loser re-reads and tries again.

use chrono::NaiveDateTime;
use diesel::{OptionalExtension, prelude::*};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{Conn, Result, is_unique_violation};
use crate::db_run;

/// Condition holds, not for long enough yet (no notification).
pub const PENDING: &str = "pending";
/// Firing.
pub const FIRING: &str = "firing";
/// Firing, seen by someone.
pub const ACKNOWLEDGED: &str = "acknowledged";
/// Over.
pub const RESOLVED: &str = "resolved";

/// A rule as stored.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct RuleRow {
    /// Unique name.
    pub name: String,
    /// Metric.
    pub metric: String,
    /// Table selector.
    pub table_name: String,
    /// above / below.
    pub comparison: String,
    /// Warning threshold.
    pub warning: Option<f64>,
    /// Critical threshold.
    pub critical: Option<f64>,
    /// For-duration.
    pub for_ms: i64,
    /// Capacity for days_until_full.
    pub capacity_bytes: i64,
    /// JSON labels.
    pub labels: String,
    /// Evaluated.
    pub enabled: bool,
    /// Created by strata.
    pub builtin: bool,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Changed.
    pub updated_at: NaiveDateTime,
}

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct AlertRow {
    /// Id (UUIDv7).
    pub id: String,
    /// Rule.
    pub rule_name: String,
    /// Canonical JSON labels.
    pub labels_key: String,
    /// State.
    pub state: String,
    /// warning / critical.
    pub severity: String,
    /// Latest value.
    pub value: f64,
    /// Threshold crossed.
    pub threshold: f64,
    /// One line.
    pub summary: String,
    /// Condition first seen.
    pub started_at: NaiveDateTime,
    /// Fired.
    pub fired_at: Option<NaiveDateTime>,
    /// Acknowledged.
    pub acknowledged_at: Option<NaiveDateTime>,
    /// By whom (the note is on the event).
    pub acknowledged_by: Option<String>,
    /// Resolved.
    pub resolved_at: Option<NaiveDateTime>,
    /// By whom ("strata" when the condition cleared).
    pub resolved_by: Option<String>,
    /// Last change (the compare-and-set token).
    pub updated_at: NaiveDateTime,
}

/// One entry of an alert's timeline.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct EventRow {
    /// Increasing id.
    pub id: i64,
    /// Alert.
    pub alert_id: String,
    /// When.
    pub at: NaiveDateTime,
    /// What happened.
    pub kind: String,
    /// State after it.
    pub state: String,
    /// Severity after it.
    pub severity: String,
    /// Value then.
    pub value: Option<f64>,
    /// Who ("strata" for evaluations).
    pub actor: String,
    /// Note.
    pub note: String,
}

/// A notification as stored.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct NotificationRow {
    /// Id: also the delivery id receivers deduplicate on.
    pub id: String,
    /// Alert.
    pub alert_id: String,
    /// Event announced.
    pub event_id: i64,
    /// webhook / email.
    pub channel: String,
    /// URL or recipients.
    pub target: String,
    /// pending / sent / failed.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt.
    pub next_attempt_at: NaiveDateTime,
    /// Held by a sender until.
    pub lease_until: Option<NaiveDateTime>,
    /// Last failure.
    pub last_error: Option<String>,
    /// JSON body.
    pub payload: String,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Delivered.
    pub sent_at: Option<NaiveDateTime>,
}

/// An event to record with a change.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened.
    pub kind: String,
    /// Value then.
    pub value: Option<f64>,
    /// Who.
    pub actor: String,
    /// Note.
    pub note: String,
}

/// A notification to queue with a change: (channel, target, payload built from the event id).
pub type NewNotification = (String, String, Box<dyn Fn(i64) -> String + Send + Sync>);

macro_rules! rule_values {
    ($t:ident, $r:expr) => {
        (
            $t::name.eq(&$r.name),
            $t::metric.eq(&$r.metric),
            $t::table_name.eq(&$r.table_name),
            $t::comparison.eq(&$r.comparison),
            $t::warning.eq($r.warning),
            $t::critical.eq($r.critical),
            $t::for_ms.eq($r.for_ms),
            $t::capacity_bytes.eq($r.capacity_bytes),
            $t::labels.eq(&$r.labels),
            $t::enabled.eq($r.enabled),
            $t::builtin.eq($r.builtin),
            $t::created_at.eq($r.created_at),
            $t::updated_at.eq($r.updated_at),
        )
    };
}

macro_rules! alert_values {
    ($t:ident, $a:expr) => {
        (
            $t::id.eq(&$a.id),
            $t::rule_name.eq(&$a.rule_name),
            $t::labels_key.eq(&$a.labels_key),
            $t::state.eq(&$a.state),
            $t::severity.eq(&$a.severity),
            $t::value.eq($a.value),
            $t::threshold.eq($a.threshold),
            $t::summary.eq(&$a.summary),
            $t::started_at.eq($a.started_at),
            $t::fired_at.eq($a.fired_at),
            $t::acknowledged_at.eq($a.acknowledged_at),
            $t::acknowledged_by.eq(&$a.acknowledged_by),
            $t::resolved_at.eq($a.resolved_at),
            $t::resolved_by.eq(&$a.resolved_by),
            $t::updated_at.eq($a.updated_at),
        )
    };
}

/// Stores a rule; false when the name is taken.
pub async fn insert_rule(conn: &mut Conn, r: &RuleRow) -> Result<bool> {
    let res = db_run!(conn, {
        use schema::alert_rules as t;
        diesel::insert_into(t::table).values(rule_values!(t, r)).execute(conn).await
    });
    match res {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A rule by name.
pub async fn get_rule(conn: &mut Conn, name: &str) -> Result<Option<RuleRow>> {
    Ok(db_run!(conn, {
        use schema::alert_rules as t;
        t::table.filter(t::name.eq(name)).first::<RuleRow>(conn).await.optional()?
    }))
}

/// Every rule, by name.
pub async fn list_rules(conn: &mut Conn) -> Result<Vec<RuleRow>> {
    Ok(db_run!(conn, {
        use schema::alert_rules as t;
        t::table.order(t::name.asc()).load::<RuleRow>(conn).await?
    }))
}

/// Replaces a rule's settings.
pub async fn update_rule(conn: &mut Conn, r: &RuleRow) -> Result<bool> {
    Ok(db_run!(conn, {
        use schema::alert_rules as t;
        diesel::update(t::table.filter(t::name.eq(&r.name))).set(rule_values!(t, r)).execute(conn).await? == 1
    }))
}

/// Deletes a rule.
pub async fn delete_rule(conn: &mut Conn, name: &str) -> Result<bool> {
    Ok(db_run!(conn, {
        use schema::alert_rules as t;
        diesel::delete(t::table.filter(t::name.eq(name))).execute(conn).await? == 1
    }))
}

/// An alert by id.
pub async fn get_alert(conn: &mut Conn, id: &str) -> Result<Option<AlertRow>> {
    Ok(db_run!(conn, {
        use schema::alerts as t;
        t::table.filter(t::id.eq(id)).first::<AlertRow>(conn).await.optional()?
    }))
}

/// Every alert that is not resolved (pending included).
pub async fn open_alerts(conn: &mut Conn) -> Result<Vec<AlertRow>> {
    Ok(db_run!(conn, {
        use schema::alerts as t;
        t::table.filter(t::state.ne(RESOLVED)).order(t::id.asc()).load::<AlertRow>(conn).await?
    }))
}

/// Filters of ListAlerts.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only these states (empty: all but pending).
    pub states: Vec<String>,
    /// Only this severity.
    pub severity: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only alerts that started at or after.
    pub since: Option<NaiveDateTime>,
}

/// Alerts newest first (ids are UUIDv7), after page token `before`.
pub async fn list_alerts(conn: &mut Conn, f: &AlertFilter, before: Option<&str>, limit: i64) -> Result<Vec<AlertRow>> {
    Ok(db_run!(conn, {
        use schema::alerts as t;
        let mut q = t::table.into_boxed();
        if f.states.is_empty() {
            q = q.filter(t::state.ne(PENDING));
        } else {
            q = q.filter(t::state.eq_any(f.states.clone()));
        }
        if let Some(s) = &f.severity {
            q = q.filter(t::severity.eq(s.clone()));
        }
        if let Some(r) = &f.rule {
            q = q.filter(t::rule_name.eq(r.clone()));
        }
        if let Some(s) = f.since {
            q = q.filter(t::started_at.ge(s));
        }
        if let Some(b) = before {
            q = q.filter(t::id.lt(b.to_owned()));
        }
        q.order(t::id.desc()).limit(limit).load::<AlertRow>(conn).await?
    }))
}

/// What [`save`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Written; the event's id when one was recorded.
    Done(Option<i64>),
    /// The alert changed meanwhile (or, for a new one, an open alert for the same rule and labels
    /// exists already): nothing was written; re-read and decide again.
    Conflict,
}

/// Writes an alert change with its event and notifications in one transaction. `previous`: the
/// `updated_at` read before deciding (None: a new alert).
pub async fn save(
    conn: &mut Conn,
    alert: &AlertRow,
    previous: Option<NaiveDateTime>,
    event: Option<&NewEvent>,
    notify: &[NewNotification],
) -> Result<Saved> {
    let res = db_run!(conn, {
        use schema::{alert_events as e, alert_notifications as n, alerts as t};
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            match previous {
                None => {
                    diesel::insert_into(t::table).values(alert_values!(t, alert)).execute(&mut *c).await?;
                }
                Some(p) => {
                    let changed = diesel::update(t::table.filter(t::id.eq(&alert.id)).filter(t::updated_at.eq(p)))
                        .set(alert_values!(t, alert))
                        .execute(&mut *c)
                        .await?;
                    if changed != 1 {
                        return Err(diesel::result::Error::RollbackTransaction);
                    }
                }
            }
            let Some(ev) = event else { return Ok(None) };
            let event_id: i64 = diesel::insert_into(e::table)
                .values((
                    e::alert_id.eq(&alert.id),
                    e::at.eq(alert.updated_at),
                    e::kind.eq(&ev.kind),
                    e::state.eq(&alert.state),
                    e::severity.eq(&alert.severity),
                    e::value.eq(ev.value),
                    e::actor.eq(&ev.actor),
                    e::note.eq(&ev.note),
                ))
                .returning(e::id)
                .get_result(&mut *c)
                .await?;
            for (channel, target, payload) in notify {
                diesel::insert_into(n::table)
                    .values((
                        n::id.eq(uuid::Uuid::now_v7().to_string()),
                        n::alert_id.eq(&alert.id),
                        n::event_id.eq(event_id),
                        n::channel.eq(channel),
                        n::target.eq(target),
                        n::state.eq(PENDING),
                        n::attempts.eq(0i64),
                        n::next_attempt_at.eq(alert.updated_at),
                        n::lease_until.eq(None::<NaiveDateTime>),
                        n::last_error.eq(None::<String>),
                        n::payload.eq(payload(event_id)),
                        n::created_at.eq(alert.updated_at),
                        n::sent_at.eq(None::<NaiveDateTime>),
                    ))
                    .execute(&mut *c)
                    .await?;
            }
            Ok(Some(event_id))
        })
        .await
    });
    match res {
        Ok(id) => Ok(Saved::Done(id)),
        Err(diesel::result::Error::RollbackTransaction) => Ok(Saved::Conflict),
        Err(e) if is_unique_violation(&e) => Ok(Saved::Conflict),
        Err(e) => Err(e.into()),
    }
}

/// Removes a pending alert whose condition cleared before it fired (it never notified anyone).
pub async fn delete_pending(conn: &mut Conn, id: &str, previous: NaiveDateTime) -> Result<bool> {
    Ok(db_run!(conn, {
        use schema::alerts as t;
        diesel::delete(t::table.filter(t::id.eq(id)).filter(t::state.eq(PENDING)).filter(t::updated_at.eq(previous)))
            .execute(conn)
            .await?
            == 1
    }))
}

/// An alert's timeline, oldest first.
pub async fn events_of(conn: &mut Conn, alert_id: &str) -> Result<Vec<EventRow>> {
    Ok(db_run!(conn, {
        use schema::alert_events as e;
        e::table.filter(e::alert_id.eq(alert_id)).order(e::id.asc()).load::<EventRow>(conn).await?
    }))
}

/// Events with an id above `after` or recorded at or after `since`, oldest first: the watch
/// tailer's read (the time window catches ids committed out of order on PostgreSQL).
pub async fn recent_events(conn: &mut Conn, after: i64, since: NaiveDateTime, limit: i64) -> Result<Vec<EventRow>> {
    Ok(db_run!(conn, {
        use schema::alert_events as e;
        e::table
            .filter(e::id.gt(after).or(e::at.ge(since)))
            .order(e::id.asc())
            .limit(limit)
            .load::<EventRow>(conn)
            .await?
    }))
}

/// The newest event id (0 when none).
pub async fn last_event_id(conn: &mut Conn) -> Result<i64> {
    Ok(db_run!(conn, {
        use schema::alert_events as e;
        e::table.select(diesel::dsl::max(e::id)).first::<Option<i64>>(conn).await?.unwrap_or(0)
    }))
}

/// An alert's notifications, oldest first.
pub async fn notifications_of(conn: &mut Conn, alert_id: &str) -> Result<Vec<NotificationRow>> {
    Ok(db_run!(conn, {
        use schema::alert_notifications as n;
        n::table.filter(n::alert_id.eq(alert_id)).order(n::id.asc()).load::<NotificationRow>(conn).await?
    }))
}

/// Takes up to `limit` due notifications for `until` (a compare-and-set per row, so two
/// instances never send the same one at once). A notification waits while an earlier one of the
/// same alert and channel is still pending: receivers get each alert's changes in order.
pub async fn claim_due(
    conn: &mut Conn,
    now: NaiveDateTime,
    until: NaiveDateTime,
    limit: i64,
) -> Result<Vec<NotificationRow>> {
    Ok(db_run!(conn, {
        use schema::alert_notifications as n;
        let due: Vec<NotificationRow> = n::table
            .filter(n::state.eq(PENDING))
            .filter(n::next_attempt_at.le(now))
            .filter(n::lease_until.is_null().or(n::lease_until.lt(now)))
            .order(n::next_attempt_at.asc())
            .limit(limit)
            .load(conn)
            .await?;
        let mut claimed = Vec::new();
        for d in due {
            let earlier: i64 = n::table
                .filter(n::alert_id.eq(&d.alert_id))
                .filter(n::channel.eq(&d.channel))
                .filter(n::state.eq(PENDING))
                .filter(n::id.lt(&d.id))
                .count()
                .get_result(conn)
                .await?;
            if earlier > 0 {
                continue;
            }
            let won = diesel::update(
                n::table
                    .filter(n::id.eq(&d.id))
                    .filter(n::state.eq(PENDING))
                    .filter(n::lease_until.is_null().or(n::lease_until.lt(now))),
            )
            .set(n::lease_until.eq(Some(until)))
            .execute(conn)
            .await?;
            if won == 1 {
                claimed.push(d);
            }
        }
        claimed
    }))
}

/// Records a delivery attempt: sent, retry at `next`, or failed for good; with an event on the
/// alert's timeline for the outcome (`notified` / `notify_failed`), in one transaction.
pub async fn record_attempt(
    conn: &mut Conn,
    n_row: &NotificationRow,
    state: &str,
    next: NaiveDateTime,
    error: Option<&str>,
    now: NaiveDateTime,
    event: Option<&NewEvent>,
) -> Result<()> {
    db_run!(conn, {
        use schema::{alert_events as e, alert_notifications as n, alerts as t};
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::update(n::table.filter(n::id.eq(&n_row.id)))
                .set((
                    n::state.eq(state),
                    n::attempts.eq(n_row.attempts + 1),
                    n::next_attempt_at.eq(next),
                    n::lease_until.eq(None::<NaiveDateTime>),
                    n::last_error.eq(error),
                    n::sent_at.eq((state == "sent").then_some(now)),
                ))
                .execute(&mut *c)
                .await?;
            if let Some(ev) = event {
                let a: Option<(String, String)> = t::table
                    .filter(t::id.eq(&n_row.alert_id))
                    .select((t::state, t::severity))
                    .first(&mut *c)
                    .await
                    .optional()?;
                if let Some((st, sev)) = a {
                    diesel::insert_into(e::table)
                        .values((
                            e::alert_id.eq(&n_row.alert_id),
                            e::at.eq(now),
                            e::kind.eq(&ev.kind),
                            e::state.eq(st),
                            e::severity.eq(sev),
                            e::value.eq(ev.value),
                            e::actor.eq(&ev.actor),
                            e::note.eq(&ev.note),
                        ))
                        .execute(&mut *c)
                        .await?;
                }
            }
            Ok(())
        })
        .await?;
    });
    Ok(())
}

/// Deletes the oldest resolved alerts beyond `keep`, with their events and notifications; an
/// alert with a notification still pending stays until it is delivered or has failed.
pub async fn prune_resolved(conn: &mut Conn, keep: i64) -> Result<usize> {
    Ok(db_run!(conn, {
        use schema::{alert_events as e, alert_notifications as n, alerts as t};
        let kept: Vec<String> = t::table
            .filter(t::state.eq(RESOLVED))
            .order(t::resolved_at.desc())
            .limit(keep)
            .select(t::id)
            .load(conn)
            .await?;
        let undelivered: Vec<String> =
            n::table.filter(n::state.eq(PENDING)).select(n::alert_id).distinct().load(conn).await?;
        let gone: Vec<String> = t::table
            .filter(t::state.eq(RESOLVED))
            .filter(t::id.ne_all(kept))
            .filter(t::id.ne_all(undelivered))
            .select(t::id)
            .load(conn)
            .await?;
        if gone.is_empty() {
            return Ok(0);
        }
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::delete(e::table.filter(e::alert_id.eq_any(gone.clone()))).execute(&mut *c).await?;
            diesel::delete(n::table.filter(n::alert_id.eq_any(gone.clone()))).execute(&mut *c).await?;
            diesel::delete(t::table.filter(t::id.eq_any(gone.clone())).filter(t::state.eq(RESOLVED)))
                .execute(&mut *c)
                .await
        })
        .await?
    }))
}
