//! What every call leaves behind, as a tower layer in front of all services (auth included, so
//! refused calls count too):
//! - a span (`rpc`) with the service, method, caller and request id, entered while the handler runs
//!   and while its response streams, so that every log line of the call names them; background
//!   work the call starts carries the request id on ([`crate::telemetry::task_span`]);
//! - the request id: the caller's `x-request-id` (1–128 printable ASCII characters) or a new one,
//!   returned in the response headers;
//! - the RPC metrics in the gRPC ecosystem's names: `grpc_server_started_total`,
//!   `grpc_server_handled_total`, `grpc_server_handling_seconds` and, for streaming methods,
//!   `grpc_server_msg_received_total` / `grpc_server_msg_sent_total`.
//!
//! Label values come from the descriptor set (every method strata serves, health and reflection);
//! any other path is counted as `unknown`, so callers cannot grow the label sets.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context as TaskContext, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame};
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::Instrument as _;

use super::{
    methods::Methods,
    status::{code_name, status_of},
};
use crate::telemetry::{
    self, Metrics,
    metrics::{RpcCodeLabels, RpcLabels},
};

/// A method's names, as labels and span fields.
struct Name {
    path: String,
    service: &'static str,
    method: &'static str,
    kind: &'static str,
    /// `service/method`, the span's name in traces (OpenTelemetry's RPC conventions).
    otel_name: &'static str,
    client_streaming: bool,
    server_streaming: bool,
}

/// Every method's names, built once per process (the descriptor set is the binary's) and kept
/// for its life: label values must be `'static`, and the set is bounded.
fn names() -> &'static [Name] {
    static NAMES: OnceLock<Vec<Name>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let methods = Methods::load().expect("every method in the embedded descriptor set declares its role (tested)");
        let mut v: Vec<(String, bool, bool)> =
            methods.iter().map(|(p, m)| (p.to_owned(), m.client_streaming, m.server_streaming)).collect();
        // Served beside strata's own services, from their crates' descriptor sets.
        v.push(("/grpc.health.v1.Health/Check".into(), false, false));
        v.push(("/grpc.health.v1.Health/Watch".into(), false, true));
        v.push(("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into(), true, true));
        v.push(("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".into(), true, true));
        v.into_iter()
            .map(|(path, cs, ss)| {
                let (service, method) = path[1..].split_once('/').unwrap_or(("unknown", "unknown"));
                Name {
                    service: leak(service.to_owned()),
                    method: leak(method.to_owned()),
                    otel_name: leak(path[1..].to_owned()),
                    kind: kind(cs, ss),
                    client_streaming: cs,
                    server_streaming: ss,
                    path,
                }
            })
            .collect()
    })
}

fn kind(client_streaming: bool, server_streaming: bool) -> &'static str {
    match (client_streaming, server_streaming) {
        (false, false) => "unary",
        (true, false) => "client_stream",
        (false, true) => "server_stream",
        (true, true) => "bidi_stream",
    }
}

/// One method's metric handles, taken from the families once (a call then touches no map).
struct Method {
    name: &'static Name,
    started: Counter,
    handling: Histogram,
    handled_family: Family<RpcCodeLabels, Counter>,
    /// By status code, created on first use (an unused code exports no series).
    handled: [OnceLock<Counter>; 17],
    received: Option<Counter>,
    sent: Option<Counter>,
}

impl Method {
    fn new(name: &'static Name, metrics: &Metrics) -> Self {
        let labels = RpcLabels { grpc_type: name.kind, grpc_service: name.service, grpc_method: name.method };
        Self {
            name,
            started: metrics.rpc.started.get_or_create_owned(&labels),
            handling: metrics.rpc.handling.get_or_create_owned(&labels),
            handled_family: metrics.rpc.handled.clone(),
            handled: Default::default(),
            received: name.client_streaming.then(|| metrics.rpc.msg_received.get_or_create_owned(&labels)),
            sent: name.server_streaming.then(|| metrics.rpc.msg_sent.get_or_create_owned(&labels)),
        }
    }

    fn handled(&self, code: Code) -> &Counter {
        let i = (code as usize).min(16);
        self.handled[i].get_or_init(|| {
            self.handled_family.get_or_create_owned(&RpcCodeLabels {
                grpc_type: self.name.kind,
                grpc_service: self.name.service,
                grpc_method: self.name.method,
                grpc_code: code_name(code),
            })
        })
    }
}

/// The layer; `metrics` off (setting `metrics = false`) keeps spans and request ids only.
#[derive(Clone)]
pub(super) struct ObserveLayer {
    methods: Arc<HashMap<&'static str, Arc<Method>>>,
    unknown: Arc<Method>,
    metrics: bool,
}

impl ObserveLayer {
    pub(super) fn new(metrics: &Metrics, enabled: bool) -> Self {
        static UNKNOWN: OnceLock<Name> = OnceLock::new();
        let unknown = UNKNOWN.get_or_init(|| Name {
            path: String::new(),
            service: "unknown",
            method: "unknown",
            kind: "unknown",
            otel_name: "unknown",
            client_streaming: false,
            server_streaming: false,
        });
        let methods = names().iter().map(|n| (n.path.as_str(), Arc::new(Method::new(n, metrics)))).collect();
        Self { methods: Arc::new(methods), unknown: Arc::new(Method::new(unknown, metrics)), metrics: enabled }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ObserveService { inner, layer: self.clone() }
    }
}

