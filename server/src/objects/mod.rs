//! Object storage: one [`ObjectStore`] with two real implementations chosen by URL —
//! `file://DIR` (the embedded default) and `s3://BUCKET?endpoint=…` (aws-sdk-s3).
//!
//! Writes go through an [`ObjectWriter`] that is resumable: `checkpoint` makes what was written
//! durable and reports the committed offset, `finish` publishes the object atomically (a
//! half-written object is never visible under its key). [`ObjectWriter::state`] describes the
//! committed part as a [`WriteState`] another process can continue from
//! ([`ObjectStore::resume_write`]), in place after a clean hand-over, or fenced after a takeover:
//! then the new writer's bytes go where a stale writer's late ones cannot land (a staging file of
//! its own; a multipart upload of its own, the old one ended), so the object never holds a stale
//! writer's bytes.
//!
//! Every call takes a [`CancellationToken`]: once it is cancelled, calls waiting on the disk or the
//! network return [`Error::Cancelled`] (streams end with it), in-flight S3 requests are dropped and
//! unfinished parts abandoned. Two steps are never torn: [`ObjectWriter::finish`] checks the token
//! only before it starts publishing (a cancelled publish could leave the object visible while the
//! caller believes it failed), and [`ObjectWriter::abort`] always runs to the end (it is cleanup).

mod local;
mod s3;

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::telemetry::Metrics;

pub use local::LocalStore;
pub use s3::{MIN_PART_SIZE, S3Settings, S3Store};

/// What a writer knows of the size of the object it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeHint {
    /// Exactly this many bytes (an S3 object no larger than one part is then one PutObject).
    Exact(u64),
    /// At most this many.
    AtMost(u64),
    /// Not known.
    Unknown,
}

impl SizeHint {
    fn bound(self) -> Option<u64> {
        match self {
            Self::Exact(n) | Self::AtMost(n) => Some(n),
            Self::Unknown => None,
        }
    }
}

/// The committed part of an unfinished write, as another process needs it to continue (kept in
/// the catalog as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "store", rename_all = "snake_case")]
pub enum WriteState {
    /// Nothing durable (nothing written yet, or a small object kept for one PutObject).
    #[default]
    Empty,
    /// Staging files under `DIR/.staging/`, in order; each holds the object's bytes from its
    /// `start` to the next one's (the last one's: to the committed offset).
    Local {
        /// The staging files.
        segments: Vec<Segment>,
    },
    /// An S3 multipart upload.
    S3 {
        /// Its upload id.
        upload_id: String,
        /// Bytes per part (all but the last).
        part_size: u64,
        /// The committed parts, numbered from 1.
        parts: Vec<Part>,
    },
}

/// One staging file of a local write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// File name in the staging folder.
    pub file: String,
    /// Object offset of its first byte.
    pub start: u64,
}

/// One uploaded part of an S3 multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// Part number.
    pub number: i32,
    /// The ETag S3 returned.
    pub etag: String,
    /// Bytes.
    pub size: u64,
}

/// How a resumed writer goes on from the committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The previous writer stopped cleanly (nothing of its is still in flight): continue in place.
    InPlace,
    /// The previous writer may still be alive: write where its late bytes cannot land (a staging
    /// file of this writer's own; on S3, the previous multipart upload ended and a new one begun).
    /// The number identifies this writer (the upload's generation).
    Fenced(i64),
}

/// Errors of the object store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL names no supported store or is malformed.
    #[error("invalid object store url: {0}")]
    InvalidUrl(String),
    /// The object does not exist.
    #[error("object {0} not found")]
    NotFound(String),
    /// A local I/O error.
    #[error("object store I/O on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The S3 server failed or refused the request.
    #[error("S3 {op} {key}: {message}")]
    S3 { op: &'static str, key: String, message: String },
    /// A key that strata would never generate.
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// The requested range lies outside the object.
    #[error("range {offset}+{length} is outside an object of {size} bytes")]
    Range { offset: u64, length: u64, size: u64 },
    /// The store did not answer a probe in time.
    #[error("object store did not answer: {0}")]
    Unreachable(String),
    /// The caller's cancellation token fired before the call completed.
    #[error("object store call cancelled")]
    Cancelled,
    /// A recorded write state that cannot be continued (its data is gone, or it is not this
    /// store's).
    #[error("unfinished write cannot continue: {0}")]
    BadState(String),
}

