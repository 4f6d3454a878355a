//! `file://DIR`: objects are files under DIR. Writes go to `DIR/.staging/`, are fsynced and renamed
//! into place, so a half-written file is never visible under its key.

use std::{
    io::SeekFrom,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use futures::StreamExt;
use tokio::fs;

use strata_io::{
    buffers::BufferPool,
    writeback::{DirectWriter, open_direct},
};

use super::{ByteStream, Error, ObjectInfo, Result, Resume, Segment, WriteState, check_key};

/// Chunk size of downloads. Below hyper's per-stream HTTP/2 send buffer (≈ 400 KiB, not settable
/// through tonic): 1 MiB messages stalled on it and ran 3× slower (measured: 512 MiB to tmpfs in
/// 1.2 s with 1 MiB chunks, 0.42 s with 256 KiB).
const READ_CHUNK: usize = 256 << 10;
const STAGING: &str = ".staging";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

/// A local directory of objects.
#[derive(Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
}

impl LocalStore {
    /// Opens (creating) the directory.
    pub async fn open(dir: &str) -> Result<Self> {
        let root = PathBuf::from(dir);
        fs::create_dir_all(root.join(STAGING)).await.map_err(io(&root))?;
        Ok(Self { root: Arc::new(root) })
    }

    /// The directory is still there (a removed or unmounted one fails).
    pub(super) async fn probe(&self) -> Result<()> {
        match fs::metadata(self.root.join(STAGING)).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(Error::Io {
                path: self.root.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "staging is not a directory"),
            }),
            Err(e) => Err(io(&self.root)(e)),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// The staging file name of `key`'s first writer, or of the writer fenced as `generation`:
    /// one name per key (and generation), so any process finds (and can discard) it by key alone.
    fn staging_name(key: &str, fenced: Option<i64>) -> String {
        let base = key.replace('/', "__");
        match fenced {
            None => format!("{base}.part"),
            Some(g) => format!("{base}.g{g}.part"),
        }
    }

    fn staging_file(&self, name: &str) -> PathBuf {
        self.root.join(STAGING).join(name)
    }

    pub(super) async fn begin_write(&self, key: &str) -> Result<LocalWriter> {
        self.begin_write_fenced(key, Resume::InPlace).await
    }

    /// A new write; fenced, in a staging file of its own.
    pub(super) async fn begin_write_fenced(&self, key: &str, how: Resume) -> Result<LocalWriter> {
        let fenced = match how {
            Resume::InPlace => None,
            Resume::Fenced(g) => Some(g),
        };
        self.new_segment(key, Vec::new(), Segment { file: Self::staging_name(key, fenced), start: 0 }).await
    }

