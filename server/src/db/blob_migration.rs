//! Blob migration persistence, PostgreSQL and SQLite: the application table is addressed by
//! identifiers validated against the live schema (`information_schema` / `pragma_table_xinfo`) and
//! quoted, never spliced from client text unchecked.

use chrono::NaiveDateTime;
use diesel::{
    OptionalExtension, QueryableByName,
    prelude::*,
    sql_types::{BigInt, Binary, Text},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Conn, Error, Result,
    files::{FileRow, record_file},
    is_unique_violation, quote,
};
use crate::{
    db_run,
    model::files::{BlobEncoding, BlobMigrationState},
};

/// A validated target: every identifier exists and is quoted.
#[derive(Debug, Clone)]
pub struct Target {
    /// `"schema"."table"`.
    pub table: String,
    /// `"key"`.
    pub key: String,
    /// SQL type of the key column (from a fixed list).
    pub key_type: &'static str,
    /// `"blob"`.
    pub blob: String,
    /// `"ref"`.
    pub reference: String,
    /// Blob column holds base64 text (else bytea / BLOB).
    pub base64: bool,
    /// The table is in SQLite (placeholders and casts differ).
    pub sqlite: bool,
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
}

#[derive(QueryableByName)]
struct SqliteColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
}

fn same_columns(key: &str, blob: &str, reference: &str) -> Option<String> {
    (key == blob || key == reference || blob == reference).then(|| "key, blob and reference columns must differ".into())
}

/// SQLite's type affinity of a declared column type (section 3.1 of its datatype documentation).
fn affinity(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        "integer"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "text"
    } else if t.contains("BLOB") || t.is_empty() {
        "blob"
    } else {
        "numeric"
    }
}

async fn resolve_sqlite(
    c: &mut super::SqliteConn,
    schema_name: &str,
    table: &str,
    key: &str,
    blob: &str,
    reference: &str,
    base64: bool,
) -> Result<std::result::Result<Target, String>> {
    let cols: Vec<SqliteColumn> = diesel::sql_query("SELECT name, type AS ty FROM pragma_table_xinfo(?, ?)")
        .bind::<Text, _>(table)
        .bind::<Text, _>(schema_name)
        .load(c)
        .await
        .unwrap_or_default();
    if cols.is_empty() {
        return Ok(Err(format!("table {schema_name}.{table} does not exist")));
    }
    let ty = |name: &str| cols.iter().find(|c| c.name == name).map(|c| affinity(&c.ty));
    match ty(key) {
        None => return Ok(Err(format!("column {key:?} does not exist in {table}"))),
        Some("integer" | "text" | "numeric") => {}
        Some(other) => return Ok(Err(format!("key column {key:?} has unsupported affinity {other}"))),
    }
    match (ty(blob), base64) {
        (None, _) => return Ok(Err(format!("column {blob:?} does not exist in {table}"))),
        (Some("text"), true) | (Some("blob"), false) => {}
        (Some(other), _) => {
            return Ok(Err(format!(
                "blob column {blob:?} has {other} affinity; expected {}",
                if base64 { "TEXT (base64)" } else { "BLOB" }
            )));
        }
    }
    match ty(reference) {
        None => return Ok(Err(format!("column {reference:?} does not exist in {table}"))),
        Some("text") => {}
        Some(other) => return Ok(Err(format!("reference column {reference:?} has {other} affinity; expected TEXT"))),
    }
    if let Some(e) = same_columns(key, blob, reference) {
        return Ok(Err(e));
    }
    Ok(Ok(Target {
        table: format!("{}.{}", quote(schema_name), quote(table)),
        key: quote(key),
        key_type: "",
        blob: quote(blob),
        reference: quote(reference),
        base64,
        sqlite: true,
    }))
}