/// Runs `f` unless `cancel` fires first. Checked first, so a cancelled token never starts work.
async fn cancellable<T>(cancel: &CancellationToken, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Cancelled),
        r = f => r,
    }
}

/// `stream` until `cancel` fires; then one [`Error::Cancelled`] and the end (never a silent cut,
/// which a reader would take for the end of the object).
fn cancellable_stream(stream: ByteStream, cancel: CancellationToken) -> ByteStream {
    futures::stream::unfold(Some((stream, cancel)), |state| async move {
        let (mut stream, cancel) = state?;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Some((Err(Error::Cancelled), None)),
            item = stream.next() => item.map(|i| (i, Some((stream, cancel)))),
        }
    })
    .boxed()
}

/// Result alias of this layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// A stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Its size.
    pub size: u64,
    /// When it was last written, if the store says.
    pub modified: Option<std::time::SystemTime>,
}

/// Where objects live, and the metrics its requests are counted in.
#[derive(Clone)]
pub struct ObjectStore {
    store: Store,
    metrics: Metrics,
}

#[derive(Clone)]
enum Store {
    /// A local directory.
    Local(LocalStore),
    /// An S3-compatible bucket.
    S3(S3Store),
}

impl ObjectStore {
    /// Opens the store named by `url` (`file://DIR` or `s3://…`).
    pub async fn open(url: &str, s3: &S3Settings) -> Result<Self> {
        let store = if let Some(dir) = url.strip_prefix("file://") {
            Store::Local(LocalStore::open(dir).await?)
        } else if url.starts_with("s3://") {
            Store::S3(S3Store::open(url, s3).await?)
        } else {
            return Err(Error::InvalidUrl(format!("{url:?}: expected file://DIR or s3://BUCKET?endpoint=…")));
        };
        Ok(Self { store, metrics: Metrics::default() })
    }

