//! strata's own accept loop for the gRPC port: TCP accepted with Nagle off, then the PROXY header
//! of a trusted load balancer (`trusted_proxies`; a header from anyone else is refused) and (when
//! configured) the TLS handshake, each connection in a task of its own so that a slow or silent
//! client never holds up the others; what comes out is a [`Conn`] carrying who the peer is
//! ([`Peer`]), which tonic puts into every request's extensions for the auth layer.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::{
    drain::Closable,
    proxy::{self, Header},
    tls::{CertNames, Tls},
};
use crate::config::ProxyNet;

/// A client has this long from its TCP connect to its first bytes, and to the end of the PROXY
/// header and TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted and handshaken but not yet taken by the server.
const READY_QUEUE: usize = 128;

/// Who is at the other end of a connection, as the auth layer sees it.
#[derive(Debug, Clone, Default)]
pub(super) struct Peer {
    /// The client's address: behind a trusted proxy, the one its PROXY header gave.
    pub(super) addr: Option<SocketAddr>,
    /// The trusted proxy the connection came through.
    pub(super) via: Option<SocketAddr>,
    /// The names of the client's certificate, verified against `tls_client_ca` (mutual TLS).
    pub(super) cert: Option<Arc<CertNames>>,
}

/// An accepted connection: plaintext or TLS.
pub(super) struct Conn {
    io: Io,
    peer: Peer,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// The connections of `listener`, ready for HTTP/2 (after TLS when `tls` is set), each closed when
/// `close` fires. The accept loop ends when the stream is dropped.
pub(super) fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    proxies: Arc<[ProxyNet]>,
    close: CancellationToken,
) -> impl Stream<Item = io::Result<Closable<Conn>>> + Send + 'static {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, tls, proxies, close, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    proxies: Arc<[ProxyNet]>,
    close: CancellationToken,
    tx: mpsc::Sender<io::Result<Closable<Conn>>>,
) {
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            a = listener.accept() => a,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: the listener itself is fine; wait a
                // little rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Nagle's algorithm must be off: with it, small responses wait for the client's delayed
        // ACK (~40 ms per call).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(peer = %addr, error = %e, "TCP_NODELAY");
        }
        let (tls, proxies, close, tx) = (tls.clone(), proxies.clone(), close.clone(), tx.clone());
        tokio::spawn(async move {
            let Some(conn) = handshake(tcp, addr, tls.as_deref(), &proxies).await else { return };
            let _ = tx.send(Ok(Closable::new(conn, close))).await;
        });
    }
}

/// The PROXY header (from a trusted proxy) and the TLS handshake of a new connection; None when
/// the connection is refused (logged).
async fn handshake(mut tcp: TcpStream, addr: SocketAddr, tls: Option<&Tls>, proxies: &[ProxyNet]) -> Option<Conn> {
    let mut peer = Peer { addr: Some(addr), via: None, cert: None };
    let refuse = |why: String| {
        tracing::info!(peer = %addr, reason = %why, "connection refused");
        None
    };
    if proxies.iter().any(|p| p.contains(addr.ip())) {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy::read_header(&mut tcp)).await {
            Ok(Ok(Header::Proxied(client))) => (peer.addr, peer.via) = (Some(client), Some(addr)),
            // The proxy's own connection: it speaks for itself.
            Ok(Ok(Header::Local)) => peer.via = Some(addr),
            Ok(Err(e)) => return refuse(format!("from a trusted proxy: {e}")),
            Err(_) => return refuse("a trusted proxy sent no PROXY header in time".into()),
        }
    } else {
        match proxy::claims_proxy(&tcp, HANDSHAKE_TIMEOUT).await {
            Ok(false) => {}
            Ok(true) => return refuse("a PROXY header from a peer that is not in trusted_proxies".into()),
            Err(e) => return refuse(format!("before its first bytes: {e}")),
        }
    }
    let Some(tls) = tls else { return Some(Conn { io: Io::Plain(tcp), peer }) };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(tcp)).await {
        Ok(Ok(stream)) => {
            peer.cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| CertNames::of(c))
                .map(Arc::new);
            Some(Conn { io: Io::Tls(Box::new(stream)), peer })
        }
        // Plaintext on the TLS port, an unknown client CA, no client certificate.
        Ok(Err(e)) => refuse(format!("TLS handshake: {e}")),
        Err(_) => refuse("TLS handshake timed out".into()),
    }
}
