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
    /// Whether `ip` is in this network (IPv4 and IPv6 never match each other).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}
