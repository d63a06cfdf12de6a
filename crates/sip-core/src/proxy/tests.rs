//! Proxy scenarios on fake time: a base `Instant` plus durations, never a sleep.
//!
//! [`Sim`] drives one [`Proxy`] as the shell does: every input is followed by a drain of
//! `poll_output`, and time moves only by jumping to `poll_timeout` (quinn's `Pair::step`), so
//! timer B's 32 s take microseconds. The peers are played by hand with the builders below (h2's
//! `frames::` style): a device on the internet behind a NAT, over UDP on the outside listener,
//! and the PBX at 10.0.0.5, the configured upstream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use stg_sip_msg::{Message, Method, StatusCode};

use super::flow_token::FlowTokens;
use super::{Event, Inbound, Output, Proxy, ProxyConfig, ResolveId, ResolveTarget, SendRef};
use crate::net::{ConnId, Flow, Listener, ListenerId, Side, Transport};
use crate::transaction::TransactionConfig;

// === the network ===

/// The device's public address: its NAT's mapping, where answers must go (RFC 3581).
const DEVICE: &str = "203.0.113.7:40000";
/// What the device writes in its Via: its private address.
const DEVICE_SENT_BY: &str = "192.168.1.10:5060";
/// The device's Contact: a private address only its own flow reaches.
const DEVICE_CONTACT: &str = "sip:alice@192.168.1.10:5060";
/// Another client on the internet.
const OTHER: &str = "198.51.100.66:5060";
/// The upstream PBX.
const PBX: &str = "10.0.0.5:5060";
const PBX_CONTACT: &str = "sip:bob@10.0.0.5:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Listener 0: UDP on the outside; listener 1: TCP on the inside.
fn config(upstream: &str, transport: Option<Transport>) -> ProxyConfig {
    let listener = |id, transport, side, local: &str| Listener {
        id: ListenerId(id),
        transport,
        side,
        local: addr(local),
        host: addr(local).ip().to_string(),
        port: 5060,
    };
    ProxyConfig {
        listeners: vec![
            listener(0, Transport::Udp, Side::Outside, "127.0.0.1:5060"),
            listener(1, Transport::Tcp, Side::Inside, "10.0.0.1:5060"),
        ],
        upstream: ResolveTarget {
            host: upstream.into(),
            port: Some(5060),
            transport,
            sips: false,
        },
        inside_networks: vec![crate::net::IpNetwork {
            addr: "10.0.0.0".parse().unwrap(),
            prefix_len: 8,
        }],
        aliases: Vec::new(),
        force_rport: false,
        timer_c: Duration::from_secs(180),
        transactions: TransactionConfig::default(),
        flow_key: [7; 16],
        seed: 1,
        limits: super::ProxyLimits::default(),
        allowed_destinations: Vec::new(),
        registrar: Vec::new(),
        node_id: String::new(),
        push: Default::default(),
        hide_products: true,
        drop_scanners: true,
    }
}

/// The PBX over UDP: the proxy reaches it from the one UDP listener.
fn udp_upstream() -> ProxyConfig {
    config("10.0.0.5", Some(Transport::Udp))
}

/// The PBX over TCP, from the inside listener: two listeners per call.
fn tcp_upstream() -> ProxyConfig {
    config("10.0.0.5", Some(Transport::Tcp))
}

fn outside(remote: &str) -> Inbound {
    Inbound {
        flow: Flow {
            listener: ListenerId(0),
            transport: Transport::Udp,
            remote: addr(remote),
            conn: None,
        },
        side: Side::Outside,
    }
}

fn device() -> Inbound {
    outside(DEVICE)
}

/// The PBX over UDP: it reaches the UDP listener and the shell trusts its address (Inside).
fn pbx_udp() -> Inbound {
    Inbound {
        side: Side::Inside,
        ..outside(PBX)
    }
}

/// The PBX over TCP on the inside listener, on the connection the shell opened to it.
fn pbx_tcp() -> Inbound {
    Inbound {
        flow: Flow {
            listener: ListenerId(1),
            transport: Transport::Tcp,
            remote: addr(PBX),
            conn: Some(ConnId(9)),
        },
        side: Side::Inside,
    }
}

// === Sim ===

/// The one place a real instant is read; every test time is an offset from it.
#[allow(clippy::disallowed_methods)]
fn base_instant() -> Instant {
    Instant::now()
}

/// Everything the proxy has to say after an input (the drain rule).
fn drain(proxy: &mut Proxy) -> Vec<Output> {
    std::iter::from_fn(|| proxy.poll_output()).collect()
}

/// One proxy, a fake clock, and the shell's drain discipline.
struct Sim {
    proxy: Proxy,
    start: Instant,
    now: Instant,
}

impl Sim {
    fn new(config: ProxyConfig) -> Self {
        let start = base_instant();
        Self {
            proxy: Proxy::new(config),
            start,
            now: start,
        }
    }

    fn ms(&self) -> u64 {
        (self.now - self.start).as_millis() as u64
    }

    fn input(&mut self, from: Inbound, bytes: Bytes) -> Vec<Output> {
        self.proxy.handle_input(from, bytes, self.now);
        drain(&mut self.proxy)
    }

    fn send_failed(&mut self, r: SendRef) -> Vec<Output> {
        self.proxy.handle_send_failed(r, self.now);
        drain(&mut self.proxy)
    }

    fn resolved(&mut self, id: ResolveId, result: &[(Transport, SocketAddr)]) -> Vec<Output> {
        self.proxy.handle_resolved(id, result, self.now);
        drain(&mut self.proxy)
    }

    /// Jumps to the next deadline and fires it; `None` when no timer is armed.
    fn step(&mut self) -> Option<Vec<Output>> {
        let at = self.proxy.poll_timeout()?;
        assert!(at >= self.now, "poll_timeout went back in time");
        self.now = at;
        self.proxy.handle_timeout(at);
        Some(drain(&mut self.proxy))
    }

    /// Fires every deadline up to `ms` after the start, then stands there. What the timers
    /// produced, stamped with their instant in ms.
    fn run_until(&mut self, ms: u64) -> Vec<(u64, Output)> {
        let end = self.start + Duration::from_millis(ms);
        let mut log = Vec::new();
        while self.proxy.poll_timeout().is_some_and(|t| t <= end) {
            let outs = self.step().unwrap_or_default();
            log.extend(outs.into_iter().map(|o| (self.ms(), o)));
        }
        self.now = self.now.max(end);
        log
    }

    /// Steps until no timer is armed; bounded, so a timer that re-arms forever fails.
    fn settle(&mut self) -> Vec<(u64, Output)> {
        let mut log = Vec::new();
        for _ in 0..10_000 {
            let Some(outs) = self.step() else {
                return log;
            };
            log.extend(outs.into_iter().map(|o| (self.ms(), o)));
        }
        panic!("timers still armed after 10000 steps");
    }
}

// === reading outputs ===

/// What a batch of outputs transmits, parsed.
fn sent(outs: &[Output]) -> Vec<(Flow, Message)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Transmit { flow, bytes, .. } => Some((
                *flow,
                Message::parse(bytes.clone()).expect("the proxy sends well-formed SIP"),
            )),
            _ => None,
        })
        .collect()
}

/// What a timer log transmits, with the instants.
fn sent_log(log: &[(u64, Output)]) -> Vec<(u64, Flow, Message)> {
    log.iter()
        .flat_map(|(t, o)| {
            sent(std::slice::from_ref(o))
                .into_iter()
                .map(move |(f, m)| (*t, f, m))
        })
        .collect()
}

