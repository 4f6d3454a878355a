//! Reconciliation of the object store with the catalog — orphan objects, lost content — as a long
//! operation (see `service::operation`).
//!
//! Memory stays bounded whatever the store's size: the listing comes a page at a time in key order
//! and is merged with the catalog's blobs read in the same order and range, a page at a time; each
//! page's findings are recorded as the operation's items with the key reached, which is where
//! another instance continues should this one stop.

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Serialize};

use super::object_err;
use crate::{
    db::files as store,
    objects::ObjectInfo,
    service::{
        Context, Error, Result,
        operation::{self, Handle, ItemKind, NewItem, Operation, OperationKind},
    },
};

/// Where content objects live.
const PREFIX: &str = "blobs/";
/// Objects listed (S3 lists at most 1000 per call), and blobs read, per page. Larger pages did not
/// go faster (100,000 objects on file://: 1000 per page 185–300 ms, 5000 per page 195–278 ms) but
/// grew the server's peak RSS (37 vs 67 MiB).
const PAGE: usize = 1000;
/// The most items recorded in one step.
const ITEMS_PER_STEP: usize = 1000;

/// What ReconcileObjects was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconcileRequest {
    /// Delete old orphans and mark lost content.
    pub repair: bool,
    /// Orphans younger than this are never deleted.
    pub grace_ms: u64,
}

/// Counters of a reconciliation, and the key it reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconcileProgress {
    /// Every key up to this one is done (listing and catalog).
    pub after: Option<String>,
    /// Objects listed.
    pub objects_scanned: i64,
    /// Catalog blobs checked.
    pub blobs_scanned: i64,
    /// Objects no catalog row references.
    pub orphans: i64,
    /// Orphans deleted.
    pub deleted: i64,
    /// Content whose object is missing.
    pub lost_content: i64,
    /// Files referencing lost content.
    pub lost_files: i64,
}

/// Starts a reconciliation (one at a time across the fleet) and returns it at once.
pub async fn start(ctx: &Context, repair: bool, grace: Duration) -> Result<Operation> {
    let req = ReconcileRequest { repair, grace_ms: grace.as_millis().min(u64::MAX as u128) as u64 };
    let (row, runner) =
        operation::begin(ctx, OperationKind::Reconcile, "reconcile".into(), PREFIX.into(), &req).await?;
    let op = Operation::from(row.clone());
    operation::drive(ctx, row, runner, work);
    Ok(op)
}

/// The catalog's blobs in a key range, read a page at a time.
struct CatalogRange {
    after: Option<String>,
    upto: Option<String>,
    buf: std::collections::VecDeque<(String, String, bool)>,
    exhausted: bool,
}

impl CatalogRange {
    async fn peek(&mut self, ctx: &Context) -> Result<Option<&(String, String, bool)>> {
        if self.buf.is_empty() && !self.exhausted {
            let mut conn = ctx.db.read_prefer_primary().await?.0;
            let rows =
                store::blobs_in_range(&mut conn, self.after.as_deref(), self.upto.as_deref(), PAGE as i64).await?;
            self.exhausted = rows.len() < PAGE;
            if let Some(last) = rows.last() {
                self.after = Some(last.1.clone());
            }
            self.buf.extend(rows);
        }
        Ok(self.buf.front())
    }
}

/// Runs (or continues) the reconciliation held by `h`.
pub async fn work(h: Handle) -> Result<()> {
    let ctx = &h.ctx;
    let req: ReconcileRequest = h.request()?;
    let grace = Duration::from_millis(req.grace_ms);
    let mut p: ReconcileProgress = h.progress();
    // Without each object's time: only orphans need it, and they are looked at one by one.
    let mut lister = ctx.objects.lister(PREFIX, p.after.as_deref(), PAGE, false, h.stop());
    let mut items = Vec::new();
    loop {
        let page = lister.next_page().await.map_err(|e| stopped_or(&h, e))?;
        let last_page = page.is_none();
        let page = page.unwrap_or_default();
        // Keys of open uploads in this page's range: their objects are not orphans. (Blobs are
        // matched by the merge below.)
        let upto = page.last().map(|o| o.key.clone());
        let open: HashSet<String> = store::open_upload_keys_in_range(
            &mut ctx.db.read_prefer_primary().await?.0,
            p.after.as_deref(),
            upto.as_deref(),
        )
        .await?
        .into_iter()
        .collect();
        let mut catalog = CatalogRange { after: p.after.clone(), upto, buf: Default::default(), exhausted: false };
        let mut objects = page.into_iter().peekable();
        // Merge the page with the catalog's blobs of the same range, in key order.
        loop {
            let next_blob = catalog.peek(ctx).await?.map(|b| b.1.clone());
            let reached = match (objects.peek(), next_blob) {
                (None, None) => break,
                (Some(o), Some(b)) if o.key == b => {
                    catalog.buf.pop_front();
                    p.blobs_scanned += 1;
                    p.objects_scanned += 1;
                    objects.next().expect("peeked").key
                }
                (Some(o), b) if b.as_ref().is_none_or(|b| o.key < *b) => {
                    let o = objects.next().expect("peeked");
                    p.objects_scanned += 1;
                    if !open.contains(&o.key) {
                        orphan(&h, &req, grace, &o, &mut p, &mut items).await?;
                    }
                    o.key
                }
                _ => {
                    let (blake3, key, already) = catalog.buf.pop_front().expect("peeked");
                    p.blobs_scanned += 1;
                    missing(&h, &req, &blake3, &key, already, &mut p, &mut items).await?;
                    key
                }
            };
            p.after = Some(reached);
            if items.len() >= ITEMS_PER_STEP {
                record(&h, &p, &mut items).await?;
            }
        }
        record(&h, &p, &mut items).await?;
        if last_page {
            return Ok(());
        }
    }
}

