//! Notifications: the payload of an alert's event, one per configured channel (queued with the
//! change, see `db::alerts::save`), and their delivery by webhook or email with retries.

use std::time::Duration;

use chrono::NaiveDateTime;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

use super::{Channel, Context, EventKind, NotificationState, Result, labels_of};
use crate::db::alerts::{self as store, AlertRow, NewEvent, NewNotification, NotificationRow};

/// The JSON document a notification carries.
fn payload(a: &AlertRow, kind: EventKind, note: &str, event_id: i64) -> String {
    let ts = |t: Option<NaiveDateTime>| t.map(|t| t.and_utc().to_rfc3339());
    json!({
        "event": kind.as_str(),
        "event_id": event_id,
        "note": note,
        "at": a.updated_at.and_utc().to_rfc3339(),
        "alert": {
            "id": a.id,
            "rule": a.rule_name,
            "labels": labels_of(a),
            "state": a.state.as_str(),
            "severity": a.severity.as_str(),
            "value": a.value,
            "threshold": a.threshold,
            "summary": a.summary,
            "started_at": ts(Some(a.started_at)),
            "fired_at": ts(a.fired_at),
            "acknowledged_by": a.acknowledged_by,
            "resolved_at": ts(a.resolved_at),
            "resolved_by": a.resolved_by,
        }
    })
    .to_string()
}

/// Notifications for an event, one per configured channel.
pub(super) fn notifications(ctx: &Context, a: &AlertRow, kind: EventKind, note: &str) -> Vec<NewNotification> {
    let mut out: Vec<NewNotification> = Vec::new();
    let (alert, note_s) = (a.clone(), note.to_owned());
    let make = move |event_id: i64| payload(&alert, kind, &note_s, event_id);
    if let Some(url) = &ctx.config.alert_webhook_url {
        out.push((Channel::Webhook, url.clone(), Box::new(make.clone())));
    }
    if ctx.config.alert_smtp_url.is_some() && !ctx.config.alert_email_to.is_empty() {
        out.push((Channel::Email, ctx.config.alert_email_to.join(", "), Box::new(make)));
    }
    out
}

/// Delivery retries: exponential from 1 s, doubling, at most 5 minutes apart.
fn retry_delay(attempts: i64) -> Duration {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(attempts.clamp(0, 64) as usize)
        .unwrap_or(Duration::from_secs(300))
}

/// How long one webhook or SMTP attempt may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a sender holds the notifications it claimed. The claimed ones are sent concurrently,
/// each bounded by [`SEND_TIMEOUT`], so the lease covers the longest send with room to record the
/// outcome; a sender that outlives it anyway records nothing (see `record_attempt`).
const SEND_LEASE: Duration = Duration::from_secs(45);
/// Notifications claimed (and sent concurrently) at a time.
const CLAIM_BATCH: i64 = 20;

/// Sends due notifications (at most [`CLAIM_BATCH`] per call); returns how many were attempted.
pub async fn deliver_due(ctx: &Context, http: &reqwest::Client) -> Result<usize> {
    let t = ctx.now();
    let mut conn = ctx.db.write().await?;
    let until = t + chrono::Duration::from_std(SEND_LEASE).expect("small");
    let due = store::claim_due(&mut conn, &ctx.instance_id, t, until, CLAIM_BATCH).await?;
    drop(conn);
    let n = due.len();
    let sends = due.into_iter().map(|d| async move {
        let result = match tokio::time::timeout(SEND_TIMEOUT, send(ctx, http, &d)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}", humantime::format_duration(SEND_TIMEOUT))),
        };
        (d, result)
    });
    for (d, result) in futures::future::join_all(sends).await {
        // Each outcome is recorded on its own: a database error on one must not drop the others
        // (their leases would lapse and delivered notifications be sent again). A failed record
        // is retried while the lease lasts (by the database's clock); after that the lease's next
        // holder decides.
        let mut tries = 0u32;
        let recorded = loop {
            match record_outcome(ctx, &d, &result).await {
                Ok(r) => break Some(r),
                Err(e) if d.lease_until.is_some_and(|u| ctx.now() + RECORD_MARGIN < u) => {
                    tries += 1;
                    tracing::warn!(alert = %d.alert_id, error = %e, tries, "recording a notification attempt failed; retrying");
                    tokio::time::sleep((Duration::from_millis(100) * 2u32.pow(tries.min(4))).min(RECORD_MARGIN)).await;
                }
                Err(e) => {
                    tracing::error!(alert = %d.alert_id, error = %e, "recording a notification attempt failed; its lease decides");
                    break None;
                }
            }
        };
        // Not recorded at all: said above.
        let Some(recorded) = recorded else { continue };
        let attempt = d.attempts + 1;
        match (&result, recorded) {
            (_, false) => tracing::warn!(
                alert = %d.alert_id, channel = %d.channel, attempt,
                "send lease lapsed before the attempt was recorded; the instance holding it now decides"
            ),
            (Ok(()), true) => {
                tracing::info!(alert = %d.alert_id, channel = %d.channel, attempt, "alert notification sent")
            }
            (Err(e), true) if d.attempts + 1 < i64::from(ctx.config.alert_notify_attempts) => {
                tracing::warn!(alert = %d.alert_id, channel = %d.channel, attempt, error = %e, "alert notification failed; retrying")
            }
            (Err(e), true) => {
                tracing::error!(alert = %d.alert_id, channel = %d.channel, error = %e, "alert notification failed for good")
            }
        }
    }
    Ok(n)
}

