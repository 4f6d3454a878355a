//! Test harness shared by the integration tests and the benchmarks: a real PostgreSQL primary with
//! a streaming replica (started here, on free loopback ports, torn down at exit), a real strata
//! server on `127.0.0.1:0` (in-process, or as processes), and HAProxy in front of several.

pub mod haproxy;
pub mod notify;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod server;

pub use pg::PgCluster;
pub use s3::S3Server;
pub use server::TestServer;
