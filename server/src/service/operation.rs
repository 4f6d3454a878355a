//! Long operations: work that takes as long as the data is big (maintenance, reconciliation, rescue
//! of default-partition rows) runs in the background as a catalog record, not inside one call.
//!
//! The RPC that starts one returns at once. The instance running it records each step — phase,
//! counts, a resume point, and results as items paged by sequence number — and renews its lease
//! with the database's clock. Any instance answers Get/List/Cancel from the catalog; when the
//! running instance stops (it gives the lease up) or dies (the lease lapses), another instance takes
//! the operation over and continues from the last recorded step (`jobs::operations`). Each kind's
//! work is written to be continued that way: it reads its request and progress from the [`Handle`].

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;

use super::{Context, Error, Result};
use crate::db::operations::{self as store, Step};
pub use crate::{
    db::operations::{Item, NewItem, OperationRow},
    model::operations::{ItemKind, OperationKind, OperationState},
};

/// Ended operations (and their items) are kept this long, then pruned.
pub const HISTORY: Duration = Duration::from_secs(30 * 86_400);

/// An operation as clients see it.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: OperationKind,
    /// State.
    pub state: OperationState,
    /// What it works on.
    pub target: String,
    /// The step it is at.
    pub phase: String,
    /// Units done.
    pub done: i64,
    /// Units in all (0: not known yet).
    pub total: i64,
    /// A cancel was asked for.
    pub cancel_requested: bool,
    /// Why it failed or stopped.
    pub error: Option<String>,
    /// The instance running it; once ended, the one that ended it.
    pub instance: Option<String>,
    /// Items recorded.
    pub items: i64,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Last recorded step.
    pub updated_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    progress: String,
}

impl Operation {
    /// The kind's counters (`P` must be the kind's progress type; unknown fields are ignored, missing
    /// ones default).
    pub fn progress<P: DeserializeOwned + Default>(&self) -> P {
        parse_progress(&self.progress)
    }
}

fn parse_progress<P: DeserializeOwned + Default>(s: &str) -> P {
    serde_json::from_str(s).unwrap_or_default()
}

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

impl From<OperationRow> for Operation {
    fn from(r: OperationRow) -> Self {
        Operation {
            id: r.id,
            kind: r.kind,
            state: r.state,
            target: r.target,
            phase: r.phase,
            done: r.done,
            total: r.total,
            cancel_requested: r.cancel_requested,
            error: r.error,
            // The runner is `instance/claim`: people want the instance.
            instance: r.runner.map(|x| x.rsplit_once('/').map_or(x.clone(), |(i, _)| i.to_owned())),
            items: r.items,
            started_at: utc(r.started_at),
            updated_at: utc(r.updated_at),
            finished_at: r.finished_at.map(utc),
            progress: r.progress,
        }
    }
}

/// Why a running operation was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// CancelOperation.
    Requested,
    /// Another instance holds it now.
    Lost,
}

/// How to tell a running operation to stop.
#[derive(Clone)]
struct Teller {
    stop: CancellationToken,
    why: Arc<OnceLock<Why>>,
}

impl Teller {
    fn tell(&self, why: Why) {
        let _ = self.why.set(why);
        self.stop.cancel();
    }
}

/// The operations this instance runs, by id. Not a source of truth (the catalog is: a cancel is
/// recorded there, and any instance's runner notices it when it renews its lease); it lets
/// CancelOperation stop an operation running here at once. Without it, on SQLite, the cancel's
/// write could wait behind the steps the operation keeps writing (one writer at a time, and
/// SQLite's busy handler polls instead of queueing) until the operation ended or the wait timed
/// out.
#[derive(Clone, Default)]
pub struct Running(Arc<std::sync::Mutex<std::collections::HashMap<String, Teller>>>);

impl Running {
    fn add(&self, id: &str, t: Teller) {
        self.0.lock().expect("running operations").insert(id.to_owned(), t);
    }

    fn remove(&self, id: &str) {
        self.0.lock().expect("running operations").remove(id);
    }

