//! Test harness shared by the integration tests and the benchmarks: a real PostgreSQL primary with
//! a streaming replica (started here, on free loopback ports, torn down at exit), a real strata
//! server on `127.0.0.1:0` (in-process, or as processes), and HAProxy in front of several.

pub mod haproxy;
pub mod notify;
pub mod pg;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod s3;
pub mod server;

pub use pg::PgCluster;
pub use s3::S3Server;
pub use server::TestServer;

/// `len` deterministic bytes that look random to a compressor (xorshift64 from `seed`): the same
/// seed gives the same bytes in every test and process.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
