//! The one codegen place: compiles `../proto` with protox (no system `protoc` needed), writes the
//! descriptor set that the server serves through reflection, and generates server traits only when
//! the `server` feature is on.

use std::{env, path::PathBuf};

const PROTO_ROOT: &str = "../proto";
const PROTOS: &[&str] = &[
    "strata/v1/auth.proto",
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
    "strata/v1/tokens.proto",
    "strata/v1/audit.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_source_info(true).include_imports(true).open_files(PROTOS)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded by protox itself so that custom options (each method's `strata.v1.auth`) are kept:
    // prost's own types would drop them as unknown fields. The server reads them at start-up.
    std::fs::write(out_dir.join("strata_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    let fds = compiler.file_descriptor_set();

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
