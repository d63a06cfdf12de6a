//! `[web]`: the HTTPS front (web front, reverse proxy, static files, access rules), its
//! typed configuration and the raw form serde reads.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::raw::{invalid, set, Invalid};
use crate::text::Parse;

/// `[web]`: the HTTPS front. Off by default (no `listen`): a node upgraded in place exposes
/// nothing new until the operator turns it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// HTTPS (HTTP/1.1 and HTTP/2) listener; None (`""`, the default): no web front.
    pub listen: Option<SocketAddr>,
    /// Plain HTTP listener that only redirects to https; None (the default): none.
    pub listen_http: Option<SocketAddr>,
    /// The port written in redirects to https; None (`0`, the default): the port of `listen`.
    /// Set it when a balancer or NAT publishes 443 for another local port.
    pub https_port: Option<u16>,
    /// The host names (lower case, no port) the front answers for; any other `Host` gets no
    /// answer at all (the connection is closed) and counts as a probe. Empty (the default):
    /// any host.
    pub hosts: Vec<String>,
    /// The only sources that must (and may) send a PROXY protocol v2 header first; their
    /// header gives the client address. Default none.
    pub load_balancers: Vec<IpNet>,
    /// The inside: the only sources of `internal` paths. Default none.
    pub internal_networks: Vec<IpNet>,
    /// `Strict-Transport-Security: max-age` on every https answer; zero: no header.
    /// Default 365 days.
    pub hsts_max_age: Duration,
    /// Most connections at once (both listeners and upgraded WebSockets). Default 10000.
    pub max_connections: usize,
    /// The same per client address. Default 64.
    pub max_connections_per_source: usize,
    /// Largest request head (request line and headers), bytes; 8192 to 1 MiB. Default 16384.
    pub max_header_bytes: usize,
    /// Largest request body, bytes (413 beyond). Default 10 MiB.
    pub max_body_bytes: u64,
    /// A request head must arrive within this (slowloris), and an idle kept-alive
    /// connection is closed after it. Default 10 s.
    pub header_timeout: Duration,
    /// A request body must arrive within this once its head has. Default 60 s.
    pub body_timeout: Duration,
    /// The TLS handshake must finish within this. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// On shutdown, how long requests in flight get to finish. Default 10 s.
    pub drain_timeout: Duration,
    /// Access rules, the first whose path matches applies. Default none.
    pub rules: Vec<WebRule>,
    /// Reverse-proxy routes, the longest matching prefix (of a route for the request's host,
    /// else of a route for any host) wins. Default none.
    pub proxy: Vec<WebProxy>,
    /// Directories served as static files, routed as `proxy` (proxy routes win ties).
    /// Default none.
    pub static_dirs: Vec<WebStatic>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: None,
            listen_http: None,
            https_port: None,
            hosts: Vec::new(),
            load_balancers: Vec::new(),
            internal_networks: Vec::new(),
            hsts_max_age: Duration::from_secs(365 * 86_400),
            max_connections: 10_000,
            max_connections_per_source: 64,
            max_header_bytes: 16_384,
            max_body_bytes: 10 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            rules: Vec::new(),
            proxy: Vec::new(),
            static_dirs: Vec::new(),
        }
    }
}

impl WebConfig {
    /// Whether `ip` is inside ([`internal_networks`](Self::internal_networks)).
    pub fn is_internal(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.internal_networks.iter().any(|n| n.contains(&ip))
    }

    /// Whether `ip` is a balancer ([`load_balancers`](Self::load_balancers)).
    pub fn is_load_balancer(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.load_balancers.iter().any(|n| n.contains(&ip))
    }
}

/// Which request paths a rule or route applies to, compared with the decoded path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// This path and everything under it (a plain string prefix).
    Prefix(String),
    /// This path only.
    Exact(String),
}

impl PathMatch {
    /// Whether `path` (decoded) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Exact(p) => path == p,
        }
    }
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebAction {
    /// 403 unless the client is in `web.internal_networks`; from inside the request goes on.
    Internal,
    /// 403 always: a page never served directly (the seed's landing `index.html`).
    Deny,
    /// 302 to this path or URL (the bare client URL to its landing page).
    Redirect(String),
}

/// One `[[web.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRule {
    pub path: PathMatch,
    pub action: WebAction,
}

