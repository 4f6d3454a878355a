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
use crate::{
    db_run,
    model::{
        UnknownValue,
        alerts::{AlertState, Channel, Comparison, EventKind, Metric, NotificationState, Severity},
    },
};

/// A rule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRow {
    /// Unique name.
    pub name: String,
    /// Metric.
    pub metric: Metric,
    /// Table selector.
    pub table_name: String,
    /// above / below.
    pub comparison: Comparison,
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
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    /// Id (UUIDv7).
    pub id: String,
    /// Rule.
    pub rule_name: String,
    /// Canonical JSON labels.
    pub labels_key: String,
    /// State.
    pub state: AlertState,
    /// warning / critical.
    pub severity: Severity,
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
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Increasing id.
    pub id: i64,
    /// Alert.
    pub alert_id: String,
    /// When.
    pub at: NaiveDateTime,
    /// What happened.
    pub kind: EventKind,
    /// State after it.
    pub state: AlertState,
    /// Severity after it.
    pub severity: Severity,
    /// Value then.
    pub value: Option<f64>,
    /// Who ("strata" for evaluations).
    pub actor: String,
    /// Note.
    pub note: String,
}

/// A notification as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationRow {
    /// Id: also the delivery id receivers deduplicate on.
    pub id: String,
    /// Alert.
    pub alert_id: String,
    /// Event announced.
    pub event_id: i64,
    /// webhook / email.
    pub channel: Channel,
    /// URL or recipients.
    pub target: String,
    /// pending / sent / failed.
    pub state: NotificationState,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt.
    pub next_attempt_at: NaiveDateTime,
    /// Held by a sender until.
    pub lease_until: Option<NaiveDateTime>,
    /// The instance holding the send lease.
    pub lease_owner: Option<String>,
    /// Last failure.
    pub last_error: Option<String>,
    /// JSON body.
    pub payload: String,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Delivered.
    pub sent_at: Option<NaiveDateTime>,
}

// The columns as Diesel reads them. The text columns holding a metric, comparison, state,
// severity, event kind or channel become enums in the `TryFrom`s below and nowhere else; writes
// spell them in `rule_values!` / `alert_values!`, `save`, `record_attempt` and the filters, with
// `as_str`.

/// `alert_rules` as read.
#[derive(Queryable)]
struct RuleColumns {
    name: String,
    metric: String,
    table_name: String,
    comparison: String,
    warning: Option<f64>,
    critical: Option<f64>,
    for_ms: i64,
    capacity_bytes: i64,
    labels: String,
    enabled: bool,
    builtin: bool,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl TryFrom<RuleColumns> for RuleRow {
    type Error = UnknownValue;

    fn try_from(c: RuleColumns) -> Result<Self, UnknownValue> {
        Ok(Self {
            name: c.name,
            metric: c.metric.parse()?,
            table_name: c.table_name,
            comparison: c.comparison.parse()?,
            warning: c.warning,
            critical: c.critical,
            for_ms: c.for_ms,
            capacity_bytes: c.capacity_bytes,
            labels: c.labels,
            enabled: c.enabled,
            builtin: c.builtin,
            created_at: c.created_at,
            updated_at: c.updated_at,
        })
    }
}

/// `alerts` as read.
#[derive(Queryable)]
struct AlertColumns {
    id: String,
    rule_name: String,
    labels_key: String,
    state: String,
    severity: String,
    value: f64,
    threshold: f64,
    summary: String,
    started_at: NaiveDateTime,
    fired_at: Option<NaiveDateTime>,
    acknowledged_at: Option<NaiveDateTime>,
    acknowledged_by: Option<String>,
    resolved_at: Option<NaiveDateTime>,
    resolved_by: Option<String>,
    updated_at: NaiveDateTime,
}

impl TryFrom<AlertColumns> for AlertRow {
    type Error = UnknownValue;

