//! An alert's life by hand and its reads: list, get with its timeline, acknowledge, resolve, and
//! the close that evaluation and rule deletion share.

use super::{
    Alert, AlertDetail, AlertEvent, AlertFilter, AlertState, Context, Error, EventKind, Notification, Result,
    notify::notifications,
};
use crate::db::{
    self,
    alerts::{self as store, AlertRow, NewEvent, Saved},
};

/// Alerts newest first, filtered; returns the next page token.
pub async fn list_alerts(
    ctx: &Context,
    f: &AlertFilter,
    page_size: i64,
    token: Option<&str>,
) -> Result<(Vec<Alert>, Option<String>)> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let rows =
        store::list_alerts(&mut conn, &f.states, f.severity, f.rule.as_deref(), f.since, token, page_size + 1).await?;
    let more = rows.len() as i64 > page_size;
    let rows: Vec<Alert> = rows.into_iter().take(page_size as usize).map(Alert::from).collect();
    let next = if more { rows.last().map(|r| r.id.clone()) } else { None };
    Ok((rows, next))
}

/// One alert with its timeline.
pub async fn get_alert(ctx: &Context, id: &str) -> Result<AlertDetail> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let alert = store::get_alert(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("alert {id:?}")))?;
    let events = store::events_of(&mut conn, id).await?.into_iter().map(AlertEvent::from).collect();
    let notifications = store::notifications_of(&mut conn, id).await?.into_iter().map(Notification::from).collect();
    Ok(AlertDetail { alert: alert.into(), events, notifications })
}

/// Acknowledges a firing alert: someone is on it (notifications say so; it no longer counts
/// fully in the health score). An escalation makes it fire again.
pub async fn acknowledge(ctx: &Context, id: &str, by: &str, note: &str) -> Result<AlertDetail> {
    if note.len() > 2000 {
        return Err(Error::InvalidArgument("note must be at most 2000 bytes".into()));
    }
    for _ in 0..5 {
        let mut conn = ctx.db.write().await?;
        let a = store::get_alert(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("alert {id:?}")))?;
        match a.state {
            AlertState::Firing => {}
            AlertState::Acknowledged => {
                return Err(Error::FailedPrecondition(format!("alert {id} is already acknowledged")));
            }
            s => {
                return Err(Error::FailedPrecondition(format!(
                    "alert {id} is {s}: only firing alerts can be acknowledged"
                )));
            }
        }
        let t = ctx.now();
        let previous = a.updated_at;
        let next = AlertRow {
            state: AlertState::Acknowledged,
            acknowledged_at: Some(t),
            acknowledged_by: Some(by.into()),
            updated_at: t,
            ..a
        };
        let ev =
            NewEvent { kind: EventKind::Acknowledged, value: Some(next.value), actor: by.into(), note: note.into() };
        let notify = notifications(ctx, &next, EventKind::Acknowledged, note);
        if let Saved::Done(_) = store::save(&mut conn, &next, Some(previous), Some(&ev), &notify).await? {
            drop(conn);
            return get_alert(ctx, id).await;
        }
    }
    Err(Error::Busy(format!("alert {id} kept changing; try again")))
}

/// Resolves an open alert by hand. If its condition still holds, the next evaluation opens a
/// new one.
pub async fn resolve(ctx: &Context, id: &str, by: &str, note: &str) -> Result<AlertDetail> {
    if note.len() > 2000 {
        return Err(Error::InvalidArgument("note must be at most 2000 bytes".into()));
    }
    for _ in 0..5 {
        let mut conn = ctx.db.write().await?;
        let a = store::get_alert(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("alert {id:?}")))?;
        if a.state == AlertState::Resolved {
            return Err(Error::FailedPrecondition(format!("alert {id} is already resolved")));
        }
        if close(ctx, &mut conn, a, by, note).await? {
            drop(conn);
            return get_alert(ctx, id).await;
        }
    }
    Err(Error::Busy(format!("alert {id} kept changing; try again")))
}

/// Resolves (or, if it never fired, forgets) an open alert; false on a concurrent change.
pub(super) async fn close(ctx: &Context, conn: &mut db::Conn, a: AlertRow, by: &str, note: &str) -> Result<bool> {
    if a.state == AlertState::Pending {
        return Ok(store::delete_pending(conn, &a.id, a.updated_at).await?);
    }
    let t = ctx.now();
    let previous = a.updated_at;
    let next = AlertRow {
        state: AlertState::Resolved,
        resolved_at: Some(t),
        resolved_by: Some(by.into()),
        updated_at: t,
        ..a
    };
    let ev = NewEvent { kind: EventKind::Resolved, value: Some(next.value), actor: by.into(), note: note.into() };
    let notify = notifications(ctx, &next, EventKind::Resolved, note);
    Ok(matches!(store::save(conn, &next, Some(previous), Some(&ev), &notify).await?, Saved::Done(_)))
}
