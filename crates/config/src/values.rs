//! The typed values that the file writes as text: transports, sides, hosts and the upstream
//! URI. Each parses once here, so the runtime never handles a string it would have to check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::text::FromText;

/// A SIP transport: RFC 3261 §18 (UDP, TCP, TLS) and RFC 7118 (WebSocket).
///
/// Not `#[non_exhaustive]`: these are the transports stg implements, and adding one should
/// break every `match` that has to learn about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    /// Whether the transport delivers in order and retransmits by itself, which switches
    /// off timers A, E and G (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1).
    pub const fn is_reliable(self) -> bool {
        !matches!(self, Self::Udp)
    }

    /// Whether the transport is encrypted (TLS, or WebSocket over TLS).
    pub const fn is_secure(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }

    /// The name used in the configuration file and in `;transport=` URI parameters.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// The transport token of a Via header's sent-protocol (RFC 3261 §20.42, RFC 7118 §5.2).
    pub const fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::Ws => "WS",
            Self::Wss => "WSS",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromText for Transport {
    const WHAT: &'static str = "transport";

    fn from_text(text: &str) -> Result<Self, String> {
        // URI parameter values compare case-insensitively (RFC 3261 §19.1.4).
        [Self::Udp, Self::Tcp, Self::Tls, Self::Ws, Self::Wss]
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| "expected udp, tcp, tls, ws or wss".to_owned())
    }
}

/// Which side of the edge a listener faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The internet: devices, browsers, anything untrusted.
    Outside,
    /// The PBX side.
    Inside,
}

impl Side {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Outside => "outside",
            Self::Inside => "inside",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromText for Side {
    const WHAT: &'static str = "side";

    fn from_text(text: &str) -> Result<Self, String> {
        [Self::Outside, Self::Inside]
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| "expected outside or inside".to_owned())
    }
}

/// The host part of a SIP URI (RFC 3261 §25.1 `host`): an IP address or a host name.
///
/// Kept apart so the runtime knows without looking again whether RFC 3263 resolution applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A host name, stored in lower case because host names compare case-insensitively
    /// (RFC 3261 §19.1.4); a trailing dot is kept as written.
    Domain(String),
}

impl fmt::Display for Host {
    /// As in a URI: an IPv6 address in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Self::Domain(name) => f.write_str(name),
        }
    }
}

impl FromText for Host {
    const WHAT: &'static str = "host";

    fn from_text(text: &str) -> Result<Self, String> {
        match HostPort::from_text(text)? {
            HostPort { host, port: None } => Ok(host),
            HostPort { port: Some(_), .. } => Err("expected a host without a port".to_owned()),
        }
    }
}

/// A host with an optional port (RFC 3261 §25.1 `hostport`), as written in a Via sent-by or
/// a Record-Route URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: Host,
    pub port: Option<u16>,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl FromText for HostPort {
    const WHAT: &'static str = "host";

    fn from_text(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or("an IPv6 address in brackets lacks its ']'")?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => {
                    let port = after
                        .strip_prefix(':')
                        .ok_or("expected ':port' after ']'")?;
                    Some(parse_port(port)?)
                }
            };
            return Ok(Self {
                host: Host::Ip(IpAddr::V6(ip)),
                port,
            });
        }
        if text.parse::<Ipv6Addr>().is_ok() {
            // Without brackets the last group would read as a port.
            return Err("an IPv6 address must be written in brackets, e.g. [2001:db8::1]".into());
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(parse_port(port)?)),
            None => (text, None),
        };
        let host = if let Ok(ip) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if is_hostname(host) {
            Host::Domain(host.to_ascii_lowercase())
        } else {
            return Err(format!("{host:?} is neither an IP address nor a host name"));
        };
        Ok(Self { host, port })
    }
}

/// Where every new request from the outside goes: the PBX, as a SIP URI without user part,
/// e.g. `sip:10.0.0.5:5060;transport=tcp` or `sips:pbx.example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// `sips:`: TLS on the hop to the PBX (RFC 3261 §19.1).
    pub scheme_sips: bool,
    pub host: Host,
    /// None: the default port of the transport, or RFC 3263 SRV for a host name.
    pub port: Option<u16>,
    /// The `;transport=` parameter; None leaves the choice to RFC 3263.
    pub transport: Option<Transport>,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.scheme_sips { "sips" } else { "sip" };
        write!(f, "{scheme}:{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        match self.transport {
            Some(transport) => write!(f, ";transport={transport}"),
            None => Ok(()),
        }
    }
}

impl FromText for Upstream {
    const WHAT: &'static str = "upstream URI";

    fn from_text(text: &str) -> Result<Self, String> {
        const FORM: &str = "expected sip:host[:port][;transport=udp|tcp|tls|ws|wss] or sips:...";
        let (scheme, rest) = text.split_once(':').ok_or(FORM)?;
        let scheme_sips = if scheme.eq_ignore_ascii_case("sip") {
            false
        } else if scheme.eq_ignore_ascii_case("sips") {
            true
        } else {
            return Err(FORM.to_owned());
        };
        if rest.contains('@') {
            return Err("the upstream URI names a host, not a user: drop the user part".into());
        }
        if rest.contains('?') {
            return Err("the upstream URI cannot carry headers ('?...')".into());
        }
        let (hostport, params) = rest.split_once(';').unwrap_or((rest, ""));
        let HostPort { host, port } = HostPort::from_text(hostport)?;
        let mut transport = None;
        for param in params.split(';').filter(|p| !p.is_empty()) {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            if !name.eq_ignore_ascii_case("transport") {
                return Err(format!(
                    "unsupported URI parameter {name:?}: only transport is accepted"
                ));
            }
            if transport.is_some() {
                return Err("transport is given twice".into());
            }
            let parsed = Transport::from_text(value)
                .map_err(|why| format!("invalid transport {value:?}: {why}"))?;
            transport = Some(parsed);
        }
        if scheme_sips && transport == Some(Transport::Udp) {
            return Err("sips: requires TLS, which transport=udp cannot carry".into());
        }
        Ok(Self {
            scheme_sips,
            host,
            port,
            transport,
        })
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human on a terminal, JSON otherwise.
    Auto,
    Human,
    /// One JSON object per line.
    Json,
    /// Native journald fields.
    Journald,
}

impl LogFormat {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Human => "human",
            Self::Json => "json",
            Self::Journald => "journald",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromText for LogFormat {
    const WHAT: &'static str = "log format";

    fn from_text(text: &str) -> Result<Self, String> {
        [Self::Auto, Self::Human, Self::Json, Self::Journald]
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| "expected auto, human, json or journald".to_owned())
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("invalid port {text:?}: expected 1-65535")),
    }
}

/// RFC 3261 §25.1 `hostname`: dot-separated labels of letters, digits and inner hyphens, the
/// last starting with a letter (which is what tells "10.0.0.999" from a name).
fn is_hostname(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    name.split('.').all(label_ok)
        && name
            .rsplit('.')
            .next()
            .is_some_and(|top| top.starts_with(|c: char| c.is_ascii_alphabetic()))
}
