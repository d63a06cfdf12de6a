//! SIPp (Debian `sip-tester`, 3.6.1) against the real binary: retransmission handling over
//! UDP, OPTIONS to the node, calls with BYE from either side and a CANCELled call over UDP
//! and TCP, and an upstream that is down. SIPp runs our scenarios in `tests/it/scenarios/`
//! and, for the plain call, the bench's `uac_call.xml`/`uas_call.xml` read at run time from
//! `STG_SHARED_DIR` (default `<CARGO_MANIFEST_DIR>/../../shared`) `/bench/scenarios/`.
//!
//! Every SIPp run is bounded three ways (`-m 1`, `-timeout` with `-timeout_error`, and an
//! overall [`Peer::wait`]), traces its messages and unexpected events into the test's temp
//! dir (`-trace_msg`, `-trace_err`), and a failure prints them. The callee binds 127.0.0.2,
//! which the node trusts (`sip.trusted_networks`), so its own requests count as inside.
//!
//! The helpers here ([`Sipp`], [`Transport`], [`wait_gauge`]...) are shared with
//! `kamailio.rs`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::harness::{free_port, free_port_on, shared_dir, Peer, StgNode};

/// Our scenarios, in the repository.
pub(crate) fn scenario(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/scenarios")
        .join(name);
    assert!(p.is_file(), "scenario {} missing", p.display());
    p
}

/// A scenario of the shared bench (`bench/scenarios/NAME`), used where it is read.
pub(crate) fn shared_scenario(name: &str) -> PathBuf {
    let p = shared_dir().join("bench/scenarios").join(name);
    assert!(
        p.is_file(),
        "shared bench scenario {} not found (set STG_SHARED_DIR to the shared directory)",
        p.display()
    );
    p
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// SIPp's `-t`: one socket (UDP) or one connection (TCP) for everything.
    fn sipp_mode(self) -> &'static str {
        match self {
            Self::Udp => "u1",
            Self::Tcp => "t1",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// Is something bound to `addr` (UDP) or listening on it (TCP)? Read from `/proc/net`, so
/// probing never takes the port away from the process that is about to bind it.
pub(crate) fn is_bound(t: Transport, addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}");
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let (file, listen_state) = match t {
        Transport::Udp => ("/proc/net/udp", None),
        Transport::Tcp => ("/proc/net/tcp", Some("0A")),
    };
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].eq_ignore_ascii_case(&want) && listen_state.is_none_or(|s| f[3] == s)
    })
}

/// One message of a SIPp `-trace_msg` log.
#[derive(Clone, Debug)]
pub(crate) struct Traced {
    /// Sent by this SIPp (else received).
    pub(crate) sent: bool,
    /// The message, lines joined with `\n`.
    pub(crate) text: String,
}

impl Traced {
    pub(crate) fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// A request of this method.
    pub(crate) fn is(&self, method: &str) -> bool {
        self.first_line().starts_with(&format!("{method} "))
    }

    pub(crate) fn status(&self) -> Option<u16> {
        let l = self.first_line().strip_prefix("SIP/2.0 ")?;
        l.get(..3)?.parse().ok()
    }

    /// Values of a header (full name, case-insensitive), in order.
    pub(crate) fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.text
            .lines()
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(move |l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
            })
    }
}

/// Parses a `-trace_msg` file: blocks opened by a line of dashes and a timestamp, then
/// `UDP message sent (N bytes):` or `TCP message received [N] bytes :`, a blank line and
/// the message.
pub(crate) fn parse_trace(log: &str) -> Vec<Traced> {
    let mut out = Vec::new();
    let mut cur: Option<(bool, Vec<&str>)> = None;
    let mut lines = log.lines().map(|l| l.trim_end_matches('\r')).peekable();
    while let Some(l) = lines.next() {
        if l.starts_with("----------------------------------------------- ") {
            if let Some((sent, body)) = cur.take() {
                out.push(finish_block(sent, &body));
            }
            let dir = lines.next().unwrap_or("");
            let sent = dir.contains(" message sent");
            if !sent && !dir.contains(" message received") {
                continue;
            }
            // the blank line after the direction line
            if lines.peek() == Some(&"") {
                lines.next();
            }
            cur = Some((sent, Vec::new()));
        } else if let Some((_, body)) = cur.as_mut() {
            body.push(l);
        }
    }
    if let Some((sent, body)) = cur.take() {
        out.push(finish_block(sent, &body));
    }
    out
}