/// `remote  start-line` per message, for assertion messages.
fn describe<'a>(s: impl IntoIterator<Item = (&'a Flow, &'a Message)>) -> String {
    s.into_iter()
        .map(|(f, m)| format!("{}  {}", f.remote, String::from_utf8_lossy(m.start_line())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one message a batch transmits.
fn only(outs: &[Output]) -> (Flow, Message) {
    let mut s = sent(outs);
    assert_eq!(
        s.len(),
        1,
        "expected one transmit, got:\n{}",
        describe(s.iter().map(|(f, m)| (f, m)))
    );
    s.remove(0)
}

fn nothing_sent(outs: &[Output]) {
    let s = sent(outs);
    assert!(
        s.is_empty(),
        "expected nothing sent, got:\n{}",
        describe(s.iter().map(|(f, m)| (f, m)))
    );
}

fn events(outs: &[Output]) -> Vec<Event> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The one send in `outs` that asked to hear of its failure: where, what, and the ref.
fn tracked_send(outs: &[Output]) -> (Flow, Message, SendRef) {
    outs.iter()
        .find_map(|o| match o {
            Output::Transmit {
                flow,
                bytes,
                on_fail: Some(r),
            } => Some((
                *flow,
                Message::parse(bytes.clone()).expect("well-formed"),
                *r,
            )),
            _ => None,
        })
        .expect("a send with a failure ref")
}

/// The id of the one DNS question in `outs`, whatever the name.
fn resolve_id(outs: &[Output]) -> ResolveId {
    outs.iter()
        .find_map(|o| match o {
            Output::Resolve { id, .. } => Some(*id),
            _ => None,
        })
        .expect("a DNS question")
}

fn code(m: &Message) -> u16 {
    m.status().map_or(0, |s| s.0)
}

fn branch(m: &Message) -> Vec<u8> {
    m.top_via()
        .and_then(|v| v.branch())
        .expect("a branch")
        .to_vec()
}

// === message builders ===

/// A request as a peer writes it; by default the device's, with `rport` (it is behind a NAT).
#[derive(Clone, Debug)]
struct Req {
    method: &'static str,
    uri: String,
    via: String,
    max_forwards: Option<u32>,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    headers: Vec<String>,
}

fn req(method: &'static str, uri: &str) -> Req {
    Req {
        method,
        uri: uri.into(),
        via: format!(
            "SIP/2.0/UDP {DEVICE_SENT_BY};branch=z9hG4bK-dev-{};rport",
            method.to_ascii_lowercase()
        ),
        max_forwards: Some(70),
        from: "<sip:alice@example.com>;tag=dev1".into(),
        to: "<sip:bob@example.com>".into(),
        call_id: "call-1@192.168.1.10".into(),
        cseq: 1,
        headers: Vec::new(),
    }
}

/// The device calls bob.
fn invite() -> Req {
    req("INVITE", "sip:bob@example.com").header(&format!("Contact: <{DEVICE_CONTACT}>"))
}

/// A BYE from the PBX inside the dialog: to the device's Contact, along the route set.
fn pbx_bye(branch: &str, route: &str) -> Req {
    req("BYE", DEVICE_CONTACT)
        .via(&format!("SIP/2.0/TCP 10.0.0.5:5060;branch={branch}"))
        .from("<sip:bob@example.com>;tag=callee")
        .to("<sip:alice@example.com>;tag=dev1")
        .header(&format!("Route: {route}"))
}

impl Req {
    fn via(mut self, via: &str) -> Self {
        self.via = via.into();
        self
    }

    fn branch(self, b: &str) -> Self {
        self.via(&format!("SIP/2.0/UDP {DEVICE_SENT_BY};branch={b};rport"))
    }

    fn uri(mut self, uri: &str) -> Self {
        self.uri = uri.into();
        self
    }

    fn from(mut self, from: &str) -> Self {
        self.from = from.into();
        self
    }

    fn to(mut self, to: &str) -> Self {
        self.to = to.into();
        self
    }

    /// The To tag of an established dialog.
    fn in_dialog(mut self, tag: &str) -> Self {
        self.to = format!("{};tag={tag}", self.to);
        self
    }

    fn call_id(mut self, id: &str) -> Self {
        self.call_id = id.into();
        self
    }

    fn cseq(mut self, n: u32) -> Self {
        self.cseq = n;
        self
    }

    fn max_forwards(mut self, n: u32) -> Self {
        self.max_forwards = Some(n);
        self
    }

    fn header(mut self, h: &str) -> Self {
        self.headers.push(h.into());
        self
    }

    /// The CANCEL for this INVITE (RFC 3261 §9.1): same Request-URI, top Via, From, To,
    /// Call-ID and CSeq number.
    fn cancel(&self) -> Self {
        Self {
            method: "CANCEL",
            headers: Vec::new(),
            ..self.clone()
        }
    }

    /// The ACK for a non-2xx final answer to this INVITE (RFC 3261 §17.1.1.3): same branch,
    /// To from the response.
    fn ack_for(&self, response: &Message) -> Self {
        let to = response.to().expect("To").raw;
        Self {
            method: "ACK",
            to: String::from_utf8_lossy(to).into_owned(),
            headers: Vec::new(),
            ..self.clone()
        }
    }

    /// The headers a real device adds (what makes a request larger than the proxy's own
    /// answer to it, which the amplification rule requires over UDP from outside).
    fn realistic(self) -> Self {
        self.header("Contact: <sip:alice@192.168.1.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:0b8bd3c2-6b7e-4a59-9c9e-1f6c2d1e7a11>\"")
            .header("User-Agent: LinphoneAndroid/5.2.0 (SM-A525F) LinphoneSDK/5.3.0")
            .header("Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, PRACK, UPDATE")
            .header("Supported: replaces, outbound, gruu")
    }

    fn build(&self) -> Bytes {
        let mut s = format!(
            "{} {} SIP/2.0\r\nVia: {}\r\n",
            self.method, self.uri, self.via
        );
        if let Some(n) = self.max_forwards {
            s += &format!("Max-Forwards: {n}\r\n");
        }
        s += &format!(
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            self.from, self.to, self.call_id, self.cseq, self.method
        );
        for h in &self.headers {
            s += h;
            s += "\r\n";
        }
        s += "Content-Length: 0\r\n\r\n";
        Bytes::from(s)
    }
}

/// The PBX's answer to what the proxy forwarded: the same Vias, ours on top, which is what
/// arrives back at the proxy.
fn answer(forwarded: &Message, code: u16) -> Bytes {
    forwarded.response(StatusCode(code), None, Some(b"callee"), None, &[])
}

/// A 200 to a dialog-creating request: Record-Route copied (RFC 3261 §12.1.1), a Contact.
fn answer_2xx(forwarded: &Message) -> Bytes {
    let mut extra: Vec<(&str, &[u8])> = forwarded
        .header_values_by_name(b"Record-Route")
        .map(|v| ("Record-Route", v))
        .collect();
    let contact = format!("<{PBX_CONTACT}>");
    extra.push(("Contact", contact.as_bytes()));
    forwarded.response(StatusCode::OK, None, Some(b"callee"), None, &extra)
}

/// A response written by hand, for strays.
fn raw_response(status_line: &str, vias: &[&str]) -> Bytes {
    let mut s = format!("{status_line}\r\n");
    for v in vias {
        s += &format!("Via: {v}\r\n");
    }
    s += "From: <sip:alice@example.com>;tag=dev1\r\nTo: <sip:bob@example.com>;tag=x\r\n";
    s += "Call-ID: stray@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    Bytes::from(s)
}

fn record_routes(m: &Message) -> Vec<String> {
    m.record_routes()
        .map(|r| String::from_utf8_lossy(r.raw).into_owned())
        .collect()
}

/// The route set a UAC learns from a 2xx: its Record-Route reversed (RFC 3261 §12.1.2).
fn uac_route(response: &Message) -> String {
    let mut rr = record_routes(response);
    rr.reverse();
    rr.join(", ")
}

/// The route set a UAS learns from the request: its Record-Route in order (§12.1.1).
fn uas_route(request: &Message) -> String {
    record_routes(request).join(", ")
}

/// The flow token: the user part of the Record-Route entry that has one.
fn token(forwarded: &Message) -> String {
    forwarded
        .record_routes()
        .find_map(|r| r.uri.as_sip().and_then(|u| u.user))
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .expect("a Record-Route entry with a flow token")
}

/// Sends `inv` from `from` and checks the usual first exchange: a 100 back on the same
/// flow, the INVITE on to the PBX. Returns the INVITE as forwarded.
fn start_call(sim: &mut Sim, from: Inbound, inv: &Req) -> Message {
    let s = sent(&sim.input(from, inv.build()));
    let d = describe(s.iter().map(|(f, m)| (f, m)));
    assert_eq!(s.len(), 2, "expected 100 and INVITE:\n{d}");
    assert_eq!(s[0].0, from.flow, "{d}");
    assert_eq!(s[0].1.status(), Some(StatusCode::TRYING), "{d}");
    assert_eq!(s[1].0.remote, addr(PBX), "{d}");
    assert_eq!(s[1].1.method(), Some(Method::Invite), "{d}");
    s[1].1.clone()
}

/// Whether the proxy has forgotten everything.
fn assert_idle(sim: &Sim) {
    assert_eq!(sim.proxy.transactions_alive(), (0, 0));
    assert!(sim.proxy.is_idle());
}

// === 1. a call from outside ===

#[test]
fn call_from_outside_goes_to_the_upstream_and_back() {
    let mut sim = Sim::new(udp_upstream());
    let fwd = start_call(&mut sim, device(), &invite());
    assert_eq!(fwd.request_uri_bytes(), b"sip:bob@example.com");
    let ours = fwd.top_via().expect("our Via");
    assert_eq!(ours.sent_by(), b"127.0.0.1:5060");
    assert!(branch(&fwd).starts_with(b"z9hG4bK-"));
    assert_eq!(fwd.via_count(), 2);
    assert_eq!(fwd.max_forwards(), Some(69));
    // The device's Via now says where it really is (RFC 3261 §18.2.1, RFC 3581).
    let dev = fwd.vias().nth(1).expect("the device's Via");
    assert_eq!(dev.branch(), Some(&b"z9hG4bK-dev-invite"[..]));
    assert_eq!(dev.received(), Some(addr(DEVICE).ip()));
    assert_eq!(dev.rport(), Some(Some(40000)));
    // One listener both ways: one Record-Route, naming the device's flow in its user part.
    let rr: Vec<_> = fwd.record_routes().collect();
    assert_eq!(rr.len(), 1);
    let u = rr[0].uri.as_sip().expect("a SIP URI");
    assert_eq!(u.host_raw, b"127.0.0.1");
    assert_eq!(u.port, Some(5060));
    assert!(u.lr());
    assert!(u.user.is_some());

    // Responses go back on the device's flow, our Via removed.
    let (flow, ringing) = only(&sim.input(pbx_udp(), answer(&fwd, 180)));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&ringing), 180);
    assert_eq!(ringing.via_count(), 1);
    assert_eq!(branch(&ringing), b"z9hG4bK-dev-invite");
    let (flow, ok) = only(&sim.input(pbx_udp(), answer_2xx(&fwd)));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&ok), 200);
    assert_eq!(ok.via_count(), 1);

    // The ACK for a 2xx is a new transaction the device sends along the route set; the
    // proxy consumes its own Route entry and forwards the ACK statelessly.
    let route = format!("Route: {}", uac_route(&ok));
    let ack = req("ACK", PBX_CONTACT).in_dialog("callee").header(&route);
    let (flow, ack_fwd) = only(&sim.input(device(), ack.build()));
    assert_eq!(flow.remote, addr(PBX));
    assert_eq!(ack_fwd.method(), Some(Method::Ack));
    assert_eq!(ack_fwd.request_uri_bytes(), PBX_CONTACT.as_bytes());
    assert_eq!(ack_fwd.routes().count(), 0);
    assert_eq!(ack_fwd.via_count(), 2);

    let bye = req("BYE", PBX_CONTACT)
        .in_dialog("callee")
        .cseq(2)
        .header(&route);
    let (flow, bye_fwd) = only(&sim.input(device(), bye.build()));
    assert_eq!(flow.remote, addr(PBX));
    assert_eq!(bye_fwd.method(), Some(Method::Bye));
    assert_eq!(bye_fwd.routes().count(), 0);
    assert_eq!(
        bye_fwd.record_routes().count(),
        0,
        "only dialog-creating requests"
    );
    let (flow, bye_ok) = only(&sim.input(pbx_udp(), answer(&bye_fwd, 200)));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&bye_ok), 200);
    assert_eq!(bye_ok.cseq_method(), b"BYE");

    // Everything was answered: no retransmission, and timers L, M, J and K end it all.
    let log = sim.settle();
    assert!(sent_log(&log).is_empty());
    assert_idle(&sim);
}

