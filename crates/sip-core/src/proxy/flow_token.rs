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

    fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        for p in parts {
            h.write(p);
        }
        h.finish().to_le_bytes()
    }

    /// `flow` as lower-case hex.
    pub(crate) fn encode(&self, flow: &Flow) -> String {
        let mut p = payload(flow);
        let mac = self.mac(&[&p]);
        p.extend_from_slice(&mac);
        hex(&p)
    }

    /// The flow a token names, if the token is well-formed and its MAC checks.
    pub(crate) fn decode(&self, token: &[u8]) -> Option<Flow> {
        let mut buf = [0u8; 64];
        let p = unhex_into(token, &mut buf)?;
        let (payload, mac) = p.split_at(p.len().checked_sub(MAC_LEN)?);
        if self.mac(&[payload]) != mac {
            return None;
        }
        parse_payload(payload)
    }

    /// A value no outsider can predict or relate to the previous one: SipHash of a counter
    /// under the per-process key (a PRF). Tags and branch nonces come from here, so nothing
    /// on the wire counts stg's traffic or names the software.
    pub(crate) fn prf(&self, counter: u64) -> u64 {
        u64::from_le_bytes(self.mac(&[b"r", &counter.to_le_bytes()]))
    }

    /// A keyed hash of message fields, for values that must be stable across
    /// retransmissions (a stateless To-tag or branch) yet unpredictable.
    pub(crate) fn keyed_hash(&self, parts: &[&[u8]]) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        h.write_u8(b'h');
        for p in parts {
            h.write(p);
            h.write_u8(0xff);
        }
        h.finish()
    }

    /// A branch for a request this proxy sends (RFC 3261 §16.6 step 8):
    /// `z9hG4bK-<loop hash>-<hex(nonce, minted, sent to, reply flow, MAC)>`. The loop hash
    /// detects loops; the nonce makes it unique; the rest, under the MAC, lets a 2xx that
    /// arrives after its transaction has ended (RFC 6026) go back on exactly the flow the
    /// request came from, and only when it comes from where the request went, soon enough.
    pub(crate) fn mint_branch(&self, loop_hash: u64, nonce: u64, minted: &Minted) -> Vec<u8> {
        let mut p = Vec::with_capacity(8 + 8 + 29 + MAC_LEN);
        p.extend_from_slice(&nonce.to_be_bytes());
        p.extend_from_slice(&minted.at_secs.to_be_bytes());
        p.extend_from_slice(&minted.sent_to.to_be_bytes());
        p.extend_from_slice(&payload(&minted.reply));
        let mac = self.mac(&[b"b", &loop_hash.to_be_bytes(), &p]);
        p.extend_from_slice(&mac);
        let mut b = Vec::with_capacity(BRANCH_PREFIX.len() + 17 + 2 * p.len());
        b.extend_from_slice(BRANCH_PREFIX);
        push_hex_u64(&mut b, loop_hash);
        b.push(b'-');
        b.extend_from_slice(hex(&p).as_bytes());
        b
    }

    /// What a branch minted by [`Self::mint_branch`] carries; `None` for any branch this
    /// process did not mint (one spelling only: lower-case hex).
    pub(crate) fn branch_flow(&self, branch: &[u8]) -> Option<Minted> {
        let rest = branch.strip_prefix(BRANCH_PREFIX)?;
        if rest.len() < 17 || rest[16] != b'-' {
            return None;
        }
        let mut lh = [0u8; 8];
        let loop_hash = unhex_into(&rest[..16], &mut lh)?;
        if rest.iter().any(u8::is_ascii_uppercase) {
            return None;
        }
        let mut buf = [0u8; 16 + 29 + MAC_LEN];
        let p = unhex_into(&rest[17..], &mut buf)?;
        let (body, mac) = p.split_at(p.len().checked_sub(MAC_LEN)?);
        if body.len() < 16 || self.mac(&[b"b", loop_hash, body]) != mac {
            return None;
        }
        let word = |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
        Some(Minted {
            at_secs: word(8),
            sent_to: word(12),
            reply: parse_payload(&body[16..])?,
        })
    }

    /// A short keyed digest of an address, to bind a branch to where its request went.
    pub(crate) fn addr_tag(&self, ip: IpAddr) -> u32 {
        let octets = match ip.to_canonical() {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        (self.keyed_hash(&[b"dest", &octets]) >> 32) as u32
    }
}

/// The flow a token names, WITHOUT checking its MAC (the key is the running process's):
/// for diagnostics only (`stg reg show` decoding a stored `fs-conn-id`), never for routing.
pub fn peek_flow_token(token: &str) -> Option<Flow> {
    let mut buf = [0u8; 64];
    let p = unhex_into(token.as_bytes(), &mut buf)?;
    let (payload, _mac) = p.split_at(p.len().checked_sub(MAC_LEN)?);
    parse_payload(payload)
}

/// What a minted branch binds under its MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Minted {
    /// Seconds since the proxy's first input, when the request was sent.
    pub(crate) at_secs: u32,
    /// [`FlowTokens::addr_tag`] of the address the request was sent to.
    pub(crate) sent_to: u32,
    /// Where the request's responses go.
    pub(crate) reply: Flow,
}

