//! A loopback TCP proxy whose connections can be cut, to simulate a network failure or a crashed
//! client between a client and the server.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards every connection to `target` until [`CutProxy::cut`].
pub struct CutProxy {
    /// Address clients connect to.
    pub addr: SocketAddr,
    cut: CancellationToken,
}

impl CutProxy {
    /// Starts the proxy on a free loopback port.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = CancellationToken::new();
        let token = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => break },
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                    // Dropping both sockets here closes them: each side sees the connection die.
                });
            }
        });
        Ok(Self { addr, cut })
    }

    /// Closes every connection through the proxy and accepts no more.
    pub fn cut(&self) {
        self.cut.cancel();
    }
}

/// Forwards connections to `target`; the first one is cut once `limit` bytes have gone from the
/// server to the client (a network failure in the middle of a download, at a byte count rather
/// than a moment, so tests do not depend on timing). Later connections are forwarded whole.
pub struct CutOnceProxy {
    /// Address clients connect to.
    pub addr: SocketAddr,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
}

impl CutOnceProxy {
    /// Starts the proxy on a free loopback port.
    pub async fn start(target: SocketAddr, limit: u64) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let cuts = std::sync::Arc::new(AtomicUsize::new(0));
        let first = std::sync::Arc::new(AtomicBool::new(true));
        let (token, counter) = (stop.clone(), cuts.clone());
        tokio::spawn(async move {
            loop {
                let (inbound, _) = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => break },
                };
                let (token, counter) = (token.clone(), counter.clone());
                let cut_this = first.swap(false, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let (mut in_r, mut in_w) = inbound.into_split();
                    let (mut out_r, mut out_w) = outbound.into_split();
                    let up = tokio::io::copy(&mut in_r, &mut out_w);
                    let down = async {
                        let mut buf = vec![0u8; 64 << 10];
                        let mut sent = 0u64;
                        loop {
                            let room = if cut_this { (limit - sent).min(buf.len() as u64) as usize } else { buf.len() };
                            if room == 0 {
                                counter.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            match out_r.read(&mut buf[..room]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if in_w.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                    sent += n as u64;
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Ok(Self { addr, cuts, stop })
    }

    /// How many connections were cut so far (0 or 1).
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CutOnceProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Forwards every connection to `target` until [`StallProxy::stall`]; from then on it forwards
/// nothing either way but keeps the connections open, as a hung server or a black-holed network
/// does (no error, no close: only a timeout notices), until [`StallProxy::resume`].
pub struct StallProxy {
    /// Address clients connect to.
    pub addr: SocketAddr,
    stalled: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
}

impl StallProxy {
    /// Starts the proxy on a free loopback port, forwarding.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let (stalled, _) = tokio::sync::watch::channel(false);
        let (token, flag) = (stop.clone(), stalled.clone());
        tokio::spawn(async move {
            loop {
                let (inbound, _) = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => break },
                };
                let (token, up_flag, down_flag) = (token.clone(), flag.subscribe(), flag.subscribe());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let (in_r, in_w) = inbound.into_split();
                    let (out_r, out_w) = outbound.into_split();
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = async { tokio::join!(pipe(in_r, out_w, up_flag), pipe(out_r, in_w, down_flag)) } => {}
                    }
                });
            }
        });
        Ok(Self { addr, stalled, stop })
    }

    /// Stops forwarding: bytes already read are held, nothing more is read or written.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards again, the bytes held first.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies `from` to `to`, waiting while `stalled` says so before each read and each write.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