    /// The same store, its requests counted in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Whether the store answers, cheaply: the directory is there (file://), the bucket answers
    /// HeadBucket (S3). For health: FileService and ArchiveService are NOT_SERVING without it.
    pub async fn probe(&self, timeout: std::time::Duration) -> Result<()> {
        let probe = async {
            match &self.store {
                Store::Local(s) => s.probe().await,
                Store::S3(s) => s.probe().await,
            }
        };
        match tokio::time::timeout(timeout, self.timed("probe", probe)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unreachable(format!("no answer within {timeout:?}"))),
        }
    }

    /// Runs one request, counting it (operation, outcome, latency).
    fn timed<'a, T: 'a>(
        &'a self,
        operation: &'static str,
        f: impl Future<Output = Result<T>> + Send + 'a,
    ) -> impl Future<Output = Result<T>> + Send + 'a {
        timed(&self.metrics, operation, f)
    }

    /// Starts writing `key`; nothing is visible under `key` until [`ObjectWriter::finish`].
    /// The writer keeps `cancel` for its own calls.
    pub async fn begin_write(&self, key: &str, size: SizeHint, cancel: &CancellationToken) -> Result<ObjectWriter> {
        let begin = cancellable(cancel, async {
            Ok(match &self.store {
                Store::Local(s) => Writer::Local(s.begin_write(key).await?),
                Store::S3(s) => s.begin_write(key, size).await?,
            })
        });
        let inner = self.timed("write_begin", begin).await?;
        Ok(ObjectWriter { inner, cancel: cancel.clone(), metrics: self.metrics.clone() })
    }

    /// Whether a write of exactly `size` bytes keeps nothing in the store until it finishes (one
    /// PutObject on S3 for at most one part).
    pub fn buffers_whole(&self, size: u64) -> bool {
        matches!(&self.store, Store::S3(s) if size <= s.part_size())
    }

    /// Continues writing `key` from `committed`, the offset `state` was recorded at (by this or
    /// another process), as `how` says. `size` must be what the write was begun with.
    pub async fn resume_write(
        &self,
        key: &str,
        state: &WriteState,
        committed: u64,
        how: Resume,
        size: SizeHint,
        cancel: &CancellationToken,
    ) -> Result<ObjectWriter> {
        let resume = cancellable(cancel, async {
            Ok(match (&self.store, state) {
                (_, WriteState::Empty) if committed == 0 => match &self.store {
                    Store::Local(s) => Writer::Local(s.begin_write_fenced(key, how).await?),
                    Store::S3(s) => s.begin_write(key, size).await?,
                },
                (Store::Local(s), WriteState::Local { segments }) => {
                    Writer::Local(s.resume_write(key, segments, committed, how).await?)
                }
                (Store::S3(s), WriteState::S3 { upload_id, part_size, parts }) => {
                    Writer::S3(s.resume_write(key, upload_id, *part_size, parts, committed, how).await?)
                }
                _ => return Err(Error::BadState(format!("{state:?} cannot continue at {committed} in this store"))),
            })
        });
        let inner = self.timed("write_resume", resume).await?;
        Ok(ObjectWriter { inner, cancel: cancel.clone(), metrics: self.metrics.clone() })
    }

    /// Discards an unfinished write: its staging files, or its multipart upload (and the one a
    /// previous release recorded as `legacy_token`) and any interim object under `key` — so it
    /// must only be given the key of a write that never completed. Runs to its end (cleanup).
    pub async fn discard(&self, key: &str, state: &WriteState, legacy_token: &str) -> Result<()> {
        self.timed("discard", self.discard_now(key, state, legacy_token)).await
    }

    async fn discard_now(&self, key: &str, state: &WriteState, legacy_token: &str) -> Result<()> {
        match (&self.store, state) {
            (Store::Local(s), WriteState::Local { segments }) => s.discard(key, segments).await,
            (Store::Local(s), _) => s.discard(key, &[]).await,
            (Store::S3(s), state) => {
                if let WriteState::S3 { upload_id, .. } = state {
                    s.abort_orphan(key, upload_id).await?;
                }
                if !matches!(state, WriteState::S3 { upload_id, .. } if upload_id == legacy_token) {
                    s.abort_orphan(key, legacy_token).await?;
                }
                // A takeover leaves the committed bytes as an interim object under the key.
                s.delete(key).await
            }
        }
    }

    /// Stores `data` under `key` whole. On S3 an object no larger than one part goes in a single
    /// PutObject (one round trip instead of three for a multipart upload); larger ones and local
    /// files go through [`ObjectStore::begin_write`]. Either way nothing is visible until it is
    /// complete.
    pub async fn put(&self, key: &str, data: Bytes, cancel: &CancellationToken) -> Result<u64> {
        if let Store::S3(s) = &self.store
            && (data.len() as u64) <= s.part_size()
        {
            return self.timed("put", cancellable(cancel, s.put(key, data))).await;
        }
        let mut w = self.begin_write(key, SizeHint::Exact(data.len() as u64), cancel).await?;
        if let Err(e) = w.write(data).await {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish().await
    }

    /// Streams `length` bytes of `key` from `offset` (`None`: to the end).
    pub async fn get(
        &self,
        key: &str,
        offset: u64,
        length: Option<u64>,
        cancel: &CancellationToken,
    ) -> Result<ByteStream> {
        // Timed to the stream's opening (the first byte's latency); its bytes are the caller's.
        let open = cancellable(cancel, async {
            match &self.store {
                Store::Local(s) => s.get(key, offset, length).await,
                Store::S3(s) => s.get(key, offset, length).await,
            }
        });
        let stream = self.timed("get", open).await?;
        Ok(cancellable_stream(stream, cancel.clone()))
    }

    /// Size of `key`, or None when it does not exist.
    pub async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>> {
        let request = cancellable(cancel, async {
            match &self.store {
                Store::Local(s) => s.head(key).await,
                Store::S3(s) => s.head(key).await,
            }
        });
        self.timed("head", request).await
    }

    /// Size and time of `key`, or None when it does not exist.
    pub async fn stat(&self, key: &str, cancel: &CancellationToken) -> Result<Option<ObjectInfo>> {
        let request = cancellable(cancel, async {
            match &self.store {
                Store::Local(s) => s.stat(key).await,
                Store::S3(s) => s.stat(key).await,
            }
        });
        self.timed("stat", request).await
    }

    /// Deletes `key`; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<()> {
        let request = cancellable(cancel, async {
            match &self.store {
                Store::Local(s) => s.delete(key).await,
                Store::S3(s) => s.delete(key).await,
            }
        });
        self.timed("delete", request).await
    }

    /// The objects whose key starts with `prefix` and sorts after `start_after`, in key order,
    /// `page` at a time (S3: at most 1000), holding no more than a page and what the store needs to
    /// go on (file://: the sorted names of the directories on the walk's path). Without `meta`,
    /// file:// reads directories alone and leaves each object's size 0 and time unknown (S3 lists
    /// them anyway): ask [`ObjectStore::stat`] for the few that need them.
    pub fn lister(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        page: usize,
        meta: bool,
        cancel: &CancellationToken,
    ) -> Lister {
        let inner = match &self.store {
            Store::Local(s) => ListerInner::Local(s.list_pages(prefix, start_after, page, meta)),
            Store::S3(s) => ListerInner::S3 {
                store: s.clone(),
                prefix: prefix.to_owned(),
                start_after: start_after.map(str::to_owned),
                token: None,
                page,
                done: false,
            },
        };
        Lister { inner, cancel: cancel.clone(), metrics: self.metrics.clone() }
    }

    /// Every object whose key starts with `prefix`, in key order, with size and time (the pages
    /// of [`ObjectStore::lister`] collected: for prefixes known to hold few objects).
    pub async fn list(&self, prefix: &str, cancel: &CancellationToken) -> Result<Vec<ObjectInfo>> {
        let mut lister = self.lister(prefix, None, 1000, true, cancel);
        let mut out = Vec::new();
        while let Some(page) = lister.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }
}