    /// Tells operation `id` to stop if it runs here; whether it did.
    fn cancel(&self, id: &str) -> bool {
        let t = self.0.lock().expect("running operations").get(id).cloned();
        t.inspect(|t| t.tell(Why::Requested)).is_some()
    }
}

/// Removes an operation from [`Running`] however its task ends.
struct Registered(Running, String);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

/// The running instance's hold on an operation: what the kind's work reads and records through.
#[derive(Clone)]
pub struct Handle {
    /// The service context.
    pub ctx: Context,
    /// The operation's id.
    pub id: String,
    runner: String,
    request: String,
    progress: String,
    stop: CancellationToken,
    why: Arc<OnceLock<Why>>,
}

impl Handle {
    /// The request the operation was started with.
    pub fn request<R: DeserializeOwned>(&self) -> Result<R> {
        serde_json::from_str(&self.request)
            .map_err(|e| Error::FailedPrecondition(format!("operation {}: unreadable request: {e}", self.id)))
    }

    /// The progress recorded last (default at the start): where to continue.
    pub fn progress<P: DeserializeOwned + Default>(&self) -> P {
        parse_progress(&self.progress)
    }

    /// Fires when the operation must stop: a cancel was asked for, another instance took it over,
    /// or this server is stopping.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Err when the operation must stop (see [`Handle::stop`]).
    pub fn check(&self) -> Result<()> {
        if self.stop.is_cancelled() {
            return Err(match self.why.get() {
                Some(Why::Requested) => Error::Cancelled("cancelled on request".into()),
                Some(Why::Lost) => Error::Busy(format!("operation {} is run by another instance", self.id)),
                None => Error::Cancelled("server stopping".into()),
            });
        }
        Ok(())
    }

    fn told(&self, why: Why) {
        self.teller().tell(why);
    }

    fn teller(&self) -> Teller {
        Teller { stop: self.stop.clone(), why: self.why.clone() }
    }

    /// Records a step (and renews the lease): `progress` must say where to continue from should
    /// another instance take the operation over right after. Err when the operation must stop.
    pub async fn step<P: Serialize>(
        &self,
        phase: &str,
        done: i64,
        total: i64,
        progress: &P,
        items: &[NewItem],
    ) -> Result<()> {
        let progress = serde_json::to_string(progress).expect("progress serializes");
        let step = Step { phase, done, total, progress: &progress, items };
        let mut conn = self.ctx.db.write().await?;
        let until = self.ctx.now() + self.ctx.run_lease();
        match store::record(&mut conn, &self.id, &self.runner, &step, until, self.ctx.now()).await? {
            None => self.told(Why::Lost),
            Some(true) => self.told(Why::Requested),
            Some(false) => {}
        }
        self.check()
    }
}

/// Stores a new running operation held by this instance; Busy when another of the same scope runs.
pub async fn begin<R: Serialize>(
    ctx: &Context,
    kind: OperationKind,
    scope: String,
    target: String,
    request: &R,
) -> Result<(OperationRow, String)> {
    let now = ctx.now();
    let runner = runner_id(ctx);
    let row = OperationRow {
        id: uuid::Uuid::now_v7().to_string(),
        kind,
        scope,
        state: OperationState::Running,
        request: serde_json::to_string(request).expect("request serializes"),
        target,
        phase: "starting".into(),
        done: 0,
        total: 0,
        progress: "{}".into(),
        items: 0,
        runner: Some(runner.clone()),
        lease_until: Some(now + ctx.run_lease()),
        cancel_requested: false,
        error: None,
        started_at: now,
        updated_at: now,
        finished_at: None,
    };
    let mut conn = ctx.db.write().await?;
    match store::insert(&mut conn, &row).await? {
        Ok(()) => Ok((row, runner)),
        Err(holder) => Err(Error::Busy(match holder {
            Some(h) => format!(
                "{} is busy: operation {} runs on it (started {}); cancel it or wait for it",
                row.target, h.id, h.started_at
            ),
            None => format!("{} is busy: another operation runs on it", row.target),
        })),
    }
}

