//! Body of the `proxy` cargo-fuzz target (`fuzz/fuzz_targets/proxy.rs`), shared with the
//! stable replay in this crate's tests so CI runs what the fuzzer runs.
//!
//! Not API: hidden from the docs, and it panics on purpose (`assert!`) when an invariant of
//! the edge policy breaks, since a panic is how a fuzzer reports a finding.
//!
//! The input is a program: each step feeds the [`Proxy`] one input the shell could give it
//! (a request or response from the outside or the inside, built from a small dictionary so
//! that they parse and match; a retransmission; a CANCEL; a send failure; a DNS answer; a
//! time step). After every step:
//! - nothing is sent to a destination the policy forbids: a step that began with an outside
//!   input only sends to the upstream or back to an address that has sent something, and no
//!   step sends to loopback, link-local, the node's own or non-unicast addresses unless it
//!   is the upstream or a source;
//! - [`Proxy::poll_timeout`] is never in the past;
//! - live server transactions stay within the configured caps.
//!
//! At the end every DNS question is answered, time runs out, and every context and
//! transaction must be gone.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::net::{canonical, ConnId, Flow, IpNetwork, Listener, ListenerId, Side, Transport};
use crate::proxy::{
    Inbound, Output, Proxy, ProxyConfig, ProxyLimits, ResolveId, ResolveTarget, SendRef,
};
use crate::transaction::TransactionConfig;
use stg_sip_msg::Message;

/// Addresses a forged message may name, to lure the proxy somewhere it must not go.
const LURES: &[&str] = &[
    "127.0.0.1:6379",
    "[::ffff:10.0.0.6]:5060",
    "169.254.169.254:80",
    "10.0.0.1:5060",
    "192.0.2.1:5060",
    "255.255.255.255:5060",
    "[::1]:5060",
    "10.0.0.6:5060",
    "198.51.100.200:5060",
];

const UPSTREAM: &str = "10.0.0.5:5060";

/// The peers that send: outside devices (UDP, TLS), the PBX (UDP, TCP).
fn peer(i: u8) -> Inbound {
    let (remote, transport, conn, side, listener) = match i % 6 {
        0 => ("203.0.113.7:40000", Transport::Udp, None, Side::Outside, 0),
        1 => ("198.51.100.66:5060", Transport::Udp, None, Side::Outside, 0),
        2 => (
            "203.0.113.8:5555",
            Transport::Tls,
            Some(5),
            Side::Outside,
            1,
        ),
        3 => ("[2001:db8::7]:5060", Transport::Udp, None, Side::Outside, 0),
        4 => (UPSTREAM, Transport::Udp, None, Side::Inside, 0),
        _ => (UPSTREAM, Transport::Tcp, Some(9), Side::Inside, 2),
    };
    Inbound {
        flow: Flow {
            listener: ListenerId(listener),
            transport,
            remote: remote.parse().expect("a literal address"),
            conn: conn.map(ConnId),
        },
        side,
    }
}

fn config(selector: u8) -> ProxyConfig {
    let listener = |id, transport, side, local: &str| Listener {
        id: ListenerId(id),
        transport,
        side,
        local: local.parse().expect("a literal address"),
        host: local.rsplit_once(':').map_or(local, |(h, _)| h).to_owned(),
        port: 5060,
    };
    let (host, transport) = match selector % 4 {
        0 => ("10.0.0.5", None),
        1 => ("10.0.0.5", Some(Transport::Udp)),
        2 => ("10.0.0.5", Some(Transport::Tcp)),
        _ => ("pbx.example.net", None),
    };
    ProxyConfig {
        listeners: vec![
            listener(0, Transport::Udp, Side::Outside, "192.0.2.1:5060"),
            listener(1, Transport::Tls, Side::Outside, "192.0.2.1:5061"),
            listener(2, Transport::Tcp, Side::Inside, "10.0.0.1:5060"),
        ],
        upstream: ResolveTarget {
            host: host.to_owned(),
            port: Some(5060),
            transport,
            sips: false,
        },
        inside_networks: vec![IpNetwork {
            addr: "10.0.0.0".parse().expect("literal"),
            prefix_len: 8,
        }],
        aliases: Vec::new(),
        force_rport: selector & 4 != 0,
        timer_c: Duration::from_secs(180),
        transactions: TransactionConfig::default(),
        flow_key: [7; 16],
        seed: u64::from(selector),
        limits: ProxyLimits {
            max_transactions: 24,
            max_transactions_per_source: 8,
            source_prefix_v6: 64,
            max_transaction_bytes: usize::MAX,
        },
        allowed_destinations: Vec::new(),
        registrar: Vec::new(),
        node_id: String::new(),
        push: Default::default(),
        hide_products: true,
        drop_scanners: true,
    }
}