    /// A writer whose next byte goes to the new staging file `current` (created empty).
    async fn new_segment(&self, key: &str, earlier: Vec<Segment>, current: Segment) -> Result<LocalWriter> {
        let target = self.path(key)?;
        let staging = self.staging_file(&current.file);
        let file = fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&staging)
            .await
            .map_err(io(&staging))?
            .into_std()
            .await;
        Ok(LocalWriter::new(file, self.root.clone(), earlier, current, target, 0))
    }

    /// Continues `key`'s write at `committed`, recorded as `segments`: in the last staging file
    /// (its bytes past the committed offset dropped), or fenced in a new one.
    pub(super) async fn resume_write(
        &self,
        key: &str,
        segments: &[Segment],
        committed: u64,
        how: Resume,
    ) -> Result<LocalWriter> {
        let target = self.path(key)?;
        let prefix = format!("{}.", key.replace('/', "__"));
        let bad = |why: String| Error::BadState(format!("staged write of {key}: {why}"));
        let Some(last) = segments.last() else { return Err(bad("no staging files".into())) };
        for (i, seg) in segments.iter().enumerate() {
            let ok = seg.file.starts_with(&prefix)
                && seg.file.ends_with(".part")
                && !seg.file.contains('/')
                && segments.get(i + 1).is_none_or(|next| next.start >= seg.start);
            if !ok || seg.start > committed {
                return Err(bad(format!("segment {seg:?}")));
            }
        }
        // The committed bytes must all be there (each file up to where the next one starts).
        for (i, seg) in segments.iter().enumerate() {
            let end = segments.get(i + 1).map_or(committed, |next| next.start);
            let path = self.staging_file(&seg.file);
            match fs::metadata(&path).await {
                Ok(m) if m.len() >= end - seg.start => {}
                Ok(m) => {
                    return Err(bad(format!(
                        "{} holds {} bytes, {} were committed",
                        seg.file,
                        m.len(),
                        end - seg.start
                    )));
                }
                Err(e) => return Err(bad(format!("{}: {e}", seg.file))),
            }
        }
        match how {
            Resume::Fenced(g) => {
                let current = Segment { file: Self::staging_name(key, Some(g)), start: committed };
                if segments.iter().any(|s| s.file == current.file) {
                    return Err(bad(format!("generation {g} has a staging file already")));
                }
                self.new_segment(key, segments.to_vec(), current).await
            }
            Resume::InPlace => {
                let path = self.staging_file(&last.file);
                let keep = committed - last.start;
                let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
                    // Bytes past the committed offset were never acknowledged: drop them.
                    file.set_len(keep)?;
                    std::io::Seek::seek(&mut file, SeekFrom::Start(keep))?;
                    Ok(file)
                })
                .await
                .map_err(|e| bad(e.to_string()))?
                .map_err(io(&self.staging_file(&last.file)))?;
                let earlier = segments[..segments.len() - 1].to_vec();
                Ok(LocalWriter::new(file, self.root.clone(), earlier, last.clone(), target, keep))
            }
        }
    }

    /// Removes every staging file of a write (those recorded, and the first writer's).
    pub(super) async fn discard(&self, key: &str, segments: &[Segment]) -> Result<()> {
        let first = Self::staging_name(key, None);
        for name in segments.iter().map(|s| s.file.as_str()).chain([first.as_str()]) {
            if name.contains('/') {
                continue;
            }
            remove_if_there(&self.staging_file(name)).await?;
        }
        Ok(())
    }

    pub(super) async fn get(&self, key: &str, offset: u64, length: Option<u64>) -> Result<ByteStream> {
        let path = self.path(key)?;
        let file = match fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound(key.to_owned())),
            Err(e) => return Err(io(&path)(e)),
        };
        let size = file.metadata().await.map_err(io(&path))?.len();
        let length = length.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(Error::Range { offset, length, size });
        }
        let mut file = file.into_std().await;
        let display = path.display().to_string();
        // Read ahead on a thread of its own, so disk reads overlap sending earlier chunks.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(QUEUE);
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            let send_err = |e: std::io::Error| {
                let _ = tx.blocking_send(Err(Error::Io { path: display.clone(), source: e }));
            };
            if let Err(e) = file.seek(SeekFrom::Start(offset)) {
                return send_err(e);
            }
            let pool = BufferPool::new(READ_CHUNK, 2 * QUEUE);
            let mut left = length;
            while left > 0 {
                let mut buf = pool.take();
                let n = READ_CHUNK.min(left as usize);
                if let Err(e) = file.read_exact(&mut buf[..n]) {
                    return send_err(e);
                }
                left -= n as u64;
                if tx.blocking_send(Ok(pool.bytes(buf, n))).is_err() {
                    return;
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    pub(super) async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub(super) async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path(key)?;
        match fs::metadata(&path).await {
            Ok(m) => Ok(Some(ObjectInfo { key: key.to_owned(), size: m.len(), modified: m.modified().ok() })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub(super) async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Objects whose key starts with `prefix` and sorts after `start_after`, in key order, sent
    /// `page` at a time into the returned channel by a thread of its own. It holds the sorted names of
    /// the directories on its current path, never the whole listing; it stops when the receiver goes.
    pub(super) fn list_pages(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        page: usize,
        meta: bool,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<ObjectInfo>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let walk = Walk {
            root: self.root.clone(),
            prefix: prefix.to_owned(),
            start_after: start_after.map(str::to_owned),
            page: page.max(1),
            meta,
            buf: Vec::new(),
            tx,
        };
        tokio::task::spawn_blocking(move || walk.run());
        rx
    }
}

/// One paged listing's walk (see [`LocalStore::list_pages`]).
struct Walk {
    root: Arc<PathBuf>,
    prefix: String,
    start_after: Option<String>,
    page: usize,
    /// Stat each file for its size and time (else 0 and None: a directory read alone).
    meta: bool,
    buf: Vec<ObjectInfo>,
    tx: tokio::sync::mpsc::Sender<Result<Vec<ObjectInfo>>>,
}

impl Walk {
    fn run(mut self) {
        let done = self.dir("");
        match done {
            Ok(true) if !self.buf.is_empty() => {
                let last = std::mem::take(&mut self.buf);
                let _ = self.tx.blocking_send(Ok(last));
            }
            Ok(_) => {}
            Err(e) => {
                let _ = self.tx.blocking_send(Err(e));
            }
        }
    }

    /// Walks the directory whose keys start with `rel` ("" or "a/b/"); false once the receiver is
    /// gone. Entries are visited in key order: a directory sorts as its name plus '/', so that
    /// `a/x` comes after `a-b` as it does among keys.
    fn dir(&mut self, rel: &str) -> Result<bool> {
        let path = self.root.join(rel);
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(io(&path))? {
            let entry = entry.map_err(io(&path))?;
            let is_dir = entry.file_type().map_err(io(&entry.path()))?.is_dir();
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && name == STAGING {
                continue;
            }
            entries.push(if is_dir { format!("{rel}{name}/") } else { format!("{rel}{name}") });
        }
        entries.sort_unstable();
        for key in entries {
            let under = |k: &str, p: &str| k.starts_with(p) || p.starts_with(k);
            if key.ends_with('/') {
                let dir = key.as_str();
                // Every key below `dir` starts with it: skip the directory when none can match the
                // prefix or all sort before the resume point.
                let before = self.start_after.as_deref().is_some_and(|s| dir < s && !s.starts_with(dir));
                if under(dir, &self.prefix) && !before && !self.dir(dir)? {
                    return Ok(false);
                }
                continue;
            }
            if !key.starts_with(&self.prefix) || self.start_after.as_deref().is_some_and(|s| key.as_str() <= s) {
                continue;
            }
            let info = if self.meta {
                let file = self.root.join(&key);
                match std::fs::metadata(&file) {
                    Ok(m) => ObjectInfo { key, size: m.len(), modified: m.modified().ok() },
                    // Deleted since the directory was read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&file)(e)),
                }
            } else {
                ObjectInfo { key, size: 0, modified: None }
            };
            self.buf.push(info);
            if self.buf.len() >= self.page {
                let full = std::mem::take(&mut self.buf);
                if self.tx.blocking_send(Ok(full)).is_err() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// The first writer's staging file name beside a fenced writer's `file` (`K.g7.part` → `K.part`).
fn first_staging_name(file: &str) -> Option<String> {
    let stem = file.strip_suffix(".part")?;
    let (base, generation) = stem.rsplit_once(".g")?;
    generation.bytes().all(|b| b.is_ascii_digit()).then(|| format!("{base}.part"))
}

async fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Chunks queued for the writer thread: lets the next chunks arrive over the network while the
/// previous ones are written (bounded, so memory stays at a few chunks: with 1 MiB chunks, 8 put
/// the server's RSS growth during a 1 GiB upload at 59–69 MiB against a 64 MiB budget; 4, at 37 MiB
/// with the same throughput).
const WRITE_QUEUE: usize = 4;
/// Chunks read ahead of a download's client.
const QUEUE: usize = 8;

enum Cmd {
    Data(Bytes),
    /// Flush and fsync; reply with the bytes in the file.
    Sync(tokio::sync::oneshot::Sender<std::io::Result<u64>>),
}

/// A write to a staging file, performed by a thread of its own.
pub(super) struct LocalWriter {
    tx: tokio::sync::mpsc::Sender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Bytes the thread has written to the current staging file (whole chunks only).
    written: Arc<AtomicU64>,
    failed: Arc<Mutex<Option<String>>>,
    root: Arc<PathBuf>,
    /// Staging files before the current one (written by earlier writers, read-only here).
    earlier: Vec<Segment>,
    /// The staging file written now.
    current: Segment,
    staging: PathBuf,
    target: PathBuf,
}

/// How the writer thread puts bytes into the staging file.
enum Sink {
    /// With O_DIRECT (see [`DirectWriter`]).
    Direct(DirectWriter),
    /// Through the page cache, with writeback started as it goes, so the fsync that publishes the
    /// object has little left to do (file systems without O_DIRECT, such as some tmpfs).
    Buffered(strata_io::writeback::WriteBehind),
}

fn writer_thread(
    mut file: std::fs::File,
    direct: Option<std::fs::File>,
    mut rx: tokio::sync::mpsc::Receiver<Cmd>,
    written: Arc<AtomicU64>,
    failed: Arc<Mutex<Option<String>>>,
) {
    use std::io::Write;
    let at = written.load(Ordering::Acquire);
    let mut sink = match direct.map(|d| DirectWriter::new(d, &file, at)) {
        Some(Ok(d)) => Sink::Direct(d),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "O_DIRECT writer unavailable; writing through the page cache");
            Sink::Buffered(strata_io::writeback::WriteBehind::at(at))
        }
        None => Sink::Buffered(strata_io::writeback::WriteBehind::at(at)),
    };
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Data(d) => {
                if failed.lock().expect("lock").is_some() {
                    continue;
                }
                let r = match &mut sink {
                    Sink::Direct(x) => x.push(&d),
                    Sink::Buffered(_) => file.write_all(&d),
                };
                match r {
                    Ok(()) => {
                        let end = written.fetch_add(d.len() as u64, Ordering::Release) + d.len() as u64;
                        if let Sink::Buffered(behind) = &mut sink {
                            behind.wrote(&file, end);
                        }
                    }
                    Err(e) => *failed.lock().expect("lock") = Some(e.to_string()),
                }
            }
            Cmd::Sync(reply) => {
                // A failed write may have landed partly: cut the file back to what was counted.
                let n = written.load(Ordering::Acquire);
                let had_failed = failed.lock().expect("lock").is_some();
                let r = (|| {
                    if let Sink::Direct(x) = &mut sink {
                        if had_failed {
                            x.keep(&file, n)?;
                        }
                        x.flush_partial()?;
                    }
                    file.set_len(n)?;
                    std::io::Seek::seek(&mut file, SeekFrom::Start(n))?;
                    file.sync_data()?;
                    Ok(n)
                })();
                if r.is_ok() {
                    *failed.lock().expect("lock") = None;
                }
                let _ = reply.send(r);
            }
        }
    }
}

impl LocalWriter {
    /// A writer whose current file already holds `written` bytes (the file is positioned after
    /// them).
    fn new(
        file: std::fs::File,
        root: Arc<PathBuf>,
        earlier: Vec<Segment>,
        current: Segment,
        target: PathBuf,
        written: u64,
    ) -> Self {
        let staging = root.join(STAGING).join(&current.file);
        let direct = open_direct(&staging);
        Self::spawn(file, direct, root, earlier, current, target, written)
    }

    /// Starts the writer thread, with O_DIRECT when `direct` is given.
    fn spawn(
        file: std::fs::File,
        direct: Option<std::fs::File>,
        root: Arc<PathBuf>,
        earlier: Vec<Segment>,
        current: Segment,
        target: PathBuf,
        written: u64,
    ) -> Self {
        let staging = root.join(STAGING).join(&current.file);
        let (tx, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let written = Arc::new(AtomicU64::new(written));
        let failed = Arc::new(Mutex::new(None));
        let (w, f) = (written.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("strata-file-writer".into())
            .spawn(move || writer_thread(file, direct, rx, w, f))
            .expect("spawn writer thread");
        Self { tx, thread: Some(thread), written, failed, root, earlier, current, staging, target }
    }

    /// The staging files holding the committed bytes.
    pub(super) fn state(&self) -> WriteState {
        let mut segments = self.earlier.clone();
        segments.push(self.current.clone());
        WriteState::Local { segments }
    }

    fn failure(&self) -> Result<()> {
        match self.failed.lock().expect("lock").clone() {
            Some(e) => Err(Error::Io { path: self.staging.display().to_string(), source: std::io::Error::other(e) }),
            None => Ok(()),
        }
    }

    pub(super) async fn write(&mut self, data: Bytes) -> Result<()> {
        self.failure()?;
        self.tx.send(Cmd::Data(data)).await.map_err(|_| Error::Io {
            path: self.staging.display().to_string(),
            source: std::io::Error::other("writer thread stopped"),
        })
    }

    pub(super) fn committed(&self) -> u64 {
        self.current.start + self.written.load(Ordering::Acquire)
    }

    /// Syncs the current file; returns the object's committed offset.
    pub(super) async fn checkpoint(&mut self) -> Result<u64> {
        Ok(self.current.start + self.sync().await?)
    }

    /// Syncs the current file; returns its length.
    async fn sync(&mut self) -> Result<u64> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let gone = || Error::Io {
            path: self.staging.display().to_string(),
            source: std::io::Error::other("writer thread stopped"),
        };
        self.tx.send(Cmd::Sync(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?.map_err(io(&self.staging))
    }

    fn stop(&mut self) {
        // Closing the channel ends the thread once it has drained the queue.
        let (tx, _) = tokio::sync::mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
    }

    pub(super) async fn finish(mut self) -> Result<u64> {
        let n = self.checkpoint().await?;
        self.failure()?;
        self.stop();
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || t.join()).await.ok();
        }
        let parent = self.target.parent().expect("keys have a parent").to_path_buf();
        fs::create_dir_all(&parent).await.map_err(io(&parent))?;
        let published = if self.earlier.is_empty() { self.staging.clone() } else { self.assemble(n).await? };
        fs::rename(&published, &self.target).await.map_err(io(&self.target))?;
        // The earlier writers' files; and the first writer's, which a writer that died before it
        // recorded anything may have left unrecorded.
        let first = first_staging_name(&self.current.file).filter(|f| self.earlier.iter().all(|s| s.file != *f));
        for name in self.earlier.iter().map(|s| s.file.as_str()).chain(first.as_deref()) {
            if let Err(e) = remove_if_there(&self.root.join(STAGING).join(name)).await {
                tracing::warn!(error = %e, "removing a staging file failed");
            }
        }
        remove_if_there(&self.staging).await?;
        // The rename is durable only once the directory entry is.
        let dir = fs::File::open(&parent).await.map_err(io(&parent))?;
        dir.sync_all().await.map_err(io(&parent))?;
        Ok(n)
    }

    /// After a fenced takeover the bytes are in several staging files, and the earlier ones
    /// may still grow (a stale writer's late bytes land past their committed end): their
    /// committed ranges are copied into a fresh file (in the kernel: `copy_file_range`). The cost
    /// of a takeover, paid once at the end; a clean hand-over continues in place and pays nothing.
    async fn assemble(&self, total: u64) -> Result<PathBuf> {
        let mut parts = self.earlier.clone();
        parts.push(self.current.clone());
        let staging = self.root.join(STAGING);
        let out = staging.join(format!("{}.assembled", self.current.file));
        let out_path = out.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::{Read, Seek};
            let mut dst = std::fs::File::create(&out_path)?;
            for (i, seg) in parts.iter().enumerate() {
                let end = parts.get(i + 1).map_or(total, |next| next.start);
                let mut src = std::fs::File::open(staging.join(&seg.file))?;
                src.seek(SeekFrom::Start(0))?;
                let want = end - seg.start;
                let copied = std::io::copy(&mut (&mut src).take(want), &mut dst)?;
                if copied != want {
                    return Err(std::io::Error::other(format!("{} holds {copied} of {want} bytes", seg.file)));
                }
            }
            dst.sync_all()
        })
        .await
        .map_err(|e| Error::Io { path: out.display().to_string(), source: std::io::Error::other(e) })?
        .map_err(io(&out))?;
        Ok(out)
    }

    pub(super) async fn abort(mut self) -> Result<()> {
        self.stop();
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || t.join()).await.ok();
        }
        for seg in &self.earlier {
            remove_if_there(&self.root.join(STAGING).join(&seg.file)).await?;
        }
        remove_if_there(&self.staging).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sinks keep exactly the bytes counted, at unaligned chunk sizes and checkpoints, and
    /// continue correctly after each checkpoint (the O_DIRECT one rewrites its padded region).
    #[tokio::test(flavor = "multi_thread")]
    async fn direct_and_buffered_writers_keep_exactly_what_was_counted() {
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let data: Vec<u8> = (0..(9 << 20) + 12_345)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let sizes = [1, 4095, 4097, 1 << 20, (3 << 20) + 7, 100, 5 << 20];
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("obj");
            let root = Arc::new(dir.path().to_path_buf());
            std::fs::create_dir_all(root.join(STAGING)).unwrap();
            let current = Segment { file: "s.part".into(), start: 0 };
            let staging = root.join(STAGING).join("s.part");
            let file =
                std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&staging).unwrap();
            let d = if direct { Some(open_direct(&staging).expect("O_DIRECT on the test file system")) } else { None };
            let mut w = LocalWriter::spawn(file, d, root, Vec::new(), current, target.clone(), 0);
            let (mut at, mut i) = (0, 0);
            while at < data.len() {
                let n = sizes[i % sizes.len()].min(data.len() - at);
                w.write(Bytes::copy_from_slice(&data[at..at + n])).await.unwrap();
                at += n;
                i += 1;
                if i % 3 == 0 {
                    assert_eq!(w.checkpoint().await.unwrap(), at as u64, "direct {direct}");
                    let on_disk = std::fs::read(&staging).unwrap();
                    assert!(on_disk == data[..at], "direct {direct}: staging file after {at} bytes");
                }
            }
            assert_eq!(w.finish().await.unwrap(), data.len() as u64);
            assert!(std::fs::read(&target).unwrap() == data, "direct {direct}: published object");
        }
    }
}
