//! Test harness shared by the integration tests and the benchmarks: a real PostgreSQL primary with
//! a streaming replica (started here, on free loopback ports, torn down at exit) and a real strata
//! server on `127.0.0.1:0`.

pub mod notify;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod server;

pub use pg::PgCluster;
pub use s3::S3Server;
pub use server::TestServer;
