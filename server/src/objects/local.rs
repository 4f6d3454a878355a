//! `file://DIR`: objects are files under DIR. Writes go to `DIR/.staging/`, are fsynced and renamed
//! into place, so a half-written file is never visible under its key.

use std::{
    io::SeekFrom,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::{
    fs,
    io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt},
};
use tokio_util::io::ReaderStream;

use super::{ByteStream, Error, ObjectInfo, Result, check_key};

/// Read buffer size of downloads: large reads keep syscalls per gigabyte low.
const READ_CHUNK: usize = 1 << 20;
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

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn staging(&self, key: &str) -> PathBuf {
        // One staging file per key: a restarted server finds (and can discard) it by key alone.
        self.root.join(STAGING).join(format!("{}.part", key.replace('/', "__")))
    }

    pub(super) async fn begin_write(&self, key: &str) -> Result<LocalWriter> {
        let target = self.path(key)?;
        let staging = self.staging(key);
        let file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&staging)
            .await
            .map_err(io(&staging))?;
        Ok(LocalWriter { file, staging, target, written: 0 })
    }

    pub(super) async fn get(&self, key: &str, offset: u64, length: Option<u64>) -> Result<ByteStream> {
        let path = self.path(key)?;
        let mut file = match fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound(key.to_owned())),
            Err(e) => return Err(io(&path)(e)),
        };
        let size = file.metadata().await.map_err(io(&path))?.len();
        let length = length.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(Error::Range { offset, length, size });
        }
        file.seek(SeekFrom::Start(offset)).await.map_err(io(&path))?;
        let display = path.display().to_string();
        let stream = ReaderStream::with_capacity(file.take(length), READ_CHUNK)
            .map_err(move |source| Error::Io { path: display.clone(), source });
        Ok(stream.boxed())
    }

    pub(super) async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
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

    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut dirs = vec![root.as_ref().clone()];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                    let entry = entry.map_err(io(&dir))?;
                    let path = entry.path();
                    let meta = entry.metadata().map_err(io(&path))?;
                    let rel = path.strip_prefix(root.as_ref()).unwrap_or(&path);
                    let key = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                    if key == STAGING {
                        continue;
                    }
                    if meta.is_dir() {
                        dirs.push(path);
                    } else if key.starts_with(&prefix) {
                        out.push(ObjectInfo { key, size: meta.len() });
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| Error::Io { path: "list".into(), source: std::io::Error::other(e) })?
    }

    pub(super) async fn abort_orphan(&self, key: &str) -> Result<()> {
        let staging = self.staging(key);
        match fs::remove_file(&staging).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&staging)(e)),
        }
    }
}

/// A write to a staging file.
pub struct LocalWriter {
    file: fs::File,
    staging: PathBuf,
    target: PathBuf,
    written: u64,
}

impl LocalWriter {
    pub(super) async fn write(&mut self, data: Bytes) -> Result<()> {
        self.file.write_all(&data).await.map_err(io(&self.staging))?;
        self.written += data.len() as u64;
        Ok(())
    }

    pub(super) fn committed(&self) -> u64 {
        self.written
    }

    pub(super) async fn checkpoint(&mut self) -> Result<u64> {
        // A write interrupted mid-way (its future dropped) may have landed partly: cut the file back
        // to what was counted and continue from there.
        self.file.flush().await.map_err(io(&self.staging))?;
        self.file.set_len(self.written).await.map_err(io(&self.staging))?;
        self.file.seek(SeekFrom::Start(self.written)).await.map_err(io(&self.staging))?;
        self.file.sync_data().await.map_err(io(&self.staging))?;
        Ok(self.written)
    }

    pub(super) async fn finish(mut self) -> Result<u64> {
        self.file.flush().await.map_err(io(&self.staging))?;
        self.file.sync_all().await.map_err(io(&self.staging))?;
        drop(self.file);
        let parent = self.target.parent().expect("keys have a parent").to_path_buf();
        fs::create_dir_all(&parent).await.map_err(io(&parent))?;
        fs::rename(&self.staging, &self.target).await.map_err(io(&self.target))?;
        // The rename is durable only once the directory entry is.
        let dir = fs::File::open(&parent).await.map_err(io(&parent))?;
        dir.sync_all().await.map_err(io(&parent))?;
        Ok(self.written)
    }

    pub(super) async fn abort(self) -> Result<()> {
        drop(self.file);
        match fs::remove_file(&self.staging).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.staging)(e)),
        }
    }
}
