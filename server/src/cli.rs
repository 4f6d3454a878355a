//! Command line of `strata-server`.

use clap::{Parser, Subcommand};

use strata_server::config::ConfigArgs;

/// strata: storage-lifecycle control plane for an application's database and object storage.
///
/// With no settings it runs on the embedded default: SQLite at ./strata-data/strata.db, objects in
/// ./strata-data/objects, gRPC on 127.0.0.1:50051 (loopback clients only until tokens are set).
#[derive(Debug, Parser)]
#[command(name = "strata-server", version, about, long_about)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gRPC server (the default).
    Serve,
    /// Apply pending catalog migrations and exit.
    Migrate,
    /// Print the SHA-256 to configure for a bearer token (reads the token from stdin if omitted).
    HashToken {
        /// The token; prefer stdin so it stays out of shell history.
        token: Option<String>,
    },
}
