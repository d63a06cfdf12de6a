//! TLS for the `tls` and `wss` listeners (RFC 3261 §26.2.1, RFC 5630), the web front's https
//! listener (with ALPN, [`accept_http`]) and connections to a TLS upstream: the node's
//! certificate, its reload on SIGHUP, and the handshakes.
//!
//! # Server side
//! One certificate chain and key serve every handshake, whatever the client puts in SNI:
//! linphonec sends the IP literal it dialled as SNI (RFC 6066 §3 forbids that, rustls ≥ 0.23.5
//! tolerates it), so selecting by SNI would fail exactly the clients we serve. TLS 1.3 and
//! TLS 1.2 are both on, with the aws-lc-rs provider's default suites: the Linphone SDK
//! (mbedTLS) speaks TLS 1.2 only, with ECDHE-RSA/ECDSA AES-GCM or ChaCha20 and PKCS#1 v1.5 or
//! ECDSA signatures (rustls signs with PKCS#1 v1.5 when the client offers no RSA-PSS).
//!
//! With `[tls] files` the chain and key come from those PEM files. Without, a self-signed
//! certificate is created once in [`stg_config::NodeConfig::tls_dir`] (`cert.pem`, and
//! `key.pem` with mode 0600) and reused on later starts; every load logs a warning naming
//! it. It names only what the configuration gives: each address of a TLS or WSS listener
//! (wildcards name nothing), its `advertise` host, `node.aliases` and `node.id` when set,
//! addresses both as iPAddress **and as dNSName** entries: RFC 5280 §4.2.1.6 puts addresses
//! in iPAddress, but linphonec (mbedTLS) matches the host it dialled against dNSName entries
//! only. Its common name is `node.id`, or else the first of those names. Never the machine's
//! hostname nor a product name: the certificate is the first thing a scanner sees. If the
//! configuration later names the node otherwise (a new listener address), a warning lists the
//! names the existing certificate lacks; it is not replaced by itself, since clients pin it.
//! Delete the two files to have them made anew (at start or on reload).
//!
//! [`TlsStore::reload`] re-reads the files and swaps the configuration: live connections keep
//! their session, new handshakes get the new certificate, and on any error the old one stays.
//!
//! # Client side (to a TLS upstream)
//! The PBX behind the edge usually has a certificate from a private CA, and the OS trust
//! store would not know it. So the client trusts exactly: the certificates of the node's own
//! chain file (a PBX sharing the node's CA or certificate verifies as is), plus every
//! certificate in the `*.pem` and `*.crt` files of `<node.data_dir>/tls/trusted/` (put the
//! PBX's CA there). The server name checked is the IP address dialled (its certificate needs
//! an iPAddress SAN for it), since that is all the transport knows of the upstream. No client
//! certificate is offered.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use stg_config::{Config, Host, Transport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// File names of the self-signed certificate and key in the node's TLS directory.
const SELF_SIGNED_CERT: &str = "cert.pem";
const SELF_SIGNED_KEY: &str = "key.pem";

/// Directory under the node's TLS directory whose certificates the TLS client trusts.
const TRUSTED_DIR: &str = "trusted";