fn finish_block(sent: bool, body: &[&str]) -> Traced {
    let mut text = body.join("\n");
    while text.ends_with('\n') {
        text.pop();
    }
    Traced { sent, text }
}

/// The last `n` characters of `s`.
fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// One SIPp process running one call (`-m 1`).
pub(crate) struct Sipp {
    peer: Peer,
    pub(crate) label: String,
    pub(crate) transport: Transport,
    pub(crate) local: SocketAddr,
    scenario: PathBuf,
    messages: PathBuf,
    errors: PathBuf,
    started: Instant,
}

impl Sipp {
    /// Starts `sipp -sf scenario` bound to `local` (also its media IP), sending to `remote`
    /// when given (a UAC) or waiting for a call (a UAS). Files go to `dir/<label>.*`;
    /// `-timeout 20s` bounds it.
    pub(crate) fn start(
        dir: &Path,
        label: &str,
        scenario: &Path,
        transport: Transport,
        local: SocketAddr,
        remote: Option<SocketAddr>,
        extra: &[&str],
    ) -> Self {
        let messages = dir.join(format!("{label}.messages.log"));
        let errors = dir.join(format!("{label}.errors.log"));
        let ip = local.ip().to_string();
        let mut cmd = Command::new("sipp");
        cmd.current_dir(dir)
            .arg("-sf")
            .arg(scenario)
            .args(["-i", &ip, "-mi", &ip, "-p", &local.port().to_string()])
            .args(["-t", transport.sipp_mode()])
            .args(["-m", "1", "-timeout", "20s", "-timeout_error", "-nostdin"])
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&messages)
            .arg("-trace_err")
            .arg("-error_file")
            .arg(&errors)
            .args(extra);
        if let Some(r) = remote {
            cmd.arg(r.to_string());
        }
        let peer = Peer::spawn("sipp", "sip-tester", cmd, &dir.join(format!("{label}.out")));
        Self {
            peer,
            label: label.to_string(),
            transport,
            local,
            scenario: scenario.to_path_buf(),
            messages,
            errors,
            started: Instant::now(),
        }
    }

    /// A UAS: starts it and returns once its socket is bound (listening for TCP).
    pub(crate) fn uas(
        dir: &Path,
        label: &str,
        scenario: &Path,
        transport: Transport,
        local: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let mut s = Self::start(dir, label, scenario, transport, local, None, extra);
        s.wait_bound();
        s
    }

    fn wait_bound(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = self.peer.try_wait() {
                panic!(
                    "sipp {} exited before binding ({st}):\n{}",
                    self.label,
                    self.report()
                );
            }
            if is_bound(self.transport, self.local) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "sipp {} did not bind {}:\n{}",
            self.label,
            self.local,
            self.report()
        );
    }

    /// Waits for the exit (kills it after `timeout`).
    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.peer.wait(timeout)
    }

    /// Time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits and requires exit status 0 (every call successful), else panics with the traces.
    pub(crate) fn expect_success(&mut self, timeout: Duration) {
        let st = self.wait(timeout);
        assert!(
            st.success(),
            "sipp {} failed ({st}, after {:?}):\n{}",
            self.label,
            self.elapsed(),
            self.report()
        );
    }

    pub(crate) fn messages(&self) -> Vec<Traced> {
        parse_trace(&std::fs::read_to_string(&self.messages).unwrap_or_default())
    }

    /// Everything useful for a failure message: the unexpected-message trace, the message
    /// trace and the end of the screen output.
    pub(crate) fn report(&self) -> String {
        format!(
            "=== sipp {} ({}, {} on {}) ===\n--- errors ({}):\n{}\n--- messages ({}):\n{}\n--- screen (end):\n{}\n",
            self.label,
            self.scenario.display(),
            self.transport.name(),
            self.local,
            self.errors.display(),
            std::fs::read_to_string(&self.errors).unwrap_or_else(|_| "(none)".into()),
            self.messages.display(),
            std::fs::read_to_string(&self.messages).unwrap_or_else(|_| "(none)".into()),
            tail(&self.peer.output(), 2500),
        )
    }
}