// === 2. in-dialog requests from the inside ===

#[test]
fn in_dialog_request_from_inside_takes_the_devices_flow() {
    let mut sim = Sim::new(tcp_upstream());
    let fwd = start_call(&mut sim, device(), &invite());
    // Two listeners: two entries (RFC 3261 §16.6 step 4, doubled), the inside one on top
    // for the PBX, the outside one naming the device's flow.
    let rr = record_routes(&fwd);
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(
        rr[0].starts_with("<sip:10.0.0.1:5060;transport=tcp"),
        "{rr:?}"
    );
    assert!(rr[1].contains("@127.0.0.1:5060;transport=udp"), "{rr:?}");
    only(&sim.input(pbx_tcp(), answer_2xx(&fwd)));

    let bye = pbx_bye("z9hG4bK-pbx-bye", &uas_route(&fwd));
    let (flow, bye_fwd) = only(&sim.input(pbx_tcp(), bye.build()));
    // Exactly the flow the INVITE came in on, never the Contact's (private) address.
    assert_eq!(flow, device().flow);
    assert_eq!(bye_fwd.method(), Some(Method::Bye));
    assert_eq!(bye_fwd.request_uri_bytes(), DEVICE_CONTACT.as_bytes());
    assert_eq!(bye_fwd.routes().count(), 0, "both entries are ours");
    assert_eq!(bye_fwd.top_via().expect("Via").sent_by(), b"127.0.0.1:5060");
    // The device's 200 goes back to the PBX over the connection the BYE came on.
    let ok = bye_fwd.response(StatusCode::OK, None, None, None, &[]);
    let (flow, ok) = only(&sim.input(device(), ok));
    assert_eq!(flow, pbx_tcp().flow);
    assert_eq!(code(&ok), 200);
}

#[test]
fn forged_flow_token_is_not_honoured() {
    let mut sim = Sim::new(tcp_upstream());
    let fwd = start_call(&mut sim, device(), &invite());
    let good = token(&fwd);
    // Payload hex: transport (2), listener (4), conn (16), IPv4 (8), port (4), then the MAC.
    // Digit 29 is the last of the address: the token now names the neighbour 203.0.113.8.
    let mut forged = good.clone().into_bytes();
    forged[29] = if forged[29] == b'8' { b'9' } else { b'8' };
    let forged = String::from_utf8(forged).expect("hex");
    // A token under another key (a restarted node, or a guess) names the right flow.
    let other_key = FlowTokens::new([8; 16]).encode(&device().flow);
    for (i, bad) in [forged, other_key].into_iter().enumerate() {
        let route = uas_route(&fwd).replace(&good, &bad);
        let bye = pbx_bye(&format!("z9hG4bK-pbx-bad{i}"), &route);
        let s = sent(&sim.input(pbx_tcp(), bye.build()));
        let d = describe(s.iter().map(|(f, m)| (f, m)));
        assert!(s.iter().all(|(f, _)| f.remote != addr(DEVICE)), "{d}");
        // It goes by the Request-URI instead: the device's private address.
        assert!(
            s.iter()
                .all(|(f, _)| f.remote == addr("192.168.1.10:5060") || f.remote == addr(PBX)),
            "{d}"
        );
    }
}

// === 3. the outside never chooses ===

#[test]
fn outside_cannot_choose_the_destination() {
    let mut sim = Sim::new(udp_upstream());
    let inv = invite()
        .uri("sip:x@10.8.8.8")
        .header("Route: <sip:10.9.9.9;lr>");
    let fwd = start_call(&mut sim, device(), &inv);
    // The foreign Route and the Request-URI are passed on, for the PBX to judge.
    assert_eq!(fwd.request_uri_bytes(), b"sip:x@10.8.8.8");
    let routes: Vec<_> = fwd.routes().map(|r| r.raw.to_vec()).collect();
    assert_eq!(routes, [b"<sip:10.9.9.9;lr>".to_vec()]);
}

#[test]
fn outside_cannot_borrow_another_devices_flow_token() {
    let mut sim = Sim::new(udp_upstream());
    let fwd = start_call(&mut sim, device(), &invite());
    // Another client replays the device's (valid) Record-Route as its Route.
    let route = format!("Route: {}", uas_route(&fwd));
    let inv = invite()
        .branch("z9hG4bK-other")
        .call_id("call-2@other")
        .uri(DEVICE_CONTACT)
        .header(&route);
    let fwd2 = start_call(&mut sim, outside(OTHER), &inv);
    assert_eq!(fwd2.routes().count(), 0, "our own entry is consumed");
    // The stateless path too: an ACK goes to the PBX.
    let ack = req("ACK", DEVICE_CONTACT)
        .branch("z9hG4bK-other-ack")
        .call_id("call-2@other")
        .in_dialog("x")
        .header(&route);
    let (flow, _) = only(&sim.input(outside(OTHER), ack.build()));
    assert_eq!(flow.remote, addr(PBX));
}

// === 4, 5. timers B and C ===

#[test]
fn timer_b_ends_an_unanswered_invite_with_one_408() {
    let mut sim = Sim::new(udp_upstream());
    let inv = invite();
    let fwd = start_call(&mut sim, device(), &inv);
    let log = sent_log(&sim.run_until(32_000));
    // Timer A doubles from T1 with no cap (RFC 3261 §17.1.1.2); the same bytes each time.
    let resent: Vec<u64> = log
        .iter()
        .filter(|(_, f, _)| f.remote == addr(PBX))
        .map(|(t, _, m)| {
            assert_eq!(m.raw(), fwd.raw());
            *t
        })
        .collect();
    assert_eq!(resent, [500, 1500, 3500, 7500, 15500, 31500]);
    let answers: Vec<(u64, u16)> = log
        .iter()
        .filter(|(_, f, _)| *f == device().flow)
        .map(|(t, _, m)| (*t, code(m)))
        .collect();
    assert_eq!(answers, [(32_000, 408)]);
    let (_, _, timeout) = log.last().expect("the 408");
    // The device ACKs the 408; after that nothing more is sent and everything ends.
    nothing_sent(&sim.input(device(), inv.ack_for(timeout).build()));
    assert!(sent_log(&sim.settle()).is_empty());
    assert_idle(&sim);
}

/// A PBX that says 100 and then nothing at all, with timer C at 10 s.
fn stuck_after_100() -> (Sim, Req, Message) {
    let mut cfg = udp_upstream();
    cfg.timer_c = Duration::from_secs(10);
    let mut sim = Sim::new(cfg);
    let inv = invite();
    let fwd = start_call(&mut sim, device(), &inv);
    // The 100 stops timer A (Proceeding) and goes no further: it is hop by hop.
    nothing_sent(&sim.input(pbx_udp(), answer(&fwd, 100)));
    (sim, inv, fwd)
}

#[test]
fn timer_c_cancels_a_branch_stuck_after_100() {
    let (mut sim, inv, fwd) = stuck_after_100();
    let log = sent_log(&sim.run_until(10_000));
    let d = describe(log.iter().map(|(_, f, m)| (f, m)));
    assert_eq!(log.len(), 2, "{d}");
    // RFC 3261 §16.8: CANCEL the branch (in the INVITE's transaction, §9.1) and answer the
    // caller as if the branch had said 408.
    let (t, _, cancel) = log
        .iter()
        .find(|(_, f, _)| f.remote == addr(PBX))
        .expect("a CANCEL");
    assert_eq!(*t, 10_000);
    assert_eq!(cancel.method(), Some(Method::Cancel));
    assert_eq!(branch(cancel), branch(&fwd));
    let (t, _, timeout) = log
        .iter()
        .find(|(_, f, _)| *f == device().flow)
        .expect("a 408");
    assert_eq!((*t, code(timeout)), (10_000, 408));
    nothing_sent(&sim.input(device(), inv.ack_for(timeout).build()));
    // The PBX completes both transactions; the proxy ACKs the 487 itself, and the device,
    // already answered, hears nothing more.
    nothing_sent(&sim.input(pbx_udp(), answer(cancel, 200)));
    let (flow, ack) = only(&sim.input(pbx_udp(), answer(&fwd, 487)));
    assert_eq!(flow.remote, addr(PBX));
    assert_eq!(ack.method(), Some(Method::Ack));
    assert_eq!(branch(&ack), branch(&fwd));
    assert!(sent_log(&sim.settle()).is_empty());
    assert_idle(&sim);
}

#[test]
fn timer_c_is_not_reset_by_100() {
    let mut cfg = udp_upstream();
    cfg.timer_c = Duration::from_secs(10);
    let mut sim = Sim::new(cfg);
    let fwd = start_call(&mut sim, device(), &invite());
    sim.run_until(4_000);
    nothing_sent(&sim.input(pbx_udp(), answer(&fwd, 100)));
    // Timer C was set when the INVITE left, at 0; a 100 says nothing about the callee.
    let log = sent_log(&sim.run_until(10_000));
    assert!(
        log.iter()
            .any(|(t, _, m)| *t == 10_000 && m.method() == Some(Method::Cancel)),
        "no CANCEL at 10 s:\n{}",
        describe(log.iter().map(|(_, f, m)| (f, m)))
    );
}

#[test]
fn cancelled_branch_without_final_response_is_given_up() {
    let (mut sim, inv, _) = stuck_after_100();
    let log = sent_log(&sim.run_until(10_000));
    let (_, _, timeout) = log
        .iter()
        .find(|(_, f, _)| *f == device().flow)
        .expect("a 408");
    nothing_sent(&sim.input(device(), inv.ack_for(timeout).build()));
    // The PBX never answers the CANCEL nor the INVITE (it died). After 64*T1 the proxy must
    // consider the INVITE cancelled and forget it, or the context leaks and drain never ends.
    sim.settle();
    assert_idle(&sim);
}

// === 6. CANCEL ===

