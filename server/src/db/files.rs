//! Persistence of files, blobs and uploads in the catalog. Every change that makes content visible
//! or invisible is one transaction.

use chrono::NaiveDateTime;
use diesel::{OptionalExtension, prelude::*};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{Conn, Error, Result};
use crate::{db_run, model::files::UploadState};

/// An upload row.
#[derive(Debug, Clone)]
pub struct UploadRow {
    /// Id.
    pub id: String,
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Owner.
    pub owner: String,
    /// Declared size.
    pub declared_size: Option<i64>,
    /// Declared SHA-256 (hex).
    pub declared_sha256: Option<String>,
    /// Metadata as a JSON object.
    pub metadata: String,
    /// Object key the content is written to.
    pub object_key: String,
    /// Object-store handle of the unfinished write (S3 multipart upload id).
    pub writer_token: String,
    /// Bytes durably written.
    pub committed_offset: i64,
    /// State.
    pub state: UploadState,
    /// Failure reason.
    pub error: Option<String>,
    /// Resulting file.
    pub file_id: Option<String>,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Last change.
    pub updated_at: NaiveDateTime,
    /// Expiry of an open upload.
    pub expires_at: NaiveDateTime,
}

/// An upload's columns as read; [`UploadRow`]'s `TryFrom` is the one place the state's text
/// becomes the enum.
#[derive(Queryable)]
struct StoredUpload {
    id: String,
    name: String,
    content_type: String,
    owner: String,
    declared_size: Option<i64>,
    declared_sha256: Option<String>,
    metadata: String,
    object_key: String,
    writer_token: String,
    committed_offset: i64,
    state: String,
    error: Option<String>,
    file_id: Option<String>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    expires_at: NaiveDateTime,
}

impl TryFrom<StoredUpload> for UploadRow {
    type Error = Error;
    fn try_from(r: StoredUpload) -> Result<Self> {
        Ok(UploadRow {
            id: r.id,
            name: r.name,
            content_type: r.content_type,
            owner: r.owner,
            declared_size: r.declared_size,
            declared_sha256: r.declared_sha256,
            metadata: r.metadata,
            object_key: r.object_key,
            writer_token: r.writer_token,
            committed_offset: r.committed_offset,
            state: r.state.parse()?,
            error: r.error,
            file_id: r.file_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            expires_at: r.expires_at,
        })
    }
}

/// A file row.
#[derive(Debug, Clone, Queryable)]
pub struct FileRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Owner.
    pub owner: String,
    /// Size.
    pub size_bytes: i64,
    /// BLAKE3 (hex).
    pub blake3: String,
    /// SHA-256 (hex), when computed.
    pub sha256: Option<String>,
    /// Metadata JSON.
    pub metadata: String,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Reconciliation found the content missing.
    pub lost: bool,
}

macro_rules! upload_columns {
    ($u:ident) => {
        (
            $u::id,
            $u::name,
            $u::content_type,
            $u::owner,
            $u::declared_size,
            $u::declared_sha256,
            $u::metadata,
            $u::object_key,
            $u::writer_token,
            $u::committed_offset,
            $u::state,
            $u::error,
            $u::file_id,
            $u::created_at,
            $u::updated_at,
            $u::expires_at,
        )
    };
}

macro_rules! file_columns {
    ($f:ident, $b:ident) => {
        (
            $f::id,
            $f::name,
            $f::content_type,
            $f::owner,
            $f::size_bytes,
            $f::blake3,
            $f::sha256,
            $f::metadata,
            $f::created_at,
            $b::lost_at.is_not_null(),
        )
    };
}