/// A failed record of one attempt is retried (200 ms, 400 ms, … up to this apart) until this long
/// before the send's lease ends.
const RECORD_MARGIN: Duration = Duration::from_secs(2);

/// Records the outcome of one attempt on `d`; false when its lease was taken over meanwhile.
async fn record_outcome(ctx: &Context, d: &NotificationRow, result: &std::result::Result<(), String>) -> Result<bool> {
    let t = ctx.now();
    let mut conn = ctx.db.write().await?;
    Ok(match result {
        Ok(()) => {
            let ev = NewEvent {
                kind: EventKind::Notified,
                value: None,
                actor: "strata".into(),
                note: format!("{} to {}", d.channel, d.target),
            };
            store::record_attempt(&mut conn, d, NotificationState::Sent, t, None, t, Some(&ev)).await?
        }
        Err(e) if d.attempts + 1 < i64::from(ctx.config.alert_notify_attempts) => {
            let next =
                t + chrono::Duration::from_std(retry_delay(d.attempts)).unwrap_or(chrono::Duration::seconds(300));
            store::record_attempt(&mut conn, d, NotificationState::Pending, next, Some(e), t, None).await?
        }
        Err(e) => {
            let ev = NewEvent {
                kind: EventKind::NotifyFailed,
                value: None,
                actor: "strata".into(),
                note: format!("{} to {} failed after {} attempts: {e}", d.channel, d.target, d.attempts + 1),
            };
            store::record_attempt(&mut conn, d, NotificationState::Failed, t, Some(e), t, Some(&ev)).await?
        }
    })
}

/// The signature header value of a webhook body: hex HMAC-SHA256 over `"<timestamp>.<body>"`.
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn send(ctx: &Context, http: &reqwest::Client, n: &NotificationRow) -> std::result::Result<(), String> {
    match n.channel {
        Channel::Webhook => {
            let ts = ctx.now_utc().timestamp();
            let doc: serde_json::Value = serde_json::from_str(&n.payload).unwrap_or_default();
            let mut req = http
                .post(&n.target)
                .header("content-type", "application/json")
                .header("x-strata-delivery", &n.id)
                .header("x-strata-event", doc["event"].as_str().unwrap_or_default())
                .header("x-strata-timestamp", ts.to_string())
                .body(n.payload.clone());
            if let Some(secret) = &ctx.config.alert_webhook_secret {
                req = req.header("x-strata-signature", sign(secret, ts, &n.payload));
            }
            let resp = req.send().await.map_err(|e| format!("webhook: {e}"))?;
            if resp.status().is_success() { Ok(()) } else { Err(format!("webhook answered {}", resp.status())) }
        }
        Channel::Email => send_email(ctx, n).await,
    }
}

async fn send_email(ctx: &Context, n: &NotificationRow) -> std::result::Result<(), String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor, message::header::ContentType};
    let url = ctx.config.alert_smtp_url.as_deref().ok_or("alert_smtp_url is not set")?;
    let doc: serde_json::Value = serde_json::from_str(&n.payload).map_err(|e| e.to_string())?;
    let a = &doc["alert"];
    let subject = format!(
        "[strata] {} {}: {}",
        doc["event"].as_str().unwrap_or_default().to_uppercase(),
        a["severity"].as_str().unwrap_or_default(),
        a["summary"].as_str().unwrap_or_default()
    );
    let body = format!(
        "{}\n\nalert {}\nrule {}\nstate {}\nlabels {}\nstarted {}\n{}\n",
        a["summary"].as_str().unwrap_or_default(),
        a["id"].as_str().unwrap_or_default(),
        a["rule"].as_str().unwrap_or_default(),
        a["state"].as_str().unwrap_or_default(),
        a["labels"],
        a["started_at"].as_str().unwrap_or_default(),
        doc["note"].as_str().filter(|s| !s.is_empty()).map(|s| format!("note: {s}")).unwrap_or_default(),
    );
    let mut m = Message::builder()
        .from(ctx.config.alert_email_from.parse().map_err(|e| format!("alert_email_from: {e}"))?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in n.target.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        m = m.to(to.parse().map_err(|e| format!("recipient {to:?}: {e}"))?);
    }
    let m = m.body(body).map_err(|e| e.to_string())?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map_err(|e| format!("alert_smtp_url: {e}"))?
        .timeout(Some(SEND_TIMEOUT))
        .build();
    transport.send(m).await.map(|_| ()).map_err(|e| format!("smtp: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signatures_are_hmac_sha256_of_timestamp_and_body() {
        // Computed independently: Python's hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).
        assert_eq!(
            sign("secret", 1_700_000_000, "{}"),
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn retries_back_off_exponentially_to_five_minutes() {
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(20), Duration::from_secs(300));
    }
}