#[test]
fn cancel_after_180_is_forwarded_and_the_487_comes_back() {
    let mut sim = Sim::new(udp_upstream());
    let inv = invite();
    let fwd = start_call(&mut sim, device(), &inv);
    only(&sim.input(pbx_udp(), answer(&fwd, 180)));

    let s = sent(&sim.input(device(), inv.cancel().build()));
    let d = describe(s.iter().map(|(f, m)| (f, m)));
    assert_eq!(s.len(), 2, "{d}");
    // The CANCEL is answered here, hop by hop (RFC 3261 §16.10)...
    let (_, ok) = s.iter().find(|(f, _)| *f == device().flow).expect("a 200");
    assert_eq!(code(ok), 200);
    assert_eq!(ok.cseq_method(), b"CANCEL");
    // ...and the proxy sends its own, in the forwarded INVITE's transaction (§9.1).
    let (_, cancel) = s
        .iter()
        .find(|(f, _)| f.remote == addr(PBX))
        .expect("a CANCEL");
    assert_eq!(cancel.method(), Some(Method::Cancel));
    assert_eq!(branch(cancel), branch(&fwd));
    assert_eq!(cancel.request_uri_bytes(), fwd.request_uri_bytes());

    nothing_sent(&sim.input(pbx_udp(), answer(cancel, 200)));
    let s = sent(&sim.input(pbx_udp(), answer(&fwd, 487)));
    let d = describe(s.iter().map(|(f, m)| (f, m)));
    assert_eq!(s.len(), 2, "{d}");
    // The proxy ACKs the 487 itself (§17.1.1.3), with the INVITE's branch and the To tag.
    let (_, ack) = s
        .iter()
        .find(|(f, _)| f.remote == addr(PBX))
        .expect("an ACK");
    assert_eq!(ack.method(), Some(Method::Ack));
    assert_eq!(branch(ack), branch(&fwd));
    assert_eq!(ack.to_tag(), Some(&b"callee"[..]));
    let (_, terminated) = s.iter().find(|(f, _)| *f == device().flow).expect("a 487");
    assert_eq!(code(terminated), 487);
    assert_eq!(terminated.via_count(), 1);

    nothing_sent(&sim.input(device(), inv.ack_for(terminated).build()));
    assert!(sent_log(&sim.settle()).is_empty());
    assert_idle(&sim);
}

#[test]
fn cancel_before_any_provisional_waits_for_one() {
    let mut sim = Sim::new(udp_upstream());
    let inv = invite();
    let fwd = start_call(&mut sim, device(), &inv);
    // RFC 3261 §9.1: no CANCEL before a provisional response; the device still gets its 200.
    let (flow, ok) = only(&sim.input(device(), inv.cancel().build()));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&ok), 200);
    let s = sent(&sim.input(pbx_udp(), answer(&fwd, 180)));
    let cancels: Vec<_> = s
        .iter()
        .filter(|(f, m)| f.remote == addr(PBX) && m.method() == Some(Method::Cancel))
        .collect();
    assert_eq!(
        cancels.len(),
        1,
        "{}",
        describe(s.iter().map(|(f, m)| (f, m)))
    );
    assert_eq!(branch(&cancels[0].1), branch(&fwd));
}

#[test]
fn cancel_from_another_address_cancels_nothing() {
    // (Answered statelessly, so its 481 must not be larger than the CANCEL: a CANCEL with
    // a phone's headers.)
    let mut sim = Sim::new(udp_upstream());
    let inv = invite();
    let fwd = start_call(&mut sim, device(), &inv);
    only(&sim.input(pbx_udp(), answer(&fwd, 180)));
    // Someone who learnt the branch: the source address is part of the key (`server_key`).
    let (flow, resp) = only(&sim.input(outside(OTHER), inv.cancel().realistic().build()));
    assert_eq!(flow.remote, addr(OTHER));
    assert_eq!(code(&resp), 481);
}

// === 7. request checks (RFC 3261 §16.3) and node-local requests ===

/// Sends `r` from the device to a fresh proxy; the one response it gets, on the device's flow.
fn answered_here(r: &Req) -> Message {
    let mut sim = Sim::new(udp_upstream());
    let (flow, resp) = only(&sim.input(device(), r.clone().realistic().build()));
    assert_eq!(flow, device().flow);
    assert_eq!(resp.via_count(), 1);
    resp
}

#[test]
fn max_forwards_zero_gets_483() {
    assert_eq!(code(&answered_here(&invite().max_forwards(0))), 483);
}

#[test]
fn unsupported_proxy_require_gets_420() {
    let resp = answered_here(&invite().header("Proxy-Require: foo"));
    assert_eq!(code(&resp), 420);
    let unsupported: Vec<_> = resp.header_values_by_name(b"Unsupported").collect();
    assert_eq!(unsupported, [&b"foo"[..]]);
}

#[test]
fn unknown_uri_scheme_gets_416_but_tel_is_forwarded() {
    assert_eq!(code(&answered_here(&invite().uri("nobody:opaque"))), 416);
    let mut sim = Sim::new(udp_upstream());
    let fwd = start_call(&mut sim, device(), &invite().uri("tel:+15551234567"));
    assert_eq!(fwd.request_uri_bytes(), b"tel:+15551234567");
}

#[test]
fn options_to_the_node_is_answered_here() {
    // Health checks: no user part, the node's own address.
    let resp = answered_here(&req("OPTIONS", "sip:127.0.0.1:5060"));
    assert_eq!(code(&resp), 200);
    let allow = resp
        .header_values_by_name(b"Allow")
        .next()
        .expect("an Allow");
    assert!(allow.starts_with(b"INVITE, ACK, CANCEL, BYE, OPTIONS"));
}

#[test]
fn options_to_a_user_is_forwarded() {
    let mut sim = Sim::new(udp_upstream());
    let (flow, fwd) = only(&sim.input(device(), req("OPTIONS", "sip:bob@127.0.0.1").build()));
    assert_eq!(flow.remote, addr(PBX));
    assert_eq!(fwd.method(), Some(Method::Options));
    assert_eq!(fwd.record_routes().count(), 0);
}

#[test]
fn request_that_comes_back_gets_482() {
    let mut sim = Sim::new(udp_upstream());
    let fwd = start_call(&mut sim, device(), &invite());
    // A misrouting peer sends our own INVITE back: our Via with the same loop hash
    // (RFC 3261 §16.3 step 4).
    let (flow, resp) = only(&sim.input(outside(PBX), fwd.raw().clone()));
    assert_eq!(flow.remote, addr(PBX));
    assert_eq!(code(&resp), 482);
}

#[test]
fn malformed_request_gets_400_and_is_counted() {
    let mut sim = Sim::new(udp_upstream());
    let bad = invite().build();
    let bad = String::from_utf8_lossy(&bad).replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    let outs = sim.input(device(), Bytes::from(bad));
    let (flow, resp) = only(&outs);
    assert_eq!(flow, device().flow);
    assert_eq!(code(&resp), 400);
    let reason = "cseq_method_mismatch";
    assert!(matches!(
        &events(&outs)[..],
        [Event::Malformed { reason: r, answered: true, .. }] if *r == reason
    ));
    assert_eq!(sim.proxy.stats().parse_failures.get(reason), Some(&1));
}

#[test]
fn malformed_response_is_dropped_silently() {
    let mut sim = Sim::new(udp_upstream());
    let bad = raw_response(
        "SIP/2.0 200 OK",
        &["SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x"],
    );
    let bad = String::from_utf8_lossy(&bad).replace("Call-ID: stray@x\r\n", "");
    let outs = sim.input(pbx_udp(), Bytes::from(bad));
    nothing_sent(&outs);
    assert!(matches!(
        &events(&outs)[..],
        [Event::Malformed {
            answered: false,
            ..
        }]
    ));
    assert_eq!(
        sim.proxy.stats().parse_failures.get("missing_header"),
        Some(&1)
    );
}

// === 8. responses ===

#[test]
fn response_whose_top_via_is_not_ours_is_dropped() {
    let mut sim = Sim::new(udp_upstream());
    let resp = raw_response(
        "SIP/2.0 200 OK",
        &["SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bK-x"],
    );
    let outs = sim.input(pbx_udp(), resp);
    nothing_sent(&outs);
    assert!(matches!(
        &events(&outs)[..],
        [Event::Dropped {
            reason: "via_not_ours",
            ..
        }]
    ));
    assert_eq!(sim.proxy.stats().dropped.get("via_not_ours"), Some(&1));
}

/// Every response that matches no transaction is dropped after one parse, whatever its
/// next Via names: the device's own address, an inside host (written IPv4-mapped to slip
/// past the inside networks), loopback (a Redis), a broadcast address.
#[test]
fn stray_response_is_dropped_whatever_its_vias_say() {
    let mut sim = Sim::new(udp_upstream());
    let nexts = [
        "SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK-up;received=203.0.113.7;rport=40000",
        "SIP/2.0/TCP [::ffff:10.0.0.6]:5060;branch=z9hG4bK-up",
        "SIP/2.0/TCP 127.0.0.1:6379;branch=z9hG4bK-up",
        "SIP/2.0/UDP 255.255.255.255:5060;branch=z9hG4bK-up",
        "SIP/2.0/TLS 203.0.113.7:40000;branch=z9hG4bK-up",
    ];
    for (i, next) in nexts.iter().enumerate() {
        for from in [pbx_udp(), outside(OTHER)] {
            let ours = format!("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-stray{i}");
            for status in ["SIP/2.0 180 Ringing", "SIP/2.0 200 OK"] {
                let outs = sim.input(from, raw_response(status, &[ours.as_str(), next]));
                nothing_sent(&outs);
                assert!(matches!(
                    &events(&outs)[..],
                    [Event::Dropped {
                        reason: "stray_response",
                        ..
                    }]
                ));
            }
        }
    }
    assert_eq!(sim.proxy.stats().dropped.get("stray_response"), Some(&20));
    assert_idle(&sim);
}

/// One response with thousands of Vias naming stg costs one parse and a drop, not a pass
/// through the proxy per Via.
#[test]
fn looping_response_is_one_parse_then_a_drop() {
    let mut sim = Sim::new(udp_upstream());
    // One Via header with 2,800 values (a header per Via would hit the header-count limit).
    let vias: Vec<String> = (0..2800)
        .map(|i| format!("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-l{i}"))
        .collect();
    let joined = vias.join(",");
    let resp = raw_response("SIP/2.0 200 OK", &[joined.as_str()]);
    assert!(resp.len() > 60_000);
    nothing_sent(&sim.input(outside(OTHER), resp));
    assert_eq!(sim.proxy.stats().dropped.get("stray_response"), Some(&1));
    assert_eq!(sim.proxy.stats().responses_in.get("2xx"), Some(&1));
}

