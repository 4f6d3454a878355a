//! Rust SDK for strata, the storage-lifecycle control plane.
//!
//! ```no_run
//! # async fn demo() -> Result<(), strata_client::Error> {
//! let client = strata_client::Client::connect("http://127.0.0.1:50051")
//!     .await?
//!     .with_token("my-operator-token")?;
//! let metrics = client.storage_metrics(None).await?;
//! println!("{} bytes", metrics.database_size_bytes);
//! # Ok(()) }
//! ```
//!
//! Methods return the domain types of [`types`], never raw protobuf messages. The generated
//! protobuf code stays reachable under [`pb`] for callers that need it.

pub mod alerts;
pub mod archive;
pub mod backup;
#[cfg(feature = "cli")]
pub mod cli;
mod client;
mod convert;
mod files;
pub mod maintenance;
pub mod operations;
pub mod partitions;
pub mod scheduler;
pub mod tokens;
pub mod types;

pub use client::{Client, Error, HealthStatus, TlsOptions};
pub use files::{UPLOAD_INCOMPLETE, incomplete_upload_offset, sha256_of};

/// Response header naming the strata instance that answered (its `host:pid:random` id), on every
/// gRPC response (success, error, stream) and admin HTTP response: behind a load balancer, it says
/// who served a call.
pub const INSTANCE_HEADER: &str = "x-strata-instance";

/// Generated protobuf and gRPC code for `strata.v1`.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("strata.v1");

    /// Encoded `FileDescriptorSet` of every strata proto, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strata_descriptor");
}