/// A runner id for one claim: the instance, and a random part so that a later claim by the same
/// instance (after it lost the lease) is told apart from the earlier one.
fn runner_id(ctx: &Context) -> String {
    format!("{}/{}", ctx.instance_id, &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// Runs `work` on the operation `row` held as `runner`, in the background: renews the lease every
/// third of `run_lease`, tells the work to stop on cancel, takeover or shutdown, and records how it
/// ended — except at shutdown, when it gives the lease up so that another instance continues it.
pub fn drive<W, F>(ctx: &Context, row: OperationRow, runner: String, work: W)
where
    W: FnOnce(Handle) -> F + Send + 'static,
    F: Future<Output = Result<()>> + Send + 'static,
{
    let h = Handle {
        ctx: ctx.clone(),
        id: row.id.clone(),
        runner,
        request: row.request,
        progress: row.progress,
        stop: ctx.background.child_token(),
        why: Arc::default(),
    };
    let kind = row.kind;
    ctx.operations.add(&h.id, h.teller());
    let registered = Registered(ctx.operations.clone(), h.id.clone());
    ctx.spawn("operation", async move {
        let _registered = registered;
        tracing::info!(operation = %h.id, kind = %kind, target = %row.target, "operation started here");
        let heartbeat = tokio::spawn(hold_lease(h.clone()));
        let outcome = work(h.clone()).await;
        heartbeat.abort();
        let ctx = &h.ctx;
        let (state, error) = match (&outcome, h.why.get()) {
            (Ok(()), _) => (OperationState::Succeeded, None),
            (Err(_), Some(Why::Lost)) => {
                tracing::warn!(operation = %h.id, "operation taken over by another instance; stopping here");
                return;
            }
            (Err(_), Some(Why::Requested)) => (OperationState::Cancelled, Some("cancelled on request".to_owned())),
            (Err(_), None) if ctx.background.is_cancelled() => {
                // Shutdown: another instance continues from the last recorded step.
                let released = async {
                    let mut conn = ctx.db.write().await?;
                    Ok::<_, Error>(store::release(&mut conn, &h.id, &h.runner, ctx.now()).await?)
                };
                match released.await {
                    Ok(()) => tracing::info!(operation = %h.id, "server stopping: operation left for another instance"),
                    Err(e) => tracing::warn!(operation = %h.id, error = %e, "releasing the operation failed; its lease lapses instead"),
                }
                return;
            }
            (Err(e), None) => (OperationState::Failed, Some(e.to_string())),
        };
        match &error {
            Some(e) if state == OperationState::Failed => tracing::error!(operation = %h.id, error = %e, "operation failed"),
            _ => tracing::info!(operation = %h.id, state = %state, "operation ended"),
        }
        let recorded = async {
            let mut conn = ctx.db.write().await?;
            Ok::<_, Error>(store::finish(&mut conn, &h.id, &h.runner, state, error.as_deref(), ctx.now()).await?)
        };
        match recorded.await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(operation = %h.id, "operation taken over before its end was recorded"),
            Err(e) => tracing::error!(operation = %h.id, error = %e, "recording the operation's end failed; another instance will continue it"),
        }
    });
}

/// Renews the lease every third of `run_lease` and notices cancel requests; tells the work to stop
/// once the lease is lost. A failed renewal is retried: the lease lapses only if renewals keep
/// failing for a whole `run_lease`.
async fn hold_lease(h: Handle) {
    let every = (h.ctx.config.run_lease / 3).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let renewed = async {
            let mut conn = h.ctx.db.write().await?;
            let until = h.ctx.now() + h.ctx.run_lease();
            Ok::<_, Error>(store::renew(&mut conn, &h.id, &h.runner, until).await?)
        };
        match renewed.await {
            Ok(Some(false)) => {}
            Ok(Some(true)) => h.told(Why::Requested),
            Ok(None) => return h.told(Why::Lost),
            Err(e) => tracing::warn!(operation = %h.id, error = %e, "renewing the operation's lease failed; retrying"),
        }
    }
}

