//! What both of stg's shells, the SIP edge ([`stg_edge`]) and the web front (`stg-web`),
//! share, so neither depends on the other: the node's TLS certificate store, reloaded on
//! SIGHUP ([`tls`]); the sans-IO PROXY protocol v2 parser ([`proxy_protocol`]) and the read
//! of one header off a connection ([`read_proxy_header`]); the process's metrics registry
//! ([`metrics::handle`]); and the internal admin endpoint, an axum router on that registry
//! ([`admin`]).
//!
//! # Invariants
//! - One Prometheus recorder per process, installed by whoever asks first; every role records
//!   into it and `/metrics` renders all of it.
//! - A PROXY header is read only from a peer the caller has already checked against its
//!   configured balancers; [`read_proxy_header`] reads exactly the header, never past it.
//!
//! [`stg_edge`]: https://docs.rs/stg-edge
#![forbid(unsafe_code)]

pub mod admin;
pub mod metrics;
pub mod proxy_protocol;
pub mod tls;

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proxy_protocol::Parsed;

/// Reads exactly one PROXY v2 header off `sock`: the client's address, `Ok(None)` for LOCAL
/// (a balancer's health check) or a header without addresses, or the
/// [`proxy_protocol::ProxyHeaderError::reason`] (a metric label) it was refused for. The
/// caller bounds it with a timeout.
///
/// # Cancel safety
/// Not cancel safe: bytes read are lost with the future.
pub async fn read_proxy_header<R>(sock: &mut R) -> Result<Option<SocketAddr>, &'static str>
where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; proxy_protocol::FIXED_LEN];
    let mut have = 0;
    loop {
        match proxy_protocol::parse(&buf[..have]) {
            Ok(Parsed::Done { header, .. }) => return Ok(header.addresses.source()),
            Ok(Parsed::Incomplete { needed }) => {
                buf.resize(have + needed, 0);
                sock.read_exact(&mut buf[have..have + needed])
                    .await
                    .map_err(|_| "proxy_protocol_eof")?;
                have += needed;
            }
            Err(e) => {
                tracing::warn!(error = %e, "bad PROXY protocol header");
                return Err(e.reason());
            }
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`: a dual-stack socket reports IPv4 peers mapped, and no IPv4
/// network, ban or log line would match them.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::proxy_protocol::{Addresses, Command, Header, TransportProtocol};

    #[tokio::test]
    async fn one_header_is_read_and_nothing_after_it() {
        let src = "203.0.113.7:4000".parse().unwrap();
        let dst = "192.0.2.1:443".parse().unwrap();
        let mut bytes = proxy_protocol::encode(&Header {
            command: Command::Proxy,
            transport: TransportProtocol::Stream,
            addresses: Addresses::V4 { src, dst },
            tlv_range: 0..0,
        });
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut rd = &bytes[..];
        assert_eq!(
            read_proxy_header(&mut rd).await,
            Ok(Some(SocketAddr::V4(src)))
        );
        assert_eq!(rd, b"GET / HTTP/1.1\r\n");
        let mut plain = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(read_proxy_header(&mut plain).await.is_err());
        let mapped = SocketAddr::new(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped().into(), 5);
        assert_eq!(
            canonical(mapped).ip(),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))
        );
    }
}
