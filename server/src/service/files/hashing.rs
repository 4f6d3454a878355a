//! The running hashes of an upload: BLAKE3 always, SHA-256 when declared or configured, computed
//! beside the network and rolled back to what the object writer committed.

use std::collections::VecDeque;

use bytes::Bytes;

pub(super) use super::midstate::Midstate as Hashes;

/// A result of a hashing job: the hasher and its states at the marks the chunk reached.
type Hashed = (Hashes, Vec<(u64, Hashes)>);

/// The running hashes of an upload, computed on a blocking thread one chunk behind the network:
/// chunk N is hashed while chunk N+1 arrives and is written. (Hashing inside the RPC task held
/// receiving up: measured here, 1 GiB with a declared SHA-256 took 1.5 s against 0.95 s without.)
/// It keeps its state at offsets where the writer may commit, to roll back to.
pub(super) struct Stage {
    state: StageState,
    /// Offset after the last byte fed.
    fed: u64,
    /// Offset the stream began at.
    began: u64,
    /// States at offsets where the writer may commit and has not yet, oldest first.
    marks: VecDeque<(u64, Hashes)>,
    /// SHA-256 is computed too.
    sha256: bool,
}

enum StageState {
    Ready(Hashes),
    Busy(tokio::task::JoinHandle<Hashed>),
    /// Only between taking the hasher and handing it to a job (no await in between).
    Moved,
}

/// The first bytes of a stream, up to this many, are hashed in the RPC task itself: BLAKE3 and
/// SHA-256 of 64 KiB take about 60 µs here, less than handing them to a blocking thread and
/// waking it, which was a fifth of strata's CPU per small upload in a profile of `strata-bench
/// fleet` (2 000 files of 64 KiB). Past them, a long stream is hashed beside the network.
const INLINE_MAX: u64 = 64 * 1024;

/// Feeds `chunk`, the bytes from offset `start`, to `h`, keeping its state at each multiple of
/// `part` it reaches, or at its end when `part` is 1 (a local file commits after any chunk).
fn hash_chunk(mut h: Hashes, start: u64, chunk: &[u8], part: u64) -> Hashed {
    let mut marks = Vec::new();
    if part <= 1 {
        h.update(chunk);
        marks.push((start + chunk.len() as u64, h.clone()));
        return (h, marks);
    }
    let (mut at, mut data) = (start, chunk);
    while !data.is_empty() {
        let n = ((part - at % part) as usize).min(data.len());
        h.update(&data[..n]);
        at += n as u64;
        data = &data[n..];
        if at.is_multiple_of(part) {
            marks.push((at, h.clone()));
        }
    }
    (h, marks)
}

impl Stage {
    /// A stage whose hasher `h` has seen the first `at` bytes.
    pub(super) fn new(h: Hashes, at: u64) -> Self {
        let marks = if at > 0 { VecDeque::from([(at, h.clone())]) } else { VecDeque::new() };
        let sha256 = h.sha256.is_some();
        Self { state: StageState::Ready(h), fed: at, began: at, marks, sha256 }
    }

    /// Waits for the chunk being hashed; its marks join the others. Safe to drop while waiting:
    /// the job stays in place.
    pub(super) async fn settle(&mut self) {
        if let StageState::Busy(job) = &mut self.state {
            let (h, marks) = job.await.expect("hash task panicked");
            self.marks.extend(marks);
            self.state = StageState::Ready(h);
        }
    }

    /// Hashes `chunk` (the bytes after those fed so far), in the background unless it is small,
    /// marking each multiple of `part` it reaches, or its end when `part` is 1.
    pub(super) async fn feed(&mut self, chunk: Bytes, part: u64) {
        self.settle().await;
        let StageState::Ready(h) = std::mem::replace(&mut self.state, StageState::Moved) else {
            unreachable!("settled")
        };
        let start = self.fed;
        self.fed += chunk.len() as u64;
        if self.fed.saturating_sub(self.began) <= INLINE_MAX {
            let (h, marks) = hash_chunk(h, start, &chunk, part);
            self.marks.extend(marks);
            self.state = StageState::Ready(h);
        } else {
            self.state = StageState::Busy(tokio::task::spawn_blocking(move || hash_chunk(h, start, &chunk, part)));
        }
    }

    /// The hashes over the first `offset` bytes (after [`Stage::settle`]), if it is the end of
    /// what was fed or a mark.
    pub(super) fn state_at(&self, offset: u64) -> Option<Hashes> {
        if offset == 0 {
            return Some(Hashes::new(self.sha256));
        }
        match &self.state {
            StageState::Ready(h) if h.len() == offset => Some(h.clone()),
            _ => self.marks.iter().find(|(o, _)| *o == offset).map(|(_, h)| h.clone()),
        }
    }

    /// Forgets marks before `offset` (the writer has committed past them).
    pub(super) fn forget_before(&mut self, offset: u64) {
        while self.marks.front().is_some_and(|(o, _)| *o < offset) {
            self.marks.pop_front();
        }
    }

    /// Rolls the hash back to `committed` (after [`Stage::settle`]).
    pub(super) fn rewind_to(&mut self, committed: u64) {
        if committed < self.fed {
            let h = if committed == 0 {
                Hashes::new(self.sha256)
            } else {
                self.marks
                    .iter()
                    .find(|(o, _)| *o == committed)
                    .map(|(_, h)| h.clone())
                    .expect("a writer commits only at offsets it was given")
            };
            self.state = StageState::Ready(h);
            self.fed = committed;
        }
        self.marks.retain(|(o, _)| *o > committed);
    }

    /// The hasher after every byte fed.
    pub(super) async fn finish(mut self) -> Hashes {
        self.settle().await;
        match self.state {
            StageState::Ready(h) => h,
            _ => unreachable!("settled"),
        }
    }
}
