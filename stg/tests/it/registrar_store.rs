//! The registrar against a real store: stg processes registering devices into their own
//! `redis-server` (Flexisip's `fs:<user>@<host>` layout, checked with `redis-cli`) or into the
//! embedded store, with a tiny in-test PBX that answers 200 to every REGISTER in `through`
//! mode, and stg itself as the registrar in `local` mode (digest against the node's SQLite).
//!
//! Covered: the stored layout field by field (and the PUBLISH), two nodes racing on the same
//! AORs, Redis killed and restarted during a SIPp REGISTER run at 200/s (503 + Retry-After,
//! recovery without restarting stg, nothing acknowledged lost), bindings surviving a crash
//! of stg with either store (one device, and a SIPp REGISTER run across it), the RFC 3261
//! cases (CSeq, 423, `Contact: *`, eviction) and nonce replay in local mode, and a record
//! written by Flexisip routed along its Path.
//!
//! Every test starts its own processes on free loopback ports (never the system Redis), kills
//! them by PID, and bounds every loop in count and time.

use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stg_testkit::sip::{header_values, status_code, via, SipMessage};

use crate::harness::{free_port, http_get, temp_dir, Peer};
use crate::sipp::{scenario, Sipp, Transport};

// === peers ===

/// A `redis-server` of this test on a free port, persisting every write before answering
/// (`appendfsync always`), so that it can be killed and restarted with its data.
struct RedisSrv {
    port: u16,
    dir: PathBuf,
    proc: Option<Peer>,
    starts: u32,
}

impl RedisSrv {
    fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            dir: temp_dir("regstore-redis"),
            proc: None,
            starts: 0,
        };
        r.spawn();
        r
    }

    /// Starts (again) on the same port and directory; returns once it answers PING.
    fn spawn(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir);
        let log = self.dir.join(format!("redis-{}.log", self.starts));
        self.proc = Some(Peer::spawn("redis-server", "redis-server", cmd, &log));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["ping"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to its PID.
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("redis-cli");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        c
    }

    /// `redis-cli ARGS`, its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = self
            .cmd()
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools) is needed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Many commands through one `redis-cli` (one per line on stdin): one output line each
    /// for integer and bulk replies.
    fn pipe(&self, commands: &str) -> Vec<String> {
        let mut child = self
            .cmd()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(commands.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `HGETALL key` as (field, value) pairs.
    fn hgetall(&self, key: &str) -> Vec<(String, String)> {
        let out = self.cli(&["hgetall", key]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect()
    }
}

/// The PBX of `through` mode: a UDP socket that answers 200 to every REGISTER, echoing its
/// Contacts with `;expires=<granted>`. Keeps the last REGISTER it got.
pub(crate) struct Pbx {
    pub(crate) addr: SocketAddr,
    registers: Arc<AtomicU64>,
    last: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Pbx {
    pub(crate) fn start(granted: u32) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let registers = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, l, s) = (registers.clone(), last.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65535];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = &buf[..len];
                if !req.starts_with(b"REGISTER ") {
                    continue;
                }
                n.fetch_add(1, Ordering::Relaxed);
                *l.lock().unwrap() = req.to_vec();
                let contacts: Vec<(&str, String)> = header_values(req, "Contact")
                    .into_iter()
                    .map(|c| ("Contact", format!("{c};expires={granted}")))
                    .collect();
                let _ = sock.send_to(&reply(req, 200, "OK", &contacts), from);
            }
        });
        Self {
            addr,
            registers,
            last,
            stop,
        }
    }

    fn last_register(&self) -> String {
        String::from_utf8_lossy(&self.last.lock().unwrap()).into_owned()
    }
}

impl Drop for Pbx {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A response to `req`: its Vias, From, Call-ID, CSeq, its To with a tag, then `extra`.
fn reply(req: &[u8], code: u16, reason: &str, extra: &[(&str, String)]) -> Vec<u8> {
    let text = String::from_utf8_lossy(req);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" if !value.contains("tag=") => {
                out.push_str(&format!("{line};tag=uas{code}\r\n"));
            }
            "to" | "t" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    for (n, v) in extra {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

// === stg ===

/// Ports a node keeps across restarts.
#[derive(Clone, Copy)]
struct Ports {
    admin: u16,
    outside: u16,
    inside: u16,
}

impl Ports {
    fn new() -> Self {
        Self {
            admin: free_port(),
            outside: free_port(),
            inside: free_port(),
        }
    }
}

/// An `stg run` on a data dir that outlives it (restarts reuse dir and ports).
struct Node {
    proc: Peer,
    dir: PathBuf,
    ports: Ports,
    outside: SocketAddr,
    inside: SocketAddr,
}

impl Node {
    /// Starts stg with UDP listeners outside and inside, upstream `pbx`, and `extra`
    /// (`[registrar]`, `[store]`...); returns once `/health` answers.
    fn start(dir: &Path, ports: Ports, pbx: SocketAddr, extra: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", ports.admin).parse().unwrap();
        let config = format!(
            "[node]\ndata_dir = \"{data}\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
             [log]\nformat = \"human\"\nlevel = \"info\"\n\n\
             [sip]\nupstream = \"sip:{pbx}\"\n\
             allowed_destinations = [\"127.0.0.0/8\"]\n\n[sip.timers]\nt1 = \"100ms\"\nt4 = \"1s\"\n\n\
             [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{out}\"\nside = \"outside\"\n\n\
             [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{ins}\"\nside = \"inside\"\n\n\
             {extra}",
            data = dir.join("data").display(),
            out = ports.outside,
            ins = ports.inside,
        );
        let cfg = dir.join("stg.toml");
        std::fs::write(&cfg, config).unwrap();
        let runs = std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("stg-"))
            })
            .count();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stg"));
        cmd.arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("NO_COLOR", "1");
        let log = dir.join(format!("stg-{runs}.log"));
        let mut proc = Peer::spawn("stg", "(built by cargo)", cmd, &log);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = proc.try_wait() {
                panic!("stg exited early ({status}):\n{}", proc.output());
            }
            if http_get(admin, "/health").is_some_and(|b| b.contains("ok")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stg not healthy:\n{}",
                proc.output()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
        Self {
            proc,
            dir: dir.to_path_buf(),
            ports,
            outside: format!("127.0.0.1:{}", ports.outside).parse().unwrap(),
            inside: format!("127.0.0.1:{}", ports.inside).parse().unwrap(),
        }
    }

    /// SIGKILL by PID: a crash, nothing flushed on the way out.
    fn crash(mut self) -> (PathBuf, Ports) {
        self.proc.signal("KILL");
        let status = self.proc.wait_exit(Duration::from_secs(10));
        assert!(status.is_some(), "stg did not die on SIGKILL");
        (self.dir.clone(), self.ports)
    }

