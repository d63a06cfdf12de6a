//! The HTTP plumbing of the clients: TLS client configs (web PKI roots plus an operator's CA
//! file, optional client certificate), a long-lived HTTP/2 connection per provider host, and
//! one-shot requests over HTTP/2 or HTTP/1.1 for the token endpoint and the webhook.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::verdict::MAX_RESPONSE_BODY;
use crate::PushError;

/// HTTP/2 PINGs on an idle provider connection, so a connection silently dropped by a NAT or
/// firewall is noticed before a push needs it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The scheme, host and port of a URL, and its path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `/…`, at least `/`.
    pub(crate) path: String,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Self, PushError> {
        let bad = |why: &str| PushError::Config(format!("{url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("expected http:// or https://")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Self {
            https,
            host,
            port,
            path,
        })
    }

    /// `host:port` as the Host header and `:authority` carry it.
    pub(crate) fn authority(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// An absolute URI to `path` on this endpoint.
    pub(crate) fn uri(&self, path: &str) -> Result<Uri, PushError> {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.authority())
            .parse()
            .map_err(|_| PushError::Config(format!("bad request path {path:?}")))
    }
}

/// A TLS client config with the given ALPN protocols: web PKI roots, plus `ca_file`'s
/// certificates, plus a client certificate if given.
pub(crate) fn tls_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, PushError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let certs = read_certs(path)?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| PushError::Config(format!("{}: {e}", path.display())))?;
        }
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    // The aws-lc-rs provider has suites for both versions.
    .map_err(|e| PushError::Config(e.to_string()))?
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| PushError::Config(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| PushError::Config(format!("{}: {e}", cert.display())))?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PushError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| PushError::Config(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PushError::Config(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

async fn connect_tcp(ep: &Endpoint) -> Result<TcpStream, PushError> {
    let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| PushError::Connect(format!("{}: {e}", ep.authority())))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn connect_tls(
    ep: &Endpoint,
    tls: &Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, PushError> {
    let tcp = connect_tcp(ep).await?;
    let name = ServerName::try_from(ep.host.clone())
        .map_err(|_| PushError::Config(format!("{:?} is not a TLS server name", ep.host)))?;
    TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            // rustls reports its own failures (certificate, protocol) as InvalidData: those
            // are the operator's to fix; anything else is the network's and may pass.
            if e.kind() == std::io::ErrorKind::InvalidData {
                PushError::Tls(format!("{}: {e}", ep.authority()))
            } else {
                PushError::Connect(format!("{}: TLS handshake: {e}", ep.authority()))
            }
        })
}

/// A response with its body read (at most [`MAX_RESPONSE_BODY`] bytes; a longer one reads
/// as empty: no provider answer worth reading is that long).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

async fn read_answer(resp: http::Response<hyper::body::Incoming>) -> Result<Answer, PushError> {
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// The connection in use, if any, and the last failure to open one.
#[derive(Default)]
struct Current {
    /// The sender and its generation, so that a failure on an old connection does not drop
    /// a newer one.
    sender: Option<(u64, http2::SendRequest<Full<Bytes>>)>,
    /// When the last connect failed, and why: pushes that were already waiting for that
    /// connect get its error instead of each trying again in turn.
    failed: Option<(tokio::time::Instant, PushError)>,
}

/// One provider host's HTTP/2 connection: opened on first use, shared by every push (HTTP/2
/// multiplexes them), re-opened once it closed (GOAWAY, error, failed PING).
pub(crate) struct H2Conn {
    ep: Endpoint,
    tls: Arc<ClientConfig>,
    connect_timeout: Duration,
    current: tokio::sync::Mutex<Current>,
    opened: AtomicU64,
}

impl H2Conn {
    pub(crate) fn new(ep: Endpoint, tls: Arc<ClientConfig>, connect_timeout: Duration) -> Self {
        Self {
            ep,
            tls,
            connect_timeout,
            current: tokio::sync::Mutex::new(Current::default()),
            opened: AtomicU64::new(0),
        }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// Connections opened so far.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    async fn sender(&self) -> Result<(u64, http2::SendRequest<Full<Bytes>>), PushError> {
        let asked = tokio::time::Instant::now();
        // Held across the connect: concurrent first pushes wait for one connection instead
        // of each opening their own.
        let mut current = self.current.lock().await;
        if let Some((generation, sender)) = current.sender.as_ref() {
            if !sender.is_closed() {
                return Ok((*generation, sender.clone()));
            }
        }
        current.sender = None;
        if let Some((at, e)) = &current.failed {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        match self.connect().await {
            Ok(sender) => {
                let generation = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
                current.sender = Some((generation, sender.clone()));
                current.failed = None;
                Ok((generation, sender))
            }
            Err(e) => {
                current.failed = Some((tokio::time::Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<http2::SendRequest<Full<Bytes>>, PushError> {
        let tls = tokio::time::timeout(self.connect_timeout, connect_tls(&self.ep, &self.tls))
            .await
            .map_err(|_| PushError::Timeout("connect"))??;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(PushError::Http(format!(
                "{} did not agree to HTTP/2 (ALPN h2)",
                self.ep.authority()
            )));
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| PushError::Http(format!("{}: {e}", self.ep.authority())))?;
        tokio::spawn(async move {
            // Ends on GOAWAY or error; `is_closed` then tells the next push to reconnect.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "push connection closed");
            }
        });
        Ok(sender)
    }

    /// Sends one request and reads the answer, within `timeout` (connecting included).
    pub(crate) async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, PushError> {
        let attempt = async {
            let (generation, mut sender) = self.sender().await?;
            let result = async {
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| PushError::Http(e.to_string()))?;
                read_answer(resp).await
            }
            .await;
            if result.is_err() {
                self.forget(generation).await;
            }
            result
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| PushError::Timeout("request"))?
    }

    /// Drops connection `generation` so the next push opens a fresh one.
    async fn forget(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current
            .sender
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
        {
            current.sender = None;
        }
    }
}

async fn h1_send<T>(
    io: T,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    sender.send_request(req).await
}

/// One request on a connection of its own, over HTTP/2 when TLS negotiates it, else
/// HTTP/1.1: for the rare token fetches and the webhook, whose servers may speak either.
pub(crate) async fn one_shot(
    ep: &Endpoint,
    tls: Option<&Arc<ClientConfig>>,
    mut req: Request<Full<Bytes>>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Answer, PushError> {
    enum Io {
        Plain(TcpStream),
        Tls(Box<TlsStream<TcpStream>>),
    }
    let attempt = async {
        let io = tokio::time::timeout(connect_timeout, async {
            match (ep.https, tls) {
                (true, Some(tls)) => connect_tls(ep, tls).await.map(|s| Io::Tls(Box::new(s))),
                (true, None) => Err(PushError::Config("https without a TLS config".into())),
                (false, _) => connect_tcp(ep).await.map(Io::Plain),
            }
        })
        .await
        .map_err(|_| PushError::Timeout("connect"))??;
        let http_err = |e: hyper::Error| PushError::Http(format!("{}: {e}", ep.authority()));
        let resp = match io {
            Io::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
                let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                sender.send_request(req).await.map_err(http_err)?
            }
            io => {
                // HTTP/1.1 wants the origin form and a Host header.
                let origin: Uri = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse()
                    .map_err(|_| PushError::Config("bad path".into()))?;
                *req.uri_mut() = origin;
                let host = http::HeaderValue::from_str(&ep.authority())
                    .map_err(|_| PushError::Config("bad host".into()))?;
                req.headers_mut().insert(http::header::HOST, host);
                match io {
                    Io::Plain(s) => h1_send(s, req).await,
                    Io::Tls(s) => h1_send(s, req).await,
                }
                .map_err(http_err)?
            }
        };
        read_answer(resp).await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| PushError::Timeout("request"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://api.push.apple.com").unwrap();
        assert_eq!((e.port, e.path.as_str()), (443, "/"));
        assert_eq!(e.authority(), "api.push.apple.com");
        let e = Endpoint::parse("http://127.0.0.1:8080/hook?x=1").unwrap();
        assert_eq!(
            (e.https, e.port, e.path.as_str()),
            (false, 8080, "/hook?x=1")
        );
        assert_eq!(e.uri("/a").unwrap().to_string(), "http://127.0.0.1:8080/a");
        let e = Endpoint::parse("https://[::1]:9443/").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.authority(), "[::1]:9443");
        assert!(Endpoint::parse("ftp://x").is_err());
    }
}