/// One `[[web.proxy]]` entry: requests under `prefix` go to an internal application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebProxy {
    /// The path prefix, from `/`.
    pub prefix: String,
    /// Only for this host (lower case); None: any.
    pub host: Option<String>,
    /// `http://host:port[/base]` of the application.
    pub upstream: String,
    /// Remove `prefix` from the path sent upstream (after `base`). Default false.
    pub strip_prefix: bool,
    /// Send the client's `Host` upstream rather than the upstream's own. Default true.
    pub preserve_host: bool,
    /// Give up connecting after this (502). Default 3 s.
    pub connect_timeout: Duration,
    /// Give up waiting for the answer's head after this (504). Default 60 s.
    pub timeout: Duration,
    /// Only with a valid session token (the authentication service checks it). Default false.
    pub token: bool,
    /// Name in metrics and logs. Default: the prefix.
    pub name: String,
}

/// One `[[web.static]]` entry: files of `dir` under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebStatic {
    pub prefix: String,
    pub dir: PathBuf,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [web] table")]
pub(crate) struct RawWeb {
    listen: Option<Parse<Option<SocketAddr>>>,
    listen_http: Option<Parse<Option<SocketAddr>>>,
    https_port: Option<u16>,
    hosts: Option<Vec<String>>,
    load_balancers: Option<Vec<Parse<IpNet>>>,
    internal_networks: Option<Vec<Parse<IpNet>>>,
    hsts_max_age: Option<Parse<Duration>>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    header_timeout: Option<Parse<Duration>>,
    body_timeout: Option<Parse<Duration>>,
    tls_handshake_timeout: Option<Parse<Duration>>,
    drain_timeout: Option<Parse<Duration>>,
    rules: Option<Vec<RawRule>>,
    proxy: Option<Vec<RawProxy>>,
    #[serde(rename = "static")]
    static_dirs: Option<Vec<RawStatic>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [[web.rules]] table")]
struct RawRule {
    prefix: Option<String>,
    path: Option<String>,
    action: Option<String>,
    to: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [[web.proxy]] table")]
struct RawProxy {
    prefix: Option<String>,
    host: Option<String>,
    upstream: Option<String>,
    strip_prefix: Option<bool>,
    preserve_host: Option<bool>,
    connect_timeout: Option<Parse<Duration>>,
    timeout: Option<Parse<Duration>>,
    token: Option<bool>,
    name: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [[web.static]] table")]
struct RawStatic {
    prefix: Option<String>,
    dir: Option<Parse<PathBuf>>,
}

impl RawWeb {
    pub(crate) fn convert(self) -> Result<WebConfig, Invalid> {
        let nets = |v: Vec<Parse<IpNet>>| v.into_iter().map(|Parse(n)| n).collect();
        let mut w = WebConfig::default();
        set(&mut w.listen, self.listen);
        set(&mut w.listen_http, self.listen_http);
        w.https_port = self.https_port.filter(|&p| p != 0);
        if let Some(hosts) = self.hosts {
            w.hosts = hosts
                .into_iter()
                .enumerate()
                .map(|(i, h)| check_host(&h).map_err(|why| invalid(format!("web.hosts[{i}]"), why)))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = self.load_balancers {
            w.load_balancers = nets(v);
        }
        if let Some(v) = self.internal_networks {
            w.internal_networks = nets(v);
        }
        set(&mut w.hsts_max_age, self.hsts_max_age);
        w.max_connections = self.max_connections.unwrap_or(w.max_connections);
        w.max_connections_per_source = self
            .max_connections_per_source
            .unwrap_or(w.max_connections_per_source);
        w.max_header_bytes = self.max_header_bytes.unwrap_or(w.max_header_bytes);
        w.max_body_bytes = self.max_body_bytes.unwrap_or(w.max_body_bytes);
        set(&mut w.header_timeout, self.header_timeout);
        set(&mut w.body_timeout, self.body_timeout);
        set(&mut w.tls_handshake_timeout, self.tls_handshake_timeout);
        set(&mut w.drain_timeout, self.drain_timeout);
        for (key, value) in [
            ("web.max_connections", w.max_connections),
            (
                "web.max_connections_per_source",
                w.max_connections_per_source,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if !(8192..=1 << 20).contains(&w.max_header_bytes) {
            return Err(invalid("web.max_header_bytes", "from 8192 to 1048576"));
        }
        for (key, value) in [
            ("web.header_timeout", w.header_timeout),
            ("web.body_timeout", w.body_timeout),
            ("web.tls_handshake_timeout", w.tls_handshake_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        if w.listen.is_some() && w.listen == w.listen_http {
            return Err(invalid("web.listen_http", "the same socket as web.listen"));
        }
        if let Some(rules) = self.rules {
            w.rules = rules
                .into_iter()
                .enumerate()
                .map(|(i, r)| r.convert(&format!("web.rules[{i}]")))
                .collect::<Result<_, _>>()?;
        }
        if let Some(proxy) = self.proxy {
            w.proxy = proxy
                .into_iter()
                .enumerate()
                .map(|(i, p)| p.convert(&format!("web.proxy[{i}]")))
                .collect::<Result<_, _>>()?;
        }
        if let Some(dirs) = self.static_dirs {
            w.static_dirs = dirs
                .into_iter()
                .enumerate()
                .map(|(i, s)| s.convert(&format!("web.static[{i}]")))
                .collect::<Result<_, _>>()?;
        }
        Ok(w)
    }
}

impl RawRule {
    fn convert(self, key: &str) -> Result<WebRule, Invalid> {
        let path = match (self.prefix, self.path) {
            (Some(p), None) => PathMatch::Prefix(check_path(&p, &format!("{key}.prefix"))?),
            (None, Some(p)) => PathMatch::Exact(check_path(&p, &format!("{key}.path"))?),
            _ => return Err(invalid(key, "exactly one of prefix or path")),
        };
        let action = match (self.action.as_deref(), self.to) {
            (Some("internal"), None) => WebAction::Internal,
            (Some("deny"), None) => WebAction::Deny,
            (Some("redirect"), Some(to)) if !to.trim().is_empty() => {
                if to.chars().any(|c| c.is_ascii_control() || c == ' ') {
                    return Err(invalid(
                        format!("{key}.to"),
                        "no spaces or control characters",
                    ));
                }
                WebAction::Redirect(to)
            }
            (Some("redirect"), _) => return Err(invalid(format!("{key}.to"), "a path or URL")),
            (Some("internal" | "deny"), Some(_)) => {
                return Err(invalid(
                    format!("{key}.to"),
                    "only with action = \"redirect\"",
                ))
            }
            (other, _) => {
                return Err(invalid(
                    format!("{key}.action"),
                    format!("{other:?}: internal, deny or redirect"),
                ))
            }
        };
        Ok(WebRule { path, action })
    }
}

impl RawProxy {
    fn convert(self, key: &str) -> Result<WebProxy, Invalid> {
        let prefix = check_path(
            self.prefix.as_deref().unwrap_or_default(),
            &format!("{key}.prefix"),
        )?;
        let upstream = self
            .upstream
            .ok_or_else(|| invalid(format!("{key}.upstream"), "required"))?;
        check_upstream(&upstream).map_err(|why| invalid(format!("{key}.upstream"), why))?;
        let host = match self.host.filter(|h| !h.trim().is_empty()) {
            Some(h) => Some(check_host(&h).map_err(|why| invalid(format!("{key}.host"), why))?),
            None => None,
        };
        let mut p = WebProxy {
            name: self.name.unwrap_or_else(|| prefix.clone()),
            prefix,
            host,
            upstream,
            strip_prefix: self.strip_prefix.unwrap_or(false),
            preserve_host: self.preserve_host.unwrap_or(true),
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(60),
            token: self.token.unwrap_or(false),
        };
        set(&mut p.connect_timeout, self.connect_timeout);
        set(&mut p.timeout, self.timeout);
        if p.connect_timeout.is_zero() || p.timeout.is_zero() {
            return Err(invalid(key, "timeouts must be longer than zero"));
        }
        Ok(p)
    }
}

impl RawStatic {
    fn convert(self, key: &str) -> Result<WebStatic, Invalid> {
        let prefix = check_path(
            self.prefix.as_deref().unwrap_or("/"),
            &format!("{key}.prefix"),
        )?;
        let Some(Parse(dir)) = self.dir else {
            return Err(invalid(format!("{key}.dir"), "required"));
        };
        if dir.as_os_str().is_empty() {
            return Err(invalid(format!("{key}.dir"), "required"));
        }
        Ok(WebStatic { prefix, dir })
    }
}

/// A path from `/`, printable ASCII without spaces, `?` or `#`.
fn check_path(p: &str, key: &str) -> Result<String, Invalid> {
    let ok = p.starts_with('/')
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if ok {
        Ok(p.to_owned())
    } else {
        Err(invalid(key, format!("{p:?}: a path starting with /")))
    }
}

/// A host name or address as it appears in `Host` without the port; lower-cased.
fn check_host(h: &str) -> Result<String, String> {
    let h = h.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if ok {
        Ok(h)
    } else {
        Err(format!("{h:?}: a host name or address, without port"))
    }
}

/// `http://host[:port][/base]`.
fn check_upstream(u: &str) -> Result<(), String> {
    let Some(rest) = u.strip_prefix("http://") else {
        return Err(format!(
            "{u:?}: an http:// URL (the applications are inside)"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || u.contains(['?', '#', ' ']) || authority.contains('@') {
        return Err(format!("{u:?}: http://host[:port][/path]"));
    }
    Ok(())
}