    fn log(&self) -> String {
        self.proc.output()
    }
}

fn store_section(url: &str) -> String {
    format!("[store]\nurl = \"{url}\"\n")
}

fn through(domain: &str) -> String {
    format!("[registrar]\ndomains = [{{ name = \"{domain}\", mode = \"through\" }}]\n")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// === devices ===

/// A UDP phone on 127.0.0.1.
struct Device {
    sock: UdpSocket,
    local: SocketAddr,
}

impl Device {
    fn new() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = sock.local_addr().unwrap();
        Self { sock, local }
    }

    /// `Contact` value for this device.
    fn contact(&self, user: &str, instance: &str) -> String {
        format!(
            "<sip:{user}@{};transport=udp>;+sip.instance=\"<urn:uuid:{instance}>\"",
            self.local
        )
    }

    /// A REGISTER of `user@domain` from this device.
    fn register(&self, user: &str, domain: &str, call_id: &str, cseq: u32) -> SipMessage {
        SipMessage::request("REGISTER", &format!("sip:{domain}"), call_id)
            .via(&format!(
                "{};rport",
                via(
                    "UDP",
                    &self.local.to_string(),
                    &format!("z9hG4bK-{call_id}-{cseq}-{}", unique())
                )
            ))
            .set("From", &format!("<sip:{user}@{domain}>;tag=f-{call_id}"))
            .set("To", &format!("<sip:{user}@{domain}>"))
            .set("CSeq", &format!("{cseq} REGISTER"))
    }

    /// Sends `m` to `to` and waits for its final response (matched by Call-ID and CSeq),
    /// retransmitting every 500 ms as RFC 3261 timer E would; `None` after 8 s.
    fn transact(&self, to: SocketAddr, m: &SipMessage) -> Option<Vec<u8>> {
        let raw = m.build();
        let cid = header_values(&raw, "Call-ID").remove(0);
        let cseq = header_values(&raw, "CSeq").remove(0);
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut buf = vec![0u8; 65535];
        while Instant::now() < deadline {
            self.sock.send_to(&raw, to).unwrap();
            let resend = Instant::now() + Duration::from_millis(500);
            while let Some(left) = resend.checked_duration_since(Instant::now()) {
                self.sock
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    break;
                };
                let r = &buf[..n];
                let mine = header_values(r, "Call-ID").first() == Some(&cid)
                    && header_values(r, "CSeq").first() == Some(&cseq);
                if mine && status_code(r).is_some_and(|s| s >= 200) {
                    return Some(r.to_vec());
                }
            }
        }
        None
    }
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn status(r: &Option<Vec<u8>>) -> u16 {
    r.as_deref().and_then(status_code).unwrap_or(0)
}

// === 1. layout ===

