//! Flow tokens (RFC 5626 §5.2 style): the user part of stg's Record-Route (and later Path)
//! URI names the connection a device opened, so that requests from the inside reach the
//! device over exactly that flow and never another client's socket.
//!
//! A token is `hex(payload || mac)`. The MAC is SipHash-2-4 under a per-process random key
//! (injected: the core draws no randomness), so a device cannot forge a token that names
//! someone else's connection by putting it in its own Record-Route. Tokens die with the
//! process, as the connections they name do.

use std::hash::Hasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use siphasher::sip::SipHasher24;

use crate::net::{ConnId, Flow, ListenerId, Transport};

const MAC_LEN: usize = 8;

/// Encodes and checks flow tokens under one key.
#[derive(Clone)]
pub(crate) struct FlowTokens {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for FlowTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowTokens(..)")
    }
}

fn transport_code(t: Transport) -> u8 {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
        Transport::Ws => 3,
        Transport::Wss => 4,
    }
}

fn transport_from_code(c: u8) -> Option<Transport> {
    Some(match c {
        0 => Transport::Udp,
        1 => Transport::Tcp,
        2 => Transport::Tls,
        3 => Transport::Ws,
        4 => Transport::Wss,
        _ => return None,
    })
}

impl FlowTokens {
    pub(crate) fn new(key: [u8; 16]) -> Self {
        let (a, b) = key.split_at(8);
        // Both halves are exactly 8 bytes by construction of a 16-byte array.
        let k0 = u64::from_le_bytes(a.try_into().unwrap_or([0; 8]));
        let k1 = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        Self { k0, k1 }
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        h.write(payload);
        h.finish().to_le_bytes()
    }

    /// `flow` as lower-case hex.
    pub(crate) fn encode(&self, flow: &Flow) -> String {
        let mut p = Vec::with_capacity(40);
        p.push(transport_code(flow.transport));
        p.extend_from_slice(&flow.listener.0.to_be_bytes());
        p.extend_from_slice(&flow.conn.map_or(0, |c| c.0).to_be_bytes());
        match flow.remote.ip() {
            IpAddr::V4(a) => p.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => p.extend_from_slice(&a.octets()),
        }
        p.extend_from_slice(&flow.remote.port().to_be_bytes());
        let mac = self.mac(&p);
        p.extend_from_slice(&mac);
        let mut s = String::with_capacity(p.len() * 2);
        for b in p {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// The flow a token names, if the token is well-formed and its MAC checks.
    pub(crate) fn decode(&self, token: &[u8]) -> Option<Flow> {
        if token.len() % 2 != 0 || token.len() > 2 * 64 {
            return None;
        }
        let mut p = [0u8; 64];
        let n = token.len() / 2;
        for i in 0..n {
            p[i] = (unhex(token[2 * i])? << 4) | unhex(token[2 * i + 1])?;
        }
        let p = &p[..n];
        let ip_len = match n.checked_sub(1 + 2 + 8 + 2 + MAC_LEN)? {
            4 => 4,
            16 => 16,
            _ => return None,
        };
        let (payload, mac) = p.split_at(n - MAC_LEN);
        if self.mac(payload) != mac {
            return None;
        }
        let transport = transport_from_code(payload[0])?;
        let listener = ListenerId(u16::from_be_bytes([payload[1], payload[2]]));
        let mut conn = [0u8; 8];
        conn.copy_from_slice(&payload[3..11]);
        let conn = u64::from_be_bytes(conn);
        let ip_bytes = &payload[11..11 + ip_len];
        let ip = if ip_len == 4 {
            IpAddr::V4(Ipv4Addr::new(
                ip_bytes[0],
                ip_bytes[1],
                ip_bytes[2],
                ip_bytes[3],
            ))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(ip_bytes);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        let port = u16::from_be_bytes([payload[11 + ip_len], payload[12 + ip_len]]);
        Some(Flow {
            listener,
            transport,
            remote: SocketAddr::new(ip, port),
            conn: (conn != 0).then_some(ConnId(conn)),
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let t = FlowTokens::new([7; 16]);
        for flow in [
            Flow {
                listener: ListenerId(3),
                transport: Transport::Tls,
                remote: "192.0.2.9:40000".parse().unwrap(),
                conn: Some(ConnId(42)),
            },
            Flow {
                listener: ListenerId(0),
                transport: Transport::Udp,
                remote: "[2001:db8::1]:5060".parse().unwrap(),
                conn: None,
            },
        ] {
            let s = t.encode(&flow);
            assert_eq!(t.decode(s.as_bytes()), Some(flow));
            let mut forged = s.into_bytes();
            forged[6] = if forged[6] == b'0' { b'1' } else { b'0' };
            assert_eq!(t.decode(&forged), None);
            let other = FlowTokens::new([8; 16]);
            assert_eq!(other.decode(t.encode(&flow).as_bytes()), None);
        }
        assert_eq!(t.decode(b"zz"), None);
        assert_eq!(t.decode(b""), None);
    }
}
