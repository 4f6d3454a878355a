//! Reconciliation of the object store with the catalog — orphan objects, lost content — as a long
//! operation (see `service::operation`).
//!
//! Memory stays bounded whatever the store's size: the listing comes a page at a time in key order
//! and is merged with the catalog's blobs read in the same order and range, a page at a time; each
//! page's findings are recorded as the operation's items with the key reached, which is where
//! another instance continues should this one stop.

use std::time::{Duration, Instant};

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
/// A step without findings is recorded this often, not once per page: a step is a write
/// transaction. (With the catalog read in a task of its own, this took 100,000 objects on
/// file:// from 240 to 120 ms; see docs/benchmarks.md.)
const STEP_EVERY: Duration = Duration::from_secs(1);

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

/// Where a [`KeyStream`] reads its keys from.
#[derive(Clone, Copy)]
enum Keys {
    /// Blobs' object keys.
    Blobs,
    /// Open uploads' object keys (their objects are not orphans).
    OpenUploads,
}

/// Catalog keys in key order, read a page at a time by a task of its own, so that the database
/// reads run on the other core while this one merges them with the listing (read in line, the
/// reads were most of a reconciliation's time). Holds at most three pages: the one being merged,
/// one waiting in the channel and the one being read.
struct KeyStream {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<String>>>,
    buf: std::collections::VecDeque<String>,
    reader: tokio::task::JoinHandle<()>,
}

impl KeyStream {
    /// The keys of `source` after `after`.
    fn spawn(ctx: &Context, source: Keys, after: Option<String>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let ctx = ctx.clone();
        let reader = tokio::spawn(async move {
            let mut after = after;
            loop {
                let page: Result<Vec<String>> = async {
                    let mut conn = ctx.db.read_prefer_primary().await?.0;
                    Ok(match source {
                        Keys::Blobs => store::blob_keys_after(&mut conn, after.as_deref(), PAGE as i64).await?,
                        Keys::OpenUploads => {
                            store::open_upload_keys_after(&mut conn, after.as_deref(), PAGE as i64).await?
                        }
                    })
                }
                .await;
                let last = match &page {
                    Ok(keys) if keys.len() == PAGE => keys.last().cloned(),
                    _ => None,
                };
                // Ends with the last page (shorter than PAGE) or an error, or when the merge is gone.
                if tx.send(page).await.is_err() || last.is_none() {
                    return;
                }
                after = last;
            }
        });
        Self { rx, buf: Default::default(), reader }
    }

    /// The next key, left in the stream; None after the last.
    async fn peek(&mut self) -> Result<Option<&str>> {
        while self.buf.is_empty() {
            match self.rx.recv().await {
                Some(page) => self.buf.extend(page?),
                None => return Ok(None),
            }
        }
        Ok(self.buf.front().map(String::as_str))
    }

    /// Takes the next key (after a [`KeyStream::peek`] that saw it).
    fn pop(&mut self) -> Option<String> {
        self.buf.pop_front()
    }

    /// Whether `key` is in the stream; every key before it is passed over for good, so keys must
    /// be asked in increasing order.
    async fn contains(&mut self, key: &str) -> Result<bool> {
        while let Some(k) = self.peek().await? {
            match k.cmp(key) {
                std::cmp::Ordering::Less => {
                    self.pop();
                }
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Greater => return Ok(false),
            }
        }
        Ok(false)
    }
}

impl Drop for KeyStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What the merge does with the smallest key of the listing and the catalog.
enum Next {
    /// Listed and in the catalog: in order.
    Both,
    /// Listed only: an orphan unless an open upload writes it.
    Object,
    /// In the catalog only: content missing, unless it is there after all.
    Blob,
}

/// Runs (or continues) the reconciliation held by `h`.
pub async fn work(h: Handle) -> Result<()> {
    let ctx = &h.ctx;
    let req: ReconcileRequest = h.request()?;
    let grace = Duration::from_millis(req.grace_ms);
    let mut p: ReconcileProgress = h.progress();
    // Without each object's time: only orphans need it, and they are looked at one by one.
    let mut lister = ctx.objects.lister(PREFIX, p.after.as_deref(), PAGE, false, h.stop());
    let mut blobs = KeyStream::spawn(ctx, Keys::Blobs, p.after.clone());
    let mut open = KeyStream::spawn(ctx, Keys::OpenUploads, p.after.clone());
    let mut objects = std::collections::VecDeque::new();
    let mut listed_all = false;
    let mut items = Vec::new();
    let mut recorded = Instant::now();
    loop {
        if objects.is_empty() && !listed_all {
            // A page boundary: record findings so far (a repair's deletions and markings are
            // not left unrecorded for long), or else now and then, so that another instance
            // taking over does not start far back.
            if !items.is_empty() || recorded.elapsed() >= STEP_EVERY {
                record(&h, &p, &mut items).await?;
                recorded = Instant::now();
            }
            match lister.next_page().await.map_err(|e| stopped_or(&h, e))? {
                Some(page) => objects.extend(page),
                None => listed_all = true,
            }
        }
        let next = match (objects.front(), blobs.peek().await?) {
            (None, None) => break,
            (Some(o), Some(b)) if o.key == b => Next::Both,
            (Some(o), b) if b.is_none_or(|b| o.key.as_str() < b) => Next::Object,
            _ => Next::Blob,
        };
        let reached = match next {
            Next::Both => {
                blobs.pop();
                p.blobs_scanned += 1;
                p.objects_scanned += 1;
                objects.pop_front().expect("peeked").key
            }
            Next::Object => {
                let o = objects.pop_front().expect("peeked");
                p.objects_scanned += 1;
                if !open.contains(&o.key).await? {
                    orphan(&h, &req, grace, &o, &mut p, &mut items).await?;
                }
                o.key
            }
            Next::Blob => {
                let key = blobs.pop().expect("peeked");
                p.blobs_scanned += 1;
                missing(&h, &req, &key, &mut p, &mut items).await?;
                key
            }
        };
        p.after = Some(reached);
        if items.len() >= ITEMS_PER_STEP {
            record(&h, &p, &mut items).await?;
            recorded = Instant::now();
        }
    }
    record(&h, &p, &mut items).await
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
    key: &str,
    p: &mut ReconcileProgress,
    items: &mut Vec<NewItem>,
) -> Result<()> {
    let ctx = &h.ctx;
    if ctx.objects.head(key, h.stop()).await.map_err(|e| stopped_or(h, e))?.is_some() {
        return Ok(());
    }
    let mut conn = ctx.db.write().await?;
    // Gone since it was read (its last file deleted along with the object): nothing is lost.
    let Some((blake3, already)) = store::blob_at(&mut conn, key).await? else {
        return Ok(());
    };
    let blake3 = blake3.as_str();
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