/// A device registers through stg (through mode, Redis store): the binding is in Redis in
/// Flexisip's layout, field by field; the key expires when the binding does; the AOR's
/// channel hears the PUBLISH; the PBX got stg's Path and a Contact without push parameters.
#[test]
fn binding_lands_in_redis_in_flexisip_layout() {
    let redis = RedisSrv::start();
    let pbx = Pbx::start(600);
    let dir = temp_dir("regstore-layout");
    let node = Node::start(
        &dir,
        Ports::new(),
        pbx.addr,
        &format!("{}{}", through("example.com"), store_section(&redis.url())),
    );

    // Someone listening on the AOR's channel, as a Flexisip node does.
    let sub_log = dir.join("subscribe.log");
    let mut sub_cmd = redis.cmd();
    sub_cmd.args(["subscribe", "alice@example.com"]);
    let sub = Peer::spawn("redis-cli subscribe", "redis-tools", sub_cmd, &sub_log);
    wait_for(Duration::from_secs(5), "the SUBSCRIBE", || {
        sub.output().contains("alice@example.com")
    });

    let dev = Device::new();
    let instance = "<urn:uuid:0f1e2d3c-aaaa-bbbb-cccc-000000000001>";
    let contact = format!(
        "<sip:alice@{};pn-provider=fcm;pn-prid=tok-123;pn-param=proj-9;transport=udp>\
         ;+sip.instance=\"{instance}\";reg-id=1",
        dev.local
    );
    let m = dev
        .register("alice", "example.com", "layout-1", 7)
        .header("Contact", &contact)
        .header("Expires", "3600")
        .header("User-Agent", "TestPhone/1.0 (stg test)")
        .header("Supported", "outbound, path");
    let before = unix_now();
    let r = dev.transact(node.outside, &m);
    assert_eq!(status(&r), 200, "REGISTER: {:?}\n{}", r, node.log());
    let ok = r.unwrap();
    let contacts = header_values(&ok, "Contact");
    assert!(
        contacts
            .iter()
            .any(|c| c.contains("expires=") && c.contains(instance)),
        "200's Contacts: {contacts:?}"
    );

    // What the PBX got: stg's Path, and the Contact without its push parameters.
    let up = pbx.last_register();
    let path_hdr = header_values(up.as_bytes(), "Path");
    assert!(
        path_hdr
            .iter()
            .any(|p| p.contains(&format!("@{};", node.inside)) && p.contains(";lr")),
        "Path sent upstream: {path_hdr:?}\n{up}"
    );
    assert!(!up.contains("pn-prid"), "push params went upstream:\n{up}");

    // HGETALL fs:alice@example.com: one field, the instance with its quotes.
    let fields = redis.hgetall("fs:alice@example.com");
    assert_eq!(fields.len(), 1, "{fields:?}");
    let (field, value) = &fields[0];
    assert_eq!(field, &format!("\"{instance}\""));
    let b = stg_registrar::Binding::decode(field, value)
        .unwrap_or_else(|e| panic!("stored value does not decode ({e}): {value}"));
    for needle in [
        "pn-provider=fcm",
        "pn-prid=tok-123",
        "pn-param=proj-9",
        "fs-conn-id=",
        "callid=layout-1",
        "expires=600;",
        "cseq=7;",
        "updatedAt=",
        "alias=no",
        "usedAsRoute=no",
        "?path=%3Csip%3A",
        &format!(
            "@127.0.0.1%3A{}%3Btransport%3Dudp%3Blr%3Bob%3E",
            node.ports.inside
        ),
        "&user-agent=TestPhone/1.0%20(stg%20test)",
        "reg-id=1",
    ] {
        assert!(value.contains(needle), "{needle:?} not in {value}");
    }
    assert!(
        value.starts_with(&format!("<sip:alice@{};", dev.local)),
        "{value}"
    );
    // The bookkeeping in Flexisip's order, right after the device's URI parameters.
    let order: Vec<usize> = [
        "fs-conn-id=",
        ";callid=",
        ";expires=",
        ";cseq=",
        ";updatedAt=",
        ";alias=",
        ";usedAsRoute=",
        "?path=",
        "&accept=",
        "&user-agent=",
    ]
    .iter()
    .map(|n| {
        value
            .find(n)
            .unwrap_or_else(|| panic!("{n} not in {value}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "order: {value}");
    assert_eq!(b.expires, 600, "the PBX's grant is stored");
    assert_eq!(b.cseq, 7);
    assert_eq!(b.call_id, "layout-1");
    assert!(b.updated_at >= before && b.updated_at <= unix_now());
    assert!(b.conn_id.as_deref().is_some_and(|c| !c.is_empty()));
    assert_eq!(b.user_agent.as_deref(), Some("TestPhone/1.0 (stg test)"));
    assert_eq!(b.path.len(), 1, "{:?}", b.path);
    assert!(b.path[0].ends_with(&format!(
        "@127.0.0.1:{};transport=udp;lr;ob",
        node.ports.inside
    )));
    assert_eq!(b.push().map(|p| p.provider), Some("fcm".into()));
    assert_eq!(b.instance(), Some(field.as_str()));

    // The key expires when its binding does.
    let at: u64 = redis
        .cli(&["expiretime", "fs:alice@example.com"])
        .trim()
        .parse()
        .unwrap();
    let want = b.updated_at + 600;
    assert!(
        at.abs_diff(want) <= 2,
        "EXPIRETIME {at}, binding ends {want}"
    );
    let ttl: i64 = redis
        .cli(&["ttl", "fs:alice@example.com"])
        .trim()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&ttl), "TTL {ttl}");

    // The PUBLISH reached the subscriber: channel = the AOR, message = the instance.
    wait_for(Duration::from_secs(5), "the PUBLISH", || {
        sub.output().contains(&format!("\"{instance}\""))
    });
    let pubs = sub.output();
    assert!(pubs.contains("message\nalice@example.com\n"), "{pubs}");
}

/// Polls `cond` until it holds; fails naming `what` after `wait`.
fn wait_for(wait: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// === 2. race ===

/// Two nodes on one Redis; 1,000 rounds in which each registers one device of the same AOR
/// at the same moment (a barrier per round): every AOR ends with both bindings.
#[test]
fn two_nodes_racing_on_one_aor_lose_nothing() {
    const ROUNDS: usize = 1000;
    let redis = RedisSrv::start();
    let pbx = Pbx::start(3600);
    let cfg = format!("{}{}", through("example.com"), store_section(&redis.url()));
    let nodes = [
        Node::start(&temp_dir("regstore-race-a"), Ports::new(), pbx.addr, &cfg),
        Node::start(&temp_dir("regstore-race-b"), Ports::new(), pbx.addr, &cfg),
    ];
    let barrier = Arc::new(Barrier::new(2));
    let started = Instant::now();
    let handles: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(k, node)| {
            let (to, barrier) = (node.outside, barrier.clone());
            std::thread::spawn(move || {
                let dev = Device::new();
                let mut statuses = Vec::with_capacity(ROUNDS);
                for i in 0..ROUNDS {
                    barrier.wait();
                    if started.elapsed() > Duration::from_secs(55) {
                        break;
                    }
                    let user = format!("race{i}");
                    let m = dev
                        .register(&user, "example.com", &format!("race-{k}-{i}"), 1)
                        .header("Contact", &dev.contact(&user, &format!("race-{k}-{i}")))
                        .header("Expires", "3600");
                    statuses.push(status(&dev.transact(to, &m)));
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<Vec<u16>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let elapsed = started.elapsed();
    eprintln!(
        "race: {} rounds x 2 nodes in {:.2} s ({:.1} ms per round)",
        statuses[0].len(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / statuses[0].len().max(1) as f64
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    for (k, s) in statuses.iter().enumerate() {
        assert_eq!(s.len(), ROUNDS, "node {k} did not finish in time");
        let bad: Vec<_> = s.iter().enumerate().filter(|(_, &c)| c != 200).collect();
        assert!(bad.is_empty(), "node {k} non-200s (round, status): {bad:?}");
    }
    let cmds: String = (0..ROUNDS)
        .map(|i| format!("HLEN fs:race{i}@example.com\n"))
        .collect();
    let lens = redis.pipe(&cmds);
    assert_eq!(lens.len(), ROUNDS);
    let lost: Vec<_> = lens
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() != "2")
        .collect();
    assert!(lost.is_empty(), "AORs without both bindings: {lost:?}");
    // Each attempt of an update is one WATCH: attempts beyond 2 per round were retries
    // after a concurrent write (EXEC answered nil).
    let stats = redis.cli(&["info", "commandstats"]);
    let watches = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_watch:calls="))
        .and_then(|v| v.split(',').next())
        .unwrap_or("0");
    eprintln!("race: {watches} WATCHes for {} updates", 2 * ROUNDS);
}

// === 3. outage, under SIPp load ===

/// One line of the `register_200_or_503.xml` `<log>` file: `<status> <user> <date>\t<time>\t
/// <unix seconds.micros> [Retry-After]`.
struct Answer {
    status: u16,
    user: String,
    /// When SIPp received it, unix seconds (the wall clock this test also reads).
    at: f64,
    retry_after: Option<u32>,
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The last `n` bytes of `s` (at a char boundary).
fn tail_of(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// SIPp registering `calls` new AORs (`<prefix><call number>@example.com`) at 200/s over UDP
/// towards a node's outside listener, with `register_200_or_503.xml`: each call ends on a
/// 200, or on a 503 with Retry-After, and logs one [`Answer`].
struct RegisterLoad {
    sipp: Sipp,
    dir: PathBuf,
    log: PathBuf,
    calls: usize,
}

impl RegisterLoad {
    fn start(dir: &Path, to: SocketAddr, prefix: &str, calls: usize) -> Self {
        let log = dir.join("load.answers.log");
        let sipp = Sipp::start(
            dir,
            "load",
            &scenario("register_200_or_503.xml"),
            Transport::Udp,
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            Some(to),
            &[
                "-m",
                &calls.to_string(),
                "-r",
                "200",
                "-timeout",
                "45s",
                "-key",
                "user_prefix",
                prefix,
                "-key",
                "domain",
                "example.com",
                "-trace_logs",
                "-log_file",
                log.to_str().unwrap(),
            ],
        );
        Self {
            sipp,
            dir: dir.to_path_buf(),
            log,
            calls,
        }
    }

    /// The answers so far, in the order SIPp logged them.
    fn answers(&self) -> Vec<Answer> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(Answer {
                    status: f.first()?.parse().ok()?,
                    user: (*f.get(1)?).to_owned(),
                    at: f.get(4)?.parse().ok()?,
                    retry_after: f.get(5).and_then(|v| v.parse().ok()),
                })
            })
            .collect()
    }

    fn count(&self, status: u16) -> usize {
        self.answers().iter().filter(|a| a.status == status).count()
    }

    /// Waits until `n` answers of `status` are logged; fails after `wait`.
    fn wait_count(&self, status: u16, n: usize, wait: Duration, node_log: &str) {
        let deadline = Instant::now() + wait;
        while self.count(status) < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} {status}s\n{}",
                self.count(status),
                self.report(node_log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIPp's unexpected events and screen, and the node's log; not the message trace, which
    /// holds thousands of messages.
    fn report(&self, node_log: &str) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "--- sipp errors:\n{}\n--- sipp screen:\n{}\n--- stg:\n{}",
            tail_of(&read("load.errors.log"), 4000),
            tail_of(&read("load.out"), 2500),
            tail_of(node_log, 4000)
        )
    }

    /// Waits for SIPp's exit and requires every call answered (200, or 503 with
    /// Retry-After) exactly once; the answers in time order.
    fn finish(&mut self, node_log: impl Fn() -> String) -> Vec<Answer> {
        let st = self.sipp.wait(Duration::from_secs(50));
        assert!(
            st.success(),
            "SIPp: {st} (a call got neither 200 nor 503 with Retry-After)\n{}",
            self.report(&node_log())
        );
        let mut all = self.answers();
        all.sort_by(|a, b| a.at.total_cmp(&b.at));
        assert_eq!(
            all.len(),
            self.calls,
            "one answer per REGISTER\n{}",
            self.report(&node_log())
        );
        all
    }
}

/// Issue 12's outage under load: SIPp registers 1,400 new AORs at 200/s through stg (UDP,
/// through mode, Redis store); Redis is killed (SIGKILL) once 300 have their 200 and started
/// again on the same port a second later, stg left running. Every REGISTER is answered 200,
/// or 503 with Retry-After (the scenario fails the call on anything else, or on silence);
/// there are 503s during the outage and only 200s again at the end; every AOR SIPp saw a 200
/// for is in Redis afterwards (`appendfsync always`: what Redis acknowledged survives its
/// kill, so a 200 for a write that never happened would show as a missing key).
#[test]
fn redis_outage_under_sipp_register_load() {
    const CALLS: usize = 1400;
    /// The tail of the run that must be all 200s: stg has recovered and stays so.
    const TAIL: usize = 200;
    let started = Instant::now();
    let mut redis = RedisSrv::start();
    let pbx = Pbx::start(3600);
    let dir = temp_dir("regstore-outage");
    let mut node = Node::start(
        &dir.join("stg"),
        Ports::new(),
        pbx.addr,
        &format!("{}{}", through("example.com"), store_section(&redis.url())),
    );
    let mut load = RegisterLoad::start(&dir, node.outside, "sippout", CALLS);
    load.wait_count(200, 300, Duration::from_secs(20), &node.log());

    let killed = unix_now_f64();
    redis.kill();
    // Down for about a second, and until stg has said so at least once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while load.count(503) == 0 || unix_now_f64() < killed + 1.0 {
        assert!(
            Instant::now() < deadline,
            "no 503 while Redis is down\n{}",
            load.report(&node.log())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.spawn();
    let restarted = unix_now_f64();

    let all = load.finish(|| node.log());
    assert!(node.proc.try_wait().is_none(), "stg exited\n{}", node.log());
    let ok: Vec<&Answer> = all.iter().filter(|a| a.status == 200).collect();
    let unavailable: Vec<&Answer> = all.iter().filter(|a| a.status == 503).collect();
    let first_503 = unavailable.first().map_or(0.0, |a| a.at - killed);
    let last_503 = unavailable.last().map_or(0.0, |a| a.at - restarted);
    let first_200_after = ok
        .iter()
        .find(|a| a.at > restarted)
        .map_or(f64::NAN, |a| a.at - restarted);
    eprintln!(
        "Redis outage under SIPp: {} REGISTERs at 200/s: {} 200s ({} after the restart), {} \
         503s (Retry-After {:?}); first 503 {first_503:.3} s after the kill, last \
         {last_503:.3} s after the restart, first 200 {first_200_after:.3} s after it; Redis \
         down {:.3} s; {:.1} s in all",
        all.len(),
        ok.len(),
        ok.iter().filter(|a| a.at > restarted).count(),
        unavailable.len(),
        unavailable
            .iter()
            .filter_map(|a| a.retry_after)
            .collect::<std::collections::BTreeSet<_>>(),
        restarted - killed,
        started.elapsed().as_secs_f64()
    );
    assert!(
        unavailable
            .iter()
            .any(|a| a.at > killed && a.at < restarted),
        "no 503 during the outage"
    );
    assert!(
        unavailable
            .iter()
            .all(|a| a.retry_after.is_some_and(|s| s > 0)),
        "a 503 without a usable Retry-After"
    );
    let bad_tail: Vec<&str> = all[CALLS - TAIL..]
        .iter()
        .filter(|a| a.status != 200)
        .map(|a| a.user.as_str())
        .collect();
    assert!(
        bad_tail.is_empty(),
        "not recovered: 503s among the last {TAIL} answers: {bad_tail:?}\n{}",
        load.report(&node.log())
    );

    let users: Vec<&str> = ok.iter().map(|a| a.user.as_str()).collect();
    let lost = missing_in_redis(&redis, &users);
    assert!(
        lost.is_empty(),
        "{} acknowledged bindings not in Redis: {lost:?}",
        lost.len()
    );
    // A 503 promises nothing either way (the write may have landed before the connection
    // broke), so this is a figure, not an assertion.
    let refused: Vec<&str> = unavailable.iter().map(|a| a.user.as_str()).collect();
    eprintln!(
        "Redis outage under SIPp: {} of the {} AORs answered 503 are in Redis",
        refused.len() - missing_in_redis(&redis, &refused).len(),
        refused.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// The users of `users` (AORs `<user>@example.com`) without exactly one binding in Redis.
fn missing_in_redis<'a>(redis: &RedisSrv, users: &[&'a str]) -> Vec<&'a str> {
    let cmds: String = users
        .iter()
        .map(|u| format!("HLEN fs:{u}@example.com\n"))
        .collect();
    let lens = redis.pipe(&cmds);
    assert_eq!(lens.len(), users.len(), "one HLEN reply per AOR");
    users
        .iter()
        .zip(&lens)
        .filter(|(_, l)| l.trim() != "1")
        .map(|(u, _)| *u)
        .collect()
}

// === 4. restart of stg ===

/// A device registers; a call from the inside reaches it; stg is killed (SIGKILL) and
/// started again on the same data dir and store: a call to the AOR is located (480: the
/// binding is there, its connection is gone), not 404.
fn bindings_survive_restart(store: &str, redis: Option<&RedisSrv>) {
    let pbx = Pbx::start(3600);
    let url = redis.map(RedisSrv::url).unwrap_or_default();
    let cfg = format!("{}{}", through("example.com"), store_section(&url));
    let dir = temp_dir(&format!("regstore-restart-{store}"));
    let node = Node::start(&dir, Ports::new(), pbx.addr, &cfg);
    let dev = Device::new();
    let m = dev
        .register("bob", "example.com", "restart-1", 1)
        .header("Contact", &dev.contact("bob", "bob-phone"))
        .header("Expires", "3600");
    assert_eq!(
        status(&dev.transact(node.outside, &m)),
        200,
        "{}",
        node.log()
    );

    // Before the restart the call reaches the device, which answers 486.
    let caller = std::thread::spawn({
        let inside = node.inside;
        move || invite_from_inside(inside, "sip:bob@example.com", Duration::from_secs(8))
    });
    let inv = crate::harness::recv_until(&dev.sock, Duration::from_secs(8), |r| {
        r.starts_with(b"INVITE ")
    })
    .unwrap_or_else(|| {
        panic!(
            "the device got no INVITE before the restart\n{}",
            node.log()
        )
    });
    let dst = node.outside;
    dev.sock
        .send_to(&reply(&inv, 486, "Busy Here", &[]), dst)
        .unwrap();
    let before = caller.join().unwrap();
    assert_eq!(status(&before), 486, "before the restart: {before:?}");

    let (dir, ports) = node.crash();
    let node = Node::start(&dir, ports, pbx.addr, &cfg);
    let after = invite_from_inside(node.inside, "sip:bob@example.com", Duration::from_secs(10));
    assert_eq!(
        status(&after),
        480,
        "after the restart ({store}): {:?}\n{}",
        after.map(|r| String::from_utf8_lossy(&r).into_owned()),
        node.log()
    );
    // And an AOR nobody registered is 404: the 480 above did come from the binding.
    let none = invite_from_inside(
        node.inside,
        "sip:nobody@example.com",
        Duration::from_secs(10),
    );
    assert_eq!(status(&none), 404);
}

/// The PBX side: an INVITE sent to a node's inside listener for `ruri`; the final
/// response, or `None` after `wait`.
fn invite_from_inside(inside: SocketAddr, ruri: &str, wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    let cid = format!("inv-{}", unique());
    let m = SipMessage::request("INVITE", ruri, &cid)
        .via(&format!(
            "{};rport",
            via("UDP", &local.to_string(), &format!("z9hG4bK-{cid}"))
        ))
        .set("From", "<sip:pbx@127.0.0.1>;tag=pbx1")
        .set("To", &format!("<{ruri}>"))
        .header("Contact", &format!("<sip:pbx@{local}>"))
        .build();
    sock.send_to(&m, inside).unwrap();
    crate::harness::recv_until(&sock, wait, |r| {
        status_code(r).is_some_and(|s| s >= 200)
            && header_values(r, "Call-ID").first() == Some(&cid)
    })
}

#[test]
fn bindings_survive_restart_embedded() {
    bindings_survive_restart("embedded", None);
}

#[test]
fn bindings_survive_restart_redis() {
    let redis = RedisSrv::start();
    bindings_survive_restart("redis", Some(&redis));
}

/// The restart half of issue 12 under load: SIPp registers 1,400 new AORs at 200/s through
/// stg (through mode, `store` = the embedded one or a Redis); stg is killed (SIGKILL) once 300
/// have their 200 and started again on the same data dir, ports and store. The REGISTERs sent
/// while it is down are carried across by SIPp's UDP retransmissions (500 ms, then doubling):
/// every one ends answered, and every AOR SIPp saw a 200 for is in the store afterwards (read
/// through the store API once stg has stopped, for redb's single writer).
fn stg_crash_under_sipp_register_load(redis: Option<&RedisSrv>) {
    const CALLS: usize = 1400;
    let started = Instant::now();
    let pbx = Pbx::start(3600);
    let url = redis.map(RedisSrv::url).unwrap_or_default();
    let cfg = format!("{}{}", through("example.com"), store_section(&url));
    let dir = temp_dir(&format!(
        "regstore-crash-load-{}",
        if redis.is_some() { "redis" } else { "embedded" }
    ));
    let node = Node::start(&dir.join("stg"), Ports::new(), pbx.addr, &cfg);
    let mut load = RegisterLoad::start(&dir, node.outside, "sippcrash", CALLS);
    load.wait_count(200, 300, Duration::from_secs(20), &node.log());
    let killed = unix_now_f64();
    let (node_dir, ports) = node.crash();
    let mut node = Node::start(&node_dir, ports, pbx.addr, &cfg);
    let up = unix_now_f64();
    let all = load.finish(|| node.log());

    let ok: Vec<&Answer> = all.iter().filter(|a| a.status == 200).collect();
    // REGISTERs sent more than once: those the crash left unanswered (and any lost by UDP).
    let sent = load
        .sipp
        .messages()
        .iter()
        .filter(|m| m.sent && m.is("REGISTER"))
        .count();
    eprintln!(
        "stg crash under SIPp ({}): {} REGISTERs at 200/s: {} 200s, {} 503s; stg down \
         {:.3} s (until /health), {} retransmissions; {:.1} s in all",
        if redis.is_some() { "redis" } else { "embedded" },
        all.len(),
        ok.len(),
        all.len() - ok.len(),
        up - killed,
        sent - CALLS,
        started.elapsed().as_secs_f64()
    );
    assert!(
        sent > CALLS,
        "no REGISTER was retransmitted: the crash did not fall inside the run"
    );
    assert!(
        ok.iter().any(|a| a.at > up),
        "no 200 after the restart\n{}",
        load.report(&node.log())
    );
    let users: Vec<&str> = ok.iter().map(|a| a.user.as_str()).collect();
    let lost = match redis {
        Some(redis) => missing_in_redis(redis, &users),
        None => {
            node.proc.signal("TERM");
            assert!(
                node.proc.wait_exit(Duration::from_secs(10)).is_some(),
                "stg did not stop on SIGTERM"
            );
            missing_in_embedded(&node.dir.join("data"), &users)
        }
    };
    assert!(
        lost.is_empty(),
        "{} acknowledged bindings lost across the crash: {lost:?}",
        lost.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// The users of `users` (AORs `<user>@example.com`) without exactly one binding in the
/// embedded store of `data_dir`.
fn missing_in_embedded<'a>(data_dir: &Path, users: &[&'a str]) -> Vec<&'a str> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = stg_store::Bindings::open("", data_dir).await.unwrap();
            let mut missing = Vec::new();
            for u in users {
                let record = store.get(&format!("{u}@example.com")).await.unwrap();
                if record.fields.len() != 1 {
                    missing.push(*u);
                }
            }
            missing
        })
}

#[test]
fn stg_crash_under_sipp_register_load_embedded() {
    stg_crash_under_sipp_register_load(None);
}

#[test]
fn stg_crash_under_sipp_register_load_redis() {
    let redis = RedisSrv::start();
    stg_crash_under_sipp_register_load(Some(&redis));
}

// === 5. RFC cases, local mode ===

/// A digest client for one user: the nonce of the last challenge and its count.
struct Auth {
    user: &'static str,
    password: &'static str,
    realm: String,
    nonce: String,
    nc: u32,
}

fn md5_hex(s: &str) -> String {
    use md5::Digest as _;
    md5::Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `(realm, nonce, stale)` of the MD5 challenge of a 401.
fn challenge(r: &[u8]) -> (String, String, bool) {
    let v = header_values(r, "WWW-Authenticate")
        .into_iter()
        .find(|v| v.contains("algorithm=MD5"))
        .unwrap_or_else(|| panic!("no MD5 challenge in {}", String::from_utf8_lossy(r)));
    let param = |name: &str| {
        let start = v.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        v[start..].split('"').next().unwrap().to_owned()
    };
    (param("realm"), param("nonce"), v.contains("stale=true"))
}

impl Auth {
    /// The `Authorization` value for the next REGISTER (nc + 1).
    fn next(&mut self, uri: &str) -> String {
        self.nc += 1;
        self.value(uri)
    }

    /// The `Authorization` value with the current nc (a replay when already used).
    fn value(&self, uri: &str) -> String {
        let ha1 = md5_hex(&format!("{}:{}:{}", self.user, self.realm, self.password));
        let ha2 = md5_hex(&format!("REGISTER:{uri}"));
        let nc = format!("{:08x}", self.nc);
        let cnonce = "c0ffee";
        let response = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce));
        format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
            self.user, self.realm, self.nonce
        )
    }
}

/// A local-mode node (domain example.com, Redis store, max_contacts 2) with user alice
/// (password "secret") in the SQLite of its data dir, written before it starts.
fn local_node(redis: &RedisSrv) -> (Node, Pbx) {
    local_node_with(redis, "")
}

/// [`local_node`] with more `[registrar]` keys.
fn local_node_with(redis: &RedisSrv, registrar: &str) -> (Node, Pbx) {
    let dir = temp_dir("regstore-local");
    let data = dir.join("data");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let users = stg_store::Users::open("", &data).await.unwrap();
            let ha1 = stg_auth::ha1(stg_auth::Algorithm::Md5, "alice", "example.com", "secret");
            users
                .set("alice", "example.com", &[("MD5", ha1)])
                .await
                .unwrap();
            users.close().await;
        });
    let pbx = Pbx::start(3600);
    let cfg = format!(
        "[registrar]\ndomains = [{{ name = \"example.com\", mode = \"local\" }}]\n\
         min_expires = \"60s\"\nmax_contacts = 2\n{registrar}\n{}",
        store_section(&redis.url())
    );
    (Node::start(&dir, Ports::new(), pbx.addr, &cfg), pbx)
}

