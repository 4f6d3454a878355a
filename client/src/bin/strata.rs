//! `strata`: command-line client for a strata server.

use std::process::ExitCode;

use clap::Parser as _;
use strata_client::cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli, &mut std::io::stdout().lock()).await {
        Ok(code) => code,
        // The reader went away (`strata … | head`): what it wanted has been written, so this is
        // how such a pipeline ends, not a failure to report.
        Err(e) if closed_output(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A write to a closed pipe anywhere in `e`'s chain (Rust ignores SIGPIPE, so such a write fails
/// with EPIPE instead of ending the process).
fn closed_output(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}
