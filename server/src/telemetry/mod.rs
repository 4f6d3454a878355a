//! What strata tells about itself: log lines (a `RUST_LOG`-style filter, default `info`; text or
//! JSON), the request id every call's log lines carry, and the Prometheus metrics ([`Metrics`]).
//!
//! Every layer records into it; it imports nothing of the crate.

pub mod metrics;

use std::{io::IsTerminal as _, sync::Arc};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub use self::metrics::Metrics;

/// The metadata key of a call's request id, read from requests and set on responses.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id taken from a caller; a longer (or non-printable) one is replaced.
const MAX_REQUEST_ID: usize = 128;

tokio::task_local! {
    /// The request id of the call this task serves.
    static REQUEST_ID: Arc<str>;
}

/// The caller's request id when it is fit for logs (1–128 printable ASCII characters), otherwise
/// a new one (a UUIDv7: time-ordered, unique across instances).
pub fn request_id_from(sent: Option<&[u8]>) -> Arc<str> {
    match sent {
        Some(v) if !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.iter().all(|b| b.is_ascii_graphic()) => {
            // Printable ASCII is UTF-8.
            Arc::from(std::str::from_utf8(v).unwrap_or_default())
        }
        _ => Arc::from(uuid::Uuid::now_v7().simple().to_string()),
    }
}

/// Runs `f` as the work of the call with request id `id`.
pub async fn with_request_id<F: Future>(id: Arc<str>, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The request id of the call this task serves, if it serves one.
pub fn request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// `f`, to be spawned as a task of its own that is still the current call's work: it runs in the
/// current span and with the current request id.
pub fn propagate<F: Future>(f: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument as _;
    let (span, id) = (tracing::Span::current(), request_id());
    async move {
        match id {
            Some(id) => REQUEST_ID.scope(id, f.instrument(span)).await,
            None => f.instrument(span).await,
        }
    }
}

/// The span of background work (`task`: `archive_run`, `backup`, …) started now: a root of its own
/// (a call's span ends with the call, its work may run for hours), which follows from the current
/// span and carries the current call's request id, so that the work's log lines name the call
/// that started it.
pub fn task_span(task: &'static str) -> tracing::Span {
    let span = tracing::info_span!(parent: None, "task", task, request_id = tracing::field::Empty);
    if let Some(id) = request_id() {
        span.record("request_id", &*id);
    }
    span.follows_from(tracing::Span::current());
    span
}

/// Installs the global subscriber: JSON lines (`json`) or text. Filter from `STRATA_LOG` or
/// `RUST_LOG`, default `info`.
pub fn init(json: bool) {
    let filter = std::env::var("STRATA_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let registry = tracing_subscriber::registry().with(filter);
    // Logs go to stderr so that stdout carries only command output (e.g. `migrate`); colours only
    // on a terminal.
    let ansi = std::io::stderr().is_terminal();
    let _ = if json {
        // Each line carries its spans' fields (`span`, `spans`): a call's request id among them.
        registry.with(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr)).try_init()
    };
}

/// For tests: logs to the test writer at `warn` unless `RUST_LOG` says otherwise; safe to call often.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry().with(filter).with(fmt::layer().with_test_writer()).try_init();
}
