//! Uploads: receiving a stream into the object store, recording its progress in the catalog so
//! that any instance can continue it, and expiry.
//!
//! An upload is written by one stream at a time, fenced by a generation in the catalog: a stream
//! claims the upload (raising the generation) when no other writer holds it, records durable
//! progress — committed offset, the store's [`WriteState`] and the running hashes — with a
//! compare-and-set on that generation at least every [`PROGRESS_EVERY`], and lets go when it
//! ends, however it ends. The next stream, on any instance, continues from the catalog alone: in
//! place after a clean hand-over, fenced (in the store too) when it takes over from a writer that
//! never let go (its instance died, or it hangs).

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{
    File, FileHeader, Owners, UploadState, bad, check_id,
    hashing::{Hashes, Stage},
    object_err,
};
use crate::{
    db::files::{self as store, FileRow, Hold, Progress, UploadRow},
    objects::{self, ObjectWriter, Resume, SizeHint, WriteState},
    service::{Context, Error, Result},
};

/// How often a stream records durable progress while bytes arrive, renewing its lease: at most
/// this much is received again after the instance dies (SIGKILL).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long a new stream waits for the previous writer of its upload to let go (a stream that just
/// ended, on this or another instance, still checkpointing) before it is refused.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting stream looks again.
const HANDOVER_POLL: Duration = Duration::from_millis(50);

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What `GetUploadStatus` returns.
#[derive(Debug, Clone)]
pub struct UploadStatus {
    /// Id.
    pub id: String,
    /// State.
    pub state: UploadState,
    /// Committed offset.
    pub committed: u64,
    /// File id once complete.
    pub file_id: Option<String>,
    /// Failure reason.
    pub error: Option<String>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

fn expiry(ctx: &Context) -> chrono::Duration {
    chrono::Duration::from_std(ctx.file_limits.upload_expiry).unwrap_or(chrono::Duration::days(1))
}

/// Creates an open upload for `header`; returns its status.
pub async fn create_upload(ctx: &Context, header: FileHeader) -> Result<UploadStatus> {
    Ok(status_of(&insert_upload(ctx, header, false).await?))
}

/// Stores a new open upload; `held`: already held by this instance's stream (generation 1, a
/// lease), which saves a new stream's claim its round trips.
async fn insert_upload(ctx: &Context, header: FileHeader, held: bool) -> Result<UploadRow> {
    let row = new_row(ctx, header, held);
    let mut conn = ctx.db.write().await?;
    store::insert_upload(&mut conn, &row).await?;
    Ok(row)
}

/// A new open upload's row; `held`: by this instance's stream.
fn new_row(ctx: &Context, header: FileHeader, held: bool) -> UploadRow {
    let id = new_id();
    let t = ctx.now();
    UploadRow {
        object_key: format!("blobs/{id}"),
        id: id.clone(),
        name: header.name,
        content_type: header.content_type,
        owner: header.owner,
        declared_size: header.size.map(|s| s as i64),
        declared_sha256: header.sha256,
        metadata: serde_json::to_string(&header.metadata).expect("string map serializes"),
        writer_token: String::new(),
        committed_offset: 0,
        state: UploadState::Open,
        error: None,
        file_id: None,
        created_at: t,
        updated_at: t,
        expires_at: t + expiry(ctx),
        generation: i64::from(held),
        writer: if held { ctx.instance_id.clone() } else { String::new() },
        lease_until: held.then(|| t + ctx.run_lease()),
        store_state: String::new(),
        hash_state: None,
    }
}

/// The offset an upload continues at. An upload a previous release left mid-way has no hash
/// state recorded: it starts over (its bytes are discarded when a stream claims it).
fn resumable_offset(row: &UploadRow) -> u64 {
    match (&row.hash_state, row.state) {
        (_, UploadState::Complete) => row.committed_offset as u64,
        (Some(_), _) => row.committed_offset as u64,
        (None, _) => 0,
    }
}

fn status_of(row: &UploadRow) -> UploadStatus {
    UploadStatus {
        id: row.id.clone(),
        state: row.state,
        committed: resumable_offset(row),
        file_id: row.file_id.clone(),
        error: row.error.clone(),
        expires_at: row.expires_at.and_utc(),
    }
}

/// The committed offset and state of upload `id`, as recorded in the catalog (by whichever
/// instance wrote it).
pub async fn upload_status(ctx: &Context, id: &str, owners: &Owners) -> Result<UploadStatus> {
    check_id("upload id", id)?;
    let (mut conn, _) = ctx.db.read_prefer_primary().await?;
    let row = store::get_upload(&mut conn, id)
        .await?
        .filter(|r| owners.permits(&r.owner))
        .ok_or_else(|| Error::NotFound(format!("upload {id}")))?;
    Ok(status_of(&row))
}

/// How an Upload stream starts.
#[derive(Debug)]
pub enum UploadStart {
    /// A new upload.
    New(FileHeader),
    /// Continue upload `id` at `offset`.
    Resume {
        /// Upload id.
        id: String,
        /// Offset of the next chunk.
        offset: u64,
    },
}

/// What ended the chunk stream early.
#[derive(Debug)]
pub enum StreamEnd {
    /// The client went away (connection dropped or cancelled).
    Disconnected(String),
    /// The client sent something invalid.
    Invalid(String),
}

/// Receives an upload stream. Returns the file when the stream ends cleanly at the upload's end
/// and verifies.
///
/// The stream is received by a task of its own, which this future awaits: when this future is
/// dropped (the call was cancelled, or its deadline passed), the task sees it, checkpoints and
/// records the committed offset. A receive loop inside the handler's future would be dropped
/// between a write and its checkpoint.
pub async fn upload<S>(ctx: &Context, start: UploadStart, chunks: S, owners: &Owners) -> Result<File>
where
    S: Stream<Item = Result<Bytes, StreamEnd>> + Send + Unpin + 'static,
{
    let (id, offset, held) = match start {
        // An upload begun in the stream is unknown to its client until the stream's answer, so
        // nobody else can continue it before that. A small one on S3 keeps nothing anywhere until
        // its one PutObject, so its row is written only with its completion (one transaction
        // instead of three); any other is recorded first, so that expiry finds what it leaves.
        UploadStart::New(header) if header.size.is_some_and(|n| ctx.objects.buffers_whole(n)) => {
            let row = new_row(ctx, header, true);
            (row.id.clone(), 0, Some(Held { generation: row.generation, fenced: false, unrecorded: true, row }))
        }
        UploadStart::New(header) => {
            let row = insert_upload(ctx, header, true).await?;
            (row.id.clone(), 0, Some(Held { generation: row.generation, fenced: false, unrecorded: false, row }))
        }
        UploadStart::Resume { id, offset } => {
            check_id("upload id", &id)?;
            if let Owners::Only(_) = owners {
                // Another owner's upload does not exist for this caller (its owner never changes).
                upload_status(ctx, &id, owners).await?;
            }
            (id, offset, None)
        }
    };
    let caller_gone = CancellationToken::new();
    let _gone_on_drop = caller_gone.clone().drop_guard();
    let task_ctx = ctx.clone();
    // Tracked: a stopping server waits for the checkpoint.
    let task = ctx
        .tasks
        .spawn(async move { receive(&task_ctx, &id, offset, held, chunks, caller_gone).await }.in_current_span());
    match task.await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A stream's hold on an upload: the row as it was claimed, and the generation it holds.
struct Held {
    row: UploadRow,
    generation: i64,
    /// The previous writer never let go: this one writes fenced.
    fenced: bool,
    /// The row is not in the catalog yet (a small new upload): the first record inserts it.
    unrecorded: bool,
}

impl Held {
    fn id(&self) -> &str {
        &self.row.id
    }
}

/// Claims upload `id` for this stream: at once when no writer holds it, after waiting up to
/// [`HANDOVER_WAIT`] for one that is letting go, or when its lease has lapsed (its instance died).
async fn claim(ctx: &Context, id: &str, gone: &CancellationToken) -> Result<Held> {
    let waiting = Instant::now();
    loop {
        let row = load_open(ctx, id).await?;
        let now = ctx.now();
        if row.writer.is_empty() || row.lease_until.is_none_or(|t| t < now) {
            let mut conn = ctx.db.write().await?;
            if store::claim_upload(&mut conn, id, row.generation, &ctx.instance_id, now, now + ctx.run_lease()).await? {
                let fenced = !row.writer.is_empty();
                if fenced {
                    tracing::info!(upload = %id, previous = %row.writer, "taking over an upload whose writer did not let go");
                }
                return Ok(Held { generation: row.generation + 1, fenced, unrecorded: false, row });
            }
            // Another stream claimed it between the read and the claim: look again.
            continue;
        }
        if waiting.elapsed() >= HANDOVER_WAIT {
            return Err(Error::Aborted(format!(
                "upload {id} is being written by another stream (instance {}); retry once it ends",
                row.writer
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(HANDOVER_POLL) => {}
            _ = gone.cancelled() => return Err(Error::Cancelled(format!("upload {id}: the caller went away"))),
            _ = ctx.closing.cancelled() => return Err(object_err(objects::Error::Cancelled)),
        }
    }
}

/// The writer and running hashes of a claimed upload, rebuilt from the catalog.
async fn open_writer(ctx: &Context, held: &Held) -> Result<(ObjectWriter, Stage, u64)> {
    let row = &held.row;
    let sha256 = row.declared_sha256.is_some() || ctx.file_limits.always_sha256;
    let size = size_hint(ctx, row);
    let how = if held.fenced { Resume::Fenced(held.generation) } else { Resume::InPlace };
    let recorded = (row.hash_state.as_deref(), serde_json::from_str::<WriteState>(&row.store_state));
    let (state, hashes, committed) = match recorded {
        (Some(bytes), Ok(state)) if row.committed_offset > 0 => {
            let committed = row.committed_offset as u64;
            let Some(hashes) =
                Hashes::from_bytes(bytes).filter(|h| h.len() == committed && h.sha256.is_some() == sha256)
            else {
                return cannot_continue(ctx, held, "its recorded hash state is unreadable").await;
            };
            (state, hashes, committed)
        }
        (_, Ok(state)) if row.committed_offset == 0 => (state, Hashes::new(sha256), 0),
        // Written by a previous release (no hash state): discard its bytes and start over.
        _ => {
            let old = serde_json::from_str(&row.store_state).unwrap_or_default();
            ctx.objects.discard(&row.object_key, &old, &row.writer_token).await.map_err(object_err)?;
            if row.committed_offset > 0 {
                tracing::info!(upload = %row.id, "an upload from a previous release starts over at 0");
            }
            (WriteState::Empty, Hashes::new(sha256), 0)
        }
    };
    let writer = match ctx.objects.resume_write(&row.object_key, &state, committed, how, size, &ctx.closing).await {
        Ok(w) => w,
        Err(objects::Error::BadState(why)) => return cannot_continue(ctx, held, &why).await,
        Err(e) => return Err(object_err(e)),
    };
    Ok((writer, Stage::new(hashes, committed), committed))
}

/// Fails a claimed upload whose recorded state cannot be continued (DATA_LOSS: start a new one).
async fn cannot_continue<T>(ctx: &Context, held: &Held, why: &str) -> Result<T> {
    let why = Error::DataLoss(format!("upload {} cannot continue ({why}); start a new one", held.id()));
    tracing::error!(upload = %held.id(), error = %why, "an upload's recorded state cannot be continued");
    let mut conn = ctx.db.write().await?;
    store::fail_upload(&mut conn, held.id(), held.generation, &ctx.instance_id, &why.to_string(), ctx.now()).await?;
    Err(why)
}

fn size_hint(ctx: &Context, row: &UploadRow) -> SizeHint {
    match row.declared_size {
        Some(n) => SizeHint::Exact(n as u64),
        None => SizeHint::AtMost(ctx.file_limits.max_file_size),
    }
}

/// Lets go of an upload that this stream did not write to: in place for the next stream, unless
/// this one was fenced (then the previous writer may still write where the next one would).
async fn let_go(ctx: &Context, held: &Held, writer: Option<&ObjectWriter>, hashes: Option<Hashes>) -> Result<()> {
    let mut conn = ctx.db.write().await?;
    let (state, token) = match writer {
        Some(w) => (serde_json::to_string(&w.state()).expect("state serializes"), w.resume_token()),
        None => (held.row.store_state.clone(), held.row.writer_token.clone()),
    };
    let hash_state = match hashes {
        Some(h) => h.to_bytes(),
        None => held.row.hash_state.clone().unwrap_or_default(),
    };
    let p = Progress {
        committed: held.row.committed_offset,
        store_state: &state,
        writer_token: &token,
        hash_state: &hash_state,
        expires_at: held.row.expires_at,
    };
    let hold = if held.fenced && writer.is_none() { Hold::Abandon } else { Hold::Release };
    store::record_progress(&mut conn, held.id(), held.generation, &ctx.instance_id, &p, hold, ctx.now()).await?;
    Ok(())
}

/// An upload being received: the writer, the hashes, and what was recorded.
struct Session {
    held: Held,
    writer: ObjectWriter,
    hashes: Stage,
    /// Bytes received (and handed to the hashes) so far.
    received: u64,
    /// The committed offset last recorded, and when.
    recorded: u64,
    recorded_at: Instant,
}

impl Session {
    /// Writes `chunk`: hashes first (so every byte that may become committed is hashed), then
    /// hands it to the writer.
    async fn write(&mut self, chunk: Bytes) -> objects::Result<()> {
        let part = self.writer.part_size();
        self.received += chunk.len() as u64;
        self.hashes.feed(chunk.clone(), part).await;
        if part <= 1 {
            // Only offsets at or past what the writer has written can still be needed.
            self.hashes.forget_before(self.writer.committed());
        }
        self.writer.write(chunk).await
    }

    /// Records what is durable now, renewing the lease. Err(Aborted) when another stream has
    /// taken the upload over.
    async fn record_durable(&mut self, ctx: &Context) -> Result<()> {
        let durable = match self.writer.durable().await {
            Ok(d) => d,
            // A failed part or write: the next checkpoint reports it; keep receiving until then.
            Err(_) => return Ok(()),
        };
        self.record(ctx, durable, Hold::Renew(ctx.now() + ctx.run_lease())).await
    }

    /// Records `committed` (what the writer has made durable) with `hold`.
    async fn record(&mut self, ctx: &Context, committed: u64, hold: Hold) -> Result<()> {
        self.hashes.settle().await;
        let hashes =
            self.hashes.state_at(committed).expect("the writer commits only at offsets the hashes marked").to_bytes();
        let state = serde_json::to_string(&self.writer.state()).expect("state serializes");
        let token = self.writer.resume_token();
        let now = ctx.now();
        let p = Progress {
            committed: committed as i64,
            store_state: &state,
            writer_token: &token,
            hash_state: &hashes,
            expires_at: now + expiry(ctx),
        };
        let mut conn = ctx.db.write().await?;
        if self.held.unrecorded {
            store::insert_upload(&mut conn, &self.held.row).await?;
            self.held.unrecorded = false;
        }
        let held =
            store::record_progress(&mut conn, self.held.id(), self.held.generation, &ctx.instance_id, &p, hold, now)
                .await?;
        drop(conn);
        if !held {
            return Err(self.taken_over());
        }
        self.recorded = committed;
        self.recorded_at = Instant::now();
        // The writer never goes back before what it committed.
        self.hashes.forget_before(committed);
        Ok(())
    }

    fn taken_over(&self) -> Error {
        Error::Aborted(format!("upload {} was taken over by another stream; continue from its status", self.held.id()))
    }

    /// Makes everything it can durable, records it and lets go; the hashes roll back to the
    /// committed offset. Returns the committed offset.
    async fn checkpoint(&mut self, ctx: &Context) -> Result<u64> {
        let committed = self.writer.checkpoint().await.map_err(object_err)?;
        let hold = if self.writer.abandoned() { Hold::Abandon } else { Hold::Release };
        self.record(ctx, committed, hold).await?;
        self.hashes.rewind_to(committed);
        self.received = committed;
        Ok(committed)
    }
}

/// How the receive loop ended.
enum Ended {
    /// The stream ended cleanly.
    Complete,
    /// The caller went away (cancelled, deadline, reset, connection lost).
    Gone(String),
    /// The server is stopping.
    Shutdown,
    /// The client sent something invalid.
    Invalid(String),
    /// More bytes than allowed.
    TooLong(Error),
    /// The store failed a write.
    Store(objects::Error),
}

/// Receives the stream of upload `id` from `offset`; `held`: a new upload this stream holds
/// already.
async fn receive<S>(
    ctx: &Context,
    id: &str,
    offset: u64,
    held: Option<Held>,
    mut chunks: S,
    gone: CancellationToken,
) -> Result<File>
where
    S: Stream<Item = Result<Bytes, StreamEnd>> + Unpin,
{
    let held = match held {
        Some(h) => h,
        None => {
            if let Some(row) = load_row(ctx, id).await?
                && row.state == UploadState::Open
                && resumable_offset(&row) != offset
                && (row.writer.is_empty() || row.lease_until.is_none_or(|t| t < ctx.now()))
            {
                // Refused before claiming anything; a held upload's offset is checked once ours.
                return Err(wrong_offset(id, resumable_offset(&row), offset));
            }
            claim(ctx, id, &gone).await?
        }
    };
    let (writer, hashes, committed) = match open_writer(ctx, &held).await {
        Ok(w) => w,
        Err(e @ Error::DataLoss(_)) => return Err(e),
        Err(e) => {
            let_go(ctx, &held, None, None).await?;
            return Err(e);
        }
    };
    if offset != committed {
        let_go(ctx, &held, Some(&writer), None).await?;
        return Err(wrong_offset(id, committed, offset));
    }
    let mut s = Session { held, writer, hashes, received: committed, recorded: committed, recorded_at: Instant::now() };
    // Recorded at once when it is new to the catalog — a multipart upload, a fenced staging file —
    // so that any instance knows it before a byte goes to it. (A first staging file and a small
    // S3 object are found by the key alone.)
    let state = s.writer.state();
    let found_by_key = match &state {
        WriteState::Empty => true,
        WriteState::Local { segments } => matches!(&segments[..], [only] if only.start == 0),
        WriteState::S3 { .. } => false,
    };
    if !(committed == 0 && found_by_key && !s.held.fenced)
        && state != serde_json::from_str::<WriteState>(&s.held.row.store_state).unwrap_or_default()
    {
        s.record(ctx, committed, Hold::Renew(ctx.now() + ctx.run_lease())).await?;
    }
    let row = s.held.row.clone();
    let limit = row.declared_size.map_or(ctx.file_limits.max_file_size, |n| n as u64);
    let ended = loop {
        // Bytes not yet recorded (a part still in flight, or the client pausing): recorded on time
        // even when no chunk follows.
        let due = tokio::time::sleep_until((s.recorded_at + PROGRESS_EVERY).into());
        let next = tokio::select! {
            biased;
            // Shutting down: keep what is durable and let the client continue elsewhere or later,
            // rather than holding the drain for as long as a slow client takes.
            _ = ctx.closing.cancelled() => break Ended::Shutdown,
            _ = gone.cancelled() => break Ended::Gone("the call was cancelled or its deadline passed".into()),
            next = chunks.next() => next,
            _ = due, if s.received > s.recorded => {
                s.record_durable(ctx).await?;
                continue;
            }
        };
        match next {
            Some(Ok(chunk)) => {
                if s.received + chunk.len() as u64 > limit {
                    break Ended::TooLong(if row.declared_size.is_some() {
                        Error::DataLoss(format!("upload {} sent more than its declared {limit} bytes", row.id))
                    } else {
                        bad(format!("file exceeds the limit of {limit} bytes"))
                    });
                }
                if let Err(e) = s.write(chunk).await {
                    break Ended::Store(e);
                }
                if s.recorded_at.elapsed() >= PROGRESS_EVERY {
                    s.record_durable(ctx).await?;
                }
            }
            Some(Err(StreamEnd::Invalid(msg))) => break Ended::Invalid(msg),
            Some(Err(StreamEnd::Disconnected(why))) => break Ended::Gone(why),
            // A clean end seen after the call was dropped may be the transport's reset of it.
            None if gone.is_cancelled() => break Ended::Gone("the call was cancelled or its deadline passed".into()),
            None => break Ended::Complete,
        }
    };
    match ended {
        Ended::Complete => match row.declared_size {
            Some(declared) if s.received < declared as u64 => {
                // Short of the declared size: progress, not failure (as in the tus protocol).
                let committed = s.checkpoint(ctx).await?;
                tracing::info!(upload = %row.id, committed, declared, "upload stream ended before its declared size; resumable");
                Err(Error::UploadIncomplete { id: row.id.clone(), committed, declared: declared as u64 })
            }
            _ => finish(ctx, s).await,
        },
        Ended::Gone(why) => {
            let committed = s.checkpoint(ctx).await?;
            tracing::info!(upload = %row.id, committed, reason = %why, "upload stream ended early; resumable");
            Err(Error::Cancelled(format!("upload {} interrupted at {committed} bytes: {why}", row.id)))
        }
        Ended::Shutdown => {
            let committed = s.checkpoint(ctx).await?;
            tracing::info!(upload = %row.id, committed, "upload stream stopped by shutdown; resumable");
            Err(object_err(objects::Error::Cancelled))
        }
        Ended::Invalid(msg) => {
            s.checkpoint(ctx).await?;
            Err(bad(msg))
        }
        Ended::Store(e) => {
            // Keep what is durable; the client resumes from there.
            s.checkpoint(ctx).await?;
            Err(object_err(e))
        }
        Ended::TooLong(why) => fail(ctx, s, why).await,
    }
}

fn wrong_offset(id: &str, committed: u64, offset: u64) -> Error {
    Error::FailedPrecondition(format!("upload {id} continues at offset {committed}, not {offset}"))
}

async fn load_row(ctx: &Context, id: &str) -> Result<Option<UploadRow>> {
    let mut conn = ctx.db.write().await?;
    Ok(store::get_upload(&mut conn, id).await?)
}

async fn load_open(ctx: &Context, id: &str) -> Result<UploadRow> {
    let row = load_row(ctx, id).await?.ok_or_else(|| Error::NotFound(format!("upload {id}")))?;
    match row.state {
        UploadState::Open if row.expires_at < ctx.now() => {
            Err(Error::FailedPrecondition(format!("upload {id} expired; start a new one")))
        }
        UploadState::Open => Ok(row),
        UploadState::Complete => Err(Error::FailedPrecondition(format!(
            "upload {id} is already complete as file {}",
            row.file_id.unwrap_or_default()
        ))),
        UploadState::Failed => Err(Error::FailedPrecondition(format!(
            "upload {id} failed ({}); start a new one",
            row.error.unwrap_or_default()
        ))),
    }
}

/// Fails the upload for good, if this stream still holds it: the row is marked failed, then its
/// data discarded.
async fn fail<T>(ctx: &Context, s: Session, why: Error) -> Result<T> {
    if s.held.unrecorded {
        // Nothing of it is anywhere: its client learns why from this answer.
        return Err(why);
    }
    let mut conn = ctx.db.write().await?;
    let failed =
        store::fail_upload(&mut conn, s.held.id(), s.held.generation, &ctx.instance_id, &why.to_string(), ctx.now())
            .await?;
    drop(conn);
    if !failed {
        return Err(s.taken_over());
    }
    let id = s.held.row.id.clone();
    if let Err(e) = s.writer.abort().await {
        tracing::warn!(upload = %id, error = %e, "discarding a failed upload's data failed");
    }
    Err(why)
}

async fn finish(ctx: &Context, mut s: Session) -> Result<File> {
    let row = s.held.row.clone();
    let size = s.received;
    let fresh = Stage::new(Hashes::new(false), 0);
    let h = std::mem::replace(&mut s.hashes, fresh).finish().await;
    let (blake3, sha256) = (h.blake3.finalize().to_hex().to_string(), h.sha256.map(|s| hex::encode(s.finalize())));
    // A declared SHA-256 is never left unchecked: one not computed fails like a wrong one.
    if let Some(declared) = &row.declared_sha256
        && sha256.as_ref() != Some(declared)
    {
        let actual = sha256.as_deref().unwrap_or("not computed");
        let why = Error::DataLoss(format!("upload {}: SHA-256 is {actual}, declared {declared}", row.id));
        return fail(ctx, s, why).await;
    }
    // Still ours, with a whole lease ahead for publishing: no other stream may publish meanwhile.
    // (An unrecorded upload is known to nobody else.)
    if !s.held.unrecorded {
        let mut conn = ctx.db.write().await?;
        let lease = ctx.now() + ctx.run_lease();
        let held = store::renew_upload(&mut conn, &row.id, s.held.generation, &ctx.instance_id, lease).await?;
        drop(conn);
        if !held {
            return Err(s.taken_over());
        }
    }
    let unrecorded = s.held.unrecorded.then(|| row.clone());
    let finishing = Instant::now();
    let (generation, taken_over) = (s.held.generation, s.taken_over());
    let written = s.writer.finish().await.map_err(object_err)?;
    tracing::debug!(upload = %row.id, elapsed = ?finishing.elapsed(), "object published");
    debug_assert_eq!(written, size);
    let file = FileRow {
        id: new_id(),
        name: row.name.clone(),
        content_type: row.content_type.clone(),
        owner: row.owner.clone(),
        size_bytes: size as i64,
        blake3,
        sha256,
        metadata: row.metadata.clone(),
        created_at: ctx.now(),
        lost: false,
    };
    let mut conn = ctx.db.write().await?;
    // Not recorded (an error, or another stream took over): the object stays where it is, since
    // the upload may still be completed to that key; reconciliation removes it if it never is.
    let key = store::complete_upload(
        &mut conn,
        unrecorded.as_ref(),
        &row.id,
        generation,
        &ctx.instance_id,
        &row.object_key,
        &file,
        ctx.now(),
    )
    .await?
    .ok_or(taken_over)?;
    drop(conn);
    if key != row.object_key {
        // Identical content was stored already: keep one copy.
        if let Err(e) = ctx.objects.delete(&row.object_key, &ctx.background).await {
            tracing::warn!(key = %row.object_key, error = %e, "removing a duplicate object failed; reconciliation will");
        }
    }
    tracing::info!(file = %file.id, upload = %row.id, size, blake3 = %file.blake3, deduplicated = key != row.object_key, "file stored");
    Ok(file.into())
}

/// Expires open uploads whose last progress is older than the expiry and that no stream holds:
/// each is claimed like a stream would (fencing any late writer), its data discarded, and it is
/// marked failed. Returns how many expired.
pub async fn expire_uploads(ctx: &Context) -> Result<usize> {
    /// Uploads handled per round: keeps each round short.
    const BATCH: i64 = 100;
    let mut conn = ctx.db.write().await?;
    let rows = store::expired_uploads(&mut conn, ctx.now(), BATCH).await?;
    drop(conn);
    let mut expired = 0;
    for row in rows {
        let now = ctx.now();
        let mut conn = ctx.db.write().await?;
        if !store::claim_upload(&mut conn, &row.id, row.generation, &ctx.instance_id, now, now + ctx.run_lease())
            .await?
        {
            // A stream claimed it meanwhile: it is alive.
            continue;
        }
        drop(conn);
        let state = serde_json::from_str(&row.store_state).unwrap_or_default();
        if let Err(e) = ctx.objects.discard(&row.object_key, &state, &row.writer_token).await {
            // Still claimed by this instance: retried once the claim lapses.
            tracing::warn!(upload = %row.id, error = %e, "discarding an expired upload's data failed; retrying later");
            continue;
        }
        let mut conn = ctx.db.write().await?;
        let generation = row.generation + 1;
        let reason = "expired before it was completed";
        if store::fail_upload(&mut conn, &row.id, generation, &ctx.instance_id, reason, ctx.now()).await? {
            expired += 1;
            tracing::info!(upload = %row.id, "upload expired");
        }
    }
    Ok(expired)
}