/// Reads the program's bytes.
struct Tape<'a>(&'a [u8]);

impl Tape<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn pick<'s, T>(&mut self, items: &'s [T]) -> Option<&'s T> {
        let b = self.byte()?;
        items.get(usize::from(b) % items.len().max(1))
    }
}

/// What the program has seen, to build matching inputs.
struct World {
    proxy: Proxy,
    now: Instant,
    /// Requests the proxy sent, with where they went.
    sent_requests: Vec<(Flow, Message)>,
    /// Requests peers sent, for retransmission and CANCEL.
    received: Vec<(Inbound, Bytes)>,
    fail_refs: Vec<SendRef>,
    resolves: Vec<(ResolveId, ResolveTarget)>,
    /// Addresses that have sent something: answers may go back to them.
    sources: HashSet<IpAddr>,
    /// Addresses the shell gave for the upstream's name.
    upstream_ips: HashSet<IpAddr>,
    limits: ProxyLimits,
}

fn forbidden(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    let own = ["10.0.0.1", "192.0.2.1"]
        .iter()
        .any(|o| o.parse::<IpAddr>().ok() == Some(ip));
    own || match ip {
        IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_link_local()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_unspecified()
        }
        IpAddr::V6(a) => a.is_loopback() || a.is_multicast() || a.is_unspecified(),
    }
}

impl World {
    /// Drains the outputs of one step and checks them.
    fn drain(&mut self, from_outside: bool) {
        while let Some(o) = self.proxy.poll_output() {
            match o {
                Output::Transmit {
                    flow,
                    bytes,
                    on_fail,
                } => {
                    let ip = canonical(flow.remote.ip());
                    let known = self.sources.contains(&ip) || self.upstream_ips.contains(&ip);
                    assert!(
                        known || !from_outside,
                        "an outside input sent to {} (neither a source nor the upstream)",
                        flow.remote
                    );
                    assert!(
                        known || !forbidden(ip),
                        "sent to forbidden destination {}",
                        flow.remote
                    );
                    let m = Message::parse(bytes).expect("the proxy sends well-formed SIP");
                    if m.is_request() {
                        self.sent_requests.push((flow, m));
                    }
                    self.fail_refs.extend(on_fail);
                }
                Output::Resolve { id, target } => self.resolves.push((id, target)),
                _ => {}
            }
        }
        if let Some(t) = self.proxy.poll_timeout() {
            assert!(t >= self.now, "poll_timeout is in the past");
        }
        let load = self.proxy.load();
        assert!(
            load.awaiting <= self.limits.max_transactions,
            "over the cap"
        );
        assert!(
            load.lingering <= 2 * self.limits.max_transactions,
            "too many lingering"
        );
    }

    fn input(&mut self, from: Inbound, bytes: Bytes) {
        self.sources.insert(canonical(from.flow.remote.ip()));
        self.proxy.handle_input(from, bytes, self.now);
        self.drain(from.side == Side::Outside);
    }
}

