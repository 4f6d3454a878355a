//! The audit trail: every mutating call and every denied call, as a structured log line (target
//! `strata::audit`) and a catalog row (`ListAuditEvents`).
//!
//! Rows are written by one writer per instance in batches: whatever calls end while a batch is
//! being written go into the next one (group commit), so a busy instance writes one multi-row
//! insert for many calls instead of a round trip each. A call that succeeded waits for its batch
//! before its client hears so ([`Recorder::durable`]): an event is never lost for a call whose
//! client was told it succeeded. Failed and denied calls are queued without waiting.
//!
//! The writer is part of the recorder, not a `jobs/` loop: it serves calls in flight (like a
//! connection pool) and ends with the server's last call.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Context, Error, Result};
use crate::{db, model::auth::AuthMethod};

pub use crate::model::auth::{AuditEvent, AuditFilter};

/// Events waiting for the writer at most; beyond, an event that need not be durable is logged
/// only (a flood of denied calls must not grow memory).
const QUEUE: usize = 10_000;
/// Events in one batch at most.
const BATCH: usize = 1000;
/// How long a batch is retried while the catalog is unreachable.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// Events deleted per statement when pruning.
const PRUNE_CHUNK: i64 = 10_000;

/// One call, as the edge describes it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Token name, certificate rule, `loopback`, or `-`.
    pub caller: String,
    /// How the caller was recognised.
    pub auth_method: AuthMethod,
    /// The real client address.
    pub client_addr: Option<String>,
    /// The trusted proxy it came through.
    pub proxy_addr: Option<String>,
    /// `/strata.v1.Service/Method`.
    pub method: String,
    /// `field=value` of the resource fields the method declares.
    pub resource: String,
    /// gRPC status code name.
    pub code: &'static str,
}

enum Msg {
    Event(Box<AuditEvent>, Option<oneshot::Sender<()>>),
    Close(oneshot::Sender<()>),
}

/// Queues events for the writer; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    rx: std::sync::Arc<std::sync::Mutex<Option<mpsc::Receiver<Msg>>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self { tx, rx: std::sync::Arc::new(std::sync::Mutex::new(Some(rx))) }
    }
}

impl Recorder {
    /// Starts the writer (once per recorder): it runs until [`Recorder::close`].
    pub fn start(&self, ctx: &Context) -> tokio::task::JoinHandle<()> {
        let rx = self.rx.lock().expect("audit receiver").take().expect("the audit writer starts once");
        tokio::spawn(write(ctx.clone(), rx))
    }

    /// Writes what is queued and stops the writer (at shutdown, after the last call).
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    fn event(ctx: &Context, e: Event) -> AuditEvent {
        // The log line first: it is the record when the catalog is unreachable.
        tracing::info!(
            target: "strata::audit",
            caller = %e.caller,
            auth = e.auth_method.as_str(),
            client = e.client_addr.as_deref().unwrap_or("-"),
            via = e.proxy_addr.as_deref().unwrap_or("-"),
            method = %e.method,
            resource = %e.resource,
            code = e.code,
            "audit"
        );
        AuditEvent {
            id: 0,
            occurred_at: ctx.now(),
            instance_id: ctx.instance_id.clone(),
            caller: e.caller,
            auth_method: e.auth_method,
            client_addr: e.client_addr,
            proxy_addr: e.proxy_addr,
            method: e.method,
            resource: e.resource,
            code: e.code.to_owned(),
            request_id: None,
        }
    }

    /// Records a call that succeeded: returns once its row is committed (or, with the catalog
    /// unreachable for [`RETRY_FOR`], once that was logged as an error).
    pub async fn durable(&self, ctx: &Context, e: Event) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Event(Box::new(Self::event(ctx, e)), Some(done))).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Records a failed or denied call without waiting for its row.
    pub fn record(&self, ctx: &Context, e: Event) {
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.tx.try_send(Msg::Event(Box::new(Self::event(ctx, e)), None))
        {
            tracing::warn!(target: "strata::audit", "audit queue full: the event above is in the log only");
        }
    }
}

/// The writer: a batch of whatever is queued, written in one transaction, its waiters told.
async fn write(ctx: Context, mut rx: mpsc::Receiver<Msg>) {
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = rx.recv().await else { return };
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        let mut take = |m: Msg, batch: &mut Vec<AuditEvent>, closing: &mut Option<oneshot::Sender<()>>| match m {
            Msg::Event(e, w) => {
                batch.push(*e);
                waiters.extend(w);
            }
            Msg::Close(done) => *closing = Some(done),
        };
        take(first, &mut batch, &mut closing);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => take(m, &mut batch, &mut closing),
                Err(_) => break,
            }
        }
        store(&ctx, &batch).await;
        for w in waiters {
            let _ = w.send(());
        }
    }
    // Close was asked: what was queued before it is in the batches written above.
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Writes one batch, retrying while the catalog is unreachable for up to [`RETRY_FOR`].
async fn store(ctx: &Context, batch: &[AuditEvent]) {
    if batch.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let res = async { db::audit::insert(&mut ctx.db.write().await?, batch).await }.await;
        match res {
            Ok(()) => return,
            Err(e) if started.elapsed() < RETRY_FOR => {
                tracing::warn!(error = %e, events = batch.len(), "writing audit events failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "audit events not stored in the catalog (they are in the log)");
                return;
            }
        }
    }
}

/// A page of events newest first, and the next page's token.
pub async fn list(
    ctx: &Context,
    filter: &AuditFilter,
    page_token: Option<&str>,
    limit: i64,
) -> Result<(Vec<AuditEvent>, Option<String>)> {
    let before = page_token
        .map(|t| t.parse::<i64>().map_err(|_| Error::InvalidArgument("invalid page_token".into())))
        .transpose()?;
    let (mut conn, _) = ctx.db.read_prefer_primary().await?;
    let rows = db::audit::list(&mut conn, filter, before, limit).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id.to_string())).flatten();
    Ok((rows, next))
}

/// Deletes events older than `audit_retention`; returns how many.
pub async fn prune(ctx: &Context) -> Result<usize> {
    let keep = chrono::Duration::from_std(ctx.config.audit_retention).unwrap_or(chrono::Duration::days(90));
    let before = ctx.now() - keep;
    let mut total = 0;
    loop {
        let n = db::audit::prune(&mut ctx.db.write().await?, before, PRUNE_CHUNK).await?;
        total += n;
        if (n as i64) < PRUNE_CHUNK {
            return Ok(total);
        }
    }
}
