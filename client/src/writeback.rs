//! Large sequential file writes that do not pile up in the page cache.

use std::num::NonZeroU64;

/// Bytes written between two writeback requests.
const STEP: u64 = 8 << 20;

/// Starts writeback of a file's recent bytes as it is written, and evicts the bytes already on disk.
///
/// Without it, a large write stays dirty in memory (the kernel starts writeback only past
/// `dirty_background_ratio`, gigabytes on a server) and the final fsync writes it all at once,
/// after the data has arrived; it also evicts other, more useful pages. Measured on the project's
/// machine: 1 GiB written in 1 MiB pieces then fsynced took 0.9–1.4 s plain and 0.38 s like this.
///
/// It uses `posix_fadvise(POSIX_FADV_DONTNEED)`, which on Linux starts writeback of dirty pages in
/// the range without waiting and drops the clean ones; elsewhere it does nothing.
#[derive(Debug, Default)]
pub struct WriteBehind {
    advised: u64,
}

impl WriteBehind {
    /// Starts at `offset` (a file that already holds bytes).
    pub fn at(offset: u64) -> Self {
        Self { advised: offset }
    }

    /// Call after each write, with the file's length so far.
    pub fn wrote(&mut self, file: &std::fs::File, end: u64) {
        if end < self.advised + STEP {
            return;
        }
        // The range before the last one has been written back by now: this evicts it and starts
        // writeback of the newest.
        let from = self.advised.saturating_sub(STEP);
        if let Some(len) = NonZeroU64::new(end - from) {
            advise(file, from, len);
        }
        self.advised = end;
    }
}

#[cfg(target_os = "linux")]
fn advise(file: &std::fs::File, from: u64, len: NonZeroU64) {
    // Advice only: a failure changes nothing that matters.
    let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
}

#[cfg(not(target_os = "linux"))]
fn advise(_: &std::fs::File, _: u64, _: NonZeroU64) {}
