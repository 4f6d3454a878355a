//! The PROXY protocol (version 2, binary: HAProxy's `send-proxy-v2`), so that behind a load
//! balancer strata sees its clients' addresses. Only peers listed in `trusted_proxies` may send the
//! header, and they must (a connection of theirs without one is refused: it could not say whose it
//! is); a header from anyone else is refused, as is the text form (version 1), which strata does not
//! take. See <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{io::AsyncReadExt, net::TcpStream};

/// The first 12 bytes of every version 2 header.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The most address and TLV bytes a header may announce: HAProxy sends a few dozen; a peer that
/// announces more is not one we take.
const MAX_BODY: usize = 4096;

/// What a proxy's header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Header {
    /// The client's address (and port) as the proxy saw it.
    Proxied(SocketAddr),
    /// The proxy's own connection (a health check), or one whose addresses it does not say.
    Local,
}

/// Reads a version 2 header from the start of `tcp`, exactly its bytes (what follows is the
/// client's: TLS or HTTP/2).
pub(super) async fn read_header(tcp: &mut TcpStream) -> io::Result<Header> {
    let mut fixed = [0u8; 16];
    tcp.read_exact(&mut fixed).await?;
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("PROXY header: {why}"));
    if fixed[..12] != SIGNATURE {
        return Err(bad("missing (a trusted proxy must send PROXY protocol version 2)"));
    }
    let (version, command, family) = (fixed[12] >> 4, fixed[12] & 0x0f, fixed[13]);
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if version != 2 {
        return Err(bad(&format!("version {version}, expected 2")));
    }
    if len > MAX_BODY {
        return Err(bad(&format!("{len} bytes announced")));
    }
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await?;
    parse(command, family, &body).map_err(|why| bad(&why))
}

/// The header's command, address family and body as a [`Header`].
fn parse(command: u8, family: u8, body: &[u8]) -> Result<Header, String> {
    match command {
        0 => return Ok(Header::Local),
        1 => {}
        c => return Err(format!("unknown command {c}")),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match family {
        // TCP over IPv4: source, destination addresses, source, destination ports.
        0x11 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Header::Proxied(SocketAddr::new(ip.into(), port(&body[8..10]))))
        }
        // TCP over IPv6.
        0x21 if body.len() >= 36 => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&body[..16]).expect("16 bytes"));
            Ok(Header::Proxied(SocketAddr::new(ip.into(), port(&body[32..34]))))
        }
        0x11 | 0x21 => Err("addresses cut short".into()),
        // UNSPEC: the proxy does not say (the connection is treated as the proxy's own).
        0x00 => Ok(Header::Local),
        f => Err(format!("address family 0x{f:02x} (only TCP over IPv4 or IPv6)")),
    }
}

/// Whether a connection from an untrusted peer starts with a PROXY header (either version): such a
/// peer claims to speak for others, which only `trusted_proxies` may. Neither TLS (0x16) nor
/// HTTP/2 (`PRI * HTTP/2.0`) starts like one. Waits for the first bytes at most `wait`.
pub(super) async fn claims_proxy(tcp: &TcpStream, wait: Duration) -> io::Result<bool> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 12];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no data"))??;
        let seen = &buf[..n];
        // Enough to tell: a mismatch with both signatures, or all of one.
        let v2 = SIGNATURE.starts_with(seen);
        let v1 = b"PROXY ".starts_with(seen) || seen.starts_with(b"PROXY ");
        if n == 0 || (!v2 && !v1) {
            return Ok(false);
        }
        if n == buf.len() || seen.starts_with(b"PROXY ") {
            return Ok(true);
        }
        // A prefix of a signature: wait for more bytes (peek returns at once with what is there).
        tokio::time::sleep(Duration::from_millis(5)).await;
        if tokio::time::Instant::now() >= deadline {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let v4 = [192, 0, 2, 7, 10, 0, 0, 1, 0xc3, 0x50, 0x1f, 0x90];
        assert_eq!(parse(1, 0x11, &v4), Ok(Header::Proxied("192.0.2.7:50000".parse().unwrap())));
        let mut v6 = vec![0u8; 36];
        v6[..16].copy_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        v6[32..34].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(parse(1, 0x21, &v6), Ok(Header::Proxied("[2001:db8::5]:443".parse().unwrap())));
        assert_eq!(parse(0, 0x00, &[]), Ok(Header::Local));
        assert_eq!(parse(1, 0x00, &[]), Ok(Header::Local));
        assert!(parse(1, 0x11, &v4[..8]).is_err());
        assert!(parse(1, 0x12, &v4).is_err(), "UDP");
        assert!(parse(2, 0x11, &v4).is_err());
    }
}
