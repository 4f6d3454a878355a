//! Tracing set-up: `RUST_LOG`-style filter (default `info`), text or JSON lines.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber. Filter from `STRATA_LOG` or `RUST_LOG`, default `info`.
pub fn init(format: LogFormat) {
    let filter = std::env::var("STRATA_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let registry = tracing_subscriber::registry().with(filter);
    // Logs go to stderr so that stdout carries only command output (e.g. `migrate`); colours only
    // on a terminal.
    let ansi = std::io::stderr().is_terminal();
    let _ = match format {
        LogFormat::Text => {
            registry.with(fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr)).try_init()
        }
        LogFormat::Json => {
            registry.with(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr)).try_init()
        }
    };
}

/// For tests: logs to the test writer at `warn` unless `RUST_LOG` says otherwise; safe to call often.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry().with(filter).with(fmt::layer().with_test_writer()).try_init();
}