/// RFC 6026: a 2xx retransmitted after the client transaction has ended still reaches the
/// caller, on exactly the flow its request came from (the branch carries it under a MAC),
/// whatever the response's other Vias say. A branch stg did not mint gets nowhere.
#[test]
fn late_2xx_goes_back_on_the_flow_its_branch_names() {
    let mut sim = Sim::new(udp_upstream());
    let fwd = start_call(&mut sim, device(), &invite());
    let ok = answer_2xx(&fwd);
    only(&sim.input(pbx_udp(), ok.clone()));
    sim.settle();
    assert_idle(&sim);
    let (flow, late) = only(&sim.input(pbx_udp(), ok.clone()));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&late), 200);
    assert_eq!(late.via_count(), 1);
    // The same 2xx with its second Via pointed at a victim still goes to the device only.
    let text = String::from_utf8_lossy(&ok).into_owned();
    let dev_via = String::from_utf8_lossy(fwd.vias().nth(1).unwrap().raw).into_owned();
    let redirected = text.replace(&dev_via, "SIP/2.0/TCP 127.0.0.1:6379;branch=z9hG4bK-x");
    assert_ne!(redirected, text);
    let (flow, _) = only(&sim.input(pbx_udp(), Bytes::from(redirected.clone())));
    assert_eq!(flow, device().flow);
    // From anywhere but where the INVITE went, it is a stray.
    nothing_sent(&sim.input(outside(OTHER), Bytes::from(redirected.clone())));
    // A branch changed in one digit names nothing.
    let b = String::from_utf8(branch(&fwd)).unwrap();
    let mut forged_b = b.clone().into_bytes();
    let last = forged_b.len() - 1;
    forged_b[last] = if forged_b[last] == b'0' { b'1' } else { b'0' };
    let forged = text.replace(&b, std::str::from_utf8(&forged_b).unwrap());
    nothing_sent(&sim.input(pbx_udp(), Bytes::from(forged)));
    // Only 2xx: a late non-2xx is a stray.
    let late_486 = text.replace("SIP/2.0 200 OK", "SIP/2.0 486 Busy Here");
    nothing_sent(&sim.input(pbx_udp(), Bytes::from(late_486)));
    // Once its callee can no longer be retransmitting it (timer C plus 2 x 64*T1), it is
    // a stray too.
    sim.run_until(sim.ms() + 250_000);
    nothing_sent(&sim.input(pbx_udp(), ok));
    assert_eq!(sim.proxy.stats().dropped.get("stray_response"), Some(&4));
}

// === 9. retransmissions ===

#[test]
fn invite_retransmission_is_absorbed_and_the_100_resent() {
    let mut sim = Sim::new(udp_upstream());
    let inv = invite();
    start_call(&mut sim, device(), &inv);
    let (flow, trying) = only(&sim.input(device(), inv.build()));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&trying), 100);
}

#[test]
fn retransmitted_2xx_is_forwarded_again() {
    let mut sim = Sim::new(udp_upstream());
    let fwd = start_call(&mut sim, device(), &invite());
    only(&sim.input(pbx_udp(), answer_2xx(&fwd)));
    // The first 200 was lost on the way to the device: the UAS retransmits it until the ACK
    // comes (RFC 3261 §13.3.1.4), and the proxy must pass each copy on (RFC 6026 §7.2, §8.4).
    sim.run_until(500);
    let (flow, ok) = only(&sim.input(pbx_udp(), answer_2xx(&fwd)));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&ok), 200);
}

#[test]
fn same_branch_from_another_address_is_another_transaction() {
    let mut sim = Sim::new(udp_upstream());
    let inv = invite();
    let first = start_call(&mut sim, device(), &inv);
    // Byte-identical INVITE from someone else: not a retransmission (`server_key` includes
    // the source), so it cannot ride on (or cancel) the device's transaction.
    let second = start_call(&mut sim, outside(OTHER), &inv);
    assert_ne!(branch(&first), branch(&second));
    assert_eq!(sim.proxy.transactions_alive(), (2, 2));
}

// === 10. transport failure ===

#[test]
fn send_failure_towards_a_tcp_upstream_gives_503() {
    let mut sim = Sim::new(tcp_upstream());
    let inv = invite();
    let outs = sim.input(device(), inv.build());
    let (flow, _, on_fail) = tracked_send(&outs);
    // Any connection to the PBX, opened if needed, from the inside listener.
    assert_eq!(flow.listener, ListenerId(1));
    assert_eq!(flow.transport, Transport::Tcp);
    assert_eq!(flow.remote, addr(PBX));
    assert_eq!(flow.conn, None);
    // RFC 3261 §16.9: a transport error counts as a 503 from that branch.
    let (flow, resp) = only(&sim.send_failed(on_fail));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&resp), 503);
    nothing_sent(&sim.input(device(), inv.ack_for(&resp).build()));
    assert!(sent_log(&sim.settle()).is_empty());
    assert_idle(&sim);
}

// === 11. drain ===

#[test]
fn drain_refuses_new_requests_and_fails_health_checks() {
    let mut sim = Sim::new(udp_upstream());
    sim.proxy.start_drain();
    let inv = invite().realistic();
    let (flow, resp) = only(&sim.input(device(), inv.build()));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&resp), 503);
    assert_eq!(
        resp.header_values_by_name(b"Retry-After").next(),
        Some(&b"5"[..])
    );
    // The balancer's health check sees the node going away.
    let health = req("OPTIONS", "sip:127.0.0.1:5060").realistic();
    let (_, health) = only(&sim.input(device(), health.build()));
    assert_eq!(code(&health), 503);
    nothing_sent(&sim.input(device(), inv.ack_for(&resp).build()));
    sim.settle();
    assert_idle(&sim);
}

// === 12. DNS ===