/// Sends an unauthenticated REGISTER (Call-ID `cid`, CSeq 1) and returns the client for
/// the challenge it got.
fn challenged(dev: &Device, node: &Node, cid: &str) -> Auth {
    let m = dev
        .register("alice", "example.com", cid, 1)
        .header("Contact", &dev.contact("alice", "a-1"));
    let r = dev.transact(node.outside, &m);
    assert_eq!(status(&r), 401, "{}", node.log());
    let (realm, nonce, stale) = challenge(r.as_ref().unwrap());
    assert_eq!(realm, "example.com");
    assert!(!stale);
    Auth {
        user: "alice",
        password: "secret",
        realm,
        nonce,
        nc: 0,
    }
}

/// RFC 3261 §10.3 through a real stg in local mode: an old CSeq for the same Call-ID is
/// refused (500) and changes nothing; an Expires below the minimum is 423 with
/// Min-Expires; `Contact: *` needs Expires 0 (else 400) and removes every binding;
/// max_contacts = 2 evicts the oldest binding for a third device.
#[test]
fn local_mode_rfc3261_cases() {
    let redis = RedisSrv::start();
    let (node, pbx) = local_node(&redis);
    let dev = Device::new();
    let uri = "sip:example.com";
    let key = "fs:alice@example.com";
    let mut auth = challenged(&dev, &node, "cseq-1");

    // CSeq 5 binds; CSeq 5 again and CSeq 4 (same Call-ID) are refused, nothing changes.
    let reg = |cid: &str, cseq: u32, instance: &str, auth: &mut Auth| {
        dev.register("alice", "example.com", cid, cseq)
            .header("Contact", &dev.contact("alice", instance))
            .header("Expires", "3600")
            .header("Authorization", &auth.next(uri))
    };
    let r = dev.transact(node.outside, &reg("cseq-1", 5, "a-1", &mut auth));
    assert_eq!(status(&r), 200, "{}", node.log());
    let stored = redis.hgetall(key);
    assert_eq!(stored.len(), 1);
    assert!(stored[0].1.contains(";cseq=5;"), "{stored:?}");
    for cseq in [5, 4] {
        let r = dev.transact(node.outside, &reg("cseq-1", cseq, "a-1", &mut auth));
        assert_eq!(status(&r), 500, "CSeq {cseq} after 5");
        assert_eq!(redis.hgetall(key), stored, "binding changed by CSeq {cseq}");
    }
    // A higher CSeq refreshes it.
    let r = dev.transact(node.outside, &reg("cseq-1", 6, "a-1", &mut auth));
    assert_eq!(status(&r), 200);
    assert!(redis.hgetall(key)[0].1.contains(";cseq=6;"));

    // Expires below min_expires: 423 with Min-Expires, nothing written.
    let m = dev
        .register("alice", "example.com", "short-1", 1)
        .header("Contact", &dev.contact("alice", "a-short"))
        .header("Expires", "30")
        .header("Authorization", &auth.next(uri));
    let r = dev.transact(node.outside, &m).unwrap();
    assert_eq!(status_code(&r), Some(423));
    assert_eq!(header_values(&r, "Min-Expires"), ["60"]);
    assert_eq!(redis.hgetall(key).len(), 1);

    // max_contacts = 2: a second device binds; a third evicts the oldest (a-1, made a
    // second earlier than the others: updatedAt is in whole seconds).
    let t = unix_now();
    wait_for(Duration::from_secs(2), "the next second", || unix_now() > t);
    for (cid, instance) in [("dev-2", "a-2"), ("dev-3", "a-3")] {
        let r = dev.transact(node.outside, &reg(cid, 1, instance, &mut auth));
        assert_eq!(status(&r), 200);
    }
    let fields: Vec<String> = redis.hgetall(key).into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields.len(),
        2,
        "max_contacts = 2 but {} bindings: {fields:?}",
        fields.len()
    );
    assert!(
        !fields.contains(&"\"<urn:uuid:a-1>\"".to_owned()),
        "the oldest (a-1) was kept: {fields:?}"
    );

    // Contact: * with a non-zero Expires is malformed.
    let star = |expires: &str, cseq: u32, auth: &mut Auth| {
        dev.register("alice", "example.com", "star-1", cseq)
            .header("Contact", "*")
            .header("Expires", expires)
            .header("Authorization", &auth.next(uri))
    };
    let r = dev.transact(node.outside, &star("60", 1, &mut auth));
    assert_eq!(status(&r), 400);
    assert_eq!(redis.hgetall(key).len(), 2);
    // With Expires 0 it removes every binding of the AOR.
    let r = dev.transact(node.outside, &star("0", 2, &mut auth));
    assert_eq!(status(&r), 200, "{}", node.log());
    assert!(header_values(r.as_ref().unwrap(), "Contact").is_empty());
    assert_eq!(redis.cli(&["exists", key]).trim(), "0");
    assert_eq!(
        pbx.registers.load(Ordering::Relaxed),
        0,
        "local mode went upstream"
    );
}

