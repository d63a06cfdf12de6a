//! Transport-level names shared by the proxy core and the shell: which socket, which side,
//! which connection. Plain values; the shell owns the sockets.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A SIP transport (RFC 3261 §18, RFC 7118).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket (RFC 7118).
    Ws,
    /// Secure WebSocket (RFC 7118).
    Wss,
}

impl Transport {
    /// Every transport but UDP is reliable: no retransmission timers (RFC 3261 §17).
    pub fn is_reliable(self) -> bool {
        self != Self::Udp
    }

    /// TLS or WSS.
    pub fn is_secure(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }

    /// The Via transport token (`UDP`, `TCP`, `TLS`, `WS`, `WSS`).
    pub fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::Ws => "WS",
            Self::Wss => "WSS",
        }
    }

    /// The `transport=` URI parameter value.
    pub fn param(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// From a Via token or a `transport=` value, case-insensitive.
    pub fn from_token(t: &[u8]) -> Option<Self> {
        [Self::Udp, Self::Tcp, Self::Tls, Self::Ws, Self::Wss]
            .into_iter()
            .find(|x| x.via_token().as_bytes().eq_ignore_ascii_case(t))
    }

    /// The default port of the transport (RFC 3261 §19.1.2; RFC 7118 uses the HTTP ports,
    /// but a SIP URI with `transport=ws` and no port means 5060 in practice).
    pub fn default_port(self) -> u16 {
        if self.is_secure() {
            5061
        } else {
            5060
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.param())
    }
}

/// Which side of the edge a peer is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The internet: devices, browsers, anyone. Never trusted to choose a destination.
    Outside,
    /// The PBX side: an internal listener or a trusted network.
    Inside,
}

/// Index of a listening socket in the node's listener list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u16);

/// A stream connection's id, unique for the life of the process (stored with registrations
/// later, as Flexisip's `fs-conn-id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A path to a peer: the listener (socket or accepting listener), the transport, the peer
/// address, and for streams the connection. With `conn: None` on a stream transport the
/// shell uses any live connection to `remote` or opens one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The listener the message came in on or goes out from.
    pub listener: ListenerId,
    /// The transport.
    pub transport: Transport,
    /// The peer's address (after PROXY protocol: the real client).
    pub remote: SocketAddr,
    /// The connection, for stream transports.
    pub conn: Option<ConnId>,
}

/// A listener as the core needs to know it: to write Via and Record-Route, to recognise
/// its own URIs, to pick a socket for a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Its id (index in the node's list).
    pub id: ListenerId,
    /// The transport.
    pub transport: Transport,
    /// Which side it faces.
    pub side: Side,
    /// The bound address.
    pub local: SocketAddr,
    /// Host written in Via/Record-Route (the advertised name or the bound IP).
    pub host: String,
    /// Port written in Via/Record-Route.
    pub port: u16,
}

/// An IP network (address and prefix length): the inside networks the core must never let
/// the outside reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix_len: u8,
}

impl IpNetwork {
    /// Whether `ip` is in this network. Both sides are canonicalised first (an IPv4-mapped
    /// IPv6 address `::ffff:a.b.c.d` is the IPv4 address it maps: a dual-stack socket reports
    /// IPv4 peers that way, and a Via can name one to slip past an IPv4 network); IPv4 and
    /// IPv6 never match each other otherwise.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let net = canonical(self.addr);
        // A mapped network address loses the 96 bits of its prefix that the mapping spent.
        let prefix_len = match (self.addr, net) {
            (IpAddr::V6(_), IpAddr::V4(_)) => self.prefix_len.saturating_sub(96),
            _ => self.prefix_len,
        };
        match (net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let bits = u32::from(prefix_len.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let bits = u32::from(prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The address a peer really has: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes IPv4. Every
/// comparison of addresses (networks, own addresses, per-source budgets) goes through it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The unit a per-source budget counts: one IPv4 address, or one IPv6 prefix of
/// `v6_prefix_len` bits (a single host usually owns a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    /// The budget `ip` counts against.
    pub fn new(ip: IpAddr, v6_prefix_len: u8) -> Self {
        match canonical(ip) {
            IpAddr::V4(a) => Self(IpAddr::V4(a)),
            IpAddr::V6(a) => {
                let bits = u32::from(v6_prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                Self(IpAddr::V6((u128::from(a) & mask).into()))
            }
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str, len: u8) -> IpNetwork {
        IpNetwork {
            addr: s.parse().unwrap(),
            prefix_len: len,
        }
    }

    #[test]
    fn mapped_addresses_match_their_ipv4_network() {
        let inside = net("10.0.0.0", 8);
        assert!(inside.contains("10.0.0.6".parse().unwrap()));
        assert!(inside.contains("::ffff:10.0.0.6".parse().unwrap()));
        assert!(!inside.contains("::ffff:11.0.0.6".parse().unwrap()));
        assert!(!inside.contains("2001:db8::1".parse().unwrap()));
        let mapped = net("::ffff:10.0.0.0", 104);
        assert!(mapped.contains("10.1.2.3".parse().unwrap()));
        assert!(!mapped.contains("11.1.2.3".parse().unwrap()));
    }

    #[test]
    fn source_keys_group_ipv6_by_prefix() {
        let k = |s: &str| SourceKey::new(s.parse().unwrap(), 64);
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.1"));
        assert_ne!(k("192.0.2.1"), k("192.0.2.2"));
    }
}
