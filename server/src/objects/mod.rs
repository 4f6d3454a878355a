//! Object storage: one [`ObjectStore`] with two real implementations chosen by URL —
//! `file://DIR` (the embedded default) and `s3://BUCKET?endpoint=…` (aws-sdk-s3).
//!
//! Writes go through an [`ObjectWriter`] that is resumable: `checkpoint` makes what was written
//! durable and reports the committed offset, `rewind` continues from there, `finish` publishes the
//! object atomically (a half-written object is never visible under its key).
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

pub use local::LocalStore;
pub use s3::{MIN_PART_SIZE, S3Settings, S3Store};

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
    /// The caller's cancellation token fired before the call completed.
    #[error("object store call cancelled")]
    Cancelled,
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

/// Where objects live.
#[derive(Clone)]
pub enum ObjectStore {
    /// A local directory.
    Local(LocalStore),
    /// An S3-compatible bucket.
    S3(S3Store),
}

impl ObjectStore {
    /// Opens the store named by `url` (`file://DIR` or `s3://…`).
    pub async fn open(url: &str, s3: &S3Settings) -> Result<Self> {
        if let Some(dir) = url.strip_prefix("file://") {
            Ok(Self::Local(LocalStore::open(dir).await?))
        } else if url.starts_with("s3://") {
            Ok(Self::S3(S3Store::open(url, s3).await?))
        } else {
            Err(Error::InvalidUrl(format!("{url:?}: expected file://DIR or s3://BUCKET?endpoint=…")))
        }
    }

    /// Starts writing `key`; nothing is visible under `key` until [`ObjectWriter::finish`].
    /// The writer keeps `cancel` for its own calls.
    pub async fn begin_write(
        &self,
        key: &str,
        expected_size: Option<u64>,
        cancel: &CancellationToken,
    ) -> Result<ObjectWriter> {
        let inner = cancellable(cancel, async {
            Ok(match self {
                Self::Local(s) => Writer::Local(s.begin_write(key).await?),
                Self::S3(s) => Writer::S3(s.begin_write(key, expected_size).await?),
            })
        })
        .await?;
        Ok(ObjectWriter { inner, cancel: cancel.clone() })
    }

    /// Stores `data` under `key` whole. On S3 an object no larger than one part goes in a single
    /// PutObject (one round trip instead of three for a multipart upload); larger ones and local
    /// files go through [`ObjectStore::begin_write`]. Either way nothing is visible until it is
    /// complete.
    pub async fn put(&self, key: &str, data: Bytes, cancel: &CancellationToken) -> Result<u64> {
        if let Self::S3(s) = self
            && (data.len() as u64) <= s.part_size()
        {
            return cancellable(cancel, s.put(key, data)).await;
        }
        let mut w = self.begin_write(key, Some(data.len() as u64), cancel).await?;
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
        let stream = cancellable(cancel, async {
            match self {
                Self::Local(s) => s.get(key, offset, length).await,
                Self::S3(s) => s.get(key, offset, length).await,
            }
        })
        .await?;
        Ok(cancellable_stream(stream, cancel.clone()))
    }

    /// Size of `key`, or None when it does not exist.
    pub async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>> {
        cancellable(cancel, async {
            match self {
                Self::Local(s) => s.head(key).await,
                Self::S3(s) => s.head(key).await,
            }
        })
        .await
    }