/// A REGISTER whose credentials reuse a nonce count already accepted is refused with a new
/// challenge and logged as a TRUCO_KO line (replayed_nonce); nothing is stored by it.
#[test]
fn local_mode_replayed_nonce_is_refused_and_logged() {
    let redis = RedisSrv::start();
    let (node, _pbx) = local_node(&redis);
    let dev = Device::new();
    let uri = "sip:example.com";
    let mut auth = challenged(&dev, &node, "replay-1");
    let authz = auth.next(uri);
    let m = |cseq: u32| {
        dev.register("alice", "example.com", "replay-1", cseq)
            .header("Contact", &dev.contact("alice", "a-1"))
            .header("Expires", "3600")
            .header("Authorization", &authz)
    };
    assert_eq!(status(&dev.transact(node.outside, &m(2))), 200);
    let stored = redis.hgetall("fs:alice@example.com");
    // The same credentials (same nonce, same nc) on a new request.
    let r = dev.transact(node.outside, &m(3));
    assert_eq!(status(&r), 401, "replayed nc accepted");
    let (_, _, stale) = challenge(r.as_ref().unwrap());
    assert!(!stale, "a replay is a failure, not a stale nonce");
    assert_eq!(redis.hgetall("fs:alice@example.com"), stored);
    wait_for(Duration::from_secs(5), "the TRUCO_KO line", || {
        node.log()
            .contains("TRUCO_KO 127.0.0.1 sip replayed_nonce alice")
    });
    // nc + 1 on the same nonce is fine.
    let m = dev
        .register("alice", "example.com", "replay-1", 4)
        .header("Contact", &dev.contact("alice", "a-1"))
        .header("Expires", "3600")
        .header("Authorization", &auth.next(uri));
    assert_eq!(status(&dev.transact(node.outside, &m)), 200);
}