/// Looks the columns up in the live schema. Errors name what is wrong (the caller maps them to
/// INVALID_ARGUMENT).
pub async fn resolve(
    conn: &mut Conn,
    schema_name: &str,
    table: &str,
    key: &str,
    blob: &str,
    reference: &str,
    base64: bool,
) -> Result<std::result::Result<Target, String>> {
    let c = match conn {
        Conn::Pg(c) => &mut **c,
        Conn::Sqlite(c) => return resolve_sqlite(c, schema_name, table, key, blob, reference, base64).await,
    };
    let cols: Vec<Column> = diesel::sql_query(
        "SELECT column_name::text AS column_name, data_type::text AS data_type FROM information_schema.columns
          WHERE table_schema = $1 AND table_name = $2",
    )
    .bind::<Text, _>(schema_name)
    .bind::<Text, _>(table)
    .load(c)
    .await?;
    if cols.is_empty() {
        return Ok(Err(format!("table {schema_name}.{table} does not exist")));
    }
    let ty = |name: &str| cols.iter().find(|c| c.column_name == name).map(|c| c.data_type.as_str());
    let key_type = match ty(key) {
        None => return Ok(Err(format!("column {key:?} does not exist in {table}"))),
        Some("integer") => "integer",
        Some("bigint") => "bigint",
        Some("smallint") => "smallint",
        Some("text") => "text",
        Some("character varying") => "varchar",
        Some("uuid") => "uuid",
        Some(other) => return Ok(Err(format!("key column {key:?} has unsupported type {other}"))),
    };
    match (ty(blob), base64) {
        (None, _) => return Ok(Err(format!("column {blob:?} does not exist in {table}"))),
        (Some("text" | "character varying"), true) | (Some("bytea"), false) => {}
        (Some(other), _) => {
            return Ok(Err(format!(
                "blob column {blob:?} is {other}; expected {}",
                if base64 { "text (base64)" } else { "bytea" }
            )));
        }
    }
    match ty(reference) {
        None => return Ok(Err(format!("column {reference:?} does not exist in {table}"))),
        Some("text" | "character varying" | "uuid") => {}
        Some(other) => return Ok(Err(format!("reference column {reference:?} has unsupported type {other}"))),
    }
    if let Some(e) = same_columns(key, blob, reference) {
        return Ok(Err(e));
    }
    Ok(Ok(Target {
        table: format!("{}.{}", quote(schema_name), quote(table)),
        key: quote(key),
        key_type,
        blob: quote(blob),
        reference: quote(reference),
        base64,
        sqlite: false,
    }))
}

#[derive(QueryableByName)]
struct Pending {
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
}

/// Rows still holding a blob and no reference, and the bytes their blobs occupy.
pub async fn pending(conn: &mut Conn, t: &Target) -> Result<(i64, i64)> {
    // SQLite's length() of a BLOB is its bytes; base64 text is ASCII, so characters are bytes.
    let (count, len) = if t.sqlite { ("count(*)", "length") } else { ("count(*)::int8", "octet_length") };
    let sql = format!(
        "SELECT {count} AS rows, CAST(COALESCE(sum({len}({b})), 0) AS BIGINT) AS bytes FROM {t}
          WHERE {b} IS NOT NULL AND {r} IS NULL",
        b = t.blob,
        r = t.reference,
        t = t.table
    );
    let p: Pending = db_run!(conn, { diesel::sql_query(sql).get_result(conn).await? });
    Ok((p.rows, p.bytes))
}

#[derive(QueryableByName)]
struct RowB64 {
    #[diesel(sql_type = Text)]
    k: String,
    #[diesel(sql_type = Text)]
    v: String,
}

#[derive(QueryableByName)]
struct RowBytea {
    #[diesel(sql_type = Text)]
    k: String,
    #[diesel(sql_type = Binary)]
    v: Vec<u8>,
}

/// One stored blob: the row's key (as text) and the stored value (base64 text as bytes, or raw).
pub type Stored = (String, Vec<u8>);

