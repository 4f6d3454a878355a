//! Running hashes that can be written down and continued by another process: an upload goes on
//! on any instance without reading its committed bytes again.
//!
//! - BLAKE3: the chaining values of the power-of-two-aligned subtrees the bytes so far make up,
//!   computed with the `blake3` crate's `hazmat` API, plus the bytes of the unfinished last chunk
//!   (under 1 KiB). This is what `blake3::Hasher` keeps internally, which it does not expose.
//! - SHA-256: `sha2`'s own serialized state (the compression function's midstate, the length so
//!   far and the partial block).

use blake3::{
    CHUNK_LEN, Hasher,
    hazmat::{ChainingValue, HasherExt as _, Mode, merge_subtrees_non_root, merge_subtrees_root},
};
use sha2::{
    Digest as _, Sha256,
    digest::common::hazmat::{SerializableState as _, SerializedState},
};

const CHUNK: u64 = CHUNK_LEN as u64;

/// A BLAKE3 hash in progress whose state can be serialized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Blake3 {
    /// Complete subtrees in input order, each as (its length in chunks, its chaining value).
    /// Equal neighbours are merged lazily, only when more input follows them: the last merge of
    /// all is the root's, which must know it is the root.
    stack: Vec<(u64, ChainingValue)>,
    /// Offset of `tail`'s first byte: the bytes the stack covers (a multiple of a chunk).
    at: u64,
    /// Bytes after the stack, at most one chunk. At offset 0 the first chunk stays here until a
    /// byte follows it, since a lone chunk is hashed as the root.
    tail: Vec<u8>,
}

impl Blake3 {
    /// Bytes hashed so far.
    pub(crate) fn len(&self) -> u64 {
        self.at + self.tail.len() as u64
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        loop {
            if !self.tail.is_empty() {
                let take = (CHUNK_LEN - self.tail.len()).min(data.len());
                self.tail.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.tail.len() < CHUNK_LEN || (self.at == 0 && data.is_empty()) {
                    return;
                }
                let cv = Hasher::new().set_input_offset(self.at).update(&self.tail).finalize_non_root();
                self.tail.clear();
                self.push(1, cv);
            }
            let c = self.at / CHUNK;
            // Whole chunks that may be hashed now; at offset 0 one byte must follow them.
            let ready = if c == 0 { data.len().saturating_sub(1) / CHUNK_LEN } else { data.len() / CHUNK_LEN } as u64;
            if ready == 0 {
                self.tail.extend_from_slice(data);
                return;
            }
            // The largest aligned subtree that fits: one update call hashes it with SIMD across
            // its chunks, as `blake3::Hasher` does.
            let mut chunks = 1 << ready.ilog2();
            if c > 0 {
                chunks = chunks.min(1 << c.trailing_zeros());
            }
            let n = (chunks * CHUNK) as usize;
            let cv = Hasher::new().set_input_offset(self.at).update(&data[..n]).finalize_non_root();
            data = &data[n..];
            self.push(chunks, cv);
        }
    }

    fn push(&mut self, chunks: u64, cv: ChainingValue) {
        merge_siblings(&mut self.stack);
        self.stack.push((chunks, cv));
        self.at += chunks * CHUNK;
    }

    pub(crate) fn finalize(&self) -> blake3::Hash {
        if self.stack.is_empty() {
            return blake3::hash(&self.tail);
        }
        let mut stack = self.stack.clone();
        if !self.tail.is_empty() {
            merge_siblings(&mut stack);
            stack.push((1, Hasher::new().set_input_offset(self.at).update(&self.tail).finalize_non_root()));
        }
        // Now the subtrees, largest first, are the left children down the tree's right edge; only
        // the last two can be of one size (siblings, whose parent may be the root).
        let mut cvs: Vec<ChainingValue> = stack.into_iter().map(|(_, cv)| cv).collect();
        // At least two: the first subtree was hashed only once a byte followed it.
        let mut right = cvs.pop().expect("two or more");
        while cvs.len() > 1 {
            right = merge_subtrees_non_root(&cvs.pop().expect("two or more"), &right, Mode::Hash);
        }
        merge_subtrees_root(&cvs[0], &right, Mode::Hash)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.stack.len() as u8);
        for (chunks, cv) in &self.stack {
            out.push(chunks.ilog2() as u8);
            out.extend_from_slice(cv);
        }
        out.extend_from_slice(&(self.tail.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.tail);
    }

    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let n = r.u8()?;
        let mut s = Self::default();
        for _ in 0..n {
            let log = r.u8()?;
            let chunks = 1u64.checked_shl(u32::from(log)).filter(|_| log < 54)?;
            let cv: ChainingValue = r.take(32)?.try_into().ok()?;
            // Aligned, and never smaller than a later neighbour but the last pair.
            if !(s.at / CHUNK).is_multiple_of(chunks) {
                return None;
            }
            s.stack.push((chunks, cv));
            s.at += chunks * CHUNK;
        }
        let tail = usize::from(u16::from_le_bytes(r.take(2)?.try_into().ok()?));
        if tail > CHUNK_LEN || (s.at > 0 && s.stack.len() == 1 && tail == 0) {
            return None;
        }
        s.tail = r.take(tail)?.to_vec();
        Some(s)
    }
}

/// Merges the last two subtrees while they are of one size (siblings), once more input follows
/// them, so their parent is not the root.
fn merge_siblings(stack: &mut Vec<(u64, ChainingValue)>) {
    while let [.., (a, left), (b, right)] = stack[..]
        && a == b
    {
        stack.truncate(stack.len() - 2);
        stack.push((a + b, merge_subtrees_non_root(&left, &right, Mode::Hash)));
    }
}

