//! Blob migration: moves blobs stored in an application table (base64 text or bytea) into files.
//! Each row is written to the object store, read back and verified, then — in one transaction —
//! recorded as a file, pointed at by the row's reference column and cleared from its blob column.
//! A crash at any point leaves each row either untouched or fully migrated. One instance of the
//! fleet runs a migration at a time, holding a lease on it (on the database's clock, renewed every
//! third of `run_lease`); when its runner dies, another instance takes it over once the lease
//! lapses (`jobs::blob_migrations`) and continues where it stopped. PostgreSQL and SQLite.

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;

use super::{Context, Error, Result, ident, store_unavailable};
use crate::db::{
    BackendKind,
    blob_migration::{self as store, Committed, MigrationRow, Target},
    files::FileRow,
};
pub use crate::model::files::{BlobEncoding, BlobMigrationState};
use crate::objects::SizeHint;

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
    let t = ctx.now();
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
        runner: Some(ctx.instance_id.clone()),
        lease_until: Some(lease_from(ctx, t)),
    };
    let target = target(ctx, &row).await?;
    let mut conn = ctx.db.write().await?;
    let (rows, bytes) = store::pending(&mut conn, &target).await?;
    if req.dry_run {
        return Ok((None, rows, bytes));
    }
    if !store::insert(&mut conn, &row).await? {
        let running = store::running_on(&mut conn, &row.schema_name, &row.table_name, &row.blob_column).await?;
        return Err(Error::AlreadyExists(format!(
            "a migration of {}.{}.{} ({})",
            row.schema_name,
            row.table_name,
            row.blob_column,
            running.map_or_else(|| "just ended".to_owned(), |r| r.id)
        )));
    }
    drop(conn);
    ctx.spawn("blob_migration", run(ctx.clone(), row.clone()));
    Ok((Some(row.into()), rows, bytes))
}

/// The migration `id`.
pub async fn get(ctx: &Context, id: &str) -> Result<Migration> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    store::get(&mut conn, id).await?.map(Migration::from).ok_or_else(|| Error::NotFound(format!("blob migration {id}")))
}

/// When a lease taken at `t` ends.
fn lease_from(ctx: &Context, t: chrono::NaiveDateTime) -> chrono::NaiveDateTime {
    t + ctx.run_lease()
}

/// Takes over every running migration whose runner's lease lapsed (its instance stopped or died;
/// or it was started by a strata without leases) and runs it here. Each is taken by exactly one
/// instance (compare-and-set on the lease). Returns how many this instance took.
pub async fn take_over_lapsed(ctx: &Context) -> Result<usize> {
    let mut conn = ctx.db.write().await?;
    let t = ctx.now();
    let mut taken = 0;
    let stale_before = t - ctx.run_lease();
    for r in store::lapsed(&mut conn, t, stale_before).await? {
        let until = lease_from(ctx, t);
        if store::take_over(&mut conn, &r, &ctx.instance_id, until).await? {
            tracing::info!(migration = %r.id, done = r.rows_done, from = ?r.runner, "taking over blob migration");
            let r = MigrationRow { runner: Some(ctx.instance_id.clone()), lease_until: Some(until), ..r };
            ctx.spawn("blob_migration", run(ctx.clone(), r));
            taken += 1;
        }
    }
    Ok(taken)
}

/// Runs a migration held here to completion, until the server stops, until a row fails, or until
/// its lease is lost (another instance took it over: it then carries on, this one stops quietly).
async fn run(ctx: Context, row: MigrationRow) {
    let stop = ctx.background.clone();
    // Stopping the server drops the work wherever it is, as a crash would: each row is atomic.
    let outcome = tokio::select! {
        biased;
        _ = stop.cancelled() => return release(&ctx, &row.id).await,
        lost = hold_lease(&ctx, &row.id) => lost,
        r = run_batches(&ctx, &row) => r,
    };
    if matches!(outcome, Err(Error::Cancelled(_))) && stop.is_cancelled() {
        // An object store call saw the same stop first: still a stop, not a failure.
        return release(&ctx, &row.id).await;
    }
    if matches!(outcome, Err(Error::Busy(_))) {
        tracing::warn!(migration = %row.id, "blob migration lease lost; another instance runs it now");
        return;
    }
    let (state, error) = match &outcome {
        Ok(()) => (BlobMigrationState::Done, None),
        Err(e) => (BlobMigrationState::Failed, Some(e.to_string())),
    };
    if let Err(e) = &outcome {
        tracing::error!(migration = %row.id, error = %e, "blob migration failed");
    }
    let recorded = async {
        let mut conn = ctx.db.write().await?;
        Ok::<_, Error>(
            store::set_state(&mut conn, &row.id, &ctx.instance_id, state, error.as_deref(), ctx.now()).await?,
        )
    };
    match recorded.await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(migration = %row.id, "blob migration taken over before its end was recorded"),
        Err(e) => tracing::error!(migration = %row.id, error = %e, "recording the blob migration's end failed"),
    }
}

/// Gives up this instance's lease on migration `id` as the server stops, so another instance
/// takes it over at once rather than when the lease lapses.
async fn release(ctx: &Context, id: &str) {
    let released = async {
        let mut conn = ctx.db.write().await?;
        Ok::<_, Error>(store::release(&mut conn, id, &ctx.instance_id, ctx.now()).await?)
    };
    if let Err(e) = released.await {
        tracing::warn!(migration = %id, error = %e, "releasing the blob migration lease failed; it lapses instead");
    }
}

/// Renews this instance's lease on migration `id` every third of `run_lease`; returns (as
/// `Error::Busy`) once another instance holds it. A failed renewal is retried: the lease lapses
/// only if renewals keep failing for a whole `run_lease`.
async fn hold_lease(ctx: &Context, id: &str) -> Result<()> {
    let every = ctx.config.run_lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let renewed = async {
            let mut conn = ctx.db.write().await?;
            Ok::<_, Error>(store::renew(&mut conn, id, &ctx.instance_id, lease_from(ctx, ctx.now())).await?)
        };
        match renewed.await {
            Ok(true) => {}
            Ok(false) => return Err(Error::Busy(format!("blob migration {id} is run by another instance"))),
            Err(e) => tracing::warn!(migration = %id, error = %e, "renewing the blob migration lease failed; retrying"),
        }
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
    let mut w = ctx
        .objects
        .begin_write(&object_key, SizeHint::Exact(size), &ctx.background)
        .await
        .map_err(store_unavailable)?;
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
        created_at: ctx.now(),
        lost: false,
    };
    let mut conn = ctx.db.write().await?;
    let committed =
        store::commit_row(&mut conn, target, key, &object_key, &file, &row.id, &ctx.instance_id, ctx.now()).await?;
    drop(conn);
    if committed != Committed::Stored(object_key.clone()) {
        // Identical content existed, the row changed meanwhile, or another instance runs the
        // migration now: our copy is not needed.
        let _ = ctx.objects.delete(&object_key, &ctx.background).await;
    }
    if committed == Committed::LeaseLost {
        return Err(Error::Busy(format!("blob migration {} is run by another instance", row.id)));
    }
    Ok(())
}