    /// Deletes `key`; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<()> {
        cancellable(cancel, async {
            match self {
                Self::Local(s) => s.delete(key).await,
                Self::S3(s) => s.delete(key).await,
            }
        })
        .await
    }

    /// Every object whose key starts with `prefix`.
    pub async fn list(&self, prefix: &str, cancel: &CancellationToken) -> Result<Vec<ObjectInfo>> {
        cancellable(cancel, async {
            match self {
                Self::Local(s) => s.list(prefix).await,
                Self::S3(s) => s.list(prefix).await,
            }
        })
        .await
    }

    /// Continues a write a previous server process left unfinished, keeping its first `committed`
    /// bytes, which are passed to `visit` (to rebuild hashes). Only a local store can: an S3
    /// multipart upload's parts cannot be read back. None when it cannot be continued.
    /// The writer keeps `cancel` for its own calls.
    pub async fn reopen_write<H>(
        &self,
        key: &str,
        committed: u64,
        visit: H,
        cancel: &CancellationToken,
    ) -> Result<Option<(ObjectWriter, H)>>
    where
        H: FnMut(&[u8]) + Send + 'static,
    {
        let reopened = cancellable(cancel, async {
            match self {
                Self::Local(s) => Ok(s.reopen_write(key, committed, visit).await?.map(|(w, h)| (Writer::Local(w), h))),
                Self::S3(_) => Ok(None),
            }
        })
        .await?;
        Ok(reopened.map(|(inner, h)| (ObjectWriter { inner, cancel: cancel.clone() }, h)))
    }

    /// Whether [`ObjectStore::reopen_write`] can continue at `committed` (the staging data is there).
    pub async fn can_reopen(&self, key: &str, committed: u64, cancel: &CancellationToken) -> Result<bool> {
        cancellable(cancel, async {
            Ok(match self {
                Self::Local(s) => s.staging_len(key).await.is_some_and(|n| n >= committed),
                Self::S3(_) => false,
            })
        })
        .await
    }

    /// Abandons an unfinished write identified by what [`ObjectWriter::resume_token`] returned
    /// (after a restart, when the writer itself is gone).
    pub async fn abort_orphan(&self, key: &str, token: &str, cancel: &CancellationToken) -> Result<()> {
        cancellable(cancel, async {
            match self {
                Self::Local(s) => s.abort_orphan(key).await,
                Self::S3(s) => s.abort_orphan(key, token).await,
            }
        })
        .await
    }
}

/// A resumable write of one object, bound to the cancellation token it was begun with.
pub struct ObjectWriter {
    inner: Writer,
    cancel: CancellationToken,
}

enum Writer {
    /// To a staging file.
    Local(local::LocalWriter),
    /// To an S3 multipart upload.
    S3(s3::S3Writer),
}

impl ObjectWriter {
    /// Appends `data` at the current position. When it fails (or the token fires) the writer is
    /// only good for [`ObjectWriter::checkpoint`] (which resumes it at the committed offset) or
    /// [`ObjectWriter::abort`].
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let cancel = self.cancel.clone();
        cancellable(&cancel, async {
            match &mut self.inner {
                Writer::Local(w) => w.write(data).await,
                Writer::S3(w) => w.write(data).await,
            }
        })
        .await
    }

    /// Bytes made durable so far; a resumed write continues here. Always a multiple of
    /// [`ObjectWriter::part_size`] while unfinished.
    pub fn committed(&self) -> u64 {
        match &self.inner {
            Writer::Local(w) => w.committed(),
            Writer::S3(w) => w.committed(),
        }
    }

    /// Granularity of [`ObjectWriter::committed`] (1 for local files).
    pub fn part_size(&self) -> u64 {
        match &self.inner {
            Writer::Local(_) => 1,
            Writer::S3(w) => w.part_size(),
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
        }
    }

    /// Publishes the object under its key; returns its size. The token is honoured until the
    /// publishing step starts (the rename; CompleteMultipartUpload), which then runs to its end.
    pub async fn finish(self) -> Result<u64> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        match self.inner {
            Writer::Local(w) => w.finish().await,
            Writer::S3(w) => w.finish(&self.cancel).await,
        }
    }

    /// Discards everything written. Runs to its end whatever the token says.
    pub async fn abort(self) -> Result<()> {
        match self.inner {
            Writer::Local(w) => w.abort().await,
            Writer::S3(w) => w.abort().await,
        }
    }

    /// What [`ObjectStore::abort_orphan`] needs to clean this write up after a restart (the S3
    /// multipart upload id; empty for local files).
    pub fn resume_token(&self) -> String {
        match &self.inner {
            Writer::Local(_) => String::new(),
            Writer::S3(w) => w.upload_id().to_owned(),
        }
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