/// BLAKE3 and, when asked for, SHA-256 over the same bytes; serializable between any two bytes.
#[derive(Clone)]
pub(crate) struct Midstate {
    pub(crate) blake3: Blake3,
    pub(crate) sha256: Option<Sha256>,
}

/// Format version of [`Midstate::to_bytes`].
const VERSION: u8 = 1;

impl Midstate {
    pub(crate) fn new(sha256: bool) -> Self {
        Self { blake3: Blake3::default(), sha256: sha256.then(Sha256::new) }
    }

    /// Bytes hashed so far.
    pub(crate) fn len(&self) -> u64 {
        self.blake3.len()
    }

    /// Fits a core's cache with room to spare.
    const PIECE: usize = 64 << 10;

    /// Hashes `data`. With SHA-256 too, each piece goes through BLAKE3 and then through SHA-256
    /// while it is still in this core's cache: SHA-256 costs 0.57 s of a core per GiB on cached
    /// data and 0.9 s on data another core has just received (measured here with every
    /// implementation at hand), and BLAKE3 is cheap either way.
    pub(crate) fn update(&mut self, data: &[u8]) {
        match &mut self.sha256 {
            None => self.blake3.update(data),
            Some(s) => {
                for piece in data.chunks(Self::PIECE) {
                    self.blake3.update(piece);
                    s.update(piece);
                }
            }
        }
    }

    /// The serialized state, for the catalog.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match &self.sha256 {
            None => out.push(0),
            Some(s) => {
                let state = s.serialize();
                out.push(1);
                out.extend_from_slice(&(state.len() as u16).to_le_bytes());
                out.extend_from_slice(&state);
            }
        }
        self.blake3.write(&mut out);
        out
    }

    /// The state [`Midstate::to_bytes`] wrote; None when `bytes` is not one.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let sha256 = match r.u8()? {
            0 => None,
            1 => {
                let n = usize::from(u16::from_le_bytes(r.take(2)?.try_into().ok()?));
                let state = SerializedState::<Sha256>::try_from(r.take(n)?).ok()?;
                Some(Sha256::deserialize(&state).ok()?)
            }
            _ => return None,
        };
        let blake3 = Blake3::read(&mut r)?;
        r.0.is_empty().then_some(Self { blake3, sha256 })
    }
}

/// A cursor over serialized bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Hashes `data` in two halves split at `at`, the state written down and read back between
    /// them, the halves fed in pieces of `piece` bytes.
    fn resumed(data: &[u8], at: usize, piece: usize, sha: bool) -> (String, Option<String>) {
        let mut m = Midstate::new(sha);
        for p in data[..at].chunks(piece.max(1)) {
            m.update(p);
        }
        assert_eq!(m.len(), at as u64);
        let bytes = m.to_bytes();
        let mut m = Midstate::from_bytes(&bytes).expect("reads back");
        assert_eq!(m.to_bytes(), bytes, "stable at {at}");
        for p in data[at..].chunks(piece.max(1)) {
            m.update(p);
        }
        assert_eq!(m.len(), data.len() as u64);
        (m.blake3.finalize().to_hex().to_string(), m.sha256.map(|s| hex::encode(s.finalize())))
    }

    /// Every split the tree shape makes special — empty, one byte, a chunk and its neighbours,
    /// powers of two of chunks and their neighbours — and random ones, in pieces of several sizes:
    /// the same BLAKE3 as `blake3::hash` and the same SHA-256 as `sha2`.
    #[test]
    fn resumed_hashes_equal_one_pass_at_every_kind_of_split() {
        let mut splits = vec![0, 1, 1023, 1024, 1025, 2047, 2048, 2049];
        for k in 11..=20 {
            splits.extend([(1 << k) - 1, 1 << k, (1 << k) + 1]);
        }
        let mut x = 0x2545_F491_4F6C_DD1D_u64;
        for _ in 0..12 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            splits.push((x % (3 << 20)) as usize);
        }
        for len in [0, 1, 1024, 1025, 4096, 70_000, (1 << 20) + 1, 3 << 20] {
            let d = data(len, len as u64 + 3);
            let want = (blake3::hash(&d).to_hex().to_string(), Some(hex::encode(Sha256::digest(&d))));
            for &at in splits.iter().filter(|&&s| s <= len) {
                for piece in [1000, 1024, 65_536, 1 << 20] {
                    if piece < 1024 && len > 100_000 {
                        continue;
                    }
                    assert_eq!(resumed(&d, at, piece, true), want, "{len} bytes split at {at}, pieces of {piece}");
                }
            }
            assert_eq!(resumed(&d, len / 2, 7, false).0, want.0, "{len} bytes in 7-byte pieces");
        }
    }

    #[test]
    fn malformed_states_are_refused() {
        let mut m = Midstate::new(true);
        m.blake3.update(&data(5000, 1));
        let good = m.to_bytes();
        assert!(Midstate::from_bytes(&good).is_some());
        assert!(Midstate::from_bytes(&[]).is_none());
        assert!(Midstate::from_bytes(&good[..good.len() - 1]).is_none(), "truncated");
        let mut longer = good.clone();
        longer.push(0);
        assert!(Midstate::from_bytes(&longer).is_none(), "trailing bytes");
        let mut version = good;
        version[0] = 9;
        assert!(Midstate::from_bytes(&version).is_none(), "unknown version");
    }
}
