//! Files: streaming, resumable, checksummed uploads into the object store; downloads; listing and
//! deletion with content-addressed, reference-counted blobs.
//!
//! An upload's bytes go straight to their final object key through a resumable
//! [`ObjectWriter`](crate::objects::ObjectWriter); BLAKE3 (and SHA-256 when declared or configured)
//! is computed while streaming. The file becomes visible in the single transaction that records it.
//! However a stream ends, what the writer committed is recorded in the catalog — offset, the
//! store's write state and the running hashes — so the client resumes from `GetUploadStatus`'s
//! offset on any instance, at a cost independent of the offset.
//!
//! Here: validation, the file records, downloads, listing and deletion; `upload` receives streams
//! and fences their writers, `hashing` computes their hashes beside the network, `midstate` writes
//! the hashes down, `reconcile` compares the store with the catalog.

mod hashing;
mod midstate;
pub mod reconcile;
mod upload;

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt as _, Stream, StreamExt};

pub use self::{
    reconcile::{ReconcileProgress, ReconcileRequest},
    upload::{StreamEnd, UploadStart, UploadStatus, create_upload, expire_uploads, upload, upload_status},
};
use super::{Context, Error, Result};
pub use crate::model::files::UploadState;
use crate::{
    db::files::{self as store, FileFilter, FileRow},
    objects,
};

/// Limits of file names, owners and metadata.
const MAX_NAME_LEN: usize = 255;
const MAX_OWNER_LEN: usize = 255;
const MAX_CONTENT_TYPE_LEN: usize = 255;
const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_KEY: usize = 128;
const MAX_METADATA_VALUE: usize = 1024;

/// Settings of the file service.
#[derive(Debug, Clone)]
pub struct FileLimits {
    /// Largest accepted file.
    pub max_file_size: u64,
    /// Accepted MIME types (`type/*` wildcards); empty: all.
    pub allowed_content_types: Vec<String>,
    /// Open uploads expire this long after their last activity.
    pub upload_expiry: Duration,
    /// Compute SHA-256 of every file, not only when declared.
    pub always_sha256: bool,
}

/// A validated file header.
#[derive(Debug, Clone)]
pub struct FileHeader {
    /// Display name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Owner.
    pub owner: String,
    /// Declared size.
    pub size: Option<u64>,
    /// Declared SHA-256 (lower-case hex).
    pub sha256: Option<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// A file's owner (empty: none): the rule for uploads and for the owners a token is scoped to.
pub(crate) fn check_owner(owner: &str) -> Result<()> {
    check_text("owner", owner, MAX_OWNER_LEN)
}

fn check_text(what: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return Err(bad(format!("{what} is longer than {max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(bad(format!("{what} contains control characters")));
    }
    Ok(())
}

impl FileHeader {
    /// Validates client input against `limits`.
    pub fn validate(
        name: String,
        content_type: String,
        owner: String,
        size: Option<i64>,
        sha256: String,
        metadata: impl IntoIterator<Item = (String, String)>,
        limits: &FileLimits,
    ) -> Result<Self> {
        if name.is_empty() {
            return Err(bad("file name is empty"));
        }
        check_text("file name", &name, MAX_NAME_LEN)?;
        if name.contains(['/', '\\']) {
            return Err(bad("file name contains a path separator"));
        }
        if name == "." || name == ".." || name.contains("..") {
            return Err(bad("file name contains \"..\""));
        }
        check_owner(&owner)?;
        let content_type = if content_type.is_empty() { "application/octet-stream".to_owned() } else { content_type };
        check_text("content type", &content_type, MAX_CONTENT_TYPE_LEN)?;
        if !content_type.contains('/') || content_type.contains(char::is_whitespace) {
            return Err(bad(format!("content type {content_type:?} is not a MIME type")));
        }
        if !limits.allowed_content_types.is_empty()
            && !limits.allowed_content_types.iter().any(|a| match a.strip_suffix("/*") {
                Some(major) => content_type.split('/').next() == Some(major),
                None => a.eq_ignore_ascii_case(&content_type),
            })
        {
            return Err(bad(format!("content type {content_type:?} is not allowed")));
        }
        let size = match size {
            None => None,
            Some(n) if n < 0 => return Err(bad("declared size is negative")),
            Some(n) if n as u64 > limits.max_file_size => {
                return Err(bad(format!("declared size {n} exceeds the limit of {} bytes", limits.max_file_size)));
            }
            Some(n) => Some(n as u64),
        };
        let sha256 = if sha256.is_empty() {
            None
        } else if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(sha256.to_ascii_lowercase())
        } else {
            return Err(bad("sha256 must be 64 hex digits"));
        };
        let metadata: BTreeMap<String, String> = metadata.into_iter().collect();
        if metadata.len() > MAX_METADATA_ENTRIES {
            return Err(bad(format!("more than {MAX_METADATA_ENTRIES} metadata entries")));
        }
        for (k, v) in &metadata {
            if k.is_empty() {
                return Err(bad("empty metadata key"));
            }
            check_text("metadata key", k, MAX_METADATA_KEY)?;
            check_text("metadata value", v, MAX_METADATA_VALUE)?;
        }
        Ok(Self { name, content_type, owner, size, sha256, metadata })
    }
}

/// A stored file.
#[derive(Debug, Clone)]
pub struct File {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Owner.
    pub owner: String,
    /// Size.
    pub size: u64,
    /// BLAKE3 hex.
    pub blake3: String,
    /// SHA-256 hex, when computed.
    pub sha256: Option<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Content found missing by reconciliation.
    pub lost: bool,
}

impl From<FileRow> for File {
    fn from(r: FileRow) -> Self {
        File {
            id: r.id,
            name: r.name,
            content_type: r.content_type,
            owner: r.owner,
            size: r.size_bytes as u64,
            blake3: r.blake3,
            sha256: r.sha256,
            metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
            created_at: r.created_at.and_utc(),
            lost: r.lost,
        }
    }
}

fn check_id(what: &str, id: &str) -> Result<()> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(bad(format!("{what} {id:?} is not a valid id")));
    }
    Ok(())
}