/// Takes over every running operation whose lease lapsed (its instance stopped or died): each is
/// taken by exactly one instance (compare-and-set on the lease). One with a cancel pending ends
/// cancelled at once. Returns those to continue here, with the runner id they are held by.
pub async fn take_over_lapsed(ctx: &Context) -> Result<Vec<(OperationRow, String)>> {
    let mut conn = ctx.db.write().await?;
    let now = ctx.now();
    let mut taken = Vec::new();
    for r in store::lapsed(&mut conn, now).await? {
        let runner = runner_id(ctx);
        if !store::take_over(&mut conn, &r, &runner, now + ctx.run_lease()).await? {
            continue;
        }
        if r.cancel_requested {
            store::finish(&mut conn, &r.id, &runner, OperationState::Cancelled, Some("cancelled on request"), now)
                .await?;
            continue;
        }
        tracing::info!(operation = %r.id, kind = %r.kind, from = ?r.runner, done = r.done, "taking over operation");
        taken.push((r, runner));
    }
    Ok(taken)
}

/// Deletes operations that ended more than [`HISTORY`] ago.
pub async fn prune(ctx: &Context) -> Result<usize> {
    let before = ctx.now() - chrono::Duration::from_std(HISTORY).expect("30 days");
    Ok(store::prune(&mut ctx.db.write().await?, before).await?)
}

/// The operation `id`.
pub async fn get(ctx: &Context, id: &str) -> Result<Operation> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    store::get(&mut conn, id).await?.map(Operation::from).ok_or_else(|| Error::NotFound(format!("operation {id:?}")))
}

/// Operations newest first (of one kind when given): a page of `page_size` (checked by the caller)
/// after `page_token` (the last id of the previous page), and the next page's token.
pub async fn list(
    ctx: &Context,
    kind: Option<OperationKind>,
    page_size: i64,
    page_token: Option<&str>,
) -> Result<(Vec<Operation>, Option<String>)> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let mut rows = store::list(&mut conn, kind, page_token, page_size + 1).await?;
    let more = rows.len() as i64 > page_size;
    rows.truncate(page_size as usize);
    let next = more.then(|| rows.last().map(|r| r.id.clone())).flatten();
    Ok((rows.into_iter().map(Operation::from).collect(), next))
}

/// Asks operation `id` to stop; an ended one is returned as it is. One running on this instance is
/// told at once (and records itself cancelled); the request is recorded for any other instance.
pub async fn cancel(ctx: &Context, id: &str) -> Result<Operation> {
    let told = ctx.operations.cancel(id);
    if told {
        tracing::info!(operation = %id, "cancel asked of the operation running here");
    }
    let recorded = async {
        let mut conn = ctx.db.write().await?;
        Ok::<_, Error>(store::request_cancel(&mut conn, id, ctx.now()).await?)
    };
    match recorded.await {
        Ok(row) => row.map(Operation::from).ok_or_else(|| Error::NotFound(format!("operation {id:?}"))),
        // Told here, it stops and records itself cancelled: the request's own write is not needed,
        // and may have waited too long for SQLite's one writer (a VACUUM holds it to its end).
        Err(e) if told => {
            tracing::warn!(operation = %id, error = %e, "recording the cancel failed; the operation was told here");
            let mut op = get(ctx, id).await?;
            op.cancel_requested = true;
            Ok(op)
        }
        Err(e) => Err(e),
    }
}

/// Items of operation `id` after sequence number `after`: a page of `page_size` (page size and
/// token checked by the caller), and the next page's token (the last seq) when more may follow.
pub async fn items(ctx: &Context, id: &str, page_size: i64, after: i64) -> Result<(Vec<Item>, Option<i64>)> {
    let op = get(ctx, id).await?;
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let rows = store::items(&mut conn, &op.id, after, page_size).await?;
    let next = (rows.len() as i64 == page_size).then(|| rows.last().map(|r| r.seq)).flatten();
    Ok((rows, next))
}
