//! Starting the real `stg` binary with a test configuration, and small helpers shared by the
//! interop tests. The generic parts (temp dirs, ports, child processes killed by PID on
//! drop, the loopback-only namespace, SIP text) live in `stg-testkit`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stg_testkit::sip::{header_values, status_code, via, SipMessage};

pub(crate) use stg_testkit::netns::Netns;
pub(crate) use stg_testkit::process::Process as Peer;
pub(crate) use stg_testkit::{
    conformance_dir, free_port, free_port_on, manifest, shared_dir, temp_dir,
};

/// How to start a node beyond its configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StgOpts<'a> {
    /// `[log] level`.
    pub(crate) log_level: &'a str,
    /// A command the node runs under, e.g. `["prlimit", "--nofile=1024:1024", "--"]` (it
    /// must exec the node, so the PID stays the node's).
    pub(crate) wrapper: &'a [&'a str],
}

impl Default for StgOpts<'_> {
    fn default() -> Self {
        Self {
            log_level: "debug",
            wrapper: &[],
        }
    }
}

/// A running `stg run`.
pub(crate) struct StgNode {
    proc: Peer,
    pub(crate) dir: PathBuf,
    pub(crate) admin: SocketAddr,
}

impl StgNode {
    /// Writes `config` (its `[node]`, `[admin]` and `[log]` sections are added here) and
    /// starts the node; returns once `/health` answers.
    pub(crate) fn start(name: &str, config: &str) -> Self {
        Self::start_with(name, config, StgOpts::default())
    }

    /// [`Self::start`] with a log level and a wrapper command.
    pub(crate) fn start_with(name: &str, config: &str, opts: StgOpts<'_>) -> Self {
        Self::start_in(temp_dir(name), config, opts)
    }

    /// [`Self::start_with`] in a given directory: a node started again in the directory of
    /// a stopped one finds its data dir (a restart).
    pub(crate) fn start_in(dir: PathBuf, config: &str, opts: StgOpts<'_>) -> Self {
        let admin_port = free_port();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let full = format!(
            "[node]\ndata_dir = \"{}\"\n\n[admin]\nlisten = \"{admin}\"\n\n[log]\nformat = \"human\"\nlevel = \"{}\"\n\n{config}",
            dir.join("data").display(),
            opts.log_level
        );
        let cfg = dir.join("stg.toml");
        std::fs::write(&cfg, full).unwrap();
        let mut cmd = match opts.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(env!("CARGO_BIN_EXE_stg"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_stg")),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("NO_COLOR", "1");
        let proc = Peer::spawn("stg", "(built by cargo)", cmd, &dir.join("stg.log"));
        let mut node = Self { proc, dir, admin };
        node.wait_healthy();
        node
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.proc.try_wait() {
                panic!("stg exited early ({status}):\n{}", self.log());
            }
            if http_get(self.admin, "/health").is_some_and(|b| b.contains("ok")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("stg did not become healthy:\n{}", self.log());
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything the node logged so far.
    pub(crate) fn log(&self) -> String {
        self.proc.output()
    }

    /// The Prometheus text of `/metrics`.
    pub(crate) fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap_or_default()
    }

    /// One metric's value (first sample whose line starts with `prefix`).
    pub(crate) fn metric(&self, prefix: &str) -> Option<f64> {
        metric_in(&self.metrics(), prefix)
    }

    /// One metric's value, 0 when it was never set.
    pub(crate) fn counter(&self, prefix: &str) -> f64 {
        self.metric(prefix).unwrap_or(0.0)
    }

    /// The sum of every sample of the metric `name`, whatever its labels.
    pub(crate) fn counter_sum(&self, name: &str) -> f64 {
        metric_sum_in(&self.metrics(), name)
    }

    /// Polls `/metrics` until `counter(prefix)` reaches `at_least` or `timeout` passes;
    /// returns the last value seen.
    pub(crate) fn wait_counter(&self, prefix: &str, at_least: f64, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.counter(prefix);
            if v >= at_least || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resident memory, KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        stg_testkit::procfs::rss_kib(self.pid()).unwrap_or(0)
    }

    /// CPU time used so far (user + system), seconds.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        stg_testkit::procfs::cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// Open file descriptors.
    pub(crate) fn fd_count(&self) -> usize {
        stg_testkit::procfs::fd_count(self.pid()).unwrap_or(0)
    }

    /// Sends a signal to the node (`HUP`, `TERM`).
    pub(crate) fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    /// Waits for the process to exit; `None` on timeout.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    /// Stops the node (SIGTERM: it drains) and starts it again on the same configuration,
    /// data and ports; returns once `/health` answers. The new run logs to a file of its own.
    pub(crate) fn restart(&mut self) {
        self.signal("TERM");
        assert!(
            self.wait_exit(Duration::from_secs(30)).is_some(),
            "stg did not stop:\n{}",
            self.log()
        );
        let runs = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("stg"))
                })
                .count()
            })
            .unwrap_or(0);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stg"));
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.join("stg.toml"))
            .env("NO_COLOR", "1");
        let log = self.dir.join(format!("stg-run{runs}.log"));
        self.proc = Peer::spawn("stg", "(built by cargo)", cmd, &log);
        self.wait_healthy();
    }

    /// Is it still running?
    pub(crate) fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    /// A path inside the node's temp dir.
    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
}