    fn try_from(c: AlertColumns) -> Result<Self, UnknownValue> {
        Ok(Self {
            id: c.id,
            rule_name: c.rule_name,
            labels_key: c.labels_key,
            state: c.state.parse()?,
            severity: c.severity.parse()?,
            value: c.value,
            threshold: c.threshold,
            summary: c.summary,
            started_at: c.started_at,
            fired_at: c.fired_at,
            acknowledged_at: c.acknowledged_at,
            acknowledged_by: c.acknowledged_by,
            resolved_at: c.resolved_at,
            resolved_by: c.resolved_by,
            updated_at: c.updated_at,
        })
    }
}

/// `alert_events` as read.
#[derive(Queryable)]
struct EventColumns {
    id: i64,
    alert_id: String,
    at: NaiveDateTime,
    kind: String,
    state: String,
    severity: String,
    value: Option<f64>,
    actor: String,
    note: String,
}

impl TryFrom<EventColumns> for EventRow {
    type Error = UnknownValue;

    fn try_from(c: EventColumns) -> Result<Self, UnknownValue> {
        Ok(Self {
            id: c.id,
            alert_id: c.alert_id,
            at: c.at,
            kind: c.kind.parse()?,
            state: c.state.parse()?,
            severity: c.severity.parse()?,
            value: c.value,
            actor: c.actor,
            note: c.note,
        })
    }
}

/// `alert_notifications` as read.
#[derive(Queryable)]
struct NotificationColumns {
    id: String,
    alert_id: String,
    event_id: i64,
    channel: String,
    target: String,
    state: String,
    attempts: i64,
    next_attempt_at: NaiveDateTime,
    lease_until: Option<NaiveDateTime>,
    last_error: Option<String>,
    payload: String,
    created_at: NaiveDateTime,
    sent_at: Option<NaiveDateTime>,
    lease_owner: Option<String>,
}

impl TryFrom<NotificationColumns> for NotificationRow {
    type Error = UnknownValue;

    fn try_from(c: NotificationColumns) -> Result<Self, UnknownValue> {
        Ok(Self {
            id: c.id,
            alert_id: c.alert_id,
            event_id: c.event_id,
            channel: c.channel.parse()?,
            target: c.target,
            state: c.state.parse()?,
            attempts: c.attempts,
            next_attempt_at: c.next_attempt_at,
            lease_until: c.lease_until,
            lease_owner: c.lease_owner,
            last_error: c.last_error,
            payload: c.payload,
            created_at: c.created_at,
            sent_at: c.sent_at,
        })
    }
}

/// Rows read as `C`, converted (an unknown state or kind fails the read).
fn typed<C, T: TryFrom<C, Error = UnknownValue>>(rows: Vec<C>) -> Result<Vec<T>> {
    Ok(rows.into_iter().map(T::try_from).collect::<Result<_, _>>()?)
}

/// An event to record with a change.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// Value then.
    pub value: Option<f64>,
    /// Who.
    pub actor: String,
    /// Note.
    pub note: String,
}

/// A notification to queue with a change: (channel, target, payload built from the event id).
pub type NewNotification = (Channel, String, Box<dyn Fn(i64) -> String + Send + Sync>);