/// A nonce older than its lifetime (`registrar.nonce_ttl`, 2 s here) gets a new challenge
/// with `stale=true`, not a failure.
#[test]
fn local_mode_stale_nonce_is_rechallenged_stale() {
    let redis = RedisSrv::start();
    let (node, _pbx) = local_node_with(&redis, "nonce_ttl = \"2s\"\n");
    let dev = Device::new();
    let uri = "sip:example.com";
    let mut auth = challenged(&dev, &node, "stale-1");
    let reg = |cseq: u32, auth: &mut Auth| {
        dev.register("alice", "example.com", "stale-1", cseq)
            .header("Contact", &dev.contact("alice", "a-1"))
            .header("Expires", "3600")
            .header("Authorization", &auth.next(uri))
    };
    assert_eq!(status(&dev.transact(node.outside, &reg(2, &mut auth))), 200);
    // The one wait of this test: the nonce must age past its lifetime.
    std::thread::sleep(Duration::from_millis(2500));
    let r = dev.transact(node.outside, &reg(3, &mut auth));
    assert_eq!(status(&r), 401);
    let (_, nonce, stale) = challenge(r.as_ref().unwrap());
    assert!(stale, "no stale=true on an expired nonce");
    assert_ne!(nonce, auth.nonce);
    assert!(
        !node.log().contains("TRUCO_KO"),
        "a stale nonce was logged as a failure"
    );
}

