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
    /// Raised by each stream that starts writing; compared and set by every progress write.
    pub generation: i64,
    /// Instance whose stream writes it now; empty when none does.
    pub writer: String,
    /// Until when (the database's time) `writer` holds it.
    pub lease_until: Option<NaiveDateTime>,
    /// The object store's state of the unfinished write (JSON; empty before any).
    pub store_state: String,
    /// Running hashes over the committed bytes.
    pub hash_state: Option<Vec<u8>>,
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
    generation: i64,
    writer: String,
    lease_until: Option<NaiveDateTime>,
    store_state: String,
    hash_state: Option<Vec<u8>>,
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
            generation: r.generation,
            writer: r.writer,
            lease_until: r.lease_until,
            store_state: r.store_state,
            hash_state: r.hash_state,
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
            $u::generation,
            $u::writer,
            $u::lease_until,
            $u::store_state,
            $u::hash_state,
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

/// Inside `db_run!`: inserts upload row `$u` on `$conn` with catalog module `$schema`.
macro_rules! insert_upload_row {
    ($conn:ident, $schema:ident, $u:expr) => {{
        use $schema::uploads as t;
        let u = $u;
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
                t::generation.eq(u.generation),
                t::writer.eq(&u.writer),
                t::lease_until.eq(u.lease_until),
                t::store_state.eq(&u.store_state),
                t::hash_state.eq(&u.hash_state),
            ))
            .execute(&mut *$conn)
            .await?;
    }};
}

/// Stores a new open upload.
pub async fn insert_upload(conn: &mut Conn, u: &UploadRow) -> Result<()> {
    db_run!(conn, {
        insert_upload_row!(conn, schema, u);
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

/// Upload `$id` of table module `$t`, while open and held by `$writer` in `$generation`: the
/// compare-and-set of every write a stream makes.
macro_rules! held_upload {
    ($t:ident, $id:expr, $generation:expr, $writer:expr) => {
        $t::table
            .filter($t::id.eq($id))
            .filter($t::state.eq(UploadState::Open.as_str()))
            .filter($t::generation.eq($generation))
            .filter($t::writer.eq($writer))
    };
}

/// No stream holds the upload at `$now` (the database's time): none is named, or its lease lapsed.
macro_rules! unheld_upload {
    ($t:ident, $now:expr) => {
        $t::writer.eq("").or($t::lease_until.is_null()).or($t::lease_until.lt($now))
    };
}

/// Makes `writer` the one writing open upload `id`, raising its generation from `seen`, when no
/// other writer holds it: none is recorded, or its lease lapsed before `now`. Returns whether it
/// did (false: another stream got there first, or one holds it).
pub async fn claim_upload(
    conn: &mut Conn,
    id: &str,
    seen: i64,
    writer: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::uploads as t;
        diesel::update(
            t::table
                .filter(t::id.eq(id))
                .filter(t::state.eq(UploadState::Open.as_str()))
                .filter(t::generation.eq(seen))
                .filter(unheld_upload!(t, now)),
        )
        .set((t::generation.eq(seen + 1), t::writer.eq(writer), t::lease_until.eq(lease_until), t::updated_at.eq(now)))
        .execute(conn)
        .await?
    });
    Ok(n == 1)
}

/// An upload's durable progress, as its writer records it.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// Bytes durably written.
    pub committed: i64,
    /// The store's state of the unfinished write (JSON).
    pub store_state: &'a str,
    /// The S3 multipart upload id (the previous release's column).
    pub writer_token: &'a str,
    /// Running hashes over the committed bytes.
    pub hash_state: &'a [u8],
    /// Open uploads expire this long after their last progress.
    pub expires_at: NaiveDateTime,
}

/// What a progress write does to the writer's hold on the upload.
#[derive(Debug, Clone, Copy)]
pub enum Hold {
    /// Renews the lease until then.
    Renew(NaiveDateTime),
    /// Lets go: the next stream continues in place.
    Release,
    /// Lets go, but something of this writer may still land in the store: the next stream is
    /// fenced (the writer stays named, its lease ends now).
    Abandon,
}

/// Records progress of upload `id` by `writer` in `generation`, if it still holds it (compare and
/// set). Returns false when another stream has taken it over, or it is no longer open.
pub async fn record_progress(
    conn: &mut Conn,
    id: &str,
    generation: i64,
    writer: &str,
    p: &Progress<'_>,
    hold: Hold,
    now: NaiveDateTime,
) -> Result<bool> {
    let (next_writer, until) = match hold {
        Hold::Renew(t) => (writer, t),
        Hold::Release => ("", now),
        Hold::Abandon => (writer, now),
    };
    let n = db_run!(conn, {
        use schema::uploads as t;
        diesel::update(held_upload!(t, id, generation, writer))
            .set((
                t::committed_offset.eq(p.committed),
                t::store_state.eq(p.store_state),
                t::writer_token.eq(p.writer_token),
                t::hash_state.eq(p.hash_state),
                t::expires_at.eq(p.expires_at),
                t::writer.eq(next_writer),
                t::lease_until.eq(until),
                t::updated_at.eq(now),
            ))
            .execute(conn)
            .await?
    });
    Ok(n == 1)
}

/// Renews `writer`'s lease on upload `id` in `generation`, if it still holds it.
pub async fn renew_upload(
    conn: &mut Conn,
    id: &str,
    generation: i64,
    writer: &str,
    lease_until: NaiveDateTime,
) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::uploads as t;
        diesel::update(held_upload!(t, id, generation, writer))
            .set(t::lease_until.eq(lease_until))
            .execute(conn)
            .await?
    });
    Ok(n == 1)
}