/// TLS 1.3 first; TLS 1.2 for the Linphone SDK (see the module docs).
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why the certificate could not be loaded, created or reloaded. Every variant about a file
/// names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The self-signed certificate could not be generated.
    #[error("cannot create a self-signed certificate: {reason}")]
    Generate {
        /// What rcgen said.
        reason: String,
    },
    /// A file was read but does not hold what it should: bad PEM, no certificate, no key, a
    /// certificate that cannot be trusted.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key and the certificate do not go together, or the key is of a kind rustls does
    /// not support.
    #[error("{} with {}: {reason}", certificate.display(), private_key.display())]
    Mismatch {
        /// The certificate chain file.
        certificate: PathBuf,
        /// The private key file.
        private_key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// A file or directory could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The self-signed certificate or key could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The node's TLS configuration: the server side for the TLS and WSS listeners and the client
/// side for a TLS upstream, swapped as one by [`reload`](Self::reload).
#[derive(Debug)]
pub struct TlsStore {
    origin: Origin,
    trusted_dir: PathBuf,
    current: RwLock<Configs>,
}

/// Where the certificate comes from.
#[derive(Debug)]
enum Origin {
    /// `[tls] files`.
    Files {
        certificate: PathBuf,
        private_key: PathBuf,
    },
    /// Made here: where, and for which names (kept to make it again if deleted).
    SelfSigned { dir: PathBuf, names: Names },
}

/// The names a self-signed certificate is issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    common_name: String,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

#[derive(Clone, Debug)]
struct Configs {
    server: Arc<ServerConfig>,
    /// The same certificate with ALPN `h2`, `http/1.1`, for the web front.
    http: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

// === impl TlsStore ===

impl TlsStore {
    /// Loads `[tls] files`, or creates (once) and loads the self-signed certificate, and the
    /// trusted certificates for the TLS client. Errors name the file and what is wrong.
    pub fn load(config: &Config) -> Result<Self, TlsError> {
        let origin = match &config.tls.files {
            Some(files) => Origin::Files {
                certificate: files.certificate.clone(),
                private_key: files.private_key.clone(),
            },
            None => Origin::SelfSigned {
                dir: config.node.tls_dir(),
                names: Names::for_node(config),
            },
        };
        let trusted_dir = config.node.tls_dir().join(TRUSTED_DIR);
        let store = Self {
            current: RwLock::new(Configs::build(&origin, &trusted_dir)?),
            trusted_dir,
            origin,
        };
        if let Origin::SelfSigned { dir, .. } = &store.origin {
            tracing::warn!(
                certificate = %dir.join(SELF_SIGNED_CERT).display(),
                "TLS uses a self-signed certificate: clients must be given it to trust; set [tls] files for one from a CA"
            );
        }
        Ok(store)
    }

    /// Re-reads the certificate, key and trusted certificates (on SIGHUP) and uses them for
    /// every handshake from now on; live connections keep their session. A self-signed
    /// certificate whose files were deleted is made anew. On error nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Configs::build(&self.origin, &self.trusted_dir)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        tracing::info!(certificate = %self.certificate_path().display(), "TLS certificate reloaded");
        Ok(())
    }

    /// The PEM file of the certificate chain in use.
    pub fn certificate_path(&self) -> PathBuf {
        match &self.origin {
            Origin::Files { certificate, .. } => certificate.clone(),
            Origin::SelfSigned { dir, .. } => dir.join(SELF_SIGNED_CERT),
        }
    }

    /// Whether the certificate is the node's self-signed one (no `[tls] files`).
    pub fn is_self_signed(&self) -> bool {
        matches!(self.origin, Origin::SelfSigned { .. })
    }

    fn configs(&self) -> Configs {
        // The lock only guards a swap of two Arcs: a panic elsewhere cannot leave it
        // half-written, so a poisoned lock still holds a usable value.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Runs the server handshake on an accepted connection (no ALPN: SIP over TLS and WSS),
/// within `limit` (`sip.tls_handshake_timeout`).
///
/// # Cancel safety
/// Not cancel safe: dropping the future drops the connection.
pub async fn accept<IO>(
    store: &TlsStore,
    sock: IO,
    limit: Duration,
) -> Result<server::TlsStream<IO>, io::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    handshake(store.configs().server, sock, limit).await
}

/// Runs the server handshake of the web front: as [`accept`], with ALPN offering `h2` and
/// `http/1.1` (RFC 7301), so the client may choose HTTP/2.
///
/// # Cancel safety
/// Not cancel safe: dropping the future drops the connection.
pub async fn accept_http<IO>(
    store: &TlsStore,
    sock: IO,
    limit: Duration,
) -> Result<server::TlsStream<IO>, io::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    handshake(store.configs().http, sock, limit).await
}

async fn handshake<IO>(
    config: Arc<ServerConfig>,
    sock: IO,
    limit: Duration,
) -> Result<server::TlsStream<IO>, io::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    timeout(limit, TlsAcceptor::from(config).accept(sock))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// Runs the client handshake to `remote` (a TLS upstream), within `limit`
/// (`sip.tls_handshake_timeout`), verifying its certificate for `remote`'s IP address against
/// the node's own chain and `<data_dir>/tls/trusted/` (see the module docs). Without a
/// `store` (no TLS listener) the client side is built from `config` alone.
///
/// # Cancel safety
/// Not cancel safe: dropping the future drops the connection.
pub async fn connect(
    store: Option<&TlsStore>,
    config: &Config,
    sock: TcpStream,
    remote: SocketAddr,
    limit: Duration,
) -> Result<client::TlsStream<TcpStream>, io::Error> {
    let config = match store {
        Some(store) => store.configs().client,
        // No TLS listener, so no store: build the client side alone. Upstream connections
        // are long-lived, so reading the files per connection costs little.
        None => standalone_client(config).map_err(io::Error::other)?,
    };
    let connector = TlsConnector::from(config);
    let name = ServerName::IpAddress(remote.ip().into());
    timeout(limit, connector.connect(name, sock))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// The client configuration of a node without TLS listeners.
fn standalone_client(config: &Config) -> Result<Arc<ClientConfig>, TlsError> {
    let own = match &config.tls.files {
        Some(files) => read_chain(&files.certificate)?,
        None => Vec::new(),
    };
    let trusted_dir = config.node.tls_dir().join(TRUSTED_DIR);
    let roots = roots(&own, &trusted_dir)?;
    if roots.is_empty() {
        return Err(TlsError::Invalid {
            path: trusted_dir,
            reason: "no certificate to trust for the TLS upstream: put its CA here".to_owned(),
        });
    }
    Ok(client_config(roots))
}

// === impl Configs ===

impl Configs {
    fn build(origin: &Origin, trusted_dir: &Path) -> Result<Self, TlsError> {
        let (certificate, private_key) = match origin {
            Origin::Files {
                certificate,
                private_key,
            } => (certificate.clone(), private_key.clone()),
            Origin::SelfSigned { dir, names } => ensure_self_signed(dir, names)?,
        };
        let chain = read_chain(&certificate)?;
        let key = read_key(&private_key)?;
        if let Origin::SelfSigned { names, .. } = origin {
            // read_chain returns at least one certificate, the leaf first.
            let missing = names.missing_from(&chain[0]);
            if !missing.is_empty() {
                // Not made again by itself: clients pin this certificate, and a new one would
                // lock them all out at once. The operator chooses when.
                tracing::warn!(
                    certificate = %certificate.display(),
                    ?missing,
                    "the self-signed TLS certificate lacks names this configuration gives the node; delete it and its key to have a new one made (clients that pinned it then need the new one)"
                );
            }
        }
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            // The provider is the fixed aws-lc-rs default, which has suites for both versions.
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .map_err(|e| TlsError::Mismatch {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
                reason: e.to_string(),
            })?;
        let client = client_config(roots(&chain, trusted_dir)?);
        let mut http = server.clone();
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            server: Arc::new(server),
            http: Arc::new(http),
            client,
        })
    }
}