/// A request from `from`, with fields drawn from the tape.
fn request(t: &mut Tape<'_>, from: Inbound) -> Option<Bytes> {
    let method = *t.pick(&[
        "INVITE",
        "MESSAGE",
        "OPTIONS",
        "BYE",
        "REGISTER",
        "SUBSCRIBE",
        "ACK",
    ])?;
    let uri = match t.byte()? % 6 {
        0 => "sip:192.0.2.1:5060".to_owned(),
        1 => "sip:bob@example.com".to_owned(),
        2 => format!("sip:x@{}", t.pick(LURES)?),
        3 => format!("sip:x@{};transport=tcp", t.pick(LURES)?),
        4 => "tel:+15551234567".to_owned(),
        _ => "sips:bob@pbx.example.net".to_owned(),
    };
    let branch = t.byte()? % 8;
    let call = t.byte()? % 8;
    let via_host = match t.byte()? % 3 {
        0 => from.flow.remote.to_string(),
        1 => (*t.pick(LURES)?).to_owned(),
        _ => "192.168.1.10:5060".to_owned(),
    };
    let mut s = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{} {via_host};branch=z9hG4bK-f{branch};rport\r\n",
        from.flow.transport.via_token()
    );
    if t.byte()? % 4 == 0 {
        s += &format!("Via: SIP/2.0/UDP {};branch=z9hG4bK-x\r\n", t.pick(LURES)?);
    }
    s += &format!("Max-Forwards: {}\r\n", t.byte()? % 3 * 35);
    s += "From: <sip:alice@example.com>;tag=a1\r\n";
    if t.byte()? % 3 == 0 {
        s += "To: <sip:bob@example.com>;tag=b2\r\n";
    } else {
        s += "To: <sip:bob@example.com>\r\n";
    }
    s += &format!(
        "Call-ID: c{call}\r\nCSeq: {} {method}\r\n",
        1 + t.byte()? % 3
    );
    match t.byte()? % 5 {
        0 => s += &format!("Route: <sip:{};lr>\r\n", t.pick(LURES)?),
        1 => s += "Route: <sip:192.0.2.1:5060;lr>\r\n",
        2 => s += "Proxy-Require: foo\r\n",
        _ => {}
    }
    s += "Contact: <sip:alice@192.168.1.10:5060>\r\nContent-Length: 0\r\n\r\n";
    Some(Bytes::from(s))
}

/// Runs one program.
///
/// # Panics
/// When the proxy breaks an invariant listed in the [module docs](self).
pub fn proxy(data: &[u8]) {
    let mut t = Tape(data);
    let Some(selector) = t.byte() else {
        return;
    };
    let config = config(selector);
    let limits = config.limits;
    #[allow(clippy::disallowed_methods)] // the one real instant; every other is an offset
    let start = Instant::now();
    let mut w = World {
        proxy: Proxy::new(config),
        now: start,
        sent_requests: Vec::new(),
        received: Vec::new(),
        fail_refs: Vec::new(),
        resolves: Vec::new(),
        sources: HashSet::new(),
        upstream_ips: [upstream_ip()].into(),
        limits,
    };
    for _ in 0..256 {
        if step(&mut t, &mut w).is_none() {
            break;
        }
    }
    // Every question gets an answer, then time runs out: everything must end.
    for (id, _) in std::mem::take(&mut w.resolves) {
        w.proxy.handle_resolved(id, &[], w.now);
        w.drain(false);
    }
    for _ in 0..100_000 {
        let Some(at) = w.proxy.poll_timeout() else {
            break;
        };
        w.now = at;
        w.proxy.handle_timeout(at);
        w.drain(false);
        for (id, _) in std::mem::take(&mut w.resolves) {
            w.proxy.handle_resolved(id, &[], w.now);
            w.drain(false);
        }
    }
    assert_eq!(w.proxy.poll_timeout(), None, "timers still armed");
    assert_eq!(w.proxy.transactions_alive(), (0, 0), "transactions left");
    assert!(w.proxy.is_idle(), "response contexts left");
}