fn object_err(e: objects::Error) -> Error {
    match e {
        objects::Error::NotFound(k) => Error::NotFound(format!("object {k}")),
        objects::Error::Range { .. } => Error::OutOfRange(e.to_string()),
        // RPCs pass the token that fires when the server starts shutting down.
        objects::Error::Cancelled => Error::Unavailable(
            "the server is shutting down; retry (an upload continues from its committed offset)".into(),
        ),
        other => Error::Unavailable(other.to_string()),
    }
}

/// Whose files a caller may see and write: anyone's, or only those of some owners (a token scoped
/// to them). To a scoped caller other owners' files and uploads do not exist: NOT_FOUND, the answer
/// for a file that is not there, so it learns nothing of them.
#[derive(Debug, Clone, Default)]
pub enum Owners {
    /// Any owner.
    #[default]
    Any,
    /// Only these.
    Only(std::sync::Arc<[String]>),
}

impl Owners {
    /// From a caller's scope (None: not scoped).
    pub fn from_scope(scope: Option<std::sync::Arc<[String]>>) -> Self {
        scope.map_or(Owners::Any, Owners::Only)
    }

    /// Whether files of `owner` are the caller's to see.
    pub fn permits(&self, owner: &str) -> bool {
        match self {
            Owners::Any => true,
            Owners::Only(os) => os.iter().any(|o| o == owner),
        }
    }

    /// The owner a new upload of the caller gets: the one it names, which must be in its scope, or
    /// (naming none) its scope's only owner.
    pub fn stamp(&self, owner: String) -> Result<String> {
        match self {
            Owners::Any => Ok(owner),
            Owners::Only(os) if owner.is_empty() => match &os[..] {
                [only] => Ok(only.clone()),
                _ => Err(bad(format!("owner is required: the token is scoped to {} owners", os.len()))),
            },
            Owners::Only(_) if self.permits(&owner) => Ok(owner),
            Owners::Only(_) => Err(Error::PermissionDenied(format!("the token is not scoped to owner {owner:?}"))),
        }
    }
}

/// The file `id`, if `owners` may see it.
async fn get_visible(
    conn: &mut crate::db::Conn,
    id: &str,
    owners: &Owners,
) -> Result<(crate::db::files::FileRow, String)> {
    visible(store::get_file(conn, id).await?, id, owners)
}

/// [`get_visible`] as a point read (`Db::point_read`): on SQLite, inline on the caller's thread.
async fn read_visible(ctx: &Context, id: &str, owners: &Owners) -> Result<(crate::db::files::FileRow, String)> {
    let found = ctx
        .db
        .point_read(|conn| {
            let id = id.to_owned();
            async move { store::get_file(conn, &id).await }.boxed()
        })
        .await?;
    visible(found, id, owners)
}

fn visible(
    found: Option<(crate::db::files::FileRow, String)>,
    id: &str,
    owners: &Owners,
) -> Result<(crate::db::files::FileRow, String)> {
    found.filter(|(row, _)| owners.permits(&row.owner)).ok_or_else(|| Error::NotFound(format!("file {id}")))
}