macro_rules! rule_values {
    ($t:ident, $r:expr) => {
        (
            $t::name.eq(&$r.name),
            $t::metric.eq($r.metric.as_str()),
            $t::table_name.eq(&$r.table_name),
            $t::comparison.eq($r.comparison.as_str()),
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
            $t::state.eq($a.state.as_str()),
            $t::severity.eq($a.severity.as_str()),
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
    let row = db_run!(conn, {
        use schema::alert_rules as t;
        t::table.filter(t::name.eq(name)).first::<RuleColumns>(conn).await.optional()?
    });
    Ok(row.map(RuleRow::try_from).transpose()?)
}

/// Every rule, by name.
pub async fn list_rules(conn: &mut Conn) -> Result<Vec<RuleRow>> {
    typed(db_run!(conn, {
        use schema::alert_rules as t;
        t::table.order(t::name.asc()).load::<RuleColumns>(conn).await?
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
    let row = db_run!(conn, {
        use schema::alerts as t;
        t::table.filter(t::id.eq(id)).first::<AlertColumns>(conn).await.optional()?
    });
    Ok(row.map(AlertRow::try_from).transpose()?)
}

/// Every alert that is not resolved (pending included).
pub async fn open_alerts(conn: &mut Conn) -> Result<Vec<AlertRow>> {
    typed(db_run!(conn, {
        use schema::alerts as t;
        t::table
            .filter(t::state.ne(AlertState::Resolved.as_str()))
            .order(t::id.asc())
            .load::<AlertColumns>(conn)
            .await?
    }))
}

/// Alerts newest first (ids are UUIDv7), after page token `before`: only `states` (empty: all
/// but pending), only `severity`, `rule`, and those started at or after `since` when given.
pub async fn list_alerts(
    conn: &mut Conn,
    states: &[AlertState],
    severity: Option<Severity>,
    rule: Option<&str>,
    since: Option<NaiveDateTime>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<AlertRow>> {
    typed(db_run!(conn, {
        use schema::alerts as t;
        let mut q = t::table.into_boxed();
        if states.is_empty() {
            q = q.filter(t::state.ne(AlertState::Pending.as_str()));
        } else {
            q = q.filter(t::state.eq_any(states.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        }
        if let Some(s) = severity {
            q = q.filter(t::severity.eq(s.as_str()));
        }
        if let Some(r) = rule {
            q = q.filter(t::rule_name.eq(r.to_owned()));
        }
        if let Some(s) = since {
            q = q.filter(t::started_at.ge(s));
        }
        if let Some(b) = before {
            q = q.filter(t::id.lt(b.to_owned()));
        }
        q.order(t::id.desc()).limit(limit).load::<AlertColumns>(conn).await?
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
                    e::kind.eq(ev.kind.as_str()),
                    e::state.eq(alert.state.as_str()),
                    e::severity.eq(alert.severity.as_str()),
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
                        n::channel.eq(channel.as_str()),
                        n::target.eq(target),
                        n::state.eq(NotificationState::Pending.as_str()),
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
        diesel::delete(
            t::table
                .filter(t::id.eq(id))
                .filter(t::state.eq(AlertState::Pending.as_str()))
                .filter(t::updated_at.eq(previous)),
        )
        .execute(conn)
        .await?
            == 1
    }))
}

/// An alert's timeline, oldest first.
pub async fn events_of(conn: &mut Conn, alert_id: &str) -> Result<Vec<EventRow>> {
    typed(db_run!(conn, {
        use schema::alert_events as e;
        e::table.filter(e::alert_id.eq(alert_id)).order(e::id.asc()).load::<EventColumns>(conn).await?
    }))
}

/// Events with an id above `after` or recorded at or after `since`, oldest first: the watch
/// tailer's read (the time window catches ids committed out of order on PostgreSQL).
pub async fn recent_events(conn: &mut Conn, after: i64, since: NaiveDateTime, limit: i64) -> Result<Vec<EventRow>> {
    typed(db_run!(conn, {
        use schema::alert_events as e;
        e::table
            .filter(e::id.gt(after).or(e::at.ge(since)))
            .order(e::id.asc())
            .limit(limit)
            .load::<EventColumns>(conn)
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
    typed(db_run!(conn, {
        use schema::alert_notifications as n;
        n::table.filter(n::alert_id.eq(alert_id)).order(n::id.asc()).load::<NotificationColumns>(conn).await?
    }))
}

/// Takes up to `limit` due notifications for `until` (a compare-and-set per row, so two
/// instances never send the same one at once). A notification waits while an earlier one of the
/// same alert and channel is still pending: receivers get each alert's changes in order.
pub async fn claim_due(
    conn: &mut Conn,
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
    limit: i64,
) -> Result<Vec<NotificationRow>> {
    let pending = NotificationState::Pending.as_str();
    typed(db_run!(conn, {
        use schema::alert_notifications as n;
        let due: Vec<NotificationColumns> = n::table
            .filter(n::state.eq(pending))
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
                .filter(n::state.eq(pending))
                .filter(n::id.lt(&d.id))
                .count()
                .get_result(conn)
                .await?;
            if earlier > 0 {
                continue;
            }
            // The row as read, not merely unleased: another sender may have claimed it, sent it and
            // recorded the attempt (lease cleared, next attempt later) since the SELECT above. A
            // claim on the stale read would send the retry early and overwrite its attempt count.
            let won = diesel::update(
                n::table
                    .filter(n::id.eq(&d.id))
                    .filter(n::state.eq(pending))
                    .filter(n::attempts.eq(d.attempts))
                    .filter(n::next_attempt_at.le(now))
                    .filter(n::lease_until.is_null().or(n::lease_until.lt(now))),
            )
            .set((n::lease_until.eq(Some(until)), n::lease_owner.eq(Some(owner))))
            .execute(conn)
            .await?;
            if won == 1 {
                claimed.push(NotificationColumns {
                    lease_until: Some(until),
                    lease_owner: Some(owner.to_owned()),
                    ..d
                });
            }
        }
        claimed
    }))
}

/// Records a delivery attempt: sent, retry at `next`, or failed for good; with an event on the
/// alert's timeline for the outcome (`notified` / `notify_failed`), in one transaction. Only the
/// holder of the claim `n_row` was read with may record (compare-and-set on the lease's owner and
/// end): false, and nothing written, when the lease lapsed and another sender took it over.
pub async fn record_attempt(
    conn: &mut Conn,
    n_row: &NotificationRow,
    state: NotificationState,
    next: NaiveDateTime,
    error: Option<&str>,
    now: NaiveDateTime,
    event: Option<&NewEvent>,
) -> Result<bool> {
    let (Some(until), Some(owner)) = (n_row.lease_until, n_row.lease_owner.as_deref()) else {
        return Ok(false);
    };
    Ok(db_run!(conn, {
        use schema::{alert_events as e, alert_notifications as n, alerts as t};
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            let held = diesel::update(
                n::table
                    .filter(n::id.eq(&n_row.id))
                    .filter(n::state.eq(NotificationState::Pending.as_str()))
                    .filter(n::lease_owner.eq(owner))
                    .filter(n::lease_until.eq(until)),
            )
            .set((
                n::state.eq(state.as_str()),
                n::attempts.eq(n_row.attempts + 1),
                n::next_attempt_at.eq(next),
                n::lease_until.eq(None::<NaiveDateTime>),
                n::lease_owner.eq(None::<String>),
                n::last_error.eq(error),
                n::sent_at.eq((state == NotificationState::Sent).then_some(now)),
            ))
            .execute(&mut *c)
            .await?;
            if held != 1 {
                return Ok(false);
            }
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
                            e::kind.eq(ev.kind.as_str()),
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
            Ok(true)
        })
        .await?
    }))
}

/// Deletes the oldest resolved alerts beyond `keep`, with their events and notifications; an
/// alert with a notification still pending stays until it is delivered or has failed.
pub async fn prune_resolved(conn: &mut Conn, keep: i64) -> Result<usize> {
    Ok(db_run!(conn, {
        use schema::{alert_events as e, alert_notifications as n, alerts as t};
        let kept: Vec<String> = t::table
            .filter(t::state.eq(AlertState::Resolved.as_str()))
            .order(t::resolved_at.desc())
            .limit(keep)
            .select(t::id)
            .load(conn)
            .await?;
        let undelivered: Vec<String> = n::table
            .filter(n::state.eq(NotificationState::Pending.as_str()))
            .select(n::alert_id)
            .distinct()
            .load(conn)
            .await?;
        let gone: Vec<String> = t::table
            .filter(t::state.eq(AlertState::Resolved.as_str()))
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
            diesel::delete(
                t::table.filter(t::id.eq_any(gone.clone())).filter(t::state.eq(AlertState::Resolved.as_str())),
            )
            .execute(&mut *c)
            .await
        })
        .await?
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, severity: &str) -> EventColumns {
        EventColumns {
            id: 1,
            alert_id: "a".into(),
            at: NaiveDateTime::default(),
            kind: kind.into(),
            state: "firing".into(),
            severity: severity.into(),
            value: None,
            actor: "strata".into(),
            note: String::new(),
        }
    }

    #[test]
    fn stored_kinds_become_enums_and_unknown_ones_are_refused() {
        let e = EventRow::try_from(event("notify_failed", "critical")).unwrap();
        assert_eq!((e.kind, e.state, e.severity), (EventKind::NotifyFailed, AlertState::Firing, Severity::Critical));
        let err = EventRow::try_from(event("firing", "fatal")).unwrap_err();
        assert_eq!(err, UnknownValue { what: "alert severity", value: "fatal".into() });
    }
}