fn step(t: &mut Tape<'_>, w: &mut World) -> Option<()> {
    match t.byte()? % 9 {
        0 | 1 => {
            let from = peer(t.byte()?);
            let bytes = request(t, from)?;
            w.received.push((from, bytes.clone()));
            w.input(from, bytes);
        }
        2 | 3 => {
            // A response to something the proxy sent, from where it went (or a forger).
            let (flow, m) = t.pick(&w.sent_requests)?.clone();
            let status = *t.pick(&[100u16, 180, 200, 202, 401, 486, 487, 503, 603])?;
            let status = stg_sip_msg::StatusCode(status);
            let resp = m.response(status, None, Some(b"callee"), None, &[]);
            let from = match t.byte()? % 4 {
                0 => peer(t.byte()?),
                _ => Inbound {
                    flow,
                    side: if canonical(flow.remote.ip()) == upstream_ip() {
                        Side::Inside
                    } else {
                        Side::Outside
                    },
                },
            };
            let resp = if t.byte()? % 4 == 0 {
                // Its next Via rewritten to lure the response elsewhere.
                let text = String::from_utf8_lossy(&resp).into_owned();
                let lure = format!("Via: SIP/2.0/TCP {};branch=z9hG4bK-l\r\n", t.pick(LURES)?);
                Bytes::from(text.replacen("\r\nVia: ", &format!("\r\n{lure}Via: "), 1))
            } else {
                resp
            };
            w.input(from, resp);
        }
        4 => {
            // A stray response naming the proxy on top.
            let from = peer(t.byte()?);
            let s = format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-s{}\r\n\
                 Via: SIP/2.0/TCP {};branch=z9hG4bK-v\r\nFrom: <sip:a@x>;tag=1\r\n\
                 To: <sip:b@x>;tag=2\r\nCall-ID: s\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
                t.byte()?,
                t.pick(LURES)?
            );
            w.input(from, Bytes::from(s));
        }
        5 => {
            // A retransmission, or the CANCEL of an earlier request.
            let (from, bytes) = t.pick(&w.received)?.clone();
            let bytes = if t.byte()? % 2 == 0 {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let method = text.split(' ').next().unwrap_or("");
                Bytes::from(text.replace(method, "CANCEL"))
            } else {
                bytes
            };
            w.input(from, bytes);
        }
        6 => {
            let r = *t.pick(&w.fail_refs)?;
            w.proxy.handle_send_failed(r, w.now);
            w.drain(false);
        }
        7 => {
            if w.resolves.is_empty() {
                return Some(());
            }
            let i = usize::from(t.byte()?) % w.resolves.len();
            let mut answer = Vec::new();
            for _ in 0..t.byte()? % 3 {
                let tr = *t.pick(&[Transport::Udp, Transport::Tcp, Transport::Tls])?;
                let a: SocketAddr = t
                    .pick(&[UPSTREAM, "10.0.0.7:5060", LURES[0], LURES[2], LURES[4]])?
                    .parse()
                    .expect("literal");
                answer.push((tr, a));
            }
            // Taken only once the whole answer is read: a tape that ends here must not lose
            // the question (the final loop answers every one still open).
            let (id, target) = w.resolves.swap_remove(i);
            // Only the configured upstream's addresses are the shell's word to trust.
            if target.host == "pbx.example.net" && target.port == Some(5060) && !target.sips {
                w.upstream_ips
                    .extend(answer.iter().map(|(_, a)| canonical(a.ip())));
            }
            w.proxy.handle_resolved(id, &answer, w.now);
            w.drain(false);
        }
        _ => {
            let ms = u64::from(t.byte()?) * u64::from(t.byte()?) * 4;
            w.now += Duration::from_millis(ms);
            w.proxy.handle_timeout(w.now);
            w.drain(false);
        }
    }
    Some(())
}

fn upstream_ip() -> IpAddr {
    canonical(UPSTREAM.parse::<SocketAddr>().expect("literal").ip())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Programs from a fixed xorshift stream: the fuzz target's invariants on stable, in CI.
    #[test]
    fn random_programs_keep_the_invariants() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..1500 {
            let len = 32 + (next() % 480) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            super::proxy(&data);
        }
    }

    /// Every input the fuzzer ever found (committed under `fuzz/regressions/proxy`).
    #[test]
    fn fuzz_regressions_replay() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/proxy");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries {
            let path = e.expect("a directory entry").path();
            let data = std::fs::read(&path).expect("a regression input");
            super::proxy(&data);
        }
    }
}
