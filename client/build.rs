//! The one codegen place: compiles `../proto` with protox (no system `protoc` needed), writes the
//! descriptor set that the server serves through reflection, and generates server traits only when
//! the `server` feature is on.

use std::{env, path::PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "../proto";
const PROTOS: &[&str] = &[
    "strata/v1/common.proto",
    "strata/v1/operations.proto",
    "strata/v1/admin.proto",
    "strata/v1/storage.proto",
    "strata/v1/files.proto",
    "strata/v1/archive.proto",
    "strata/v1/backup.proto",
    "strata/v1/partitions.proto",
    "strata/v1/maintenance.proto",
    "strata/v1/scheduler.proto",
    "strata/v1/alerts.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let fds = protox::compile(PROTOS, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("strata_descriptor.bin"), fds.encode_to_vec())?;

    // Cargo exposes enabled features of the crate being built as CARGO_FEATURE_* variables.
    let server = env::var_os("CARGO_FEATURE_SERVER").is_some();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(server)
        // `bytes` fields as `bytes::Bytes`: file chunks are passed on without copying.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