/// The next `limit` pending rows in key order. Migrated rows drop out of this set, so no cursor is
/// needed and a restarted migration simply continues.
pub async fn next_batch(conn: &mut Conn, t: &Target, limit: i64) -> Result<Vec<Stored>> {
    // SQLite columns hold whatever was stored: the value is cast to what the migration expects.
    let (value, placeholder) = match (t.sqlite, t.base64) {
        (true, true) => (format!("CAST({} AS TEXT)", t.blob), "?"),
        (true, false) => (format!("CAST({} AS BLOB)", t.blob), "?"),
        (false, _) => (t.blob.clone(), "$1"),
    };
    let sql = format!(
        "SELECT CAST({k} AS TEXT) AS k, {value} AS v FROM {t} WHERE {b} IS NOT NULL AND {r} IS NULL ORDER BY {k}
          LIMIT {placeholder}",
        k = t.key,
        b = t.blob,
        r = t.reference,
        t = t.table
    );
    Ok(db_run!(conn, {
        if t.base64 {
            diesel::sql_query(sql)
                .bind::<BigInt, _>(limit)
                .load::<RowB64>(conn)
                .await?
                .into_iter()
                .map(|r| (r.k, r.v.into_bytes()))
                .collect()
        } else {
            diesel::sql_query(sql)
                .bind::<BigInt, _>(limit)
                .load::<RowBytea>(conn)
                .await?
                .into_iter()
                .map(|r| (r.k, r.v))
                .collect()
        }
    }))
}

/// What [`commit_row`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// The row points at the file now; the content is in this object.
    Stored(String),
    /// The row changed meanwhile (moved by someone else, or its blob cleared): nothing written.
    RowChanged,
    /// Another instance runs the migration now: nothing written.
    LeaseLost,
}

/// In one transaction: advances `runner`'s migration, records `file` (and its blob, or a new
/// reference to identical content), points the row at it and clears its blob.
#[expect(clippy::too_many_arguments, reason = "one row's move: table, row, object, file, migration and runner")]
pub async fn commit_row(
    conn: &mut Conn,
    t: &Target,
    key: &str,
    object_key: &str,
    file: &FileRow,
    migration: &str,
    runner: &str,
    now: NaiveDateTime,
) -> Result<Committed> {
    // On SQLite the key parameter takes the key column's affinity in the comparison.
    let update = if t.sqlite {
        format!(
            "UPDATE {t} SET {r} = ?, {b} = NULL WHERE {k} = ? AND {r} IS NULL AND {b} IS NOT NULL",
            t = t.table,
            r = t.reference,
            b = t.blob,
            k = t.key
        )
    } else {
        format!(
            "UPDATE {t} SET {r} = $1, {b} = NULL WHERE {k} = CAST($2 AS {ty}) AND {r} IS NULL AND {b} IS NOT NULL",
            t = t.table,
            r = t.reference,
            b = t.blob,
            k = t.key,
            ty = t.key_type
        )
    };
    let out = db_run!(conn, {
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            use schema::blob_migrations as m;
            // The runner's claim first: a runner that lost its lease writes nothing.
            let held = diesel::update(
                m::table
                    .filter(m::id.eq(migration))
                    .filter(m::runner.eq(runner))
                    .filter(m::state.eq(BlobMigrationState::Running.as_str())),
            )
            .set((
                m::rows_done.eq(m::rows_done + 1i64),
                m::bytes_done.eq(m::bytes_done + file.size_bytes),
                m::updated_at.eq(now),
            ))
            .execute(&mut *c)
            .await?;
            if held != 1 {
                return Ok(Committed::LeaseLost);
            }
            let n = diesel::sql_query(&update).bind::<Text, _>(&file.id).bind::<Text, _>(key).execute(&mut *c).await?;
            if n != 1 {
                return Err(diesel::result::Error::RollbackTransaction);
            }
            let stored = record_file!(c, schema, object_key, file, now);
            Ok(Committed::Stored(stored))
        })
        .await
    });
    match out {
        Err(diesel::result::Error::RollbackTransaction) => Ok(Committed::RowChanged),
        r => Ok(r?),
    }
}

