//! Database backups into the object store, checked before older ones are rotated out.
//!
//! PostgreSQL: `pg_dump -Fc` runs as a child process and its stdout is streamed chunk by chunk into
//! the object writer (no temporary file), then the stored object is streamed into
//! `pg_restore --list`. SQLite: a consistent snapshot is written next to the database
//! ([`crate::db::backups::sqlite_snapshot`]), uploaded, downloaded again and checked for integrity
//! ([`crate::db::backups::sqlite_integrity`]).

use std::{collections::HashSet, path::PathBuf, process::Stdio, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Context, Error, Result, store_unavailable};
use crate::db::{
    self,
    backups::{self as store, BackupRow, Integrity},
};
pub use crate::model::backup::{BackupFormat, BackupState};
use crate::objects::SizeHint;

/// A backup: what the gRPC edge encodes.
#[derive(Debug, Clone)]
pub struct Backup {
    /// Id (UUIDv7).
    pub id: String,
    /// What it holds.
    pub format: BackupFormat,
    /// State.
    pub state: BackupState,
    /// Object key.
    pub object_key: String,
    /// Object size.
    pub size_bytes: i64,
    /// SHA-256 (hex).
    pub sha256: String,
    /// Result of the check.
    pub verification: String,
    /// Failure.
    pub error: Option<String>,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<BackupRow> for Backup {
    fn from(r: BackupRow) -> Self {
        Backup {
            id: r.id,
            format: r.format,
            state: r.state,
            object_key: r.object_key,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            verification: r.verification,
            error: r.error,
            started_at: r.started_at.and_utc(),
            finished_at: r.finished_at.map(|t| t.and_utc()),
        }
    }
}

/// A running backup refreshes its heartbeat this often ...
const HEARTBEAT: Duration = Duration::from_secs(5);
/// ... and one whose heartbeat is older than this was interrupted (its server died).
const STALE_AFTER: Duration = Duration::from_secs(60);
/// Bytes read from pg_dump per object write.
const CHUNK: usize = 1 << 20;

/// How many backups rotation keeps (daily, weekly, monthly): a setting, so declared in config.
pub use crate::config::BackupRetention as Retention;

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(60))
}

/// Starts a backup of the application database.
pub async fn start(ctx: &Context) -> Result<Backup> {
    let t = ctx.now();
    let (format, ext) = match ctx.db.backend() {
        db::BackendKind::Postgres => (BackupFormat::PgDump, "dump"),
        db::BackendKind::Sqlite => (BackupFormat::Sqlite, "sqlite"),
    };
    let id = uuid::Uuid::now_v7().to_string();
    let row = BackupRow {
        object_key: format!("backups/{}/{id}.{ext}", t.format("%Y/%m")),
        id,
        format,
        state: BackupState::Running,
        size_bytes: 0,
        sha256: String::new(),
        verification: String::new(),
        error: None,
        started_at: t,
        updated_at: t,
        finished_at: None,
    };
    let mut conn = ctx.db.write().await?;
    store::fail_stale(&mut conn, t - chrono_dur(STALE_AFTER), t).await?;
    if !store::insert_running(&mut conn, &row).await? {
        return Err(Error::FailedPrecondition("a backup is already running".into()));
    }
    drop(conn);
    tracing::info!(backup = %row.id, format = %format, "backup started");
    ctx.spawn("backup", run(ctx.clone(), row.clone()));
    Ok(row.into())
}

/// A backup by id.
pub async fn get(ctx: &Context, id: &str) -> Result<Backup> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    store::get(&mut conn, id).await?.map(Backup::from).ok_or_else(|| Error::NotFound(format!("backup {id:?}")))
}

/// Backups newest first; the page token is the last id returned.
pub async fn list(ctx: &Context, page_size: i64, token: Option<&str>) -> Result<(Vec<Backup>, Option<String>)> {
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    let mut rows = store::list(&mut conn, token, page_size + 1).await?;
    let more = rows.len() as i64 > page_size;
    rows.truncate(page_size as usize);
    let next = if more { rows.last().map(|r| r.id.clone()) } else { None };
    Ok((rows.into_iter().map(Backup::from).collect(), next))
}