fn resolve_request(outs: &[Output]) -> ResolveId {
    let targets: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Resolve { id, target } => Some((*id, target.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(targets.len(), 1, "{targets:?}");
    let (id, t) = &targets[0];
    assert_eq!(t.host, "pbx.example.net");
    assert_eq!(t.port, Some(5060));
    assert_eq!(t.transport, Some(Transport::Udp));
    assert!(!t.sips);
    *id
}

#[test]
fn upstream_name_is_resolved_by_the_shell() {
    let mut sim = Sim::new(config("pbx.example.net", Some(Transport::Udp)));
    let inv = invite();
    let outs = sim.input(device(), inv.build());
    let (flow, trying) = only(&outs);
    assert_eq!((flow, code(&trying)), (device().flow, 100));
    let id = resolve_request(&outs);
    let (flow, fwd) = only(&sim.resolved(id, &[(Transport::Udp, addr(PBX))]));
    assert_eq!(flow.remote, addr(PBX));
    assert_eq!(fwd.method(), Some(Method::Invite));
    // An answer for an id already used is ignored.
    nothing_sent(&sim.resolved(id, &[(Transport::Udp, addr(PBX))]));
}

#[test]
fn upstream_name_that_resolves_to_nothing_usable_gives_503() {
    let mut sim = Sim::new(config("pbx.example.net", Some(Transport::Udp)));
    // No address at all, or only one the proxy never sends to (RFC 4475 §3.3.10).
    let broadcast = [(Transport::Udp, addr("255.255.255.255:5060"))];
    for (i, result) in [&[][..], &broadcast[..]].into_iter().enumerate() {
        let inv = invite()
            .branch(&format!("z9hG4bK-dns{i}"))
            .call_id(&format!("dns-{i}"));
        let id = resolve_request(&sim.input(device(), inv.build()));
        let (flow, resp) = only(&sim.resolved(id, result));
        assert_eq!(flow, device().flow);
        assert_eq!(code(&resp), 503);
    }
}

/// RFC 3261 §16.7 step 3: a response left with no Via once ours is removed was meant for
/// stg and is never forwarded; a final of that kind ends the branch as a 502.
#[test]
fn response_with_only_our_via_is_not_forwarded() {
    let mut sim = Sim::new(udp_upstream());
    let inv = invite();
    let fwd = start_call(&mut sim, device(), &inv);
    let ours = fwd.top_via().unwrap();
    let our_via = String::from_utf8_lossy(ours.raw).into_owned();
    let broken = raw_response("SIP/2.0 487 Request Terminated", &[our_via.as_str()]);
    let outs = sim.input(pbx_udp(), broken);
    let to_device: Vec<u16> = sent(&outs)
        .iter()
        .filter(|(f, _)| *f == device().flow)
        .map(|(_, m)| code(m))
        .collect();
    assert_eq!(
        to_device,
        [502],
        "{}",
        describe(sent(&outs).iter().map(|(f, m)| (f, m)))
    );
    assert_eq!(sim.proxy.stats().dropped.get("no_next_via"), Some(&1));
}

/// RFC 3261 §16.4: a strict router before stg put stg's Record-Route URI in the
/// Request-URI and the real target last in Route; stg restores it and still uses the
/// device's flow named by the token.
#[test]
fn strict_router_before_us_is_undone() {
    let mut sim = Sim::new(tcp_upstream());
    let fwd = start_call(&mut sim, device(), &invite());
    only(&sim.input(pbx_tcp(), answer_2xx(&fwd)));
    let ours = record_routes(&fwd)
        .into_iter()
        .find(|r| r.contains('@'))
        .expect("the outside entry with the token");
    let ruri = ours
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string();
    let bye = req("BYE", &ruri)
        .via("SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK-strict")
        .from("<sip:bob@example.com>;tag=callee")
        .to("<sip:alice@example.com>;tag=dev1")
        .header(&format!("Route: <{DEVICE_CONTACT}>"));
    let (flow, out) = only(&sim.input(pbx_tcp(), bye.build()));
    assert_eq!(flow, device().flow);
    assert_eq!(out.request_uri_bytes(), DEVICE_CONTACT.as_bytes());
    assert_eq!(
        out.routes().count(),
        0,
        "the last Route became the Request-URI"
    );
    let _ = token(&fwd);
}

// === 13. hardening: bounded work, no reflection, no fingerprint, destination filter ===

/// The proxy's own rejections are sent once per request received, with no transaction:
/// Timer G never retransmits them (a spoofed source would get 11 copies of each).
#[test]
fn rejections_are_sent_once_and_keep_no_state() {
    let mut sim = Sim::new(udp_upstream());
    let inv = invite().max_forwards(0).realistic();
    let (flow, resp) = only(&sim.input(device(), inv.build()));
    assert_eq!((flow, code(&resp)), (device().flow, 483));
    assert_eq!(sim.proxy.transactions_alive(), (0, 0));
    assert!(sent_log(&sim.settle()).is_empty());
    // A retransmission gets the same answer again, with the same To-tag (RFC 3261 §8.2.6.2).
    let (_, again) = only(&sim.input(device(), inv.build()));
    assert_eq!(again.to_tag(), resp.to_tag());
    assert_eq!(sim.proxy.stats().responses_out.get("4xx"), Some(&2));
}

/// Over UDP from outside the source may be forged: stg never sends more bytes for its own
/// answer than the request carried. Over a stream, or from the inside, it answers anyway.
#[test]
fn own_answers_never_amplify_towards_a_spoofable_source() {
    let mut sim = Sim::new(udp_upstream());
    let small = [
        invite().max_forwards(0),
        invite().uri("nobody:opaque"),
        invite().header("Proxy-Require: foo"),
        req("OPTIONS", "sip:127.0.0.1:5060"),
    ];
    for (i, r) in small.iter().enumerate() {
        let r = r.clone().call_id(&format!("amp-{i}"));
        let bytes = r.build();
        let outs = sim.input(device(), bytes.clone());
        let sent_bytes: usize = outs
            .iter()
            .map(|o| match o {
                Output::Transmit { bytes, .. } => bytes.len(),
                _ => 0,
            })
            .sum();
        assert!(
            sent_bytes <= bytes.len(),
            "{i}: {sent_bytes} bytes out for {} in",
            bytes.len()
        );
    }
    assert!(sim.proxy.stats().dropped.get("amplification") >= Some(&1));
    // The inside is not spoofable from the internet: it gets its answer.
    let (_, resp) = only(&sim.input(pbx_udp(), small[0].build()));
    assert_eq!(code(&resp), 483);
    // Unparsable requests follow the same rule: a minimal one gets nothing back.
    let bad = "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK-1\r\nCSeq: x\r\n\r\n";
    nothing_sent(&sim.input(device(), Bytes::from(bad)));
}

fn message(i: usize) -> Req {
    req("MESSAGE", "sip:bob@example.com")
        .call_id(&format!("msg-{i}"))
        .branch(&format!("z9hG4bK-msg-{i}"))
        .realistic()
}

/// Live server transactions are budgeted per outside source and in total; a request over
/// budget gets 503 with Retry-After and costs no state; budgets come back as transactions
/// end.
#[test]
fn transactions_are_capped_per_source_and_in_total() {
    let mut cfg = udp_upstream();
    cfg.limits.max_transactions_per_source = 3;
    cfg.limits.max_transactions = 5;
    let mut sim = Sim::new(cfg);
    for i in 0..3 {
        let (flow, fwd) = only(&sim.input(device(), message(i).build()));
        assert_eq!(
            (flow.remote, fwd.method()),
            (addr(PBX), Some(Method::Message))
        );
    }
    let (flow, busy) = only(&sim.input(device(), message(3).build()));
    assert_eq!((flow, code(&busy)), (device().flow, 503));
    assert!(busy.header_values_by_name(b"Retry-After").next().is_some());
    assert_eq!(sim.proxy.transactions_alive(), (3, 3));
    // Another address has its own budget, up to the global cap.
    for i in 4..6 {
        let (flow, _) = only(&sim.input(outside(OTHER), message(i).build()));
        assert_eq!(flow.remote, addr(PBX));
    }
    let (_, busy) = only(&sim.input(outside(OTHER), message(6).build()));
    assert_eq!(code(&busy), 503);
    let refused = &sim.proxy.stats().refused;
    assert_eq!(refused.get("transactions_per_source"), Some(&1));
    assert_eq!(refused.get("transactions"), Some(&1));
    // IPv6: one /64 is one source.
    // Timer F ends them all (408s), timer J frees the budgets.
    sim.settle();
    assert_idle(&sim);
    let (flow, _) = only(&sim.input(device(), message(7).build()));
    assert_eq!(flow.remote, addr(PBX));
}

/// The bytes held for requests awaiting an answer are capped too: a few big requests hit it
/// long before the count does.
#[test]
fn transaction_bytes_are_capped() {
    let mut cfg = udp_upstream();
    cfg.limits.max_transaction_bytes = 10_000;
    let mut sim = Sim::new(cfg);
    let big = |i: usize| message(i).header(&format!("X-Pad: {}", "p".repeat(4000)));
    for i in 0..2 {
        let (flow, _) = only(&sim.input(device(), big(i).build()));
        assert_eq!(flow.remote, addr(PBX));
    }
    let (flow, busy) = only(&sim.input(device(), big(2).build()));
    assert_eq!((flow, code(&busy)), (device().flow, 503));
    assert_eq!(sim.proxy.stats().refused.get("transaction_bytes"), Some(&1));
    // Answered, they free their bytes.
    sim.settle();
    let (flow, _) = only(&sim.input(device(), big(3).build()));
    assert_eq!(flow.remote, addr(PBX));
}

#[test]
fn ipv6_sources_share_a_budget_per_64() {
    let mut cfg = udp_upstream();
    cfg.limits.max_transactions_per_source = 2;
    let mut sim = Sim::new(cfg);
    let a = outside("[2001:db8:1:2::a]:5060");
    let b = outside("[2001:db8:1:2::b]:5060");
    let c = outside("[2001:db8:1:3::c]:5060");
    only(&sim.input(a, message(0).build()));
    only(&sim.input(b, message(1).build()));
    let (flow, busy) = only(&sim.input(b, message(2).build()));
    assert_eq!((flow, code(&busy)), (b.flow, 503));
    let (flow, _) = only(&sim.input(c, message(3).build()));
    assert_eq!(flow.remote, addr(PBX));
}

/// Tags and branches come from a keyed PRF: no product name, no visible counter.
#[test]
fn tags_and_branches_give_nothing_away() {
    let mut sim = Sim::new(udp_upstream());
    let mut tags = Vec::new();
    for i in 0..2 {
        let r = req("OPTIONS", "sip:127.0.0.1:5060")
            .call_id(&format!("tag-{i}"))
            .realistic();
        let (_, resp) = only(&sim.input(device(), r.build()));
        tags.push(resp.to_tag().expect("a tag").to_vec());
    }
    let mut branches = Vec::new();
    for i in 0..2 {
        let (_, fwd) = only(&sim.input(device(), message(i).build()));
        branches.push(String::from_utf8(branch(&fwd)).unwrap());
    }
    for t in &tags {
        assert_eq!(t.len(), 16);
        assert!(t.iter().all(u8::is_ascii_hexdigit));
        assert!(!String::from_utf8_lossy(t).contains("stg"));
    }
    let n = |t: &[u8]| u64::from_str_radix(std::str::from_utf8(t).unwrap(), 16).unwrap();
    assert!(n(&tags[0]).abs_diff(n(&tags[1])) > 1 << 20, "{tags:?}");
    // Past the cookie and the loop hash, the branches share no prefix worth the name.
    let tail = |b: &str| b[25..].to_owned();
    let common = tail(&branches[0])
        .chars()
        .zip(tail(&branches[1]).chars())
        .take_while(|(x, y)| x == y)
        .count();
    assert!(common < 6, "{branches:?}");
}

fn pbx_request(uri: &str, i: usize) -> Req {
    req("MESSAGE", uri)
        .via(&format!("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-pbx-{i}"))
        .call_id(&format!("pbx-{i}"))
}

/// A request whose destination a message chose (routing from the inside) never reaches
/// loopback, link-local or the node itself unless the configuration names them; the PBX
/// gets a 403.
#[test]
fn inside_routing_has_a_destination_filter() {
    let mut sim = Sim::new(udp_upstream());
    let forbidden = [
        "sip:x@127.0.0.1:6379;transport=tcp",
        "sip:x@[::ffff:127.0.0.1]:6379",
        "sip:x@[::1]:5060",
        "sip:x@169.254.169.254:80;transport=tcp",
        "sip:x@10.0.0.1:5061",
    ];
    for (i, uri) in forbidden.iter().enumerate() {
        let (flow, resp) = only(&sim.input(pbx_udp(), pbx_request(uri, i).build()));
        assert_eq!((flow, code(&resp)), (pbx_udp().flow, 403), "{uri}");
    }
    assert_eq!(sim.proxy.stats().refused.get("destination"), Some(&5));
    let (flow, _) = only(&sim.input(pbx_udp(), pbx_request("sip:x@192.0.2.10", 9).build()));
    assert_eq!(flow.remote, addr("192.0.2.10:5060"));

    let mut cfg = udp_upstream();
    cfg.allowed_destinations = vec![crate::net::IpNetwork {
        addr: "127.0.0.0".parse().unwrap(),
        prefix_len: 8,
    }];
    let mut sim = Sim::new(cfg);
    let (flow, _) = only(&sim.input(pbx_udp(), pbx_request(forbidden[1], 0).build()));
    assert_eq!(flow.remote, addr("127.0.0.1:6379"));
    let (_, resp) = only(&sim.input(pbx_udp(), pbx_request("sip:x@192.0.2.10", 1).build()));
    assert_eq!(code(&resp), 403);
}

/// While a name is being resolved, every request for it waits for the same lookup.
#[test]
fn one_lookup_per_name_at_a_time() {
    let mut sim = Sim::new(config("pbx.example.net", Some(Transport::Udp)));
    let first = sim.input(device(), message(0).build());
    let id = resolve_request(&first);
    for i in 1..5 {
        let outs = sim.input(device(), message(i).build());
        assert!(outs.iter().all(|o| !matches!(o, Output::Resolve { .. })));
    }
    let outs = sim.resolved(id, &[(Transport::Udp, addr(PBX))]);
    assert_eq!(sent(&outs).len(), 5);
    // The next request after the answer asks again (the shell caches).
    resolve_request(&sim.input(device(), message(9).build()));
}

/// RFC 3263 §4.1: a numeric upstream with no transport means UDP, whatever the device used;
/// RFC 3261 §18.1.1: a request over 1300 bytes goes over TCP first, UDP if TCP fails.
#[test]
fn upstream_transport_follows_rfc_3263_and_the_size_rule() {
    let mut sim = Sim::new(config("10.0.0.5", None));
    let (flow, _) = only(&sim.input(device(), message(0).build()));
    assert_eq!((flow.transport, flow.remote), (Transport::Udp, addr(PBX)));
    let big = message(1).header(&format!("X-Pad: {}", "p".repeat(1400)));
    let outs = sim.input(device(), big.build());
    let (flow, _, on_fail) = tracked_send(&outs);
    assert_eq!(
        (flow.transport, flow.listener),
        (Transport::Tcp, ListenerId(1))
    );
    let (flow, fwd) = only(&sim.send_failed(on_fail));
    assert_eq!((flow.transport, flow.remote), (Transport::Udp, addr(PBX)));
    assert_eq!(fwd.method(), Some(Method::Message));
}

/// After a provisional the target has the request: a transport error then ends the branch
/// (503) instead of sending the request to another target, which would fork the call.
#[test]
fn no_failover_once_the_target_has_answered() {
    let mut sim = Sim::new(config("pbx.example.net", Some(Transport::Tcp)));
    let id = resolve_id(&sim.input(device(), invite().realistic().build()));
    let second = addr("10.0.0.6:5060");
    let outs = sim.resolved(id, &[(Transport::Tcp, addr(PBX)), (Transport::Tcp, second)]);
    let (_, fwd, r) = tracked_send(&outs);
    let (flow, ringing) = only(&sim.input(pbx_tcp(), answer(&fwd, 180)));
    assert_eq!((flow, code(&ringing)), (device().flow, 180));
    let outs = sim.send_failed(r);
    assert!(
        sent(&outs).iter().all(|(f, _)| f.remote != second),
        "failed over after a provisional"
    );
}

/// RFC 3263 §4.3: a transport error on one resolved target moves on to the next.
#[test]
fn transport_error_fails_over_to_the_next_target() {
    let mut sim = Sim::new(config("pbx.example.net", Some(Transport::Tcp)));
    let id = resolve_id(&sim.input(device(), message(0).build()));
    let second = addr("10.0.0.6:5060");
    let outs = sim.resolved(id, &[(Transport::Tcp, addr(PBX)), (Transport::Tcp, second)]);
    let (to, _, r) = tracked_send(&outs);
    assert_eq!(to.remote, addr(PBX));
    let outs = sim.send_failed(r);
    let (to, _, r) = tracked_send(&outs);
    assert_eq!(to.remote, second);
    let (flow, resp) = only(&sim.send_failed(r));
    assert_eq!((flow, code(&resp)), (device().flow, 503));
    sim.settle();
    assert_idle(&sim);
}

// === security review (3ba83de..0e2f309): findings as failing tests ===

mod review {
    use super::*;

    /// Bytes the log transmits to `to`.
    fn bytes_to(outs: &[Output], to: SocketAddr) -> usize {
        outs.iter()
            .map(|o| match o {
                Output::Transmit { flow, bytes, .. } if flow.remote == to => bytes.len(),
                _ => 0,
            })
            .sum()
    }

    /// A TLS listener on the outside (id 2) and a device on a TLS connection to it.
    fn with_tls(mut cfg: ProxyConfig) -> ProxyConfig {
        cfg.listeners.push(Listener {
            id: ListenerId(2),
            transport: Transport::Tls,
            side: Side::Outside,
            local: addr("127.0.0.1:5061"),
            host: "127.0.0.1".into(),
            port: 5061,
        });
        cfg
    }

    fn tls_device() -> Inbound {
        Inbound {
            flow: Flow {
                listener: ListenerId(2),
                transport: Transport::Tls,
                remote: addr("203.0.113.8:5555"),
                conn: Some(ConnId(5)),
            },
            side: Side::Outside,
        }
    }

    /// F1. A minted branch is a permanent, source-independent capability to write a "2xx"
    /// into the caller's flow. The call below was *rejected* (486), so no late 2xx can exist;
    /// anyone who saw the branch (every callee behind a proxying PBX sees the caller-leg Via)
    /// still writes a forged 200 with a body of their choosing into the caller's TLS session,
    /// from any address, at any time while the connection lives.
    #[test]
    fn late_2xx_capability_is_bound_to_nothing() {
        let mut sim = Sim::new(with_tls(udp_upstream()));
        let fwd = start_call(&mut sim, tls_device(), &invite());
        let our_via = String::from_utf8_lossy(fwd.top_via().unwrap().raw).into_owned();
        let s = sent(&sim.input(pbx_udp(), answer(&fwd, 486)));
        assert!(s
            .iter()
            .any(|(f, m)| *f == tls_device().flow && code(m) == 486));
        sim.settle();
        assert_idle(&sim);
        let body = "you have been pwned";
        let forged = format!(
            "SIP/2.0 200 OK\r\nVia: {our_via}\r\nVia: SIP/2.0/UDP 198.51.100.66:5060;branch=z9hG4bK-x\r\n\
             From: <sip:alice@example.com>;tag=dev1\r\nTo: <sip:bob@example.com>;tag=evil\r\n\
             Call-ID: call-1@192.168.1.10\r\nCSeq: 1 INVITE\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let outs = sim.input(outside(OTHER), Bytes::from(forged));
        nothing_sent(&outs);
    }

    /// F2. Reflection left: a stateful final from the PBX (a 407 challenge, the normal answer
    /// to an unauthenticated INVITE) is retransmitted on timer G to the spoofable UDP source
    /// until timer H: 11 copies plus the 100.
    #[test]
    fn forwarded_final_is_not_amplified_towards_a_spoofable_source() {
        let mut sim = Sim::new(udp_upstream());
        let inv = invite().build();
        let outs = sim.input(device(), inv.clone());
        let mut out_bytes = bytes_to(&outs, addr(DEVICE));
        let fwd = sent(&outs)
            .into_iter()
            .find(|(f, _)| f.remote == addr(PBX))
            .unwrap()
            .1;
        let challenge: &[u8] = b"Digest realm=\"pbx.example.com\", nonce=\"5f2b8c0e4d1a9b7c3e6f0a2d4c8b1e9f\", algorithm=MD5, qop=\"auth\"";
        let resp = fwd.response(
            StatusCode(407),
            None,
            Some(b"callee"),
            None,
            &[("Proxy-Authenticate", challenge)],
        );
        out_bytes += bytes_to(&sim.input(pbx_udp(), resp), addr(DEVICE));
        let log = sim.settle();
        let later: Vec<Output> = log.into_iter().map(|(_, o)| o).collect();
        let retransmitted = bytes_to(&later, addr(DEVICE));
        // First copies pass (the 100 and the PBX's 407 are each answers to the request);
        // Timer G's copies stop at three times the request's bytes (was 11 copies, 15x).
        assert!(
            retransmitted <= 3 * inv.len(),
            "{retransmitted} bytes retransmitted to a spoofable source for {} in ({:.1}x); \
             {out_bytes} first copies",
            inv.len(),
            retransmitted as f64 / inv.len() as f64
        );
        assert!(sim.proxy.stats().dropped.get("amplification") >= Some(&1));
    }

    /// F3. The proxy's *own* 503 (upstream unresolvable / unreachable, waiters full) is still
    /// sent through the INVITE server transaction: timer G resends it eleven times, issue 11
    /// case 4 again, whenever the upstream is down.
    #[test]
    fn own_503_after_admission_is_sent_once() {
        let mut sim = Sim::new(config("pbx.example.net", Some(Transport::Udp)));
        let outs = sim.input(device(), invite().realistic().build());
        let id = resolve_request(&outs);
        let (_, resp) = only(&sim.resolved(id, &[]));
        assert_eq!(code(&resp), 503);
        let request_len = invite().realistic().build().len();
        let again: usize = sent_log(&sim.settle())
            .into_iter()
            .filter(|(_, f, m)| f.remote == addr(DEVICE) && code(m) == 503)
            .map(|(_, _, m)| m.raw().len())
            .sum();
        assert!(
            again <= 3 * request_len,
            "503 retransmitted ({again} bytes) beyond 3x the request ({request_len})"
        );
    }

    /// F4. A CANCEL that matches nothing gets a stateful 481 (a counted server transaction
    /// held 32 s by timer J) that is larger than the CANCEL.
    #[test]
    fn cancel_for_nothing_is_stateless_and_not_larger() {
        let mut sim = Sim::new(udp_upstream());
        let cancel = req("CANCEL", "sip:b@x").realistic().build();
        let (_, resp) = only(&sim.input(device(), cancel.clone()));
        assert_eq!(code(&resp), 481);
        assert!(
            resp.raw().len() <= cancel.len(),
            "481 of {} bytes for a CANCEL of {}",
            resp.raw().len(),
            cancel.len()
        );
        assert_eq!(
            sim.proxy.transactions_alive(),
            (0, 0),
            "state kept for a 481"
        );
    }

    /// F5. The global cap is exhausted by 100 sources (here 100 /64s of one IPv6 /48, no
    /// spoofing needed; over UDP/IPv4, 100 spoofed addresses) sending 200 CANCELs each,
    /// ~4 MB that never reach the upstream, renewed every 32 s (timer J). Then the PBX cannot
    /// reach any device: its own requests are refused too.
    #[test]
    fn global_cap_cannot_be_exhausted_by_a_hundred_sources() {
        let mut sim = Sim::new(udp_upstream());
        for s in 0..100 {
            let src = outside(&format!("[2001:db8:0:{s:x}::1]:5060"));
            for j in 0..200 {
                let c = req("CANCEL", "sip:b@x").branch(&format!("z9hG4bK-c{s}-{j}"));
                sim.input(src, c.build());
            }
        }
        // CANCELs for nothing are answered with no state at all.
        assert_eq!(sim.proxy.transactions_alive().1, 0);
        let (flow, m) = only(&sim.input(pbx_udp(), pbx_request("sip:x@192.0.2.10", 0).build()));
        assert_eq!(
            (flow.remote, code(&m)),
            (addr("192.0.2.10:5060"), 0),
            "the PBX's request was refused"
        );
    }

    /// F6. "The node's own addresses" are only the listeners' bound addresses: with the
    /// usual wildcard bind, the node's real (advertised) address passes the filter, and an
    /// inside request dialled to it reaches any service on the node (a Redis on 0.0.0.0).
    #[test]
    fn wildcard_listener_still_protects_the_node_itself() {
        let mut cfg = udp_upstream();
        cfg.listeners[0].local = addr("0.0.0.0:5060");
        cfg.listeners[0].host = "203.0.113.5".into();
        let mut sim = Sim::new(cfg);
        let r = pbx_request("sip:x@203.0.113.5:6379;transport=tcp", 0);
        let (flow, m) = only(&sim.input(pbx_udp(), r.build()));
        assert_eq!(
            (flow.remote, code(&m)),
            (pbx_udp().flow.remote, 403),
            "sent to {}",
            flow.remote
        );
    }

    /// F7. ACKs from outside are not budgeted: 1,024 of them fill the waiters of the
    /// upstream's lookup, and a device's INVITE is refused with a (stateful) 503.
    #[test]
    fn outside_acks_cannot_fill_the_upstream_lookup() {
        let mut sim = Sim::new(config("pbx.example.net", Some(Transport::Udp)));
        for i in 0..1024 {
            let ack = req("ACK", "sip:bob@example.com").branch(&format!("z9hG4bK-a{i}"));
            sim.input(outside(OTHER), ack.build());
        }
        let outs = sim.input(device(), invite().realistic().build());
        let refused: Vec<u16> = sent(&outs)
            .iter()
            .map(|(_, m)| code(m))
            .filter(|c| *c >= 200)
            .collect();
        assert!(refused.is_empty(), "device refused with {refused:?}");
    }

    /// F9. Lingering transactions (timer L 32 s after every answered INVITE, timer J 32 s
    /// after every non-INVITE over UDP) count against the per-source budget, so one source
    /// (a NATed office, a carrier-grade NAT, the SIPp UAC of bench/forward.sh) is refused
    /// beyond ~200 answered INVITEs per 32 s: about 6 calls/s. Here 10 calls/s for 25 s.
    #[test]
    fn answered_calls_do_not_exhaust_the_source_budget() {
        let mut sim = Sim::new(udp_upstream());
        let mut refused = 0;
        for i in 0..250u64 {
            sim.run_until(i * 100);
            let inv = invite()
                .call_id(&format!("rate-{i}"))
                .branch(&format!("z9hG4bK-rate-{i}"));
            let s = sent(&sim.input(device(), inv.build()));
            match s.iter().find(|(f, _)| f.remote == addr(PBX)) {
                Some((_, fwd)) => {
                    sim.input(pbx_udp(), answer_2xx(fwd));
                }
                None => refused += 1,
            }
        }
        assert_eq!(
            refused, 0,
            "{refused} of 250 answered calls refused at 10 calls/s"
        );
    }

    /// F2b. The 100 (Trying) to a minimal INVITE is larger than the INVITE.
    #[test]
    fn trying_is_not_larger_than_a_minimal_invite() {
        let mut sim = Sim::new(udp_upstream());
        let inv = Bytes::from_static(b"INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK-1;rport\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n");
        let outs = sim.input(device(), inv.clone());
        let back = bytes_to(&outs, addr(DEVICE));
        assert!(
            back <= inv.len(),
            "100 of {back} bytes for an INVITE of {}",
            inv.len()
        );
    }

    /// F5b. At its budget a device cannot CANCEL its own ringing INVITE (nor send the BYE
    /// that ends a call): the CANCEL, which would free state, is refused with 503.
    #[test]
    fn cancel_of_a_live_invite_is_admitted_at_the_cap() {
        let mut cfg = udp_upstream();
        cfg.limits.max_transactions_per_source = 2;
        let mut sim = Sim::new(cfg);
        let inv = invite();
        start_call(&mut sim, device(), &inv);
        only(&sim.input(device(), message(0).build()));
        let outs = sim.input(device(), inv.cancel().build());
        assert!(
            sent(&outs).iter().any(|(_, m)| code(m) == 200),
            "the device's CANCEL was refused: {:?}, dropped {:?}",
            sim.proxy.stats().refused,
            sim.proxy.stats().dropped
        );
    }

    /// F14. While draining, any outside request with a To-tag (no Route through this node
    /// needed) opens a new context: an attacker holds every drain to `drain_timeout`.
    #[test]
    fn drain_is_not_held_open_by_fake_in_dialog_requests() {
        let mut sim = Sim::new(udp_upstream());
        sim.proxy.start_drain();
        let bye = req("BYE", "sip:bob@example.com").in_dialog("made-up");
        sim.input(device(), bye.build());
        assert!(
            sim.proxy.is_idle(),
            "a made-up in-dialog BYE keeps the drain open"
        );
    }

    /// F1b. While the transaction is live, anyone on the outside who knows the branch answers
    /// for the PBX: responses are matched on branch/sent-by/method only, never on the flow
    /// the request went out on (requests are, since this change, keyed by source address).
    #[test]
    fn responses_are_accepted_only_from_where_the_request_went() {
        let mut sim = Sim::new(udp_upstream());
        let fwd = start_call(&mut sim, device(), &invite());
        let outs = sim.input(outside(OTHER), answer(&fwd, 486));
        assert!(
            !sent(&outs)
                .iter()
                .any(|(f, m)| f.remote == addr(DEVICE) && code(m) == 486),
            "a third party ended the call"
        );
    }
}

mod routing;

// === scanners learn nothing ===

#[test]
fn responses_to_the_outside_lose_the_headers_that_name_a_product() {
    let mut sim = Sim::new(udp_upstream());
    let inv = invite().realistic();
    let fwd = start_call(&mut sim, device(), &inv);
    let ringing = fwd.response(
        StatusCode(180),
        None,
        Some(b"pbx"),
        None,
        &[
            ("Server", b"Asterisk PBX 18.10.0"),
            (
                "Warning",
                b"392 10.0.0.5:5060 \"Noisy feedback tells: pid=1234\"",
            ),
        ],
    );
    let (_, r) = only(&sim.input(pbx_udp(), ringing));
    assert_eq!(code(&r), 180);
    for h in ["Server", "Warning", "User-Agent"] {
        assert!(
            r.header_values_by_name(h.as_bytes()).next().is_none(),
            "{h} left"
        );
    }
    let busy = fwd.response(
        StatusCode(486),
        None,
        Some(b"pbx"),
        None,
        &[("User-Agent", b"FPBX-16.0.40(18.10.0)")],
    );
    let outs = sim.input(pbx_udp(), busy);
    let r = sent(&outs)
        .into_iter()
        .find(|(f, _)| f.remote == addr(DEVICE))
        .expect("the 486 goes back")
        .1;
    assert_eq!(code(&r), 486);
    assert!(r.header_values_by_name(b"User-Agent").next().is_none());
}

#[test]
fn a_scanners_request_is_dropped_unanswered_and_counted() {
    let mut sim = Sim::new(udp_upstream());
    for ua in ["friendly-scanner", "sipcli/v1.8", "SIPVicious 0.3.3"] {
        let m = req("OPTIONS", "sip:100@example.com")
            .header(&format!("User-Agent: {ua}"))
            .build();
        let outs = sim.input(device(), m);
        nothing_sent(&outs);
    }
    assert_eq!(sim.proxy.stats().dropped.get("scanner"), Some(&3));
    // From the inside (the PBX), the same User-Agent is nobody's business.
    let m = req("OPTIONS", "sip:alice@192.0.2.9:5060")
        .via("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-pbx-o")
        .header("User-Agent: friendly-scanner")
        .build();
    assert!(!sent(&sim.input(pbx_udp(), m)).is_empty());
}

#[test]
fn a_no_such_user_answer_over_tcp_is_reported_as_a_probe() {
    let tcp_device = Inbound {
        flow: Flow {
            listener: ListenerId(0),
            transport: Transport::Tcp,
            remote: addr(DEVICE),
            conn: Some(ConnId(3)),
        },
        side: Side::Outside,
    };
    let probed = |outs: &[Output]| {
        events(outs)
            .into_iter()
            .filter(|e| matches!(e, Event::Probed { .. }))
            .count()
    };
    // Over TCP: the PBX's 404 to an out-of-dialog INVITE is a probe.
    let mut sim = Sim::new(udp_upstream());
    let inv = invite().via("SIP/2.0/TCP 192.168.1.10:5060;branch=z9hG4bK-p1");
    let outs = sim.input(tcp_device, inv.build());
    let fwd = sent(&outs)
        .into_iter()
        .find(|(f, _)| f.remote == addr(PBX))
        .expect("forwarded")
        .1;
    let outs = sim.input(pbx_udp(), answer(&fwd, 404));
    assert_eq!(probed(&outs), 1);
    // A busy callee is no probe; a 404 over UDP is one, marked unverified (the source may
    // be forged: the guard weighs it).
    let mut sim = Sim::new(udp_upstream());
    let inv = invite().via("SIP/2.0/TCP 192.168.1.10:5060;branch=z9hG4bK-p2");
    let outs = sim.input(tcp_device, inv.build());
    let fwd = sent(&outs)
        .into_iter()
        .find(|(f, _)| f.remote == addr(PBX))
        .unwrap()
        .1;
    assert_eq!(probed(&sim.input(pbx_udp(), answer(&fwd, 486))), 0);
    let mut sim = Sim::new(udp_upstream());
    let fwd = start_call(&mut sim, device(), &invite().realistic());
    let outs = sim.input(pbx_udp(), answer(&fwd, 404));
    assert!(matches!(
        events(&outs).as_slice(),
        [Event::Probed {
            verified: false,
            ..
        }]
    ));
}
