//! What strata tells about itself: log lines (a `RUST_LOG`-style filter, default `info`; text or
//! JSON), the request id every call's log lines carry, and the Prometheus metrics ([`Metrics`]).
//!
//! Every layer records into it; it imports nothing of the crate.

pub mod metrics;
mod otlp;

use std::{io::IsTerminal as _, sync::Arc};

use tracing_subscriber::{EnvFilter, filter::LevelFilter, fmt, prelude::*};

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

/// What [`init`] set up that must be ended at exit: the OpenTelemetry exporter, whose last spans
/// are sent by [`Telemetry::shutdown`].
#[must_use = "call shutdown() at exit, or the last spans are lost"]
pub struct Telemetry {
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (at most the exporter's timeout) and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.traces {
            // Blocking: it waits for the export thread, whose requests need this runtime.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber: JSON lines (`json`) or text, and spans sent to
/// `otlp_endpoint` over OTLP/gRPC when given (call it inside the Tokio runtime then: the exporter's
/// channel lives there). Filter from `STRATA_LOG` or `RUST_LOG`, default `info`.
pub fn init(json: bool, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let filter = std::env::var("STRATA_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let traces = otlp_endpoint.map(otlp::provider).transpose()?;
    // Each layer filters for itself: spans are exported at `info` whatever level the logs are at
    // (an operator who logs warnings only still gets every call's span).
    let otel = traces.as_ref().map(|p| otlp::layer(p).with_filter(LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(otel);
    // Logs go to stderr so that stdout carries only command output (e.g. `migrate`); colours only
    // on a terminal.
    let ansi = std::io::stderr().is_terminal();
    let _ = if json {
        // Each line carries its spans' fields (`span`, `spans`): a call's request id among them.
        let fmt = fmt::layer().json().flatten_event(true).with_writer(std::io::stderr);
        registry.with(fmt.with_filter(filter)).try_init()
    } else {
        let fmt = fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr);
        registry.with(fmt.with_filter(filter)).try_init()
    };
    Ok(Telemetry { traces })
}

/// Joins `span` to the caller's trace when the request carries a W3C `traceparent` header and
/// traces are exported.
pub fn follow_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") && otlp::ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        otlp::set_parent(span, headers);
    }
}

/// For tests: logs to the test writer at `warn` unless `RUST_LOG` says otherwise; safe to call often.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry().with(filter).with(fmt::layer().with_test_writer()).try_init();
}
