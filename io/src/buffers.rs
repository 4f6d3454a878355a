//! Read buffers used again once the bytes handed out of them are dropped.

use bytes::Bytes;

/// Buffers of one size, handed out as [`Bytes`] that return their buffer when the last reference
/// goes. Streaming a big file through fresh buffers costs a page fault per 4 KiB and zeroing for
/// every chunk: measured, 16 % of the SDK's CPU during a 3 GiB upload.
#[derive(Debug)]
pub struct BufferPool {
    size: usize,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
}

/// Bytes of a pooled buffer; dropping the last reference returns the buffer.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A full pool (or one that is gone) lets the buffer go.
        let _ = self.back.try_send(std::mem::take(&mut self.buf));
    }
}

impl BufferPool {
    /// A pool of `size`-byte buffers keeping at most `keep` free ones.
    pub fn new(size: usize, keep: usize) -> Self {
        let (back, free) = std::sync::mpsc::sync_channel(keep);
        Self { size, back, free }
    }

    /// A buffer of the pool's size (contents unspecified).
    pub fn take(&self) -> Vec<u8> {
        self.free.try_recv().ok().filter(|b| b.len() == self.size).unwrap_or_else(|| vec![0u8; self.size])
    }

    /// The first `len` bytes of `buf`, which comes back to the pool when they are dropped.
    pub fn bytes(&self, buf: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Pooled { buf, len, back: self.back.clone() })
    }
}