/// Marks upload `id` failed with `error`, if it is open in `generation` and `writer` holds it.
/// Returns whether it did.
pub async fn fail_upload(
    conn: &mut Conn,
    id: &str,
    generation: i64,
    writer: &str,
    error: &str,
    now: NaiveDateTime,
) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::uploads as t;
        diesel::update(held_upload!(t, id, generation, writer))
            .set((
                t::state.eq(UploadState::Failed.as_str()),
                t::error.eq(error),
                t::writer.eq(""),
                t::lease_until.eq(now),
                t::updated_at.eq(now),
            ))
            .execute(conn)
            .await?
    });
    Ok(n == 1)
}

/// Open uploads whose expiry passed before `now` and that no writer holds, at most `limit`.
pub async fn expired_uploads(conn: &mut Conn, now: NaiveDateTime, limit: i64) -> Result<Vec<UploadRow>> {
    let rows = db_run!(conn, {
        use schema::uploads as t;
        t::table
            .filter(t::state.eq(UploadState::Open.as_str()))
            .filter(t::expires_at.lt(now))
            .filter(unheld_upload!(t, now))
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

/// Makes an upload's content visible as `file`, in one transaction, if `writer` still holds it in
/// `generation`: the upload is marked complete, the blob inserted or its reference count raised,
/// and the file row inserted. Returns the object key that holds the content (another key than
/// `object_key` means identical content existed and the caller's object is a redundant copy), or
/// None when the writer no longer holds the upload (nothing changed). `new`: the upload's row,
/// not stored before, is inserted already complete in the same transaction.
#[expect(clippy::too_many_arguments, reason = "the compare-and-set's fields and the file")]
pub async fn complete_upload(
    conn: &mut Conn,
    new: Option<&UploadRow>,
    upload_id: &str,
    generation: i64,
    writer: &str,
    object_key: &str,
    file: &FileRow,
    now: NaiveDateTime,
) -> Result<Option<String>> {
    let key = db_run!(conn, {
        conn.transaction(async |conn| {
            use schema::uploads as u;
            if let Some(r) = new {
                // Known to no other stream: inserted complete, nothing to compare (one statement
                // less per small upload).
                let done = UploadRow {
                    state: UploadState::Complete,
                    file_id: Some(file.id.clone()),
                    committed_offset: file.size_bytes,
                    writer: String::new(),
                    lease_until: Some(now),
                    updated_at: now,
                    ..r.clone()
                };
                insert_upload_row!(conn, schema, &done);
                let key = record_file!(conn, schema, object_key, file, now);
                return Ok::<_, diesel::result::Error>(Some(key));
            }
            // The compare-and-set first (and the first write: see `delete_file`).
            let held = diesel::update(held_upload!(u, upload_id, generation, writer))
                .set((
                    u::state.eq(UploadState::Complete.as_str()),
                    u::file_id.eq(&file.id),
                    u::committed_offset.eq(file.size_bytes),
                    u::writer.eq(""),
                    u::lease_until.eq(now),
                    u::updated_at.eq(now),
                ))
                .execute(&mut *conn)
                .await?;
            if held == 0 {
                return Ok(None);
            }
            let key = record_file!(conn, schema, object_key, file, now);
            Ok::<_, diesel::result::Error>(Some(key))
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
    /// Owner is one of these (a scoped caller's owners).
    pub owner_in: Option<Vec<String>>,
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
        if let Some(os) = &filter.owner_in {
            q = q.filter(f::owner.eq_any(os.clone()));
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

/// Keys of open uploads that sort after `after` (None: from the start), in key order, at most
/// `limit` (read through the partial index on open uploads' keys).
pub async fn open_upload_keys_after(conn: &mut Conn, after: Option<&str>, limit: i64) -> Result<Vec<String>> {
    let rows = db_run!(conn, {
        use schema::uploads as u;
        let mut q = u::table
            .filter(u::state.eq(UploadState::Open.as_str()))
            .select(u::object_key)
            .order(u::object_key)
            .limit(limit)
            .into_boxed();
        if let Some(a) = after {
            q = q.filter(u::object_key.gt(a));
        }
        q.load(conn).await?
    });
    Ok(rows)
}

/// Object keys of blobs that sort after `after` (None: from the start), in key order, at most
/// `limit` (the unique index on the key covers the read: no table row is visited).
pub async fn blob_keys_after(conn: &mut Conn, after: Option<&str>, limit: i64) -> Result<Vec<String>> {
    let rows = db_run!(conn, {
        use schema::blobs as b;
        let mut q = b::table.select(b::object_key).order(b::object_key).limit(limit).into_boxed();
        if let Some(a) = after {
            q = q.filter(b::object_key.gt(a));
        }
        q.load(conn).await?
    });
    Ok(rows)
}

/// The blob stored at `key`: its BLAKE3 and whether it is marked lost.
pub async fn blob_at(conn: &mut Conn, key: &str) -> Result<Option<(String, bool)>> {
    let row = db_run!(conn, {
        use schema::blobs as b;
        b::table
            .filter(b::object_key.eq(key))
            .select((b::blake3, b::lost_at.is_not_null()))
            .first(conn)
            .await
            .optional()?
    });
    Ok(row)
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