/// The first sample in Prometheus text whose line starts with `prefix`.
pub(crate) fn metric_in(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every sample of the metric `name` in Prometheus text.
pub(crate) fn metric_sum_in(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP GET (the admin endpoint closes after one response).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    out.starts_with("HTTP/1.1 200").then_some(body)
}

/// A TCP connection to `dst` from the local address `src` (any address on `lo`: 127.0.0.x,
/// or one a namespace added).
pub(crate) fn connect_from(src: &str, dst: SocketAddr) -> TcpStream {
    try_connect_from(src, dst).unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"))
}

/// [`connect_from`], failing softly (within two seconds).
pub(crate) fn try_connect_from(src: &str, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let ip: std::net::IpAddr = src.parse().unwrap();
    let domain = if ip.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(ip, 0).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// Every datagram that arrives on `sock` within `window`.
pub(crate) fn recv_all(sock: &UdpSocket, window: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65535];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => out.push((buf[..n].to_vec(), from)),
            Err(_) => break,
        }
    }
    out
}

/// Reads one SIP message from a stream (by `Content-Length`); `Err(())` when the
/// connection closed (EOF or reset), `Ok(None)` on timeout.
pub(crate) fn read_sip(s: &mut TcpStream, wait: Duration) -> Result<Option<Vec<u8>>, ()> {
    s.set_read_timeout(Some(wait)).unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let cl: usize = header_values(&buf, "Content-Length")
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + cl {
                buf.truncate(end + 4 + cl);
                return Ok(Some(buf));
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(_) => return Err(()),
        }
    }
}

