//! The edge of the audit trail: which calls are recorded, with what, and when. Every call of a
//! method declared `mutates` in `proto/` and every call the auth layer refuses is recorded
//! through [`crate::service::audit`]; the resource is read from the request's first message by
//! the fields the method declares, as the message passes (no second decode on the handler's
//! path, no buffering); the outcome is the call's `grpc-status`. A call that succeeded sends its
//! final status only once its event is committed.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use tonic::Code;

use super::methods::MethodRule;
use super::status::{code_name, status_of};
use crate::service::{
    Context,
    audit::{Event, Recorder},
};

/// The largest first message read for its resource fields (headers, ids and names: small).
const FIRST_MESSAGE_MAX: usize = 256 << 10;
/// How long a refused call's request is read for its resource.
const DENIED_READ: Duration = Duration::from_millis(200);
/// The longest value of one resource field kept.
const VALUE_MAX: usize = 200;

/// The resource a call's first message names, once it has passed.
#[derive(Debug, Default)]
pub(super) struct Slot(OnceLock<String>);

impl Slot {
    fn get(&self) -> String {
        self.0.get().cloned().unwrap_or_default()
    }
}

/// The request body of an audited call: frames pass unchanged; the first gRPC message is copied
/// aside (up to [`FIRST_MESSAGE_MAX`]) and its resource fields read into the [`Slot`].
pub(super) struct FirstMessage<B> {
    inner: B,
    buf: Option<BytesMut>,
    rule: Arc<MethodRule>,
    slot: Arc<Slot>,
}

impl<B> FirstMessage<B> {
    pub(super) fn new(inner: B, rule: Arc<MethodRule>, slot: Arc<Slot>) -> Self {
        let buf = (!rule.resources.is_empty()).then(BytesMut::new);
        Self { inner, buf, rule, slot }
    }

    fn feed(&mut self, data: &[u8]) {
        let Some(buf) = &mut self.buf else { return };
        buf.extend_from_slice(data);
        if buf.len() < 5 {
            return;
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        // A compressed or over-long first message is not read: the event has no resource.
        if buf[0] != 0 || len > FIRST_MESSAGE_MAX {
            self.buf = None;
            return;
        }
        if buf.len() >= 5 + len {
            let mut whole = std::mem::take(buf);
            whole.advance(5);
            let _ = self.slot.0.set(resource(&self.rule.input, &self.rule.resources, &whole[..len]));
            self.buf = None;
        }
    }
}

impl<B> Body for FirstMessage<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.feed(data);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a refused call's request until its first message has passed or it ends (bounded by
/// [`DENIED_READ`] and [`FIRST_MESSAGE_MAX`]); returns the resource it names ('' for a method that
/// declares none, or a path that is no method).
pub(super) async fn denied_resource(mut body: tonic::body::Body, rule: Option<Arc<MethodRule>>) -> String {
    let read = async {
        match rule {
            Some(rule) if !rule.resources.is_empty() => {
                let slot = Arc::new(Slot::default());
                let mut body = FirstMessage::new(body, rule, slot.clone());
                while slot.0.get().is_none() && body.buf.is_some() {
                    match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
                slot.get()
            }
            _ => {
                let mut read = 0;
                while read <= FIRST_MESSAGE_MAX {
                    match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                        Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                        _ => break,
                    }
                }
                String::new()
            }
        }
    };
    tokio::time::timeout(DENIED_READ, read).await.unwrap_or_default()
}

/// `path=value` of the non-empty fields `paths` name in `bytes` (a `input` message), space
/// separated; '' when the message does not decode.
pub(super) fn resource(input: &MessageDescriptor, paths: &[String], bytes: &[u8]) -> String {
    let Ok(msg) = DynamicMessage::decode(input.clone(), bytes) else {
        return String::new();
    };
    paths
        .iter()
        .filter_map(|p| {
            let v = field_text(&msg, p)?;
            (!v.is_empty()).then(|| format!("{p}={v}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A field's value as text, through singular message fields (`a.b`).
fn field_text(msg: &DynamicMessage, path: &str) -> Option<String> {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let value = msg.get_field_by_name(head)?;
    if let Some(rest) = rest {
        return match value.as_ref() {
            Value::Message(m) => field_text(m, rest),
            _ => None,
        };
    }
    let text = match value.as_ref() {
        Value::String(s) => s.clone(),
        Value::List(l) => l.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(","),
        Value::I32(n) | Value::EnumNumber(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    // Names and ids, never content: control characters out, long values cut.
    let mut clean: String = text.chars().filter(|c| !c.is_control()).take(VALUE_MAX).collect();
    if text.chars().count() > VALUE_MAX {
        clean.push('…');
    }
    Some(clean)
}

/// An audited call whose outcome is not known yet.
pub(super) struct Pending {
    pub(super) ctx: Context,
    pub(super) event: Event,
    pub(super) slot: Arc<Slot>,
}

impl Pending {
    fn finish(mut self, code: Code) -> (Recorder, Context, Event) {
        self.event.code = code_name(code);
        self.event.resource = self.slot.get();
        (self.ctx.audit.clone(), self.ctx, self.event)
    }

    /// Records the outcome without waiting.
    pub(super) fn record(self, code: Code) {
        let (recorder, ctx, event) = self.finish(code);
        recorder.record(&ctx, event);
    }

    /// Records a success and resolves once it is committed.
    pub(super) fn durable(self) -> impl Future<Output = ()> + Send {
        let (recorder, ctx, event) = self.finish(Code::Ok);
        async move { recorder.durable(&ctx, event).await }
    }
}

/// The response body of an audited call: the final status waits for the event's commit when it
/// is OK; a call that ends otherwise (an error, the client gone) is recorded as it ends.
pub(super) struct Audited {
    inner: tonic::body::Body,
    pending: Option<Pending>,
    committing: Option<(Commit, Frame<Bytes>)>,
}

/// An event being committed before the final status goes out.
type Commit = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Audited {
    pub(super) fn new(inner: tonic::body::Body, pending: Pending) -> Self {
        Self { inner, pending: Some(pending), committing: None }
    }
}

impl Body for Audited {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some((commit, _)) = &mut this.committing {
            return match commit.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(this.committing.take().map(|(_, trailers)| Ok(trailers))),
                Poll::Pending => Poll::Pending,
            };
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                let code = frame.trailers_ref().and_then(status_of).unwrap_or(Code::Unknown);
                match this.pending.take() {
                    Some(p) if code == Code::Ok => {
                        this.committing = Some((Box::pin(p.durable()), frame));
                        // Polled at once: its waker is registered.
                        self.poll_frame(cx)
                    }
                    Some(p) => {
                        p.record(code);
                        Poll::Ready(Some(Ok(frame)))
                    }
                    None => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(p) = this.pending.take() {
                    p.record(e.code());
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(p) = this.pending.take() {
                    p.record(Code::Unknown);
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.committing.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Audited {
    /// The client went away before the call's end: recorded as cancelled (what the handler did
    /// before that is in the catalog).
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.record(Code::Cancelled);
        }
    }
}