/// A migration's catalog row.
#[derive(Debug, Clone)]
pub struct MigrationRow {
    /// Id.
    pub id: String,
    /// Schema.
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Key column.
    pub key_column: String,
    /// Blob column.
    pub blob_column: String,
    /// Reference column.
    pub reference_column: String,
    /// How the blob column holds its blobs.
    pub encoding: BlobEncoding,
    /// Rows per batch.
    pub batch_size: i64,
    /// Owner of created files.
    pub owner: String,
    /// MIME type of created files.
    pub content_type: String,
    /// State.
    pub state: BlobMigrationState,
    /// Rows moved.
    pub rows_done: i64,
    /// Bytes moved.
    pub bytes_done: i64,
    /// Failure.
    pub error: Option<String>,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Updated.
    pub updated_at: NaiveDateTime,
    /// The instance running it (None: started by a strata without leases).
    pub runner: Option<String>,
    /// Its runner holds it until then (the database's time).
    pub lease_until: Option<NaiveDateTime>,
}

/// The columns as read; [`MigrationRow`]'s `TryFrom` is the one place their text becomes enums.
#[derive(Queryable)]
struct StoredMigration {
    id: String,
    schema_name: String,
    table_name: String,
    key_column: String,
    blob_column: String,
    reference_column: String,
    encoding: String,
    batch_size: i64,
    owner: String,
    content_type: String,
    state: String,
    rows_done: i64,
    bytes_done: i64,
    error: Option<String>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    runner: Option<String>,
    lease_until: Option<NaiveDateTime>,
}

impl TryFrom<StoredMigration> for MigrationRow {
    type Error = Error;
    fn try_from(r: StoredMigration) -> Result<Self> {
        Ok(MigrationRow {
            id: r.id,
            schema_name: r.schema_name,
            table_name: r.table_name,
            key_column: r.key_column,
            blob_column: r.blob_column,
            reference_column: r.reference_column,
            encoding: r.encoding.parse()?,
            batch_size: r.batch_size,
            owner: r.owner,
            content_type: r.content_type,
            state: r.state.parse()?,
            rows_done: r.rows_done,
            bytes_done: r.bytes_done,
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            runner: r.runner,
            lease_until: r.lease_until,
        })
    }
}