/// The aws-lc-rs provider, named explicitly: the process default would depend on which
/// rustls features other crates of the build happen to turn on.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        // As for the server: the fixed provider has suites for both versions.
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The trust anchors of the TLS client: the node's own chain plus `trusted_dir`'s files.
fn roots(own: &[CertificateDer<'static>], trusted_dir: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    // The node's own chain was accepted as a server chain already; a certificate in it that
    // webpki cannot use as an anchor (unusual encodings) only means it is not trusted.
    roots.add_parsable_certificates(own.iter().cloned());
    let entries = match fs::read_dir(trusted_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(roots),
        Err(source) => {
            return Err(TlsError::Read {
                path: trusted_dir.to_owned(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| TlsError::Read {
                path: trusted_dir.to_owned(),
                source,
            })?
            .path();
        let pem_like = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pem" | "crt")
        );
        if pem_like && path.is_file() {
            files.push(path);
        }
    }
    // Sorted so that the first bad file reported is the same on every run.
    files.sort();
    for path in files {
        for cert in read_chain(&path)? {
            roots.add(cert).map_err(|e| TlsError::Invalid {
                path: path.clone(),
                reason: format!("not usable as a trusted certificate: {e}"),
            })?;
        }
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every CERTIFICATE block of a PEM file, leaf first; at least one.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            reason: format!("bad PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_owned(),
            reason: "no certificate (no PEM CERTIFICATE block)".to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| TlsError::Invalid {
        path: path.to_owned(),
        reason: match e {
            pem::Error::NoItemsFound => {
                "no private key (no PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)"
                    .to_owned()
            }
            e => format!("bad PEM: {e}"),
        },
    })
}

// === self-signed certificate ===

impl Names {
    /// The addresses and advertised hosts of the TLS and WSS listeners, the web front's
    /// address, the node's aliases and its id; addresses go in both lists (see the module
    /// docs).
    fn for_node(config: &Config) -> Self {
        let mut names = Self {
            common_name: String::new(),
            dns: Vec::new(),
            ips: Vec::new(),
        };
        let secure = config
            .sip
            .listen
            .iter()
            .filter(|l| matches!(l.transport, Transport::Tls | Transport::Wss));
        for l in secure {
            // A wildcard address names no interface; `advertise` says what clients dial.
            if !l.address.ip().is_unspecified() {
                names.add_ip(l.address.ip());
            }
            if let Some(advertise) = &l.advertise {
                names.add_host(&advertise.host);
            }
        }
        // The web front's https listener shares the certificate.
        if let Some(web) = config.web.listen.filter(|a| !a.ip().is_unspecified()) {
            names.add_ip(web.ip());
        }
        for alias in &config.node.aliases {
            names.add_host(alias);
        }
        if let Some(id) = &config.node.id {
            // An id that is a host name can name the node; any token can be its CN.
            if id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                names.add_dns(id.clone());
            }
        }
        names.common_name = match (&config.node.id, names.dns.first()) {
            (Some(id), _) => id.clone(),
            (None, Some(first)) => first.clone(),
            // Only wildcard listeners and nothing advertised: a neutral name.
            (None, None) => "sip-edge".to_owned(),
        };
        names
    }

    fn add_host(&mut self, host: &Host) {
        match host {
            Host::Ip(ip) => self.add_ip(*ip),
            Host::Domain(d) => self.add_dns(d.clone()),
        }
    }

    fn add_ip(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        self.add_dns(ip.to_string());
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    fn add_dns(&mut self, name: String) {
        if !self.dns.contains(&name) {
            self.dns.push(name);
        }
    }

    fn subject_alt_names(&self) -> Vec<SanType> {
        let dns = self.dns.iter().filter_map(|d| {
            // A hostname that is not ASCII cannot be a dNSName; it is left out rather than
            // failing the start.
            d.clone().try_into().ok().map(SanType::DnsName)
        });
        dns.chain(self.ips.iter().copied().map(SanType::IpAddress))
            .collect()
    }

    /// The dNSName entries that `cert` lacks, found by looking for their DER encoding
    /// (`[2] IMPLICIT IA5String`, RFC 5280 §4.2.1.6) in it: enough for a warning, without an
    /// X.509 parser. Every address is a dNSName too, so addresses are covered.
    fn missing_from(&self, cert: &[u8]) -> Vec<String> {
        self.dns
            .iter()
            .filter(|name| name.is_ascii())
            .filter(|name| {
                let mut encoded = vec![0x82];
                encoded.extend(der_length(name.len()));
                encoded.extend(name.as_bytes());
                !cert.windows(encoded.len()).any(|w| w == encoded)
            })
            .cloned()
            .collect()
    }
}

/// A DER length (X.690 §8.1.3): short form below 128, else long form.
fn der_length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        // Checked just above: fits in 7 bits.
        return vec![len as u8];
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let mut out = vec![0x80 | (bytes.len() - skip) as u8];
    out.extend(&bytes[skip..]);
    out
}

/// Returns the paths of the self-signed certificate and key in `dir`, creating both unless
/// both exist.
fn ensure_self_signed(dir: &Path, names: &Names) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    let (cert_pem, key_pem) = generate(names)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
    // Key first: a crash between the two leaves no certificate, so the next start makes both
    // again instead of pairing a certificate with a key it does not match.
    write_atomically(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert_pem.as_bytes(), 0o644)?;
    tracing::info!(
        certificate = %cert_path.display(),
        dns = ?names.dns,
        ip = ?names.ips,
        "created a self-signed TLS certificate"
    );
    Ok((cert_path, key_path))
}

/// A P-256 ECDSA key and a self-signed certificate for `names`, both PEM.
fn generate(names: &Names) -> Result<(String, String), TlsError> {
    let err = |e: rcgen::Error| TlsError::Generate {
        reason: e.to_string(),
    };
    // ECDSA P-256: every TLS 1.2 and 1.3 stack has it (mbedTLS included), and it is made in
    // microseconds where RSA keys take a while.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = names.subject_alt_names();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, names.common_name.as_str());
    // Clients pin a self-signed certificate (linphonec's root_ca): an expiry would be an
    // outage nobody planned, so it is valid for decades; replacing it is deleting the files.
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 30, 1, 1);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The current year (UTC) from the system clock, within a day either side of 1 January.
fn current_year() -> i32 {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    // 146 097 days make 400 Gregorian years; the rounding error is below one day, and the
    // validity above starts a year early.
    1970 + i32::try_from(days * 400 / 146_097).unwrap_or(0)
}

/// Writes through a temporary file and a rename, so a reader never sees half a file, with
/// `mode` set from creation (the key is never readable by others, not even briefly).
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A leftover from a crash may have other permissions; create_new below must create.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::aws_lc_rs::cipher_suite;
    use rustls::{DigitallySignedStruct, ProtocolVersion, SignatureScheme};
    use rustls_pki_types::UnixTime;
    use stg_config::{Host, TlsFiles};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A directory of its own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("stg-tls-{}-{n}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn config_in(data_dir: &Path, files: Option<TlsFiles>) -> Config {
        let mut c = Config::default();
        c.node.data_dir = data_dir.to_owned();
        c.tls.files = files;
        c.sip.tls_handshake_timeout = Duration::from_secs(5);
        c
    }

    /// What a listener holds: the configuration and, with TLS listeners, the store.
    struct Shared {
        config: Config,
        tls: Option<Arc<TlsStore>>,
    }

    fn shared(config: Config, tls: Option<Arc<TlsStore>>) -> Arc<Shared> {
        Arc::new(Shared { config, tls })
    }

    async fn accept_on(
        shared: &Shared,
        sock: TcpStream,
    ) -> io::Result<server::TlsStream<TcpStream>> {
        let store = shared.tls.as_deref().expect("a store");
        accept(store, sock, shared.config.sip.tls_handshake_timeout).await
    }

    async fn connect_via(
        shared: &Shared,
        sock: TcpStream,
        remote: SocketAddr,
    ) -> io::Result<client::TlsStream<TcpStream>> {
        let limit = shared.config.sip.tls_handshake_timeout;
        connect(shared.tls.as_deref(), &shared.config, sock, remote, limit).await
    }

    /// A certificate for `names` (IP SANs for addresses) and its key, written as PEM files;
    /// returns the files and the certificate.
    fn write_cert(
        dir: &Path,
        stem: &str,
        names: &[&str],
        rsa: bool,
    ) -> (TlsFiles, CertificateDer<'static>) {
        let key = if rsa {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap()
        } else {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
        };
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = TlsFiles {
            certificate: dir.join(format!("{stem}.crt")),
            private_key: dir.join(format!("{stem}.key")),
        };
        fs::write(&files.certificate, cert.pem()).unwrap();
        fs::write(&files.private_key, key.serialize_pem()).unwrap();
        (files, cert.der().clone())
    }

    /// Accepts TLS connections through [`accept`] and echoes what each sends.
    async fn echo_server(shared: Arc<Shared>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = accept_on(&shared, sock).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// A client trusting `anchors` only, limited to `versions` and `suites` (all if empty).
    fn client(
        anchors: &[CertificateDer<'static>],
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: &[rustls::SupportedCipherSuite],
        no_pss: bool,
    ) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if !suites.is_empty() {
            provider.cipher_suites = suites.to_vec();
        }
        let provider = Arc::new(provider);
        let mut roots = RootCertStore::empty();
        for a in anchors {
            roots.add(a.clone()).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap();
        let config = if no_pss {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoPss(inner)))
                .with_no_client_auth()
        } else {
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Arc::new(config)
    }

    async fn handshake(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> io::Result<client::TlsStream<TcpStream>> {
        let sock = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(name.to_owned()).unwrap();
        TlsConnector::from(config).connect(name, sock).await
    }

    async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S, msg: &[u8]) {
        tls.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }

    fn peer_cert(tls: &client::TlsStream<TcpStream>) -> CertificateDer<'static> {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// What the Linphone SDK offers: PKCS#1 v1.5 and ECDSA signatures, no RSA-PSS.
    #[derive(Debug)]
    struct NoPss(Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for NoPss {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            assert!(!matches!(
                dss.scheme,
                SignatureScheme::RSA_PSS_SHA256
                    | SignatureScheme::RSA_PSS_SHA384
                    | SignatureScheme::RSA_PSS_SHA512
            ));
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0
                .supported_verify_schemes()
                .into_iter()
                .filter(|s| {
                    !matches!(
                        s,
                        SignatureScheme::RSA_PSS_SHA256
                            | SignatureScheme::RSA_PSS_SHA384
                            | SignatureScheme::RSA_PSS_SHA512
                    )
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn self_signed_is_created_once_then_reused() {
        let tmp = TempDir::new("self-signed");
        let data_dir = tmp.0.join("data");
        let config = config_in(&data_dir, None);
        let store = TlsStore::load(&config).unwrap();
        assert!(store.is_self_signed());
        let cert_path = data_dir.join("tls/cert.pem");
        let key_path = data_dir.join("tls/key.pem");
        assert_eq!(store.certificate_path(), cert_path);
        let mode = fs::metadata(&key_path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let cert_pem = fs::read(&cert_path).unwrap();
        let key_pem = fs::read(&key_path).unwrap();

        // The default TLS listener is on 127.0.0.1: a dNSName SAN (context tag 2, IA5String)
        // for linphonec and an iPAddress SAN (tag 7) for everyone else; nothing else.
        let der = CertificateDer::from_pem_slice(&cert_pem).unwrap();
        assert!(contains(&der, b"\x82\x09127.0.0.1"));
        assert!(contains(&der, b"\x87\x04\x7f\x00\x00\x01"));
        assert!(!contains(&der, b"localhost"));

        // A second start reuses both files as they are.
        let again = TlsStore::load(&config).unwrap();
        assert_eq!(fs::read(&cert_path).unwrap(), cert_pem);
        assert_eq!(fs::read(&key_path).unwrap(), key_pem);
        drop(again);

        // Clients that trust it reach it by IP address.
        let addr = echo_server(shared(config, Some(Arc::new(store)))).await;
        for name in ["127.0.0.1"] {
            let c = client(std::slice::from_ref(&der), rustls::ALL_VERSIONS, &[], false);
            let mut tls = handshake(addr, c, name).await.unwrap();
            round_trip(&mut tls, b"OPTIONS").await;
        }
    }

    /// The DER of a UTF8String common name (`2.5.4.3`, then tag 12).
    fn common_name(name: &str) -> Vec<u8> {
        let mut v = b"\x06\x03\x55\x04\x03\x0c".to_vec();
        v.extend(der_length(name.len()));
        v.extend(name.as_bytes());
        v
    }

    #[test]
    fn the_self_signed_certificate_names_only_the_listeners_or_the_id() {
        let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let tmp = TempDir::new("names");
        let mut config = config_in(&tmp.0, None);
        config.sip.listen[2].address = "192.0.2.5:5061".parse().unwrap();
        config.sip.listen[4].address = "0.0.0.0:5063".parse().unwrap();
        config.sip.listen[4].advertise = Some(stg_config::HostPort {
            host: Host::Domain("sip.example.com".to_owned()),
            port: None,
        });
        let names = Names::for_node(&config);
        assert_eq!(names.dns, ["192.0.2.5", "sip.example.com"]);
        assert_eq!(names.ips, ["192.0.2.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(names.common_name, "192.0.2.5");
        let store = TlsStore::load(&config).unwrap();
        let der = read_chain(&store.certificate_path()).unwrap().remove(0);
        assert!(contains(&der, &common_name("192.0.2.5")));
        for leak in [hostname.as_str(), "localhost", "stg"] {
            if leak.is_empty() {
                continue;
            }
            let mut dns = vec![0x82];
            dns.extend(der_length(leak.len()));
            dns.extend(leak.as_bytes());
            assert!(!contains(&der, &dns), "{leak} in a SAN");
            assert!(!contains(&der, &common_name(leak)), "{leak} as CN");
        }

        // With node.id: the CN, and a name too.
        config.node.id = Some("edge-7.example.net".to_owned());
        let names = Names::for_node(&config);
        assert_eq!(names.common_name, "edge-7.example.net");
        assert!(names.dns.contains(&"edge-7.example.net".to_owned()));
        // Wildcards only, no id: a neutral CN and no names.
        config.node.id = None;
        config.sip.listen[2].address = "[::]:5061".parse().unwrap();
        config.sip.listen[4].advertise = None;
        let names = Names::for_node(&config);
        assert_eq!(names.common_name, "sip-edge");
        assert!(names.dns.is_empty() && names.ips.is_empty());
        let fresh = TempDir::new("names-wild");
        config.node.data_dir = fresh.0.clone();
        TlsStore::load(&config).unwrap();
    }

    #[test]
    fn names_missing_from_the_self_signed_certificate_are_found() {
        let tmp = TempDir::new("missing-names");
        let mut config = config_in(&tmp.0, None);
        let store = TlsStore::load(&config).unwrap();
        let der = read_chain(&store.certificate_path()).unwrap().remove(0);
        assert_eq!(
            Names::for_node(&config).missing_from(&der),
            Vec::<String>::new()
        );
        let long = format!("{}.example", "a".repeat(150));
        config.node.aliases = vec![
            Host::Domain("pbx.example".to_owned()),
            Host::Domain(long.clone()),
            Host::Ip("192.0.2.7".parse().unwrap()),
        ];
        // Reused as it is, and the new names are reported.
        TlsStore::load(&config).unwrap();
        assert_eq!(read_chain(&store.certificate_path()).unwrap()[0], der);
        let missing = Names::for_node(&config).missing_from(&der);
        assert_eq!(missing, ["pbx.example", long.as_str(), "192.0.2.7"]);
        // A fresh certificate for them has them all, the long one in long-form length.
        let fresh = TempDir::new("missing-names-fresh");
        config.node.data_dir = fresh.0.clone();
        let store = TlsStore::load(&config).unwrap();
        let der = read_chain(&store.certificate_path()).unwrap().remove(0);
        assert_eq!(
            Names::for_node(&config).missing_from(&der),
            Vec::<String>::new()
        );
        assert_eq!(der_length(5), [5]);
        assert_eq!(der_length(0x80), [0x81, 0x80]);
        assert_eq!(der_length(0x1234), [0x82, 0x12, 0x34]);
    }

    #[tokio::test]
    async fn deleted_self_signed_files_are_made_again_on_reload() {
        let tmp = TempDir::new("self-signed-reload");
        let config = config_in(&tmp.0, None);
        let store = TlsStore::load(&config).unwrap();
        let first = fs::read(tmp.0.join("tls/cert.pem")).unwrap();
        fs::remove_file(tmp.0.join("tls/cert.pem")).unwrap();
        store.reload().unwrap();
        assert_ne!(fs::read(tmp.0.join("tls/cert.pem")).unwrap(), first);
    }

    #[tokio::test]
    async fn tls12_as_the_linphone_sdk_speaks_it() {
        let tmp = TempDir::new("tls12");
        // RSA certificate: ECDHE-RSA-AES256-GCM-SHA384 with a PKCS#1 v1.5 signature, what
        // linphonec negotiated.
        let (files, rsa_der) = write_cert(&tmp.0, "rsa", &["127.0.0.1"], true);
        let config = config_in(&tmp.0, Some(files));
        let store = Arc::new(TlsStore::load(&config).unwrap());
        let addr = echo_server(shared(config, Some(store))).await;
        let suite = cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384;
        let c = client(&[rsa_der], &[&rustls::version::TLS12], &[suite], true);
        let mut tls = handshake(addr, c, "127.0.0.1").await.unwrap();
        let conn = tls.get_ref().1;
        assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));
        assert_eq!(conn.negotiated_cipher_suite(), Some(suite));
        round_trip(&mut tls, b"REGISTER sip:example.com SIP/2.0\r\n\r\n").await;

        // ChaCha20 (which it offers first) on the self-signed ECDSA certificate.
        let tmp2 = TempDir::new("tls12-ecdsa");
        let config = config_in(&tmp2.0, None);
        let store = Arc::new(TlsStore::load(&config).unwrap());
        let der = read_chain(&store.certificate_path()).unwrap().remove(0);
        let addr = echo_server(shared(config, Some(store))).await;
        let suite = cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;
        let c = client(&[der], &[&rustls::version::TLS12], &[suite], true);
        let mut tls = handshake(addr, c, "127.0.0.1").await.unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(ProtocolVersion::TLSv1_2)
        );
        assert_eq!(tls.get_ref().1.negotiated_cipher_suite(), Some(suite));
        round_trip(&mut tls, b"OPTIONS").await;
    }

    #[tokio::test]
    async fn tls13_handshake() {
        let tmp = TempDir::new("tls13");
        let (files, der) = write_cert(&tmp.0, "ec", &["127.0.0.1"], false);
        let config = config_in(&tmp.0, Some(files));
        let store = Arc::new(TlsStore::load(&config).unwrap());
        let addr = echo_server(shared(config, Some(store))).await;
        let c = client(&[der], &[&rustls::version::TLS13], &[], false);
        let mut tls = handshake(addr, c, "127.0.0.1").await.unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(ProtocolVersion::TLSv1_3)
        );
        round_trip(&mut tls, b"OPTIONS").await;
    }

    #[tokio::test]
    async fn reload_swaps_the_certificate_and_live_connections_go_on() {
        let tmp = TempDir::new("reload");
        let (files, old_der) = write_cert(&tmp.0, "node", &["127.0.0.1", "old.example"], false);
        let config = config_in(&tmp.0, Some(files.clone()));
        let store = Arc::new(TlsStore::load(&config).unwrap());
        let addr = echo_server(shared(config, Some(store.clone()))).await;

        let mut live = handshake(
            addr,
            client(
                std::slice::from_ref(&old_der),
                rustls::ALL_VERSIONS,
                &[],
                false,
            ),
            "old.example",
        )
        .await
        .unwrap();
        round_trip(&mut live, b"before").await;

        // Same paths, new certificate and key (as certbot renews), then SIGHUP.
        let new_dir = tmp.0.join("new");
        fs::create_dir(&new_dir).unwrap();
        let (new_files, new_der) =
            write_cert(&new_dir, "node", &["127.0.0.1", "new.example"], false);
        fs::rename(&new_files.certificate, &files.certificate).unwrap();
        fs::rename(&new_files.private_key, &files.private_key).unwrap();
        store.reload().unwrap();

        let both = [old_der.clone(), new_der.clone()];
        let mut fresh = handshake(
            addr,
            client(&both, rustls::ALL_VERSIONS, &[], false),
            "new.example",
        )
        .await
        .unwrap();
        assert_eq!(peer_cert(&fresh), new_der);
        round_trip(&mut fresh, b"after").await;
        // The connection made before the reload keeps its session.
        assert_eq!(peer_cert(&live), old_der);
        round_trip(&mut live, b"still there").await;
        // Only the new certificate is served now.
        let old_only = client(&[old_der], rustls::ALL_VERSIONS, &[], false);
        assert!(handshake(addr, old_only, "old.example").await.is_err());

        // A broken file on reload: an error naming it, and the new certificate stays.
        fs::write(&files.certificate, "not PEM at all").unwrap();
        let err = store.reload().unwrap_err().to_string();
        assert!(
            err.contains(&files.certificate.display().to_string()),
            "{err}"
        );
        let mut after_error = handshake(
            addr,
            client(
                std::slice::from_ref(&new_der),
                rustls::ALL_VERSIONS,
                &[],
                false,
            ),
            "new.example",
        )
        .await
        .unwrap();
        assert_eq!(peer_cert(&after_error), new_der);
        round_trip(&mut after_error, b"kept").await;
    }

    #[test]
    fn errors_name_the_file() {
        let tmp = TempDir::new("errors");
        let (files, _) = write_cert(&tmp.0, "good", &["127.0.0.1"], false);

        let missing = TlsFiles {
            certificate: tmp.0.join("missing.crt"),
            private_key: files.private_key.clone(),
        };
        let err = TlsStore::load(&config_in(&tmp.0, Some(missing.clone()))).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read", missing.certificate.display())),
            "{err}"
        );

        let garbage = tmp.0.join("garbage.key");
        fs::write(&garbage, "hello\n").unwrap();
        let no_key = TlsFiles {
            certificate: files.certificate.clone(),
            private_key: garbage.clone(),
        };
        let err = TlsStore::load(&config_in(&tmp.0, Some(no_key)))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: no private key", garbage.display())),
            "{err}"
        );

        let no_cert = TlsFiles {
            certificate: garbage.clone(),
            private_key: files.private_key.clone(),
        };
        let err = TlsStore::load(&config_in(&tmp.0, Some(no_cert)))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: no certificate", garbage.display())),
            "{err}"
        );

        let (other, _) = write_cert(&tmp.0, "other", &["127.0.0.1"], false);
        let mismatched = TlsFiles {
            certificate: files.certificate.clone(),
            private_key: other.private_key.clone(),
        };
        let err = TlsStore::load(&config_in(&tmp.0, Some(mismatched))).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&files.certificate.display().to_string()),
            "{text}"
        );
        assert!(
            text.contains(&other.private_key.display().to_string()),
            "{text}"
        );

        // A file in trusted/ that holds no certificate fails the load too, named.
        fs::create_dir_all(tmp.0.join("tls/trusted")).unwrap();
        let bad_trust = tmp.0.join("tls/trusted/pbx.pem");
        fs::write(&bad_trust, "nothing").unwrap();
        let err = TlsStore::load(&config_in(&tmp.0, Some(files)))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: no certificate", bad_trust.display())),
            "{err}"
        );
    }

    #[tokio::test]
    async fn connect_trusts_the_own_chain_and_the_trusted_dir() {
        let tmp = TempDir::new("connect");
        // The node (self-signed) and a PBX with a certificate of its own.
        let node_config = config_in(&tmp.0.join("node"), None);
        let node = Arc::new(TlsStore::load(&node_config).unwrap());
        let node_shared = shared(node_config.clone(), Some(node.clone()));
        let pbx_dir = tmp.0.join("pbx");
        fs::create_dir_all(&pbx_dir).unwrap();
        let (pbx_files, _) = write_cert(&pbx_dir, "pbx", &["127.0.0.1"], false);
        let pbx_config = config_in(&pbx_dir, Some(pbx_files.clone()));
        let pbx_store = Arc::new(TlsStore::load(&pbx_config).unwrap());
        let pbx = echo_server(shared(pbx_config, Some(pbx_store))).await;
        let peer = echo_server(node_shared.clone()).await;

        // A server with the node's own certificate verifies.
        let sock = TcpStream::connect(peer).await.unwrap();
        let mut tls = connect_via(&node_shared, sock, peer).await.unwrap();
        round_trip(&mut tls, b"INVITE").await;

        // The PBX's does not, until its certificate is in trusted/ and the store reloaded.
        let sock = TcpStream::connect(pbx).await.unwrap();
        assert!(connect_via(&node_shared, sock, pbx).await.is_err());
        let trusted = tmp.0.join("node/tls/trusted");
        fs::create_dir_all(&trusted).unwrap();
        fs::copy(&pbx_files.certificate, trusted.join("pbx.pem")).unwrap();
        node.reload().unwrap();
        let sock = TcpStream::connect(pbx).await.unwrap();
        let mut tls = connect_via(&node_shared, sock, pbx).await.unwrap();
        round_trip(&mut tls, b"INVITE").await;

        // A node with no TLS listener (no store) reads trusted/ per connection.
        let bare = shared(node_config, None);
        let sock = TcpStream::connect(pbx).await.unwrap();
        let mut tls = connect_via(&bare, sock, pbx).await.unwrap();
        round_trip(&mut tls, b"INVITE").await;
    }

    #[tokio::test]
    async fn a_silent_client_times_out() {
        let tmp = TempDir::new("timeout");
        let mut config = config_in(&tmp.0, None);
        config.sip.tls_handshake_timeout = Duration::from_millis(200);
        let store = Arc::new(TlsStore::load(&config).unwrap());
        let shared = shared(config, Some(store));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        let err = accept_on(&shared, sock).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
