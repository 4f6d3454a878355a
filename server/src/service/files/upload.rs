//! Uploads: the writer sessions in memory, receiving a stream, checkpoints, and expiry.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use sha2::Digest as _;

use super::{
    File, FileHeader, UploadState, bad, check_id,
    hashing::{Hashes, Stage},
    object_err,
};
use crate::{
    db::files::{self as store, FileRow, UploadRow},
    objects::{self, ObjectWriter},
    service::{Context, Error, Result},
};

/// An upload being written: the object writer and the hashes of what it holds.
struct Session {
    writer: ObjectWriter,
    hashes: Stage,
    /// Bytes received (and handed to the hashes) so far.
    received: u64,
    /// Bytes arrived since the last checkpoint.
    dirty: bool,
}

impl Session {
    fn new(writer: ObjectWriter, sha256: bool) -> Self {
        Self::resumed(writer, Hashes::new(sha256), 0)
    }

    /// A session whose writer and hashes hold the first `committed` bytes.
    fn resumed(writer: ObjectWriter, hashes: Hashes, committed: u64) -> Self {
        Self { writer, hashes: Stage::new(hashes, committed), received: committed, dirty: false }
    }

    /// Writes `chunk`: hashes first (so every byte that may become committed is hashed), then
    /// hands it to the writer. The future may be dropped at any await (client gone); the next
    /// checkpoint reconciles hashes and writer.
    async fn write(&mut self, chunk: Bytes) -> objects::Result<()> {
        self.dirty = true;
        let part = self.writer.part_size();
        self.received += chunk.len() as u64;
        self.hashes.feed(chunk.clone(), part).await;
        if part <= 1 {
            // Only offsets at or past what the writer has committed can still be needed.
            self.hashes.forget_before(self.writer.committed());
        }
        self.writer.write(chunk).await
    }

    /// After a checkpoint: roll the hashes back to the committed offset.
    async fn rewind_to(&mut self, committed: u64) {
        self.hashes.settle().await;
        self.hashes.rewind_to(committed);
        self.received = self.received.min(committed);
        self.dirty = false;
    }

    /// The final BLAKE3 and SHA-256 (hex) of everything received.
    async fn digests(&mut self) -> (String, Option<String>) {
        let fresh = Stage::new(Hashes::new(false), 0);
        let h = std::mem::replace(&mut self.hashes, fresh).finish().await;
        (h.blake3.finalize().to_hex().to_string(), h.sha256.map(|s| hex::encode(s.finalize())))
    }
}

/// Upload writers in memory, one per open upload that has received bytes since start.
#[derive(Default)]
pub struct UploadSessions {
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Session>>>>>,
}