/// A listing in key order, a page at a time, that holds no more than a page (see
/// [`ObjectStore::lister`]).
pub struct Lister {
    inner: ListerInner,
    cancel: CancellationToken,
    metrics: Metrics,
}

enum ListerInner {
    Local(tokio::sync::mpsc::Receiver<Result<Vec<ObjectInfo>>>),
    S3 { store: S3Store, prefix: String, start_after: Option<String>, token: Option<String>, page: usize, done: bool },
}

impl Lister {
    /// The next page (never empty); None after the last.
    pub async fn next_page(&mut self) -> Result<Option<Vec<ObjectInfo>>> {
        let (cancel, metrics) = (self.cancel.clone(), self.metrics.clone());
        let page = cancellable(&cancel, async {
            match &mut self.inner {
                ListerInner::Local(rx) => rx.recv().await.transpose(),
                ListerInner::S3 { store, prefix, start_after, token, page, done } => loop {
                    if *done {
                        return Ok(None);
                    }
                    let (objects, next) = store.list_page(prefix, start_after.as_deref(), token.take(), *page).await?;
                    *done = next.is_none();
                    *token = next;
                    if !objects.is_empty() {
                        return Ok(Some(objects));
                    }
                },
            }
        });
        timed(&metrics, "list", page).await
    }
}

/// A resumable write of one object, bound to the cancellation token it was begun with.
pub struct ObjectWriter {
    inner: Writer,
    cancel: CancellationToken,
    metrics: Metrics,
}

enum Writer {
    /// To a staging file.
    Local(local::LocalWriter),
    /// To an S3 multipart upload.
    S3(s3::S3Writer),
    /// A small S3 object, kept in memory for one PutObject.
    S3Small(s3::SmallWriter),
}