/// Both sides of one call: starts the UAS, then the UAC (`-s callee`, plus `uac_extra`),
/// requires both to succeed, and returns them for inspection.
pub(crate) fn run_call(
    dir: &Path,
    label: &str,
    transport: Transport,
    (uac_scenario, uas_scenario): (&Path, &Path),
    uas_addr: SocketAddr,
    proxy: SocketAddr,
    uac_extra: &[&str],
) -> (Sipp, Sipp) {
    let t = transport.name();
    let mut uas = Sipp::uas(
        dir,
        &format!("{label}-{t}-uas"),
        uas_scenario,
        transport,
        uas_addr,
        &[],
    );
    let uac_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec!["-s", "callee"];
    args.extend_from_slice(uac_extra);
    let mut uac = Sipp::start(
        dir,
        &format!("{label}-{t}-uac"),
        uac_scenario,
        transport,
        uac_addr,
        Some(proxy),
        &args,
    );
    let uac_status = uac.wait(Duration::from_secs(25));
    let uas_status = uas.wait(Duration::from_secs(10));
    assert!(
        uac_status.success() && uas_status.success(),
        "{label} over {t}: caller {uac_status}, callee {uas_status}\n{}\n{}",
        uac.report(),
        uas.report()
    );
    (uac, uas)
}