async fn run(ctx: Context, mut row: BackupRow) {
    let alive = tokio_util::sync::CancellationToken::new();
    let beat = {
        let (ctx, id, alive) = (ctx.clone(), row.id.clone(), alive.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = alive.cancelled() => break,
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
                if let Ok(mut conn) = ctx.db.write().await {
                    let _ = store::heartbeat(&mut conn, &id, ctx.now()).await;
                }
            }
        })
    };
    let outcome = tokio::select! {
        _ = ctx.background.cancelled() => Err(Error::Cancelled("server stopping".into())),
        r = write_and_check(&ctx, &row) => r,
    };
    alive.cancel();
    let _ = beat.await;
    match outcome {
        Ok((size, sha256, verification)) => {
            row.state = BackupState::Succeeded;
            row.size_bytes = size as i64;
            row.sha256 = sha256;
            row.verification = verification;
            tracing::info!(backup = %row.id, size, verification = %row.verification, "backup checked");
        }
        Err(e) => {
            tracing::error!(backup = %row.id, error = %e, "backup failed");
            // Nothing half-written may pass for a backup: cleanup runs to its end even while the
            // server stops.
            let _ = ctx.objects.delete(&row.object_key, &tokio_util::sync::CancellationToken::new()).await;
            row.state = BackupState::Failed;
            row.error = Some(e.to_string());
        }
    }
    let finished = async {
        let mut conn = ctx.db.write().await?;
        store::finish(&mut conn, &row, ctx.now()).await?;
        Ok::<_, Error>(())
    };
    if let Err(e) = finished.await {
        tracing::error!(backup = %row.id, error = %e, "recording the backup's end failed");
        return;
    }
    if row.state == BackupState::Succeeded
        && let Err(e) = rotate(&ctx).await
    {
        tracing::error!(error = %e, "rotating backups failed");
    }
}