/// Stores a new open upload.
pub async fn insert_upload(conn: &mut Conn, u: &UploadRow) -> Result<()> {
    db_run!(conn, {
        use schema::uploads as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(&u.id),
                t::name.eq(&u.name),
                t::content_type.eq(&u.content_type),
                t::owner.eq(&u.owner),
                t::declared_size.eq(u.declared_size),
                t::declared_sha256.eq(&u.declared_sha256),
                t::metadata.eq(&u.metadata),
                t::object_key.eq(&u.object_key),
                t::writer_token.eq(&u.writer_token),
                t::committed_offset.eq(u.committed_offset),
                t::state.eq(u.state.as_str()),
                t::error.eq(&u.error),
                t::file_id.eq(&u.file_id),
                t::created_at.eq(u.created_at),
                t::updated_at.eq(u.updated_at),
                t::expires_at.eq(u.expires_at),
            ))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// The upload `id`, if any.
pub async fn get_upload(conn: &mut Conn, id: &str) -> Result<Option<UploadRow>> {
    let row = db_run!(conn, {
        use schema::uploads as t;
        t::table.filter(t::id.eq(id)).select(upload_columns!(t)).first::<StoredUpload>(conn).await.optional()?
    });
    row.map(UploadRow::try_from).transpose()
}

/// Records an open upload's progress and the handle of its unfinished write.
pub async fn record_progress(
    conn: &mut Conn,
    id: &str,
    committed: i64,
    writer_token: &str,
    now: NaiveDateTime,
) -> Result<()> {
    db_run!(conn, {
        use schema::uploads as t;
        diesel::update(t::table.filter(t::id.eq(id)).filter(t::state.eq(UploadState::Open.as_str())))
            .set((t::committed_offset.eq(committed), t::writer_token.eq(writer_token), t::updated_at.eq(now)))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Marks an upload failed with `error`.
pub async fn fail_upload(conn: &mut Conn, id: &str, error: &str, now: NaiveDateTime) -> Result<()> {
    db_run!(conn, {
        use schema::uploads as t;
        diesel::update(t::table.filter(t::id.eq(id)).filter(t::state.eq(UploadState::Open.as_str())))
            .set((t::state.eq(UploadState::Failed.as_str()), t::error.eq(error), t::updated_at.eq(now)))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Open uploads whose expiry passed before `now`, at most `limit`.
pub async fn expired_uploads(conn: &mut Conn, now: NaiveDateTime, limit: i64) -> Result<Vec<UploadRow>> {
    let rows = db_run!(conn, {
        use schema::uploads as t;
        t::table
            .filter(t::state.eq(UploadState::Open.as_str()))
            .filter(t::expires_at.lt(now))
            .order(t::expires_at.asc())
            .limit(limit)
            .select(upload_columns!(t))
            .load::<StoredUpload>(conn)
            .await?
    });
    rows.into_iter().map(UploadRow::try_from).collect()
}

/// Inside a transaction on `$conn` with catalog module `$schema`: records `$file` — inserting its
/// blob (content at `$object_key`) or raising the reference count of identical content already
/// stored — and evaluates to the object key that holds the content. Shared by uploads and blob
/// migration, so both count references the same way.
macro_rules! record_file {
    ($conn:ident, $schema:ident, $object_key:expr, $file:expr, $now:expr) => {{
        use $schema::{blobs as b, files as f};
        let file = $file;
        let key: String = diesel::insert_into(b::table)
            .values((
                b::blake3.eq(&file.blake3),
                b::object_key.eq($object_key),
                b::size_bytes.eq(file.size_bytes),
                b::ref_count.eq(1i64),
                b::created_at.eq($now),
            ))
            .on_conflict(b::blake3)
            .do_update()
            .set(b::ref_count.eq(b::ref_count + 1i64))
            .returning(b::object_key)
            .get_result(&mut *$conn)
            .await?;
        diesel::insert_into(f::table)
            .values((
                f::id.eq(&file.id),
                f::name.eq(&file.name),
                f::content_type.eq(&file.content_type),
                f::owner.eq(&file.owner),
                f::size_bytes.eq(file.size_bytes),
                f::blake3.eq(&file.blake3),
                f::sha256.eq(&file.sha256),
                f::metadata.eq(&file.metadata),
                f::created_at.eq(file.created_at),
            ))
            .execute(&mut *$conn)
            .await?;
        key
    }};
}
pub(crate) use record_file;

/// Makes an upload's content visible as `file`, in one transaction: the blob is inserted or its
/// reference count raised, the file row inserted and the upload marked complete. Returns the object
/// key that holds the content: another key than `object_key` means identical content existed and
/// the caller's object is a redundant copy.
pub async fn complete_upload(
    conn: &mut Conn,
    upload_id: &str,
    object_key: &str,
    file: &FileRow,
    now: NaiveDateTime,
) -> Result<String> {
    let key = db_run!(conn, {
        conn.transaction(async |conn| {
            use schema::uploads as u;
            let key = record_file!(conn, schema, object_key, file, now);
            diesel::update(u::table.filter(u::id.eq(upload_id)))
                .set((
                    u::state.eq(UploadState::Complete.as_str()),
                    u::file_id.eq(&file.id),
                    u::committed_offset.eq(file.size_bytes),
                    u::updated_at.eq(now),
                ))
                .execute(&mut *conn)
                .await?;
            Ok::<_, diesel::result::Error>(key)
        })
        .await?
    });
    Ok(key)
}

/// The file `id` with the object key of its content.
pub async fn get_file(conn: &mut Conn, id: &str) -> Result<Option<(FileRow, String)>> {
    let row = db_run!(conn, {
        use schema::{blobs as b, files as f};
        f::table
            .inner_join(b::table)
            .filter(f::id.eq(id))
            .select((file_columns!(f, b), b::object_key))
            .first::<(FileRow, String)>(conn)
            .await
            .optional()?
    });
    Ok(row)
}

/// Filters of [`list_files`].
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    /// Owner equals.
    pub owner: Option<String>,
    /// Name starts with (LIKE-escaped by the caller's choice of [`escape_like`]).
    pub name_prefix: Option<String>,
    /// Created at or after.
    pub created_after: Option<NaiveDateTime>,
    /// Created before.
    pub created_before: Option<NaiveDateTime>,
    /// Ids below this (paging; ids are time-ordered UUIDv7).
    pub before_id: Option<String>,
}

/// Files matching `filter`, newest first, at most `limit`.
pub async fn list_files(conn: &mut Conn, filter: &FileFilter, limit: i64) -> Result<Vec<FileRow>> {
    let rows = db_run!(conn, {
        use schema::{blobs as b, files as f};
        let mut q =
            f::table.inner_join(b::table).select(file_columns!(f, b)).order(f::id.desc()).limit(limit).into_boxed();
        if let Some(o) = &filter.owner {
            q = q.filter(f::owner.eq(o.clone()));
        }
        if let Some(p) = &filter.name_prefix {
            q = q.filter(f::name.like(format!("{}%", escape_like(p))).escape('\\'));
        }
        if let Some(t) = filter.created_after {
            q = q.filter(f::created_at.ge(t));
        }
        if let Some(t) = filter.created_before {
            q = q.filter(f::created_at.lt(t));
        }
        if let Some(id) = &filter.before_id {
            q = q.filter(f::id.lt(id.clone()));
        }
        q.load::<FileRow>(conn).await?
    });
    Ok(rows)
}

/// Removes file `id` and its reference on the blob, in one transaction. Returns None when there is
/// no such file, else the blob's object key and whether that was the last reference (the blob row
/// is then gone and the object must be deleted).
pub async fn delete_file(conn: &mut Conn, id: &str) -> Result<Option<(String, bool)>> {
    let out = db_run!(conn, {
        conn.transaction(async |conn| {
            use schema::{blobs as b, files as f};
            // Write first: on SQLite a transaction that reads before its first write cannot take
            // the write lock if another connection committed meanwhile (SQLITE_BUSY, no waiting).
            let Some(blake3) = diesel::delete(f::table.filter(f::id.eq(id)))
                .returning(f::blake3)
                .get_result::<String>(&mut *conn)
                .await
                .optional()?
            else {
                return Ok(None);
            };
            let (refs, key): (i64, String) = diesel::update(b::table.filter(b::blake3.eq(&blake3)))
                .set(b::ref_count.eq(b::ref_count - 1i64))
                .returning((b::ref_count, b::object_key))
                .get_result(&mut *conn)
                .await?;
            if refs == 0 {
                diesel::delete(b::table.filter(b::blake3.eq(&blake3))).execute(&mut *conn).await?;
            }
            Ok::<_, diesel::result::Error>(Some((key, refs == 0)))
        })
        .await?
    });
    Ok(out)
}

/// Number of files referencing content `blake3` and the blob's reference count (tests, audits).
pub async fn blob_refs(conn: &mut Conn, blake3: &str) -> Result<Option<(i64, String)>> {
    let row = db_run!(conn, {
        use schema::blobs as b;
        b::table
            .filter(b::blake3.eq(blake3))
            .select((b::ref_count, b::object_key))
            .first::<(i64, String)>(conn)
            .await
            .optional()?
    });
    Ok(row)
}

/// Escapes LIKE wildcards so a client's prefix matches literally.
pub fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every blob: (BLAKE3, object key, already marked lost).
pub async fn all_blobs(conn: &mut Conn) -> Result<Vec<(String, String, bool)>> {
    let rows = db_run!(conn, {
        use schema::blobs as b;
        b::table.select((b::blake3, b::object_key, b::lost_at.is_not_null())).load(conn).await?
    });
    Ok(rows)
}

/// Object keys of uploads still open (their objects may appear any moment).
pub async fn open_upload_keys(conn: &mut Conn) -> Result<Vec<String>> {
    let rows = db_run!(conn, {
        use schema::uploads as u;
        u::table.filter(u::state.eq(UploadState::Open.as_str())).select(u::object_key).load(conn).await?
    });
    Ok(rows)
}

/// Whether a blob row or an open upload references `key` (checked again right before acting).
pub async fn key_referenced(conn: &mut Conn, key: &str) -> Result<bool> {
    let n: i64 = db_run!(conn, {
        use schema::{blobs as b, uploads as u};
        let blobs: i64 = b::table.filter(b::object_key.eq(key)).count().get_result(&mut *conn).await?;
        let uploads: i64 = u::table
            .filter(u::object_key.eq(key))
            .filter(u::state.eq(UploadState::Open.as_str()))
            .count()
            .get_result(&mut *conn)
            .await?;
        blobs + uploads
    });
    Ok(n > 0)
}

/// Marks content `blake3` lost; returns the ids of the files that reference it.
pub async fn mark_lost(conn: &mut Conn, blake3: &str, now: NaiveDateTime) -> Result<Vec<String>> {
    let ids = db_run!(conn, {
        conn.transaction(async |conn| {
            use schema::{blobs as b, files as f};
            diesel::update(b::table.filter(b::blake3.eq(blake3)).filter(b::lost_at.is_null()))
                .set(b::lost_at.eq(now))
                .execute(&mut *conn)
                .await?;
            f::table.filter(f::blake3.eq(blake3)).select(f::id).load::<String>(&mut *conn).await
        })
        .await?
    });
    Ok(ids)
}

/// Ids of the files referencing content `blake3`.
pub async fn files_of(conn: &mut Conn, blake3: &str) -> Result<Vec<String>> {
    let ids = db_run!(conn, {
        use schema::files as f;
        f::table.filter(f::blake3.eq(blake3)).select(f::id).load::<String>(conn).await?
    });
    Ok(ids)
}
