//! Reconciliation of the object store with the catalog: orphan objects, lost content.

use std::time::Duration;

use super::object_err;
use crate::{
    db::files as store,
    service::{Context, Result},
};

/// What reconciliation found (and did).
#[derive(Debug, Default, Clone)]
pub struct Reconciliation {
    /// Objects no catalog row references.
    pub orphans: Vec<String>,
    /// Orphans deleted.
    pub deleted: Vec<String>,
    /// Content whose object is missing.
    pub lost_blake3: Vec<String>,
    /// Files referencing lost content.
    pub lost_files: Vec<String>,
    /// Objects listed.
    pub objects_scanned: usize,
    /// Blobs checked.
    pub blobs_scanned: usize,
}

/// Compares objects under `blobs/` with the catalog. The catalog is read before the listing, so
/// an object published after that read looks orphaned: the grace period protects it, and every
/// candidate is checked again right before anything is deleted or marked.
pub async fn reconcile(ctx: &Context, repair: bool, grace: Duration) -> Result<Reconciliation> {
    let mut conn = ctx.db.write().await?;
    let blobs = store::all_blobs(&mut conn).await?;
    let open = store::open_upload_keys(&mut conn).await?;
    drop(conn);
    let objects = ctx.objects.list("blobs/", &ctx.closing).await.map_err(object_err)?;
    let known: std::collections::HashSet<&str> =
        blobs.iter().map(|(_, k, _)| k.as_str()).chain(open.iter().map(String::as_str)).collect();
    let present: std::collections::HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let mut out = Reconciliation { objects_scanned: objects.len(), blobs_scanned: blobs.len(), ..Default::default() };
    // The objects' times come from the store's clock (S3) or the kernel's (file://): compare with
    // the database's, which the fleet agrees on, not with this process's, which may be off.
    let now_sys = std::time::SystemTime::from(ctx.now_utc());
    for o in objects.iter().filter(|o| !known.contains(o.key.as_str())) {
        out.orphans.push(o.key.clone());
        let old_enough = o.modified.is_some_and(|m| now_sys.duration_since(m).unwrap_or_default() >= grace);
        if repair && old_enough {
            let mut conn = ctx.db.write().await?;
            if store::key_referenced(&mut conn, &o.key).await? {
                continue;
            }
            drop(conn);
            ctx.objects.delete(&o.key, &ctx.closing).await.map_err(object_err)?;
            tracing::info!(key = %o.key, "deleted orphan object");
            out.deleted.push(o.key.clone());
        }
    }
    for (blake3, key, already) in blobs.iter().filter(|(_, k, _)| !present.contains(k.as_str())) {
        // Listed before the object was deleted along with its last file? Check both again.
        if ctx.objects.head(key, &ctx.closing).await.map_err(object_err)?.is_some() {
            continue;
        }
        let mut conn = ctx.db.write().await?;
        if !store::key_referenced(&mut conn, key).await? {
            continue;
        }
        let files = if repair && !already {
            let ids = store::mark_lost(&mut conn, blake3, ctx.now()).await?;
            tracing::error!(blake3 = %blake3, key = %key, files = ids.len(), "content missing from the object store; marked lost");
            ids
        } else {
            store::files_of(&mut conn, blake3).await?
        };
        out.lost_blake3.push(blake3.clone());
        out.lost_files.extend(files);
    }
    Ok(out)
}