/// The file `id`.
pub async fn stat(ctx: &Context, id: &str, owners: &Owners) -> Result<File> {
    check_id("file id", id)?;
    let (row, _) = read_visible(ctx, id, owners).await?;
    Ok(row.into())
}

/// The bytes of a download, in the order stored.
pub type Download = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// The file `id` and a stream of `length` bytes from `offset` (0: to the end).
pub async fn download(ctx: &Context, id: &str, offset: u64, length: u64, owners: &Owners) -> Result<(File, Download)> {
    check_id("file id", id)?;
    let (row, key) = read_visible(ctx, id, owners).await?;
    let file = File::from(row);
    if file.lost {
        return Err(Error::DataLoss(format!("the content of file {id} is missing from the object store")));
    }
    if offset > file.size || length > file.size - offset {
        return Err(Error::OutOfRange(format!("range {offset}+{length} is outside file {id} of {} bytes", file.size)));
    }
    let length = if length == 0 { None } else { Some(length) };
    let stream = ctx.objects.get(&key, offset, length, &ctx.closing).await.map_err(object_err)?;
    // Once bytes flow, any store failure (the server stopping included) is UNAVAILABLE: the client
    // retries from the offset it reached.
    let stream = stream.map(|chunk| {
        chunk.map_err(|e| {
            tracing::warn!(error = %e, "download failed mid-stream");
            Error::Unavailable(e.to_string())
        })
    });
    Ok((file, Box::pin(stream)))
}

/// A validated ListFiles request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    filter: FileFilter,
    size: i64,
}

impl ListQuery {
    /// Validates paging and filters.
    pub fn parse(
        page_size: i32,
        page_token: &str,
        owner: String,
        name_prefix: String,
        after: Option<DateTime<Utc>>,
        before: Option<DateTime<Utc>>,
    ) -> Result<Self> {
        let size = match page_size {
            0 => 100,
            n if n < 0 => return Err(bad("page_size must not be negative")),
            n => i64::from(n).min(1000),
        };
        let before_id = if page_token.is_empty() {
            None
        } else {
            check_id("page_token", page_token).map_err(|_| bad("page_token is not one this server issued"))?;
            Some(page_token.to_owned())
        };
        check_text("owner", &owner, MAX_OWNER_LEN)?;
        check_text("name_prefix", &name_prefix, MAX_NAME_LEN)?;
        Ok(Self {
            filter: FileFilter {
                owner: (!owner.is_empty()).then_some(owner),
                owner_in: None,
                name_prefix: (!name_prefix.is_empty()).then_some(name_prefix),
                created_after: after.map(|t| t.naive_utc()),
                created_before: before.map(|t| t.naive_utc()),
                before_id,
            },
            size,
        })
    }
}

/// Files newest first, of the owners `owners` may see; returns the page and the next token.
pub async fn list(ctx: &Context, q: &ListQuery, owners: &Owners) -> Result<(Vec<File>, String)> {
    let mut filter = q.filter.clone();
    if let Owners::Only(os) = owners {
        match &filter.owner {
            // Another owner's files do not exist for this caller.
            Some(o) if !owners.permits(o) => return Ok((Vec::new(), String::new())),
            Some(_) => {}
            None => filter.owner_in = Some(os.to_vec()),
        }
    }
    let (mut conn, _) = ctx.db.read().await?;
    let mut rows = store::list_files(&mut conn, &filter, q.size + 1).await?;
    let more = rows.len() as i64 > q.size;
    rows.truncate(q.size as usize);
    let next = if more { rows.last().map(|r| r.id.clone()).unwrap_or_default() } else { String::new() };
    Ok((rows.into_iter().map(File::from).collect(), next))
}

/// Deletes file `id`; returns whether its content was removed (no other reference).
pub async fn delete(ctx: &Context, id: &str, owners: &Owners) -> Result<bool> {
    check_id("file id", id)?;
    let mut conn = ctx.db.write().await?;
    if let Owners::Only(_) = owners {
        // Checked before the delete, on the primary: a file's owner never changes.
        get_visible(&mut conn, id, owners).await?;
    }
    let (key, last) = store::delete_file(&mut conn, id).await?.ok_or_else(|| Error::NotFound(format!("file {id}")))?;
    drop(conn);
    if last && let Err(e) = ctx.objects.delete(&key, &ctx.background).await {
        // The catalog no longer references it: reconciliation removes it later.
        tracing::warn!(key = %key, error = %e, "deleting an unreferenced object failed");
    }
    Ok(last)
}