/// Stores a new migration; false when one of the same column is running already (the unique
/// index `blob_migrations_one_running`: one runner per column across the fleet).
pub async fn insert(conn: &mut Conn, m: &MigrationRow) -> Result<bool> {
    let r = db_run!(conn, {
        use schema::blob_migrations as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(&m.id),
                t::schema_name.eq(&m.schema_name),
                t::table_name.eq(&m.table_name),
                t::key_column.eq(&m.key_column),
                t::blob_column.eq(&m.blob_column),
                t::reference_column.eq(&m.reference_column),
                t::encoding.eq(m.encoding.as_str()),
                t::batch_size.eq(m.batch_size),
                t::owner.eq(&m.owner),
                t::content_type.eq(&m.content_type),
                t::state.eq(m.state.as_str()),
                t::rows_done.eq(m.rows_done),
                t::bytes_done.eq(m.bytes_done),
                t::error.eq(&m.error),
                t::created_at.eq(m.created_at),
                t::updated_at.eq(m.updated_at),
                t::runner.eq(&m.runner),
                t::lease_until.eq(m.lease_until),
            ))
            .execute(conn)
            .await
    });
    match r {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The running migration of a column, if any.
pub async fn running_on(conn: &mut Conn, schema_name: &str, table: &str, column: &str) -> Result<Option<MigrationRow>> {
    let row = db_run!(conn, {
        use schema::blob_migrations as t;
        t::table
            .filter(t::schema_name.eq(schema_name))
            .filter(t::table_name.eq(table))
            .filter(t::blob_column.eq(column))
            .filter(t::state.eq(BlobMigrationState::Running.as_str()))
            .first::<StoredMigration>(conn)
            .await
            .optional()?
    });
    row.map(MigrationRow::try_from).transpose()
}

/// Gives up `runner`'s lease on migration `id` (this instance is stopping): it ends `now`, so
/// another instance takes it over at its next check.
pub async fn release(conn: &mut Conn, id: &str, runner: &str, now: NaiveDateTime) -> Result<()> {
    db_run!(conn, {
        use schema::blob_migrations as t;
        diesel::update(t::table.filter(t::id.eq(id)).filter(t::runner.eq(runner)))
            .set(t::lease_until.eq(now))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// The migration `id`.
pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<MigrationRow>> {
    let row = db_run!(conn, {
        use schema::blob_migrations as t;
        t::table.filter(t::id.eq(id)).first::<StoredMigration>(conn).await.optional()?
    });
    row.map(MigrationRow::try_from).transpose()
}

/// Running migrations whose runner's lease lapsed by `now`, or that have no lease (started by a
/// strata of the previous version, which runs them without one) and made no progress since
/// `stale_before`: another instance may take them over with [`take_over`]. The second rule keeps
/// an upgraded instance from running a migration beside the old instance still running it.
pub async fn lapsed(conn: &mut Conn, now: NaiveDateTime, stale_before: NaiveDateTime) -> Result<Vec<MigrationRow>> {
    let rows = db_run!(conn, {
        use schema::blob_migrations as t;
        t::table
            .filter(t::state.eq(BlobMigrationState::Running.as_str()))
            .filter(t::lease_until.lt(now).or(t::lease_until.is_null().and(t::updated_at.lt(stale_before))))
            .load::<StoredMigration>(conn)
            .await?
    });
    rows.into_iter().map(MigrationRow::try_from).collect()
}

/// Takes the lapsed migration `m` over for `runner` until `until` (compare-and-set on the lease it
/// was read with): true for exactly one of the instances that try.
pub async fn take_over(conn: &mut Conn, m: &MigrationRow, runner: &str, until: NaiveDateTime) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::blob_migrations as t;
        let running = t::table.filter(t::id.eq(&m.id)).filter(t::state.eq(BlobMigrationState::Running.as_str()));
        let set = (t::runner.eq(runner), t::lease_until.eq(until));
        match m.lease_until {
            None => diesel::update(running.filter(t::lease_until.is_null())).set(set).execute(conn).await?,
            Some(held) => diesel::update(running.filter(t::lease_until.eq(held))).set(set).execute(conn).await?,
        }
    });
    Ok(n == 1)
}

/// Extends `runner`'s lease on migration `id` to `until`; false when another instance took it over
/// (or it ended).
pub async fn renew(conn: &mut Conn, id: &str, runner: &str, until: NaiveDateTime) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::blob_migrations as t;
        diesel::update(
            t::table
                .filter(t::id.eq(id))
                .filter(t::runner.eq(runner))
                .filter(t::state.eq(BlobMigrationState::Running.as_str())),
        )
        .set(t::lease_until.eq(until))
        .execute(conn)
        .await?
    });
    Ok(n == 1)
}

/// Records how `runner`'s run of migration `id` ended (state and error); false, and nothing
/// written, when another instance holds it now.
pub async fn set_state(
    conn: &mut Conn,
    id: &str,
    runner: &str,
    state: BlobMigrationState,
    error: Option<&str>,
    now: NaiveDateTime,
) -> Result<bool> {
    let n = db_run!(conn, {
        use schema::blob_migrations as t;
        diesel::update(
            t::table
                .filter(t::id.eq(id))
                .filter(t::runner.eq(runner))
                .filter(t::state.eq(BlobMigrationState::Running.as_str())),
        )
        .set((
            t::state.eq(state.as_str()),
            t::error.eq(error),
            t::updated_at.eq(now),
            t::lease_until.eq(None::<NaiveDateTime>),
        ))
        .execute(conn)
        .await?
    });
    Ok(n == 1)
}
