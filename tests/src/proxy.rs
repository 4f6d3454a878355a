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