/// Waits until `stg_sip_transactions{role=...}` reads `want` twice in a row more than one
/// export period (1 s) apart, so that a value from before the traffic cannot pass.
pub(crate) fn wait_gauge(
    stg: &StgNode,
    role: &str,
    want: f64,
    deadline: Instant,
) -> Result<(), String> {
    let name = format!("stg_sip_transactions{{role=\"{role}\"}}");
    let mut since: Option<Instant> = None;
    let mut last = None;
    loop {
        let v = stg.metric(&name);
        last = v.or(last);
        if v == Some(want) {
            let s = *since.get_or_insert_with(Instant::now);
            if s.elapsed() > Duration::from_millis(1100) {
                return Ok(());
            }
        } else {
            since = None;
        }
        if Instant::now() >= deadline {
            return Err(format!("{name} is {last:?}, expected {want}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn listeners(port: u16) -> String {
    format!(
        "[[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n\n[[sip.listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n"
    )
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// RFC 3261 §17.2.2 over UDP, with a caller that retransmits and a callee that is slow.
///
/// What is asserted, exactly:
/// - The caller sends four byte-identical copies of one OPTIONS (one transaction: same
///   branch, Call-ID, tags, CSeq) within ~900 ms; the upstream UAS holds its 200 for 2 s.
///   stg's T1 is raised to 3 s so that its own Timer E (first retransmission at T1) cannot
///   fire before the UAS answers: every OPTIONS copy beyond the first at the UAS would be
///   a caller retransmission that leaked through. **The UAS receives exactly one
///   OPTIONS**, and the caller receives nothing while the transaction is in Trying (the
///   scenario aborts on any message during its pauses).
/// - After the 200, the caller sends a fifth identical copy; stg's server transaction is in
///   Completed and **must answer it with the 200 again**, without forwarding it (the UAS,
///   still up for 2 s, sees no second OPTIONS). The last copy before the final left ~1 s
///   before the 200 existed, so **the caller receives exactly two 200s**: the forwarded one
///   and the repeat; both identical.
#[test]
fn udp_retransmissions_absorbed() {
    let uas_port = free_port_on("127.0.0.2");
    let port = free_port();
    let stg = StgNode::start(
        "sipp-retrans",
        &format!(
            "[sip]\nupstream = \"sip:127.0.0.2:{uas_port}\"\ntrusted_networks = [\"127.0.0.2/32\"]\n\n[sip.timers]\nt1 = \"3s\"\nt2 = \"4s\"\n\n{}",
            listeners(port)
        ),
    );
    let dir = stg.dir.clone();
    let mut uas = Sipp::uas(
        &dir,
        "retrans-uas",
        &scenario("options_slow_uas.xml"),
        Transport::Udp,
        addr("127.0.0.2", uas_port),
        &["-nr"],
    );
    let mut uac = Sipp::start(
        &dir,
        "retrans-uac",
        &scenario("options_retrans_uac.xml"),
        Transport::Udp,
        addr("127.0.0.1", free_port()),
        Some(addr("127.0.0.1", port)),
        &["-nr", "-s", "retrans"],
    );
    let uac_status = uac.wait(Duration::from_secs(25));
    let uas_status = uas.wait(Duration::from_secs(10));
    let reports = || format!("{}\n{}", uac.report(), uas.report());

    let uac_msgs = uac.messages();
    let sent: Vec<&Traced> = uac_msgs
        .iter()
        .filter(|m| m.sent && m.is("OPTIONS"))
        .collect();
    let got_200: Vec<&Traced> = uac_msgs
        .iter()
        .filter(|m| !m.sent && m.status() == Some(200))
        .collect();
    let uas_got: Vec<Traced> = uas
        .messages()
        .into_iter()
        .filter(|m| !m.sent && m.is("OPTIONS"))
        .collect();
    // The counts first: a leak also fails the UAS (unexpected OPTIONS), a missing repeat the
    // UAC, but these say which rule was broken.
    assert_eq!(
        uas_got.len(),
        1,
        "stg forwarded a retransmission of the caller (the UAS saw {} OPTIONS):\n{}",
        uas_got.len(),
        reports()
    );
    assert_eq!(
        got_200.len(),
        2,
        "expected the forwarded 200 and one repeat for the retransmission after it:\n{}",
        reports()
    );
    assert_eq!(
        sent.len(),
        5,
        "the caller sends 4 copies, then 1 after the final:\n{}",
        reports()
    );
    assert!(
        sent.iter().all(|m| m.text == sent[0].text),
        "the copies are not identical retransmissions:\n{}",
        reports()
    );
    assert!(
        uac_status.success() && uas_status.success(),
        "caller {uac_status}, callee {uas_status}\n{}",
        reports()
    );
    assert_eq!(
        got_200[0].text, got_200[1].text,
        "the repeated final response differs from the first"
    );
    // The 200 is the UAS's (its To tag), with stg's Via removed: one Via, the caller's.
    assert!(got_200[0]
        .headers("To")
        .next()
        .is_some_and(|t| t.contains("tag=")));
    assert_eq!(got_200[0].headers("Via").count(), 1, "{}", got_200[0].text);
}

/// OPTIONS for the node itself (no user part, the listener's host:port) is answered 200 by
/// stg, over UDP and TCP; the upstream is a tripwire that must see nothing.
#[test]
fn options_answered_over_udp_and_tcp() {
    let up_port = free_port();
    let tripwire_udp = UdpSocket::bind(("127.0.0.1", up_port)).unwrap();
    tripwire_udp.set_nonblocking(true).unwrap();
    let tripwire_tcp = TcpListener::bind(("127.0.0.1", up_port)).unwrap();
    tripwire_tcp.set_nonblocking(true).unwrap();
    let port = free_port();
    let mut stg = StgNode::start(
        "sipp-options",
        &format!(
            "[sip]\nupstream = \"sip:127.0.0.1:{up_port}\"\n\n{}",
            listeners(port)
        ),
    );
    let dir = stg.dir.clone();
    for t in [Transport::Udp, Transport::Tcp] {
        let mut uac = Sipp::start(
            &dir,
            &format!("options-{}", t.name()),
            &scenario("options_node.xml"),
            t,
            addr("127.0.0.1", free_port()),
            Some(addr("127.0.0.1", port)),
            &[],
        );
        uac.expect_success(Duration::from_secs(25));
        let msgs = uac.messages();
        let ok = msgs
            .iter()
            .find(|m| !m.sent && m.status() == Some(200))
            .unwrap_or_else(|| panic!("no 200 traced:\n{}", uac.report()));
        // Over TCP the 200 lists Allow; over UDP from an unverified source an answer never
        // exceeds the request, so the optional headers are left out of this small OPTIONS.
        let allow = ok
            .headers("Allow")
            .next()
            .is_some_and(|a| a.contains("INVITE"));
        assert_eq!(
            allow,
            t == Transport::Tcp,
            "stg's own 200 and Allow over {}:\n{}",
            t.name(),
            ok.text
        );
        assert!(ok.headers("To").next().is_some_and(|v| v.contains("tag=")));
        assert!(
            uac.elapsed() < Duration::from_secs(5),
            "OPTIONS over {} took {:?}",
            t.name(),
            uac.elapsed()
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut buf = [0u8; 2048];
    assert!(
        tripwire_udp.recv_from(&mut buf).is_err(),
        "an OPTIONS for the node was forwarded upstream over UDP"
    );
    assert!(
        tripwire_tcp.accept().is_err(),
        "an OPTIONS for the node was forwarded upstream over TCP"
    );
    assert!(stg.alive());
}

/// Three calls through stg, caller and callee SIPp, all on `transport`:
/// 1. CANCELled: INVITE, 180, CANCEL -> 200 from stg, the callee sees the CANCEL and answers
///    487, which reaches the caller; ACKs on both hops.
/// 2. Caller hangs up (the bench's `uac_call.xml`/`uas_call.xml`): INVITE/100/180/200/ACK,
///    BYE/200, in-dialog requests along the Record-Route.
/// 3. Callee hangs up: its BYE is an inside request routed by stg's Record-Route entry (the
///    flow token) to the caller; the caller's Contact names a port where nothing listens,
///    so only routing by the flow (not the Request-URI) can deliver it.
///
/// Then the transaction gauges return to 0 and stg is alive.
fn call_and_cancel(transport: Transport) {
    let uas_port = free_port_on("127.0.0.2");
    let port = free_port();
    let mut stg = StgNode::start(
        &format!("sipp-calls-{}", transport.name()),
        &format!(
            "[sip]\nupstream = \"sip:127.0.0.2:{uas_port};transport={}\"\ntrusted_networks = [\"127.0.0.2/32\"]\n\n[sip.timers]\nt1 = \"100ms\"\nt4 = \"1s\"\n\n{}",
            transport.name(),
            listeners(port)
        ),
    );
    let dir = stg.dir.clone();
    let proxy = addr("127.0.0.1", port);
    let uas_addr = addr("127.0.0.2", uas_port);
    let t = transport.name();

    let (uac, uas) = run_call(
        &dir,
        "cancel",
        transport,
        (&scenario("uac_cancel.xml"), &scenario("uas_cancel.xml")),
        uas_addr,
        proxy,
        &[],
    );
    let cancel_done = Instant::now();
    assert!(uas.messages().iter().any(|m| !m.sent && m.is("CANCEL")));
    let finals: Vec<u16> = uac
        .messages()
        .iter()
        .filter(|m| !m.sent)
        .filter_map(Traced::status)
        .filter(|&s| s >= 200)
        .collect();
    assert_eq!(
        finals.get(..2),
        Some(&[200, 487][..]),
        "caller's finals over {t}: {finals:?}\n{}",
        uac.report()
    );
    // stg answers the 487 with its own ACK (hop by hop, RFC 3261 §17.1.1.3).
    assert!(uas.messages().iter().any(|m| !m.sent && m.is("ACK")));

    let (_uac, uas) = run_call(
        &dir,
        "caller-bye",
        transport,
        (
            &shared_scenario("uac_call.xml"),
            &shared_scenario("uas_call.xml"),
        ),
        uas_addr,
        proxy,
        &["-d", "200"],
    );
    assert!(uas.messages().iter().any(|m| !m.sent && m.is("BYE")));

    let dead_port = free_port().to_string();
    let (uac, _uas) = run_call(
        &dir,
        "callee-bye",
        transport,
        (
            &scenario("uac_callee_bye.xml"),
            &scenario("uas_callee_bye.xml"),
        ),
        uas_addr,
        proxy,
        &["-key", "contact_port", &dead_port],
    );
    let msgs = uac.messages();
    let bye = msgs
        .iter()
        .find(|m| !m.sent && m.is("BYE"))
        .expect("the caller got the callee's BYE");
    // Through stg: stg's Via on top, then the callee's.
    let vias: Vec<&str> = bye.headers("Via").collect();
    assert!(
        vias.len() == 2
            && vias[0].contains(&format!("127.0.0.1:{port}"))
            && vias[1].contains(&uas_addr.to_string()),
        "BYE as received by the caller over {t}:\n{}",
        bye.text
    );
    assert!(
        bye.headers("Route").next().is_none(),
        "stg must pop its own Route entry:\n{}",
        bye.text
    );

    // Every transaction ends: the server ones within 64*T1 = 6.4 s of the last message
    // (INVITE Accepted, RFC 6026 Timer L; BYE/CANCEL Completed, Timer J over UDP). Over UDP
    // the cancelled INVITE's client transaction stays Completed for Timer D, which RFC 3261
    // §17.1.1.2 sets to at least 32 s whatever T1 is (stg: max(64*T1, 32 s)), to absorb 487
    // retransmissions; so its gauge may take until 32 s after the 487.
    let now = Instant::now();
    wait_gauge(&stg, "server", 0.0, now + Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("over {t}: {e}"));
    let client_deadline = match transport {
        Transport::Tcp => now + Duration::from_secs(10),
        Transport::Udp => {
            (cancel_done + Duration::from_secs(32 + 6)).max(now + Duration::from_secs(10))
        }
    };
    wait_gauge(&stg, "client", 0.0, client_deadline).unwrap_or_else(|e| panic!("over {t}: {e}"));
    assert!(stg.alive(), "stg died");
}

#[test]
fn call_and_cancel_over_udp() {
    call_and_cancel(Transport::Udp);
}

#[test]
fn call_and_cancel_over_tcp() {
    call_and_cancel(Transport::Tcp);
}

/// The upstream is down (nothing listens on its port). Over UDP (RFC 3263 §4.1: a numeric
/// upstream with no transport) nothing answers the INVITE: timer B (64*T1 = 6.4 s with
/// T1 = 100 ms) ends the branch and the caller gets 408. Over TCP (`;transport=tcp`) the
/// connection is refused and the caller gets 503 at once. Both callers ACK the final
/// (absorbed by stg), and every transaction ends.
#[test]
fn upstream_down() {
    let dead = free_port();
    let node = |transport: &str| {
        let port = free_port();
        let stg = StgNode::start(
            &format!("sipp-down-{transport}"),
            &format!(
                "[sip]\nupstream = \"sip:127.0.0.1:{dead}{transport}\"\n\n[sip.timers]\nt1 = \"100ms\"\nt4 = \"1s\"\n\n{}",
                listeners(port)
            ),
        );
        (stg, port)
    };
    let (udp_stg, udp_port) = node("");
    let (tcp_stg, tcp_port) = node(";transport=tcp");
    let dir = udp_stg.dir.clone();
    let template = std::fs::read_to_string(scenario("uac_invite_final.xml")).unwrap();
    let run = |t: Transport, status: &str, port: u16| {
        let sf = dir.join(format!("uac_invite_{status}.xml"));
        std::fs::write(&sf, template.replace("EXPECTED_STATUS", status)).unwrap();
        Sipp::start(
            &dir,
            &format!("down-{}", t.name()),
            &sf,
            t,
            addr("127.0.0.1", free_port()),
            Some(addr("127.0.0.1", port)),
            &["-s", "callee"],
        )
    };
    // Both at once: the TCP one is done long before timer B.
    let mut udp = run(Transport::Udp, "408", udp_port);
    let mut tcp = run(Transport::Tcp, "503", tcp_port);
    tcp.expect_success(Duration::from_secs(25));
    let tcp_time = tcp.elapsed();
    udp.expect_success(Duration::from_secs(25));
    let udp_time = udp.elapsed();
    assert!(
        tcp_time < Duration::from_secs(4),
        "503 after a refused connection took {tcp_time:?}"
    );
    assert!(
        udp_time >= Duration::from_secs(6),
        "408 came before timer B (6.4 s): {udp_time:?}\n{}",
        udp.report()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for stg in [&udp_stg, &tcp_stg] {
        for role in ["server", "client"] {
            wait_gauge(stg, role, 0.0, deadline).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    for mut stg in [udp_stg, tcp_stg] {
        assert!(stg.alive(), "stg died");
    }
}