// === 6. a record written by Flexisip ===

/// The customer's record (seed READING.md §5) as Flexisip stores it, with the path's
/// Flexisip node rewritten to a socket of this test: a call from the inside to the AOR goes
/// to that node (the binding's Path: its fs-conn-id is Flexisip's, not stg's), with Route =
/// the path and Request-URI = the contact.
#[test]
fn flexisip_record_is_routed_along_its_path() {
    let redis = RedisSrv::start();
    let flexisip = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fport = flexisip.local_addr().unwrap().port();
    let now = unix_now();
    let instance = "<urn:uuid:3b9c7f1e-5a2d-4c8e-9f10-aa55bb66cc77>";
    let contact_uri = "sip:40004*01@79.146.86.86:33030;pn-prid=dGVzdC1mY20tdG9rZW4:APA91b;\
                       pn-provider=fcm;pn-param=mdtel-app;pn-silent=1;pn-timeout=0;transport=tls";
    let value = format!(
        "\"JAC\" <{contact_uri};fs-conn-id=7f3a9c0e12d4b5a6;callid=vXk3Jr9mQp;expires=36000;\
         cseq=21;updatedAt={now};alias=no;usedAsRoute=no\
         ?path=%3Csip%3A127.0.0.1%3A{fport}%3Btransport%3Dudp%3Bfs-proxy-id%3D5e1d2c3b4a%3Blr%3E\
         %2C%3Csips%3A127.0.0.1%3A5554%3Blr%3E\
         &accept=application/sdp%2Ctext/plain%2Capplication/vnd.gsma.rcs-ft-http+xml\
         &user-agent=LinphoneAndroid/5.2.0%20(JAC)%20LinphoneSDK/5.3.0>\
         ;+sip.instance=\"{instance}\";+org.linphone.specs=\"ephemeral/1.1,groupchat/1.2,lime\"\
         ;pub-gruu=\"sip:40004*01@sips.mdtel.es;gr=urn:uuid:3b9c7f1e-5a2d-4c8e-9f10-aa55bb66cc77\""
    );
    let field = format!("\"{instance}\"");
    // The record reads back as Flexisip wrote it.
    let b = stg_registrar::Binding::decode(&field, &value).expect("seed record decodes");
    assert_eq!(
        b.encode(),
        value,
        "seed record does not re-encode byte-identical"
    );
    assert_eq!(b.path.len(), 2);
    let key = "fs:40004*01@sips.mdtel.es";
    redis.cli(&["hset", key, &field, &value]);
    redis.cli(&["expireat", key, &(now + 36000).to_string()]);

    let pbx = Pbx::start(3600);
    let node = Node::start(
        &temp_dir("regstore-seed"),
        Ports::new(),
        pbx.addr,
        &format!(
            "{}{}",
            through("sips.mdtel.es"),
            store_section(&redis.url())
        ),
    );
    let caller = std::thread::spawn({
        let inside = node.inside;
        move || invite_from_inside(inside, "sip:40004*01@sips.mdtel.es", Duration::from_secs(8))
    });
    let got = crate::harness::recv_until(&flexisip, Duration::from_secs(8), |r| {
        r.starts_with(b"INVITE ")
    });
    let Some(inv) = got else {
        let answer = caller.join().unwrap();
        panic!(
            "nothing reached the Flexisip node of the path; the caller got {:?}\n{}",
            answer.map(|r| String::from_utf8_lossy(&r).into_owned()),
            node.log()
        );
    };
    let text = String::from_utf8_lossy(&inv).into_owned();
    let ruri = text.lines().next().unwrap();
    assert!(
        ruri.starts_with("INVITE sip:40004*01@79.146.86.86:33030;"),
        "Request-URI is not the contact: {ruri}"
    );
    let routes = header_values(&inv, "Route").join(",");
    assert!(
        routes.contains(&format!(
            "sip:127.0.0.1:{fport};transport=udp;fs-proxy-id=5e1d2c3b4a;lr"
        )) && routes.contains("sips:127.0.0.1:5554;lr"),
        "Route is not the path: {routes:?}\n{text}"
    );
    flexisip
        .send_to(&reply(&inv, 486, "Busy Here", &[]), node.inside)
        .unwrap();
    assert_eq!(status(&caller.join().unwrap()), 486);
}