/// Fails with a clear message when `pg_dump` or `pg_restore` is older than the server: an older
/// `pg_dump` refuses a newer server ("aborting because of server version mismatch") and an older
/// `pg_restore` cannot read what a newer `pg_dump` wrote — better said before anything runs.
async fn check_tool_versions(ctx: &Context) -> Result<()> {
    let mut conn = ctx.db.write().await?;
    let Some(server) = store::pg_server_major(&mut conn).await? else { return Ok(()) };
    drop(conn);
    for name in ["pg_dump", "pg_restore"] {
        let path = tool(ctx, name);
        let out = tokio::process::Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| Error::FailedPrecondition(format!("cannot run {}: {e} (set pg_bin_dir)", path.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = tool_major(&text).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{} --version printed {:?}: not a PostgreSQL tool",
                path.display(),
                text.trim()
            ))
        })?;
        if major < server {
            return Err(Error::FailedPrecondition(format!(
                "{name} is version {major} ({}), older than the PostgreSQL {server} server: install the \
                 PostgreSQL {server} client tools (or newer) and point pg_bin_dir at them",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The major version in a `--version` line: "pg_dump (PostgreSQL) 15.4 (Debian 15.4-2)" → 15,
/// "pg_dump (PostgreSQL) 9.6.24" → 9.
fn tool_major(version: &str) -> Option<u32> {
    // Before 10 the major version had two parts (9.6): the first is enough to compare with 10+.
    let number = version.split_once(')')?.1.split_whitespace().next()?;
    number.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn tool(ctx: &Context, name: &str) -> PathBuf {
    match &ctx.config.pg_bin_dir {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// Connection settings for libpq tools: the URL without its password, which goes into the
/// environment instead (a command line is visible to every local user).
/// Several hosts (`postgres://h1,h2/db?target_session_attrs=read-write`) pass through: libpq
/// picks the primary as strata's own connections do.
fn libpq_target(url: &str) -> Result<(String, Option<String>)> {
    let (url, password) =
        crate::db::split_password(url).ok_or_else(|| Error::FailedPrecondition("database url: not a URL".into()))?;
    Ok((url, password.as_deref().map(percent_decode)))
}

/// RFC 3986 decoding, as libpq and strata's own connections read the URL: a `+` stays a `+`.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

async fn write_and_check(ctx: &Context, row: &BackupRow) -> Result<(u64, String, String)> {
    match ctx.db.backend() {
        db::BackendKind::Postgres => pg_backup(ctx, row).await,
        db::BackendKind::Sqlite => sqlite_backup(ctx, row).await,
    }
}

async fn pg_backup(ctx: &Context, row: &BackupRow) -> Result<(u64, String, String)> {
    check_tool_versions(ctx).await?;
    let (target, password) = libpq_target(&ctx.db.settings().url)?;
    let mut cmd = tokio::process::Command::new(tool(ctx, "pg_dump"));
    cmd.args(["--format=custom", "--no-password", "--dbname"]).arg(&target);
    if let Some(p) = &password {
        cmd.env("PGPASSWORD", p);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::FailedPrecondition(format!("cannot run pg_dump: {e} (set pg_bin_dir)")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let errors = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut w = ctx
        .objects
        .begin_write(&row.object_key, SizeHint::Unknown, &ctx.background)
        .await
        .map_err(store_unavailable)?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let copied: Result<()> = async {
        loop {
            let mut buf = Vec::with_capacity(CHUNK);
            let n = (&mut stdout)
                .take(CHUNK as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| Error::Unavailable(format!("reading pg_dump output: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            hash.update(&buf);
            size += n as u64;
            w.write(Bytes::from(buf)).await.map_err(store_unavailable)?;
        }
    }
    .await;
    let status = child.wait().await.map_err(|e| Error::Unavailable(format!("pg_dump: {e}")))?;
    let stderr = errors.await.unwrap_or_default();
    if let Err(e) = copied {
        let _ = w.abort().await;
        return Err(e);
    }
    if !status.success() {
        let _ = w.abort().await;
        return Err(Error::FailedPrecondition(format!("pg_dump failed ({status}): {}", stderr.trim())));
    }
    w.finish().await.map_err(store_unavailable)?;
    let sha256 = hex::encode(hash.finalize());

    // The check reads the object back, not the bytes just sent: what the store holds is what counts.
    let mut check = tokio::process::Command::new(tool(ctx, "pg_restore"))
        .arg("--list")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::FailedPrecondition(format!("cannot run pg_restore: {e} (set pg_bin_dir)")))?;
    let mut stdin = check.stdin.take().expect("piped");
    let mut stream = ctx.objects.get(&row.object_key, 0, None, &ctx.background).await.map_err(store_unavailable)?;
    let mut reread = Sha256::new();
    let feed = async {
        while let Some(chunk) = stream.try_next().await.map_err(store_unavailable)? {
            reread.update(&chunk);
            if stdin.write_all(&chunk).await.is_err() {
                // pg_restore stopped reading (it needs only the table of contents); keep hashing.
                while let Some(chunk) = stream.try_next().await.map_err(store_unavailable)? {
                    reread.update(&chunk);
                }
                break;
            }
        }
        drop(stdin);
        Ok::<_, Error>(())
    };
    let (fed, out) = tokio::join!(feed, check.wait_with_output());
    fed?;
    let out = out.map_err(|e| Error::Unavailable(format!("pg_restore: {e}")))?;
    if hex::encode(reread.finalize()) != sha256 {
        return Err(Error::DataLoss("the stored dump differs from what pg_dump wrote".into()));
    }
    if !out.status.success() {
        return Err(Error::DataLoss(format!(
            "pg_restore --list rejected the dump: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let entries =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with(';') && !l.trim().is_empty()).count();
    Ok((size, sha256, format!("pg_restore --list: {entries} entries")))
}

async fn sqlite_backup(ctx: &Context, row: &BackupRow) -> Result<(u64, String, String)> {
    let path = ctx.db.sqlite_path().ok_or_else(|| Error::FailedPrecondition("no SQLite path".into()))?;
    let dir = std::path::Path::new(path).parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let snapshot = dir.join(format!(".strata-backup-{}.sqlite", row.id));
    let _cleanup = RemoveOnDrop(snapshot.clone());
    store::sqlite_snapshot(&mut ctx.db.write().await?, &snapshot).await?;
    let mut file = tokio::fs::File::open(&snapshot).await.map_err(|e| Error::Unavailable(format!("snapshot: {e}")))?;
    let mut w = ctx
        .objects
        .begin_write(&row.object_key, SizeHint::Unknown, &ctx.background)
        .await
        .map_err(store_unavailable)?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await.map_err(|e| Error::Unavailable(format!("snapshot: {e}")))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        hash.update(&buf);
        size += n as u64;
        if let Err(e) = w.write(Bytes::from(buf)).await {
            let _ = w.abort().await;
            return Err(store_unavailable(e));
        }
    }
    w.finish().await.map_err(store_unavailable)?;
    let sha256 = hex::encode(hash.finalize());

    // Download the stored copy and open it.
    let check = dir.join(format!(".strata-check-{}.sqlite", row.id));
    let _cleanup_check = RemoveOnDrop(check.clone());
    let mut out = tokio::fs::File::create(&check).await.map_err(|e| Error::Unavailable(format!("check copy: {e}")))?;
    let mut reread = Sha256::new();
    let mut stream = ctx.objects.get(&row.object_key, 0, None, &ctx.background).await.map_err(store_unavailable)?;
    while let Some(chunk) = stream.try_next().await.map_err(store_unavailable)? {
        reread.update(&chunk);
        out.write_all(&chunk).await.map_err(|e| Error::Unavailable(format!("check copy: {e}")))?;
    }
    out.flush().await.map_err(|e| Error::Unavailable(format!("check copy: {e}")))?;
    drop(out);
    if hex::encode(reread.finalize()) != sha256 {
        return Err(Error::DataLoss("the stored snapshot differs from what was written".into()));
    }
    match store::sqlite_integrity(&check).await {
        Integrity::Ok => {}
        Integrity::DoesNotOpen(e) => return Err(Error::DataLoss(format!("the stored snapshot does not open: {e}"))),
        Integrity::CheckFailed(e) => return Err(Error::DataLoss(format!("integrity_check failed: {e}"))),
        Integrity::Damaged(verdict) => return Err(Error::DataLoss(format!("integrity_check: {verdict}"))),
    }
    Ok((size, sha256, "integrity_check: ok".into()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Which of `backups` (newest first: id, start time) rotation keeps: the newest overall, and the
/// newest of each of the last `daily` days, `weekly` ISO weeks and `monthly` months that have one.
pub fn keep(backups: &[(String, NaiveDateTime)], r: Retention) -> HashSet<String> {
    let mut kept = HashSet::new();
    if let Some((id, _)) = backups.first() {
        kept.insert(id.clone());
    }
    let mut pick = |n: usize, bucket: &dyn Fn(&NaiveDateTime) -> (i32, u32)| {
        let mut seen = Vec::new();
        for (id, t) in backups {
            let b = bucket(t);
            if !seen.contains(&b) {
                if seen.len() == n {
                    break;
                }
                seen.push(b);
                kept.insert(id.clone());
            }
        }
    };
    pick(r.daily, &|t| (t.year(), t.ordinal()));
    pick(r.weekly, &|t| (t.iso_week().year(), t.iso_week().week()));
    pick(r.monthly, &|t| (t.year(), t.month()));
    kept
}

/// Deletes succeeded backups rotation does not keep: the object first, then its row.
async fn rotate(ctx: &Context) -> Result<usize> {
    let mut conn = ctx.db.write().await?;
    let all = store::succeeded(&mut conn).await?;
    drop(conn);
    let listed: Vec<(String, NaiveDateTime)> = all.iter().map(|b| (b.id.clone(), b.started_at)).collect();
    let kept = keep(&listed, ctx.config.backup_retention);
    let mut removed = 0;
    for b in all.iter().filter(|b| !kept.contains(&b.id)) {
        ctx.objects.delete(&b.object_key, &ctx.background).await.map_err(store_unavailable)?;
        store::delete(&mut ctx.db.write().await?, &b.id).await?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(removed, kept = kept.len(), "rotated backups");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn rotation_keeps_newest_per_day_week_and_month() {
        // Newest first: two a day for 60 days.
        let mut b = Vec::new();
        for day in 0..60 {
            for (h, tag) in [(23, "pm"), (1, "am")] {
                let t = at("2026-11-20 00:00") - chrono::Duration::days(day) + chrono::Duration::hours(h);
                b.push((format!("{day}-{tag}"), t));
            }
        }
        let kept = keep(&b, Retention { daily: 3, weekly: 2, monthly: 3 });
        // Days: the evening backup of each of the 3 newest days.
        for d in ["0-pm", "1-pm", "2-pm"] {
            assert!(kept.contains(d), "{d}");
        }
        assert!(!kept.iter().any(|k| k.ends_with("am")), "{kept:?}");
        // 2026-11-20 is a Friday: week 47 → newest is day 0; week 46 → newest is its Sunday, day 5.
        assert!(kept.contains("5-pm"));
        // Months: November → day 0, October (31st = day 20), September (30th = day 51).
        assert!(kept.contains("20-pm") && kept.contains("51-pm"));
        assert_eq!(kept.len(), 3 + 1 + 2);
        assert_eq!(keep(&b, Retention { daily: 0, weekly: 0, monthly: 0 }), HashSet::from(["0-pm".to_string()]));
    }

    #[test]
    fn passwords_leave_the_url() {
        let (u, p) = libpq_target("postgres://app:s%40cret@db:5432/chat?sslmode=disable").unwrap();
        assert_eq!(u, "postgres://app@db:5432/chat?sslmode=disable");
        assert_eq!(p.as_deref(), Some("s@cret"));
        // Form decoding would make this "a b c" and pg_dump's authentication fail.
        let (_, p) = libpq_target("postgres://app:a+b%2Bc@db/chat").unwrap();
        assert_eq!(p.as_deref(), Some("a+b+c"));
    }

    #[test]
    fn tool_versions_are_read_from_their_version_line() {
        assert_eq!(tool_major("pg_dump (PostgreSQL) 15.4 (Debian 15.4-2.pgdg120+1)"), Some(15));
        assert_eq!(tool_major("pg_restore (PostgreSQL) 17.0"), Some(17));
        assert_eq!(tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(tool_major("pg_dump (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(tool_major("something else"), None);
    }
}