impl UploadSessions {
    fn slot(&self, id: &str) -> Arc<tokio::sync::Mutex<Option<Session>>> {
        self.sessions.lock().expect("sessions lock").entry(id.to_owned()).or_default().clone()
    }
    fn remove(&self, id: &str) {
        self.sessions.lock().expect("sessions lock").remove(id);
    }
    fn existing(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<Option<Session>>>> {
        self.sessions.lock().expect("sessions lock").get(id).cloned()
    }
}

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

/// Creates an open upload for `header`; returns its status.
pub async fn create_upload(ctx: &Context, header: FileHeader) -> Result<UploadStatus> {
    let id = new_id();
    let t = ctx.now();
    let expiry = chrono::Duration::from_std(ctx.file_limits.upload_expiry).unwrap_or(chrono::Duration::days(1));
    let row = UploadRow {
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
        expires_at: t + expiry,
    };
    let mut conn = ctx.db.write().await?;
    store::insert_upload(&mut conn, &row).await?;
    Ok(status_of(&row, 0))
}

fn status_of(row: &UploadRow, committed: u64) -> UploadStatus {
    UploadStatus {
        id: row.id.clone(),
        state: row.state,
        committed,
        file_id: row.file_id.clone(),
        error: row.error.clone(),
        expires_at: row.expires_at.and_utc(),
    }
}

/// The committed offset and state of upload `id`.
pub async fn upload_status(ctx: &Context, id: &str) -> Result<UploadStatus> {
    check_id("upload id", id)?;
    let (mut conn, _) = ctx.db.read_prefer_primary().await?;
    let row = store::get_upload(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("upload {id}")))?;
    drop(conn);
    let committed = if row.state == UploadState::Complete {
        row.committed_offset as u64
    } else {
        match ctx.uploads.existing(id) {
            // Not in memory (the server restarted): a local staging file holding the committed
            // bytes can be continued; an S3 multipart upload cannot (its parts cannot be re-hashed).
            None => {
                let committed = row.committed_offset as u64;
                if committed > 0
                    && ctx.objects.can_reopen(&row.object_key, committed, &ctx.closing).await.map_err(object_err)?
                {
                    committed
                } else {
                    0
                }
            }
            Some(slot) => match slot.try_lock() {
                // A stream is writing it: the last checkpoint is what is durable.
                Err(_) => row.committed_offset as u64,
                Ok(mut guard) => match guard.as_mut() {
                    Some(session) if session.dirty => checkpoint(ctx, &row, session).await?,
                    Some(session) => session.received,
                    None => 0,
                },
            },
        }
    };
    Ok(status_of(&row, committed))
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

/// Receives an upload stream. Returns the file when the stream ends cleanly and verifies.
pub async fn upload<S>(ctx: &Context, start: UploadStart, mut chunks: S) -> Result<File>
where
    S: Stream<Item = Result<Bytes, StreamEnd>> + Unpin,
{
    let (row, offset) = match start {
        UploadStart::New(header) => {
            let status = create_upload(ctx, header).await?;
            (load_open(ctx, &status.id).await?, 0)
        }
        UploadStart::Resume { id, offset } => {
            check_id("upload id", &id)?;
            (load_open(ctx, &id).await?, offset)
        }
    };
    let slot = ctx.uploads.slot(&row.id);
    let mut guard = slot
        .try_lock()
        .map_err(|_| Error::FailedPrecondition(format!("upload {} is being written by another stream", row.id)))?;
    if guard.is_none() && row.committed_offset > 0 {
        // First stream since this process started: continue what a previous process committed,
        // rebuilding the hashes from the bytes on disk (local store only).
        let committed = row.committed_offset as u64;
        let hashes = Arc::new(std::sync::Mutex::new(Hashes::new(
            row.declared_sha256.is_some() || ctx.file_limits.always_sha256,
        )));
        let feed = hashes.clone();
        let reopened = ctx
            .objects
            .reopen_write(
                &row.object_key,
                committed,
                move |data: &[u8]| feed.lock().expect("hash lock").update(data),
                &ctx.closing,
            )
            .await
            .map_err(object_err)?;
        if let Some((writer, visit)) = reopened {
            drop(visit);
            let running = Arc::try_unwrap(hashes).ok().expect("the visitor is gone").into_inner().expect("hash lock");
            let session = Session::resumed(writer, running, committed);
            tracing::info!(upload = %row.id, committed, "continuing an upload a previous process started");
            *guard = Some(session);
        }
    }
    if guard.is_none() {
        // First stream since start: discard what a previous server process may have left.
        if !row.writer_token.is_empty() || row.committed_offset > 0 {
            ctx.objects.abort_orphan(&row.object_key, &row.writer_token, &ctx.closing).await.map_err(object_err)?;
        }
        let writer = ctx
            .objects
            .begin_write(&row.object_key, row.declared_size.map(|s| s as u64), &ctx.closing)
            .await
            .map_err(object_err)?;
        let token = writer.resume_token();
        let mut conn = ctx.db.write().await?;
        store::record_progress(&mut conn, &row.id, 0, &token, ctx.now()).await?;
        *guard = Some(Session::new(writer, row.declared_sha256.is_some() || ctx.file_limits.always_sha256));
    }
    let session = guard.as_mut().expect("just set");
    if session.dirty {
        // The previous stream's handler was dropped mid-write (the client vanished): reconcile.
        checkpoint(ctx, &row, session).await?;
    }
    if offset != session.received {
        return Err(Error::FailedPrecondition(format!(
            "upload {} continues at offset {}, not {offset}",
            row.id, session.received
        )));
    }
    let limit = row.declared_size.map_or(ctx.file_limits.max_file_size, |s| s as u64);
    let receiving = std::time::Instant::now();
    loop {
        let next = tokio::select! {
            biased;
            // Shutting down: keep what is durable and let the client continue elsewhere or later,
            // rather than holding the drain for as long as a slow client takes.
            _ = ctx.closing.cancelled() => {
                let committed = checkpoint(ctx, &row, session).await?;
                tracing::info!(upload = %row.id, committed, "upload stream stopped by shutdown; resumable");
                return Err(object_err(objects::Error::Cancelled));
            }
            next = chunks.next() => next,
        };
        match next {
            Some(Ok(chunk)) => {
                if session.received + chunk.len() as u64 > limit {
                    let why = if row.declared_size.is_some() {
                        Error::DataLoss(format!("upload {} sent more than its declared {limit} bytes", row.id))
                    } else {
                        bad(format!("file exceeds the limit of {limit} bytes"))
                    };
                    return fail(ctx, &row, guard.take(), why).await;
                }
                if let Err(e) = session.write(chunk).await {
                    // Keep what is durable; the client resumes from there.
                    checkpoint(ctx, &row, session).await?;
                    return Err(object_err(e));
                }
            }
            Some(Err(StreamEnd::Invalid(msg))) => {
                checkpoint(ctx, &row, session).await?;
                return Err(bad(msg));
            }
            Some(Err(StreamEnd::Disconnected(why))) => {
                let committed = checkpoint(ctx, &row, session).await?;
                tracing::info!(upload = %row.id, committed, reason = %why, "upload stream ended early; resumable");
                return Err(Error::Cancelled(format!("upload {} interrupted at {committed} bytes: {why}", row.id)));
            }
            None => break,
        }
    }
    let session = guard.take().expect("present");
    tracing::debug!(upload = %row.id, bytes = session.received, elapsed = ?receiving.elapsed(), "upload stream received");
    let result = finish(ctx, &row, session).await;
    ctx.uploads.remove(&row.id);
    result
}

async fn load_open(ctx: &Context, id: &str) -> Result<UploadRow> {
    let mut conn = ctx.db.write().await?;
    let row = store::get_upload(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("upload {id}")))?;
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

async fn checkpoint(ctx: &Context, row: &UploadRow, session: &mut Session) -> Result<u64> {
    let committed = session.writer.checkpoint().await.map_err(object_err)?;
    session.rewind_to(committed).await;
    let mut conn = ctx.db.write().await?;
    store::record_progress(&mut conn, &row.id, committed as i64, &session.writer.resume_token(), ctx.now()).await?;
    Ok(committed)
}

/// Fails the upload for good: the writer is aborted and the row marked failed.
async fn fail<T>(ctx: &Context, row: &UploadRow, session: Option<Session>, why: Error) -> Result<T> {
    if let Some(s) = session
        && let Err(e) = s.writer.abort().await
    {
        tracing::warn!(upload = %row.id, error = %e, "aborting the upload's object failed; reconciliation will remove it");
    }
    ctx.uploads.remove(&row.id);
    let mut conn = ctx.db.write().await?;
    store::fail_upload(&mut conn, &row.id, &why.to_string(), ctx.now()).await?;
    Err(why)
}

async fn finish(ctx: &Context, row: &UploadRow, mut session: Session) -> Result<File> {
    let size = session.received;
    if let Some(declared) = row.declared_size
        && declared as u64 != size
    {
        let why = Error::DataLoss(format!("upload {} received {size} bytes, declared {declared}", row.id));
        return fail(ctx, row, Some(session), why).await;
    }
    let (blake3, sha256) = session.digests().await;
    // A declared SHA-256 is never left unchecked: one not computed fails like a wrong one.
    if let Some(declared) = &row.declared_sha256
        && sha256.as_ref() != Some(declared)
    {
        let actual = sha256.as_deref().unwrap_or("not computed");
        let why = Error::DataLoss(format!("upload {}: SHA-256 is {actual}, declared {declared}", row.id));
        return fail(ctx, row, Some(session), why).await;
    }
    let finishing = std::time::Instant::now();
    let written = session.writer.finish().await.map_err(object_err)?;
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
    let key = match store::complete_upload(&mut conn, &row.id, &row.object_key, &file, ctx.now()).await {
        Ok(k) => k,
        Err(e) => {
            // Not recorded: the object must not linger.
            let _ = ctx.objects.delete(&row.object_key, &ctx.background).await;
            return Err(e.into());
        }
    };
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

/// Expires open uploads past their expiry: their unfinished objects are discarded and they are
/// marked failed. Uploads a stream is writing right now are left to the next round. Returns how
/// many expired.
pub async fn expire_uploads(ctx: &Context) -> Result<usize> {
    /// Uploads handled per round: keeps each round short.
    const BATCH: i64 = 100;
    let mut conn = ctx.db.write().await?;
    let rows = store::expired_uploads(&mut conn, ctx.now(), BATCH).await?;
    drop(conn);
    let mut expired = 0;
    for row in rows {
        let session = match ctx.uploads.existing(&row.id) {
            Some(slot) => match slot.try_lock() {
                Ok(mut guard) => guard.take(),
                Err(_) => continue,
            },
            None => None,
        };
        let discarded = match session {
            Some(s) => s.writer.abort().await,
            None => ctx.objects.abort_orphan(&row.object_key, &row.writer_token, &ctx.background).await,
        };
        if let Err(e) = discarded {
            tracing::warn!(upload = %row.id, error = %e, "discarding an expired upload's data failed; retrying next round");
            continue;
        }
        ctx.uploads.remove(&row.id);
        let mut conn = ctx.db.write().await?;
        store::fail_upload(&mut conn, &row.id, "expired before it was completed", ctx.now()).await?;
        expired += 1;
        tracing::info!(upload = %row.id, "upload expired");
    }
    Ok(expired)
}