// === 5. a REGISTER flood against a stalled store ===

/// Redis stops answering (SIGSTOP) while REGISTERs pour in: at most 512 wait for the store
/// (`MAX_STORE_OPS`), every other one is answered 503 with Retry-After at once and counted,
/// memory stays put, and when Redis answers again (SIGCONT) registering works without a
/// restart of stg.
#[test]
fn a_register_flood_against_a_stalled_store_is_capped_and_answered_503() {
    let redis = RedisSrv::start();
    let pbx = Pbx::start(3600);
    let node = Node::start(
        &temp_dir("regstore-flood"),
        Ports::new(),
        pbx.addr,
        &format!("{}{}", through("example.com"), store_section(&redis.url())),
    );
    let dev = Device::new();
    let warm = dev
        .register("warm", "example.com", "flood-warm", 1)
        .header("Contact", &dev.contact("warm", "flood-warm"))
        .header("Expires", "3600");
    assert_eq!(
        status(&dev.transact(node.outside, &warm)),
        200,
        "{}",
        node.log()
    );
    let signal = |sig: &str| redis.proc.as_ref().unwrap().signal(sig);
    signal("STOP");
    let admin: SocketAddr = format!("127.0.0.1:{}", node.ports.admin).parse().unwrap();
    let metric = |name: &str| {
        http_get(admin, "/metrics")
            .and_then(|m| crate::harness::metric_in(&m, name))
            .unwrap_or(0.0)
    };
    let rss_before = stg_testkit::procfs::rss_kib(node.proc.pid()).unwrap_or(0);
    // 1,520 REGISTERs of distinct AORs from 8 addresses (each under its per-source budget
    // of 200 requests awaiting an answer), sent without waiting: UDP, no retransmission.
    const PER_SOURCE: usize = 190;
    let devices: Vec<Device> = (2..10)
        .map(|k| {
            let sock = UdpSocket::bind(format!("127.0.0.{k}:0")).unwrap();
            let local = sock.local_addr().unwrap();
            Device { sock, local }
        })
        .collect();
    let n = PER_SOURCE * devices.len();
    for (k, d) in devices.iter().enumerate() {
        for i in 0..PER_SOURCE {
            let user = format!("flood{k}-{i}");
            let m = d
                .register(&user, "example.com", &format!("flood-{k}-{i}"), 1)
                .header("Contact", &d.contact(&user, &format!("flood-{k}-{i}")))
                .header("Expires", "3600");
            d.sock.send_to(&m.build(), node.outside).unwrap();
        }
    }
    let mut unavailable = 0;
    let mut retry_after = 0;
    let mut other = Vec::new();
    let mut buf = vec![0u8; 65536];
    for d in &devices {
        d.sock.set_nonblocking(true).unwrap();
    }
    // Until every refused REGISTER has its answer, or 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    while unavailable < n - 512 && Instant::now() < deadline {
        let mut got = false;
        for d in &devices {
            while let Ok((len, _)) = d.sock.recv_from(&mut buf) {
                got = true;
                let r = buf[..len].to_vec();
                match status_code(&r) {
                    Some(503) => {
                        unavailable += 1;
                        if !header_values(&r, "Retry-After").is_empty() {
                            retry_after += 1;
                        }
                    }
                    s => other.push(s),
                }
            }
        }
        if !got {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for d in &devices {
        d.sock.set_nonblocking(false).unwrap();
    }
    let overloaded =
        metric("stg_registrar_registers_total{mode=\"through\",result=\"overloaded\"}");
    let rss_after = stg_testkit::procfs::rss_kib(node.proc.pid()).unwrap_or(0);
    signal("CONT");
    assert!(
        overloaded >= (n - 512) as f64 - 10.0,
        "at most 512 REGISTERs wait for the store: {overloaded} refused as overloaded\n{}",
        node.log()
    );
    assert!(
        unavailable as f64 >= overloaded,
        "each refused one is answered 503 ({unavailable} 503s, {overloaded} overloaded, others {other:?})"
    );
    assert_eq!(retry_after, unavailable, "every 503 says when to come back");
    assert!(
        !other.contains(&Some(200)),
        "no 200 while the store cannot keep the binding"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory held while the store stalls: {rss_before} → {rss_after} KiB"
    );
    // Redis answers again: a new registration goes through, stg was not restarted.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    loop {
        i += 1;
        let m = dev
            .register("after", "example.com", &format!("flood-after-{i}"), 1)
            .header("Contact", &dev.contact("after", "flood-after"))
            .header("Expires", "3600");
        if status(&dev.transact(node.outside, &m)) == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after SIGCONT:\n{}",
            node.log()
        );
    }
}
