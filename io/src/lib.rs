//! I/O helpers that both the strata SDK (downloads, uploads) and the server (local object store)
//! use: pooled read buffers and large sequential file writes that stay out of the page cache.
//!
//! A crate of its own so that neither side's public API carries them: the SDK's API is the gRPC
//! API, and the server does not depend on the SDK for I/O.

pub mod buffers;
pub mod writeback;