async fn record(h: &Handle, p: &ReconcileProgress, items: &mut Vec<NewItem>) -> Result<()> {
    let phase = match &p.after {
        Some(k) => format!("at {k}"),
        None => "listing".into(),
    };
    h.step(&phase, p.objects_scanned, 0, p, items).await?;
    items.clear();
    Ok(())
}

/// An object no catalog row referenced when its page was read: reported, and with repair deleted
/// once older than the grace period and still unreferenced right before.
async fn orphan(
    h: &Handle,
    req: &ReconcileRequest,
    grace: Duration,
    o: &ObjectInfo,
    p: &mut ReconcileProgress,
    items: &mut Vec<NewItem>,
) -> Result<()> {
    let ctx = &h.ctx;
    p.orphans += 1;
    items.push(NewItem::new(ItemKind::Orphan, &o.key));
    if !req.repair {
        return Ok(());
    }
    let modified = match o.modified {
        Some(m) => Some(m),
        None => ctx.objects.stat(&o.key, h.stop()).await.map_err(|e| stopped_or(h, e))?.and_then(|i| i.modified),
    };
    // The objects' times come from the store's clock (S3) or the kernel's (file://): compare with
    // the database's, which the fleet agrees on, not with this process's, which may be off.
    let now = std::time::SystemTime::from(ctx.now_utc());
    let old_enough = modified.is_some_and(|m| now.duration_since(m).unwrap_or_default() >= grace);
    if !old_enough {
        return Ok(());
    }
    if store::key_referenced(&mut ctx.db.write().await?, &o.key).await? {
        return Ok(());
    }
    ctx.objects.delete(&o.key, h.stop()).await.map_err(|e| stopped_or(h, e))?;
    tracing::info!(key = %o.key, "deleted orphan object");
    p.deleted += 1;
    items.push(NewItem::new(ItemKind::Deleted, &o.key));
    Ok(())
}

/// A catalog blob the listing did not show: checked again (listed before the object was deleted
/// along with its last file?), then reported, and with repair marked lost.
async fn missing(
    h: &Handle,
    req: &ReconcileRequest,
    blake3: &str,
    key: &str,
    already: bool,
    p: &mut ReconcileProgress,
    items: &mut Vec<NewItem>,
) -> Result<()> {
    let ctx = &h.ctx;
    if ctx.objects.head(key, h.stop()).await.map_err(|e| stopped_or(h, e))?.is_some() {
        return Ok(());
    }
    let mut conn = ctx.db.write().await?;
    if !store::key_referenced(&mut conn, key).await? {
        return Ok(());
    }
    let files = if req.repair && !already {
        let ids = store::mark_lost(&mut conn, blake3, ctx.now()).await?;
        tracing::error!(blake3 = %blake3, key = %key, files = ids.len(), "content missing from the object store; marked lost");
        ids
    } else {
        store::files_of(&mut conn, blake3).await?
    };
    p.lost_content += 1;
    p.lost_files += files.len() as i64;
    items.push(NewItem::new(ItemKind::LostContent, blake3));
    items.extend(files.iter().map(|f| NewItem::new(ItemKind::LostFile, f)));
    Ok(())
}

/// An object-store error, or the operation's stop when that is what ended the call.
fn stopped_or(h: &Handle, e: crate::objects::Error) -> Error {
    match h.check() {
        Err(stop) => stop,
        Ok(()) => object_err(e),
    }
}