/// The service produced by [`ObserveLayer`].
#[derive(Clone)]
pub(super) struct ObserveService<S> {
    inner: S,
    layer: ObserveLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<tonic::body::Body>> for ObserveService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let start = Instant::now();
        let method = self.layer.methods.get(req.uri().path()).unwrap_or(&self.layer.unknown).clone();
        let metrics = self.layer.metrics;
        let id = telemetry::request_id_from(req.headers().get(telemetry::REQUEST_ID_HEADER).map(|v| v.as_bytes()));
        let name = method.name;
        let span = tracing::info_span!(
            "rpc",
            otel.name = name.otel_name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = name.service,
            rpc.method = name.method,
            request_id = &*id,
            caller = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        telemetry::follow_remote_parent(&span, req.headers());
        if metrics {
            method.started.inc();
            if let Some(received) = &method.received {
                let body = std::mem::take(req.body_mut());
                *req.body_mut() = tonic::body::Body::new(Counted::new(body, received.clone()));
            }
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            let mut response = telemetry::with_request_id(id.clone(), call).instrument(span.clone()).await?;
            if let Ok(v) = http::HeaderValue::from_str(&id) {
                response.headers_mut().insert(telemetry::REQUEST_ID_HEADER, v);
            }
            let mut observed =
                Observed { inner: tonic::body::Body::empty(), span, method, start, metrics, sent: None, done: false };
            // An error answered at once carries its status in the headers (no body follows).
            if let Some(code) = status_of(response.headers()) {
                observed.finish(code);
                return Ok(response);
            }
            if metrics {
                observed.sent = observed.method.sent.clone().map(|c| (c, Framer::default()));
            }
            Ok(response.map(|body| {
                observed.inner = body;
                tonic::body::Body::new(observed)
            }))
        })
    }
}

/// A response body that ends its call's record (handled, handling time, the span's status) when
/// its trailers pass — or, if it is dropped first (the client went away), as CANCELLED.
struct Observed {
    inner: tonic::body::Body,
    span: tracing::Span,
    method: Arc<Method>,
    start: Instant,
    metrics: bool,
    /// Streaming responses: the messages sent, counted as their frames pass.
    sent: Option<(Counter, Framer)>,
    done: bool,
}

impl Observed {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let took = self.start.elapsed();
        self.span.record("rpc.grpc.status_code", code as i32);
        // OpenTelemetry's RPC conventions: a server span is an error for these codes only (the
        // others are the caller's doing).
        if matches!(
            code,
            Code::Unknown
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
                | Code::DeadlineExceeded
                | Code::Unimplemented
        ) {
            self.span.record("otel.status_code", "ERROR");
        }
        if self.metrics {
            self.method.handled(code).inc();
            self.method.handling.observe(took.as_secs_f64());
        }
        let _entered = self.span.enter();
        tracing::debug!(code = code_name(code), micros = took.as_micros() as u64, "call finished");
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let polled = {
            // A streaming response's messages are made as the body is polled: their log lines
            // belong to the call.
            let _entered = this.span.enter();
            Pin::new(&mut this.inner).poll_frame(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(status_of(trailers).unwrap_or(Code::Unknown));
                } else if let (Some(data), Some((counter, framer))) = (frame.data_ref(), &mut this.sent) {
                    counter.inc_by(framer.feed(data));
                }
            }
            Poll::Ready(Some(Err(status))) => this.finish(status.code()),
            Poll::Ready(None) => this.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // Dropped before its status went out: the client cancelled or went away.
        self.finish(Code::Cancelled);
    }
}

/// A streaming request's body, counting its messages as they arrive.
struct Counted {
    inner: tonic::body::Body,
    counter: Counter,
    framer: Framer,
}

impl Counted {
    fn new(inner: tonic::body::Body, counter: Counter) -> Self {
        Self { inner, counter, framer: Framer::default() }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter.inc_by(this.framer.feed(data));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Finds gRPC messages in a byte stream cut anywhere: each is a 5-byte prefix (a flag, a
/// big-endian length) and that many bytes.
#[derive(Default)]
struct Framer {
    prefix: [u8; 5],
    have: usize,
    body_left: u64,
}

impl Framer {
    /// Takes the next bytes; returns how many messages they completed.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut done = 0;
        while !data.is_empty() {
            if self.body_left > 0 {
                let take = self.body_left.min(data.len() as u64);
                self.body_left -= take;
                data = &data[take as usize..];
                if self.body_left == 0 {
                    done += 1;
                }
                continue;
            }
            let take = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
                if len == 0 {
                    done += 1;
                } else {
                    self.body_left = u64::from(len);
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn messages_are_counted_however_the_bytes_are_cut() {
        let stream: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        for cut in [1, 2, 3, 4, 5, 6, 7, 64, 1000] {
            let mut f = Framer::default();
            let n: u64 = stream.chunks(cut).map(|c| f.feed(c)).sum();
            assert_eq!(n, 4, "chunks of {cut}");
            assert_eq!((f.have, f.body_left), (0, 0));
        }
        // A message cut short is not counted.
        let mut f = Framer::default();
        assert_eq!(f.feed(&message(10)[..12]), 0);
    }

    #[test]
    fn every_served_method_has_names() {
        let n = names();
        let path = |p: &str| n.iter().find(|m| m.path == p).unwrap_or_else(|| panic!("{p} missing"));
        let upload = path("/strata.v1.FileService/Upload");
        assert_eq!((upload.service, upload.method, upload.kind), ("strata.v1.FileService", "Upload", "client_stream"));
        assert_eq!(upload.otel_name, "strata.v1.FileService/Upload");
        assert_eq!(path("/grpc.health.v1.Health/Watch").kind, "server_stream");
        assert_eq!(path("/strata.v1.AdminService/GetInfo").kind, "unary");
        assert!(n.len() > 60, "{}", n.len());
    }
}
