//! Blob migration: moves blobs stored in an application table (base64 text or bytea) into files.
//! Each row is written to the object store, read back and verified, then — in one transaction —
//! recorded as a file, pointed at by the row's reference column and cleared from its blob column.
//! A crash at any point leaves each row either untouched or fully migrated; a running migration
//! resumes at start-up. PostgreSQL and SQLite.

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;

use super::{Context, Error, Result, ident, now, store_unavailable};
use crate::db::{
    BackendKind,
    blob_migration::{self as store, MigrationRow, Target},
    files::FileRow,
};
pub use crate::model::files::{BlobEncoding, BlobMigrationState};

/// A validated StartBlobMigration request.
#[derive(Debug, Clone)]
pub struct StartRequest {
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
    /// Base64 text (else bytea).
    pub base64: bool,
    /// Rows per batch.
    pub batch_size: i64,
    /// Count only.
    pub dry_run: bool,
    /// Owner of created files.
    pub owner: String,
    /// MIME type of created files.
    pub content_type: String,
}

impl StartRequest {
    /// Checks the shape of the request (existence is checked against the live schema later).
    pub fn validate(mut self) -> Result<Self> {
        if !self.schema_name.is_empty() {
            ident("schema", &self.schema_name)?;
        }
        ident("table", &self.table_name)?;
        ident("key column", &self.key_column)?;
        ident("blob column", &self.blob_column)?;
        ident("reference column", &self.reference_column)?;
        self.batch_size = match self.batch_size {
            0 => 100,
            n if !(1..=10_000).contains(&n) => {
                return Err(Error::InvalidArgument("batch_size must be between 1 and 10000".into()));
            }
            n => n,
        };
        if self.content_type.is_empty() {
            self.content_type = "application/octet-stream".into();
        }
        Ok(self)
    }
}

/// A migration's progress.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Id.
    pub id: String,
    /// State.
    pub state: BlobMigrationState,
    /// Rows moved.
    pub rows_done: i64,
    /// Bytes moved.
    pub bytes_done: i64,
    /// Failure.
    pub error: Option<String>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
}

impl From<MigrationRow> for Migration {
    fn from(r: MigrationRow) -> Self {
        Migration {
            id: r.id,
            state: r.state,
            rows_done: r.rows_done,
            bytes_done: r.bytes_done,
            error: r.error,
            updated_at: r.updated_at.and_utc(),
        }
    }
}

async fn target(ctx: &Context, r: &MigrationRow) -> Result<Target> {
    let mut conn = ctx.db.write().await?;
    store::resolve(
        &mut conn,
        &r.schema_name,
        &r.table_name,
        &r.key_column,
        &r.blob_column,
        &r.reference_column,
        r.encoding == BlobEncoding::Base64,
    )
    .await?
    .map_err(Error::InvalidArgument)
}

/// Starts a migration (or, with `dry_run`, only counts). Returns it and the pending rows and bytes.
pub async fn start(ctx: &Context, mut req: StartRequest) -> Result<(Option<Migration>, i64, i64)> {
    if req.schema_name.is_empty() {
        req.schema_name = match ctx.db.backend() {
            BackendKind::Postgres => "public",
            BackendKind::Sqlite => "main",
        }
        .into();
    }
    let t = now();
    let row = MigrationRow {
        id: uuid::Uuid::now_v7().to_string(),
        schema_name: req.schema_name,
        table_name: req.table_name,
        key_column: req.key_column,
        blob_column: req.blob_column,
        reference_column: req.reference_column,
        encoding: if req.base64 { BlobEncoding::Base64 } else { BlobEncoding::Bytea },
        batch_size: req.batch_size,
        owner: req.owner,
        content_type: req.content_type,
        state: BlobMigrationState::Running,
        rows_done: 0,
        bytes_done: 0,
        error: None,
        created_at: t,
        updated_at: t,
    };
    let target = target(ctx, &row).await?;
    let mut conn = ctx.db.write().await?;
    let (rows, bytes) = store::pending(&mut conn, &target).await?;
    if req.dry_run {
        return Ok((None, rows, bytes));
    }
    store::insert(&mut conn, &row).await?;
    drop(conn);
    ctx.tasks.spawn(run(ctx.clone(), row.clone()));
    Ok((Some(row.into()), rows, bytes))
}

/// The migration `id`.
pub async fn get(ctx: &Context, id: &str) -> Result<Migration> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    store::get(&mut conn, id).await?.map(Migration::from).ok_or_else(|| Error::NotFound(format!("blob migration {id}")))
}