/// Every branch this proxy mints starts with it (the RFC 3261 magic cookie and a dash).
pub(crate) const BRANCH_PREFIX: &[u8] = b"z9hG4bK-";

fn payload(flow: &Flow) -> Vec<u8> {
    let mut p = Vec::with_capacity(29);
    p.push(transport_code(flow.transport));
    p.extend_from_slice(&flow.listener.0.to_be_bytes());
    p.extend_from_slice(&flow.conn.map_or(0, |c| c.0).to_be_bytes());
    match flow.remote.ip() {
        IpAddr::V4(a) => p.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => p.extend_from_slice(&a.octets()),
    }
    p.extend_from_slice(&flow.remote.port().to_be_bytes());
    p
}

fn parse_payload(payload: &[u8]) -> Option<Flow> {
    let ip_len = match payload.len().checked_sub(1 + 2 + 8 + 2)? {
        4 => 4,
        16 => 16,
        _ => return None,
    };
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

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// `v` as 16 lower-case hex digits.
pub(crate) fn push_hex_u64(out: &mut Vec<u8>, v: u64) {
    for i in (0..16).rev() {
        out.push(HEX[((v >> (4 * i)) & 15) as usize]);
    }
}

/// Decodes hex into `buf`; `None` when it is not hex or does not fit.
fn unhex_into<'a>(text: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    if !text.len().is_multiple_of(2) || text.len() / 2 > buf.len() {
        return None;
    }
    let n = text.len() / 2;
    for i in 0..n {
        buf[i] = (unhex(text[2 * i])? << 4) | unhex(text[2 * i + 1])?;
    }
    Some(&buf[..n])
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
            assert_eq!(peek_flow_token(&s), Some(flow), "peek ignores the key");
            let mut forged = s.into_bytes();
            forged[6] = if forged[6] == b'0' { b'1' } else { b'0' };
            assert_eq!(t.decode(&forged), None);
            let other = FlowTokens::new([8; 16]);
            assert_eq!(other.decode(t.encode(&flow).as_bytes()), None);
        }
        assert_eq!(t.decode(b"zz"), None);
        assert_eq!(t.decode(b""), None);
        assert_eq!(peek_flow_token("7f3a2c001b40"), None);
        assert_eq!(peek_flow_token(""), None);
    }

    #[test]
    fn branches_carry_their_reply_flow_under_the_mac() {
        let t = FlowTokens::new([7; 16]);
        let flow = Flow {
            listener: ListenerId(1),
            transport: Transport::Tls,
            remote: "[2001:db8::7]:40000".parse().unwrap(),
            conn: Some(ConnId(77)),
        };
        let minted = Minted {
            at_secs: 7,
            sent_to: 9,
            reply: flow,
        };
        let b = t.mint_branch(0xfeed, t.prf(1), &minted);
        assert!(b.starts_with(b"z9hG4bK-000000000000feed-"));
        assert_eq!(t.branch_flow(&b), Some(minted));
        assert_eq!(
            t.branch_flow(&b.to_ascii_uppercase()[..]),
            None,
            "cookie is case-exact"
        );
        // Any change (loop hash, nonce, flow, MAC) and it names nothing.
        for i in 8..b.len() {
            if b[i] == b'-' {
                continue;
            }
            let mut forged = b.clone();
            forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
            assert_eq!(t.branch_flow(&forged), None, "byte {i}");
        }
        assert_eq!(FlowTokens::new([8; 16]).branch_flow(&b), None);
        assert_eq!(t.branch_flow(b"z9hG4bK-dev-1"), None);
        // A flow token is not a branch and a branch is not a flow token.
        assert_eq!(t.decode(&b[25..]), None);
    }

    #[test]
    fn prf_values_are_not_a_sequence() {
        let t = FlowTokens::new([7; 16]);
        let (a, b) = (t.prf(1), t.prf(2));
        assert_ne!(a, b);
        assert!(b.wrapping_sub(a) > 1 << 20 || a.wrapping_sub(b) > 1 << 20);
    }
}

#[cfg(test)]
mod review_tests {
    use super::*;

    /// F8. The branch MAC check accepts upper-case hex: one minted branch has 2^n spellings
    /// that all validate, but transaction keys are byte-exact, so a 2xx with a re-cased
    /// branch misses its live transaction and takes the stateless late-2xx path.
    #[test]
    fn a_branch_has_one_spelling() {
        let t = FlowTokens::new([7; 16]);
        let flow = Flow {
            listener: ListenerId(0),
            transport: Transport::Udp,
            remote: "203.0.113.7:40000".parse().unwrap(),
            conn: None,
        };
        let minted = Minted {
            at_secs: 0,
            sent_to: 0,
            reply: flow,
        };
        let b = t.mint_branch(0xabcdef, t.prf(1), &minted);
        let mut recased = b[..8].to_vec();
        recased.extend(b[8..].to_ascii_uppercase());
        assert_ne!(recased, b);
        assert_eq!(t.branch_flow(&recased), None);
    }
}
