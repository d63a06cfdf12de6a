//! TLS (placeholder until the real module lands: TLS listeners refuse handshakes).

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::conn::Shared;

/// The node's certificate and key (placeholder).
#[derive(Debug)]
pub struct TlsStore;

impl TlsStore {
    /// Loads the configured certificate, or creates a self-signed one.
    pub fn load(_config: &stg_config::Config) -> Result<Self, std::io::Error> {
        Ok(Self)
    }

    /// Re-reads the certificate files (SIGHUP).
    pub fn reload(&self) -> Result<(), std::io::Error> {
        Ok(())
    }
}

pub(crate) async fn accept(shared: &Shared, _sock: TcpStream) -> Result<TcpStream, std::io::Error> {
    let _ = &shared.tls;
    Err(std::io::Error::other("TLS not available yet"))
}

pub(crate) async fn connect(
    _shared: &Shared,
    _sock: TcpStream,
    _remote: SocketAddr,
) -> Result<TcpStream, std::io::Error> {
    Err(std::io::Error::other("TLS not available yet"))
}
