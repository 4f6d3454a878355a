//! Object storage: one [`ObjectStore`] with two real implementations chosen by URL —
//! `file://DIR` (the embedded default) and `s3://BUCKET?endpoint=…` (aws-sdk-s3).
//!
//! Writes go through an [`ObjectWriter`] that is resumable: `checkpoint` makes what was written
//! durable and reports the committed offset, `rewind` continues from there, `finish` publishes the
//! object atomically (a half-written object is never visible under its key).

mod local;
mod s3;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

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
    pub async fn begin_write(&self, key: &str, expected_size: Option<u64>) -> Result<ObjectWriter> {
        Ok(match self {
            Self::Local(s) => ObjectWriter::Local(s.begin_write(key).await?),
            Self::S3(s) => ObjectWriter::S3(s.begin_write(key, expected_size).await?),
        })
    }

    /// Stores `data` under `key` whole. On S3 an object no larger than one part goes in a single
    /// PutObject (one round trip instead of three for a multipart upload); larger ones and local
    /// files go through [`ObjectStore::begin_write`]. Either way nothing is visible until it is
    /// complete.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<u64> {
        if let Self::S3(s) = self
            && (data.len() as u64) <= s.part_size()
        {
            return s.put(key, data).await;
        }
        let mut w = self.begin_write(key, Some(data.len() as u64)).await?;
        w.write(data).await?;
        w.finish().await
    }

    /// Streams `length` bytes of `key` from `offset` (`None`: to the end).
    pub async fn get(&self, key: &str, offset: u64, length: Option<u64>) -> Result<ByteStream> {
        match self {
            Self::Local(s) => s.get(key, offset, length).await,
            Self::S3(s) => s.get(key, offset, length).await,
        }
    }

    /// Size of `key`, or None when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self {
            Self::Local(s) => s.head(key).await,
            Self::S3(s) => s.head(key).await,
        }
    }

    /// Deletes `key`; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self {
            Self::Local(s) => s.delete(key).await,
            Self::S3(s) => s.delete(key).await,
        }
    }

    /// Every object whose key starts with `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        match self {
            Self::Local(s) => s.list(prefix).await,
            Self::S3(s) => s.list(prefix).await,
        }
    }

    /// Continues a write a previous server process left unfinished, keeping its first `committed`
    /// bytes, which are passed to `visit` (to rebuild hashes). Only a local store can: an S3
    /// multipart upload's parts cannot be read back. None when it cannot be continued.
    pub async fn reopen_write<H>(&self, key: &str, committed: u64, visit: H) -> Result<Option<(ObjectWriter, H)>>
    where
        H: FnMut(&[u8]) + Send + 'static,
    {
        match self {
            Self::Local(s) => {
                Ok(s.reopen_write(key, committed, visit).await?.map(|(w, h)| (ObjectWriter::Local(w), h)))
            }
            Self::S3(_) => Ok(None),
        }
    }

    /// Whether [`ObjectStore::reopen_write`] can continue at `committed` (the staging data is there).
    pub async fn can_reopen(&self, key: &str, committed: u64) -> bool {
        match self {
            Self::Local(s) => s.staging_len(key).await.is_some_and(|n| n >= committed),
            Self::S3(_) => false,
        }
    }

    /// Abandons an unfinished write identified by what [`ObjectWriter::resume_token`] returned
    /// (after a restart, when the writer itself is gone).
    pub async fn abort_orphan(&self, key: &str, token: &str) -> Result<()> {
        match self {
            Self::Local(s) => s.abort_orphan(key).await,
            Self::S3(s) => s.abort_orphan(key, token).await,
        }
    }
}

/// A resumable write of one object.
pub enum ObjectWriter {
    /// To a staging file.
    Local(local::LocalWriter),
    /// To an S3 multipart upload.
    S3(s3::S3Writer),
}

impl ObjectWriter {
    /// Appends `data` at the current position.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        match self {
            Self::Local(w) => w.write(data).await,
            Self::S3(w) => w.write(data).await,
        }
    }

    /// Bytes made durable so far; a resumed write continues here. Always a multiple of
    /// [`ObjectWriter::part_size`] while unfinished.
    pub fn committed(&self) -> u64 {
        match self {
            Self::Local(w) => w.committed(),
            Self::S3(w) => w.committed(),
        }
    }

    /// Granularity of [`ObjectWriter::committed`] (1 for local files).
    pub fn part_size(&self) -> u64 {
        match self {
            Self::Local(_) => 1,
            Self::S3(w) => w.part_size(),
        }
    }

    /// Makes everything it can durable (waiting for in-flight parts) and returns the committed
    /// offset. Bytes past it (an incomplete part) are dropped; the writer continues at the offset.
    pub async fn checkpoint(&mut self) -> Result<u64> {
        match self {
            Self::Local(w) => w.checkpoint().await,
            Self::S3(w) => w.checkpoint().await,
        }
    }

    /// Publishes the object under its key; returns its size.
    pub async fn finish(self) -> Result<u64> {
        match self {
            Self::Local(w) => w.finish().await,
            Self::S3(w) => w.finish().await,
        }
    }

    /// Discards everything written.
    pub async fn abort(self) -> Result<()> {
        match self {
            Self::Local(w) => w.abort().await,
            Self::S3(w) => w.abort().await,
        }
    }

    /// What [`ObjectStore::abort_orphan`] needs to clean this write up after a restart (the S3
    /// multipart upload id; empty for local files).
    pub fn resume_token(&self) -> String {
        match self {
            Self::Local(_) => String::new(),
            Self::S3(w) => w.upload_id().to_owned(),
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