/// Resumes every migration left running by a previous process.
pub async fn resume_all(ctx: &Context) -> Result<usize> {
    let mut conn = ctx.db.write().await?;
    let rows = store::running(&mut conn).await?;
    let n = rows.len();
    for r in rows {
        tracing::info!(migration = %r.id, done = r.rows_done, "resuming blob migration");
        ctx.tasks.spawn(run(ctx.clone(), r));
    }
    Ok(n)
}

/// Runs a migration to completion, until the server stops, or until a row fails.
async fn run(ctx: Context, row: MigrationRow) {
    let stop = ctx.background.clone();
    // Stopping the server drops the work wherever it is, as a crash would: each row is atomic.
    let outcome = tokio::select! {
        biased;
        _ = stop.cancelled() => return,
        r = run_batches(&ctx, &row) => r,
    };
    if matches!(outcome, Err(Error::Cancelled(_))) && stop.is_cancelled() {
        // An object store call saw the same stop first: still a stop, not a failure.
        return;
    }
    let (state, error) = match &outcome {
        Ok(()) => (BlobMigrationState::Done, None),
        Err(e) => (BlobMigrationState::Failed, Some(e.to_string())),
    };
    if let Err(e) = &outcome {
        tracing::error!(migration = %row.id, error = %e, "blob migration failed");
    }
    match ctx.db.write().await {
        Ok(mut conn) => {
            if let Err(e) = store::set_state(&mut conn, &row.id, state, error.as_deref(), now()).await {
                tracing::error!(migration = %row.id, error = %e, "recording the blob migration's end failed");
            }
        }
        Err(e) => tracing::error!(migration = %row.id, error = %e, "recording the blob migration's end failed"),
    }
}

async fn run_batches(ctx: &Context, row: &MigrationRow) -> Result<()> {
    let target = target(ctx, row).await?;
    loop {
        let mut conn = ctx.db.write().await?;
        let batch = store::next_batch(&mut conn, &target, row.batch_size).await?;
        drop(conn);
        if batch.is_empty() {
            return Ok(());
        }
        for (key, stored) in batch {
            let data = if target.base64 {
                let text: Vec<u8> = stored.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(&text)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&text))
                    .map_err(|e| Error::InvalidArgument(format!("row {key}: blob is not base64: {e}")))?
            } else {
                stored
            };
            move_one(ctx, &target, row, &key, Bytes::from(data)).await?;
        }
    }
}

async fn move_one(ctx: &Context, target: &Target, row: &MigrationRow, key: &str, data: Bytes) -> Result<()> {
    let object_key = format!("blobs/{}", uuid::Uuid::now_v7());
    let blake3 = blake3::hash(&data).to_hex().to_string();
    let size = data.len() as u64;
    let mut w = ctx.objects.begin_write(&object_key, Some(size), &ctx.background).await.map_err(store_unavailable)?;
    w.write(data).await.map_err(store_unavailable)?;
    w.finish().await.map_err(store_unavailable)?;
    // Verify what the store holds before the table forgets the blob.
    let mut h = blake3::Hasher::new();
    let mut s = ctx.objects.get(&object_key, 0, None, &ctx.background).await.map_err(store_unavailable)?;
    while let Some(chunk) = s.try_next().await.map_err(store_unavailable)? {
        h.update(&chunk);
    }
    if h.finalize().to_hex().as_str() != blake3 {
        let _ = ctx.objects.delete(&object_key, &ctx.background).await;
        return Err(Error::DataLoss(format!("row {key}: the stored object does not match the blob")));
    }
    let file = FileRow {
        id: uuid::Uuid::now_v7().to_string(),
        name: format!("{}.{}:{key}", row.table_name, row.blob_column),
        content_type: row.content_type.clone(),
        owner: row.owner.clone(),
        size_bytes: size as i64,
        blake3,
        sha256: None,
        metadata: serde_json::json!({ "table": row.table_name, "key": key }).to_string(),
        created_at: now(),
        lost: false,
    };
    let mut conn = ctx.db.write().await?;
    let stored = store::commit_row(&mut conn, target, key, &object_key, &file, &row.id, now()).await?;
    drop(conn);
    if stored.as_deref() != Some(object_key.as_str()) {
        // Identical content existed, or the row changed meanwhile: our copy is not needed.
        let _ = ctx.objects.delete(&object_key, &ctx.background).await;
    }
    Ok(())
}