/// `sh -c cmd`, which must succeed; its stdout.
pub(crate) fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Datagrams the kernel dropped at the UDP socket bound to `local` for want of buffer
/// space (the `drops` column of `/proc/net/udp` or `udp6`, this network namespace only).
pub(crate) fn udp_socket_drops(local: SocketAddr) -> u64 {
    let (file, want) = match local {
        SocketAddr::V4(a) => (
            "/proc/net/udp",
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            ("/proc/net/udp6", format!("{words}:{:04X}", a.port()))
        }
    };
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// A `redis-server` on 127.0.0.1 with nothing persisted: a victim that must never hear from
/// stg. Its connection count leaves out the `redis-cli` calls the test itself makes.
pub(crate) struct Redis {
    pub(crate) port: u16,
    own_calls: std::cell::Cell<u64>,
    _proc: Peer,
}

impl Redis {
    pub(crate) fn start() -> Self {
        let dir = temp_dir("redis");
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir);
        let proc = Peer::spawn("redis-server", "redis-server", cmd, &dir.join("redis.log"));
        let r = Self {
            port,
            own_calls: std::cell::Cell::new(0),
            _proc: proc,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cli(&["ping"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// `redis-cli -p PORT args...`, its stdout.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        self.own_calls.set(self.own_calls.get() + 1);
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools) is needed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of `key`, "" when unset.
    pub(crate) fn get(&self, key: &str) -> String {
        self.cli(&["get", key]).trim().to_string()
    }

    /// Connections redis accepted from anyone but this test's `redis-cli`.
    pub(crate) fn foreign_connections(&self) -> u64 {
        let info = self.cli(&["info", "stats"]);
        let total: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO stats without total_connections_received");
        total.saturating_sub(self.own_calls.get())
    }
}

// === for the attack tests ===

/// `[[sip.listen]]` tables for `(transport, address)` pairs.
pub(crate) fn listeners(list: &[(&str, SocketAddr)]) -> String {
    list.iter()
        .map(|(t, a)| format!("\n[[sip.listen]]\ntransport = \"{t}\"\naddress = \"{a}\"\n"))
        .collect()
}

pub(crate) fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A request from `local` (its Via names it, with `rport`), padded to 600 bytes as a real
/// phone's would be: stg's own answer to it is then smaller than the request, so the
/// amplification rule never holds it back.
pub(crate) fn request(
    method: &str,
    uri: &str,
    call_id: &str,
    transport: &str,
    local: SocketAddr,
) -> SipMessage {
    SipMessage::request(method, uri, call_id)
        .via(&format!(
            "{};rport",
            via(transport, &local.to_string(), &format!("z9hG4bK-{call_id}"))
        ))
        .padded_to(600)
}

/// A legitimate device at `from_ip` asks the node for OPTIONS over UDP: `true` when a 200
/// comes back (three tries of a second).
pub(crate) fn udp_device_served(stg: SocketAddr, from_ip: &str, tag: &str) -> bool {
    let sock = UdpSocket::bind((from_ip, 0)).unwrap();
    let local = sock.local_addr().unwrap();
    for i in 0..3 {
        let cid = format!("legit-{tag}-{i}");
        let m = request("OPTIONS", &format!("sip:{stg}"), &cid, "UDP", local).build();
        sock.send_to(&m, stg).unwrap();
        let got = recv_until(&sock, Duration::from_secs(1), |raw| {
            header_values(raw, "Call-ID").first().map(String::as_str) == Some(cid.as_str())
                && status_code(raw).is_some_and(|s| s >= 200)
        });
        if let Some(raw) = got {
            return status_code(&raw) == Some(200);
        }
    }
    false
}

/// A legitimate device at `from_ip` opens a TCP connection and asks the node for OPTIONS:
/// `true` when a 200 comes back within two seconds.
pub(crate) fn tcp_device_served(stg: SocketAddr, from_ip: &str, tag: &str) -> bool {
    let Ok(mut s) = try_connect_from(from_ip, stg) else {
        return false;
    };
    let local = s.local_addr().unwrap();
    let m = request(
        "OPTIONS",
        &format!("sip:{stg}"),
        &format!("legit-{tag}"),
        "TCP",
        local,
    );
    if s.write_all(&m.build()).is_err() {
        return false;
    }
    matches!(read_sip(&mut s, Duration::from_secs(2)), Ok(Some(r)) if status_code(&r) == Some(200))
}

/// The first datagram within `wait` for which `want` holds.
pub(crate) fn recv_until(
    sock: &UdpSocket,
    wait: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65535];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if want(&buf[..n]) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// A TCP and a UDP listener on one address that record whether anything reached them.
pub(crate) struct Victim {
    pub(crate) addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Victim {
    pub(crate) fn start(ip: &str) -> Self {
        let port = free_port_on(ip);
        let addr = addr(ip, port);
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let udp = UdpSocket::bind(addr).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let tcp = TcpListener::bind(addr).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (h, s) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65535];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    h.lock().unwrap().push(format!(
                        "UDP from {from}: {:?}",
                        String::from_utf8_lossy(&buf[..n.min(60)])
                    ));
                }
                if let Ok((_, from)) = tcp.accept() {
                    h.lock()
                        .unwrap()
                        .push(format!("TCP connection from {from}"));
                }
            }
        });
        Self { addr, hits, stop }
    }

    pub(crate) fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A child spawned with pipes (so not a testkit `Process`), killed by its PID on drop.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Samples a process's RSS every 100 ms until stopped; returns the highest, KiB.
pub(crate) fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            max = max.max(stg_testkit::procfs::rss_kib(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(100));
        }
        max
    })
}

pub(crate) fn udp_socket_with_big_buffer(ip: &str) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(8 << 20);
    s.bind(&addr(ip, 0).into()).unwrap();
    s.into()
}

/// Checks `cond` every 20 ms until it holds (true) or `wait` has passed (false): a wait for
/// an event the test can only observe by looking again.
pub(crate) fn poll_until(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most `wait`) for `needle` in the node's log; the log, or a panic with it.
pub(crate) fn wait_log(stg: &StgNode, needle: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    loop {
        let log = stg.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to its end, killed (by its PID) if it takes longer than `limit`; its stdout and
/// stderr together.
pub(crate) fn output_within(mut cmd: Command, limit: Duration) -> String {
    let dir = temp_dir("output");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    format!(
        "{}{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    )
}