impl ObjectWriter {
    /// Appends `data` at the current position. When it fails (or the token fires) the writer is
    /// only good for [`ObjectWriter::checkpoint`] (which resumes it at the committed offset) or
    /// [`ObjectWriter::abort`].
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let (cancel, metrics) = (self.cancel.clone(), self.metrics.clone());
        let write = cancellable(&cancel, async {
            match &mut self.inner {
                Writer::Local(w) => w.write(data).await,
                Writer::S3(w) => w.write(data).await,
                Writer::S3Small(w) => w.write(data),
            }
        });
        timed(&metrics, "write", write).await
    }

    /// Bytes made durable so far; a resumed write continues here. Always a multiple of
    /// [`ObjectWriter::part_size`] while unfinished.
    pub fn committed(&self) -> u64 {
        match &self.inner {
            Writer::Local(w) => w.committed(),
            Writer::S3(w) => w.committed(),
            Writer::S3Small(_) => 0,
        }
    }

    /// Granularity of [`ObjectWriter::committed`] (1 for local files; `u64::MAX` when nothing is
    /// durable before the end).
    pub fn part_size(&self) -> u64 {
        match &self.inner {
            Writer::Local(_) => 1,
            Writer::S3(w) => w.part_size(),
            Writer::S3Small(_) => u64::MAX,
        }
    }

    /// Makes durable what can be without waiting for the network (a local file is synced; S3
    /// parts that finished are counted) and returns the durable offset, which
    /// [`ObjectWriter::state`] then describes.
    pub async fn durable(&mut self) -> Result<u64> {
        match &mut self.inner {
            Writer::Local(w) => w.checkpoint().await,
            Writer::S3(w) => w.durable(),
            Writer::S3Small(_) => Ok(0),
        }
    }

    /// The durable part of this write as another process can continue it: everything up to the
    /// offset the last [`ObjectWriter::durable`] or [`ObjectWriter::checkpoint`] returned.
    pub fn state(&self) -> WriteState {
        match &self.inner {
            Writer::Local(w) => w.state(),
            Writer::S3(w) => w.state(),
            Writer::S3Small(_) => WriteState::Empty,
        }
    }

    /// Whether something this writer sent may still land in the store after it is dropped (a
    /// checkpoint abandoned S3 parts in flight): the next writer must then be fenced.
    pub fn abandoned(&self) -> bool {
        match &self.inner {
            Writer::S3(w) => w.abandoned(),
            Writer::Local(_) | Writer::S3Small(_) => false,
        }
    }

    /// Makes everything it can durable (waiting for in-flight parts) and returns the committed
    /// offset. Bytes past it (an incomplete part) are dropped; the writer continues at the offset.
    /// Once the token has fired, parts still in flight are abandoned rather than awaited; what
    /// was already durable is still reported, so a cancelled upload can be resumed.
    pub async fn checkpoint(&mut self) -> Result<u64> {
        match &mut self.inner {
            Writer::Local(w) => w.checkpoint().await,
            Writer::S3(w) => w.checkpoint(&self.cancel).await,
            Writer::S3Small(w) => Ok(w.checkpoint()),
        }
    }

    /// Publishes the object under its key; returns its size. The token is honoured until the
    /// publishing step starts (the rename; CompleteMultipartUpload), which then runs to its end.
    pub async fn finish(self) -> Result<u64> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let finish = async {
            match self.inner {
                Writer::Local(w) => w.finish().await,
                Writer::S3(w) => w.finish(&self.cancel).await,
                Writer::S3Small(w) => w.finish().await,
            }
        };
        timed(&self.metrics, "write_finish", finish).await
    }

    /// Discards everything written. Runs to its end whatever the token says.
    pub async fn abort(self) -> Result<()> {
        match self.inner {
            Writer::Local(w) => w.abort().await,
            Writer::S3(w) => w.abort().await,
            Writer::S3Small(_) => Ok(()),
        }
    }

    /// The S3 multipart upload id (empty otherwise): what the previous release's catalog column
    /// `writer_token` holds, so that it can clean the write up.
    pub fn resume_token(&self) -> String {
        match &self.inner {
            Writer::S3(w) => w.upload_id().to_owned(),
            Writer::Local(_) | Writer::S3Small(_) => String::new(),
        }
    }
}

/// Runs one request of the store, counting it in `metrics` by operation and outcome, with its
/// latency.
fn timed<'a, T: 'a>(
    metrics: &'a Metrics,
    operation: &'static str,
    f: impl Future<Output = Result<T>> + Send + 'a,
) -> impl Future<Output = Result<T>> + Send + 'a {
    // Boxed at once: the store's futures nest deep (cancellation, S3 retries), and held inline in
    // every caller's state they overflowed a 2 MiB test thread's stack in debug builds.
    let f = Box::pin(f);
    async move {
        let start = std::time::Instant::now();
        let r = f.await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(Error::NotFound(_)) => "not_found",
            Err(Error::Cancelled) => "cancelled",
            Err(_) => "error",
        };
        metrics.object_request(operation, outcome, start.elapsed());
        r
    }
}

/// Validates an object key generated by strata: relative, `/`-separated, no `.`/`..` segments.
fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if ok { Ok(()) } else { Err(Error::InvalidKey(key.to_owned())) }
}
