//! The guard's outside inputs in a running node: a followed log file (`[[guard.logs]]`)
//! across rotation by rename, truncation and a restart, and the syslog intake (UDP and TCP,
//! RFC 3164 and 5424) from allowed and other sources; `stg ban status` and
//! `stg ban list --jail`, and the ban's `TRUCO_KO` line on the local syslog socket.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{free_port, temp_dir, StgNode, StgOpts};

const LOG_FAILURES: &str = "stg_guard_input_failures_total{input=\"log\"}";
const SYSLOG_FAILURES: &str = "stg_guard_input_failures_total{input=\"syslog\"}";

fn node_config(port: u16, guard: &str) -> String {
    format!(
        "[sip]\nupstream = \"sip:127.0.0.1:{}\"\n\n[guard]\n{guard}\n\n\
         [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n",
        free_port()
    )
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Lines without a date: a dated line is placed at its time, and one older than
/// `findtime` is not counted (`stg_guard_input_too_old_total`).
fn truco(ip: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("web fonbo[7]: TRUCO_KO {ip} /fonbo token invalido {i}\n"))
        .collect()
}

/// Waits until the counter is exactly `want`, then checks it stays there for `settle`
/// (nothing is counted twice).
fn exactly(stg: &StgNode, metric: &str, want: f64, settle: Duration) {
    let got = stg.wait_counter(metric, want, Duration::from_secs(10));
    let guard_metrics: Vec<String> = stg
        .metrics()
        .lines()
        .filter(|l| l.starts_with("stg_guard"))
        .map(str::to_owned)
        .collect();
    assert_eq!(got, want, "{metric}\n{guard_metrics:#?}\n{}", stg.log());
    std::thread::sleep(settle);
    assert_eq!(stg.counter(metric), want, "{metric} grew\n{}", stg.log());
}

fn stg_cli(stg: &StgNode, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stg"))
        .args(["--config", stg.dir.join("stg.toml").to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bans(stg: &StgNode) -> String {
    crate::harness::http_get(stg.admin, "/guard/bans").unwrap_or_default()
}

#[test]
fn a_followed_log_bans_across_rotation_truncation_and_restart() {
    let dir = temp_dir("guard-tail");
    let log = dir.join("fonbo.log");
    let sock_path = dir.join("syslog.sock");
    let syslog = UnixDatagram::bind(&sock_path).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Old lines before the first start: a file met first is read from its end.
    std::fs::write(&log, truco("192.0.2.50", 20)).unwrap();
    let guard = format!(
        "tail_poll = \"50ms\"\nban_syslog = \"{}\"\n\n[[guard.logs]]\npath = \"{}\"\n\
         filter = \"truco-ko\"\njail = \"fonbo\"\nmaxretry = 11\n",
        sock_path.display(),
        log.display()
    );
    let cfg = node_config(free_port(), &guard);
    let run_dir = dir.join("node");
    std::fs::create_dir_all(&run_dir).unwrap();
    let stg = StgNode::start_in(run_dir.clone(), &cfg, StgOpts::default());
    let settle = Duration::from_millis(400);
    exactly(&stg, LOG_FAILURES, 0.0, settle);

    // A dated line from long ago (a backlog): not counted.
    append(
        &log,
        "Jan  1 00:00:00 web fonbo[7]: TRUCO_KO 192.0.2.50 old\n",
    );
    assert!(
        stg.wait_counter(
            "stg_guard_input_too_old_total",
            1.0,
            Duration::from_secs(10)
        ) >= 1.0
    );
    append(&log, &truco("192.0.2.50", 4));
    exactly(&stg, LOG_FAILURES, 4.0, Duration::ZERO);
    // Rotation by rename: the writer still finishes a line into the old file, whose last
    // line has no newline yet; then the new file.
    let old = dir.join("fonbo.log.1");
    std::fs::rename(&log, &old).unwrap();
    append(&old, &truco("192.0.2.50", 1));
    append(&old, "web fonbo[7]: TRUCO_KO 192.0.2.50 unfinished");
    append(&log, &truco("192.0.2.50", 2));
    exactly(&stg, LOG_FAILURES, 8.0, settle);
    // Truncation (copytruncate), then a line.
    std::fs::write(&log, "").unwrap();
    append(&log, &truco("192.0.2.50", 1));
    exactly(&stg, LOG_FAILURES, 9.0, settle);
    // The 10th does not ban, the 11th does.
    append(&log, &truco("192.0.2.50", 1));
    exactly(&stg, LOG_FAILURES, 10.0, settle);
    assert!(!bans(&stg).contains("192.0.2.50"), "{}", bans(&stg));
    append(&log, &truco("192.0.2.50", 1));
    let text = crate::harness::wait_log(
        &stg,
        "TRUCO_KO [192.0.2.50] stg fonbo",
        Duration::from_secs(5),
    );
    assert!(text.contains("[fonbo] Ban 192.0.2.50/32"), "{text}");
    // The ban's line on the local syslog socket, as `logger -t` writes it.
    let mut buf = [0u8; 2048];
    let n = syslog.recv(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    assert!(line.starts_with("<13>"), "{line}");
    assert!(
        line.contains("]: TRUCO_KO [192.0.2.50] stg fonbo "),
        "{line}"
    );

    // Operators' views.
    let list = stg_cli(&stg, &["ban", "list", "--jail", "fonbo"]);
    assert!(list.starts_with("192.0.2.50/32\t"), "{list}");
    assert!(list.trim_end().ends_with("\tfonbo"), "{list}");
    assert_eq!(stg_cli(&stg, &["ban", "list", "--jail", "sip"]), "");
    let status: serde_json::Value =
        serde_json::from_str(&stg_cli(&stg, &["ban", "status", "--json"])).unwrap();
    let row = status["jails"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["jail"] == "fonbo")
        .cloned()
        .unwrap();
    assert_eq!(row["failures"], 11, "{status}");
    assert_eq!(
        (row["banned"].clone(), row["bans"].clone()),
        (1.into(), 1.into()),
        "{status}"
    );
    assert_eq!(row["failing"], 0, "{status}");
    let text = stg_cli(&stg, &["ban", "status"]);
    assert!(text.contains("fonbo"), "{text}");

    // Another source, then a stop: its lines are read once, whatever the restart.
    append(&log, &truco("192.0.2.51", 5));
    exactly(&stg, LOG_FAILURES, 16.0, Duration::ZERO);
    let mut stg = stg;
    stg.signal("TERM");
    assert!(
        stg.wait_exit(Duration::from_secs(10)).is_some(),
        "stg did not stop"
    );
    drop(stg);
    append(&log, &truco("192.0.2.51", 2));
    let stg = StgNode::start_in(run_dir, &cfg, StgOpts::default());
    // Only what was written while it was down.
    exactly(&stg, LOG_FAILURES, 2.0, settle);
    append(&log, &truco("192.0.2.51", 4));
    // 5 before the restart are not counted again: 2 + 4 = 6 in this run, no ban (11).
    exactly(&stg, LOG_FAILURES, 6.0, settle);
    assert!(!bans(&stg).contains("192.0.2.51"), "{}", bans(&stg));
}

fn send_tcp(addr: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(data).unwrap();
}

#[test]
fn syslog_from_allowed_sources_bans_and_others_are_refused() {
    let port = free_port();
    let intake: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let guard = format!(
        "ban_syslog = \"\"\nsyslog_listen = \"{intake}\"\nsyslog_allowed = [\"127.0.0.1/32\"]\n"
    );
    let stg = StgNode::start("guard-syslog", &node_config(free_port(), &guard));

    // A source outside `syslog_allowed`: eleven lines, nothing counted.
    let outsider = UdpSocket::bind("127.0.0.2:0").unwrap();
    for i in 0..11 {
        let m =
            format!("<13>Dec  3 10:11:12 vivait: TRUCO_KO [192.0.2.60] fail2ban sip 10:11:12.{i}");
        outsider.send_to(m.as_bytes(), intake).unwrap();
    }
    let refused = "stg_guard_syslog_messages_total{result=\"refused\"}";
    assert_eq!(
        stg.wait_counter(refused, 11.0, Duration::from_secs(5)),
        11.0,
        "{}",
        stg.metrics()
    );
    // Over TCP too: the connection is closed unread.
    if let Ok(mut s) = crate::harness::try_connect_from("127.0.0.2", intake) {
        let _ = s.write_all(b"<13>Dec  3 10:11:12 x: TRUCO_KO 192.0.2.60\n");
    }
    assert_eq!(
        stg.wait_counter(refused, 12.0, Duration::from_secs(5)),
        12.0
    );
    assert_eq!(stg.counter(SYSLOG_FAILURES), 0.0);

    // From an allowed source: ten in both formats and both framings, and garbage.
    let local = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..4 {
        let m =
            format!("<13>Dec  3 10:11:12 vivait: TRUCO_KO [192.0.2.60] fail2ban sip 10:11:12.{i}");
        local.send_to(m.as_bytes(), intake).unwrap();
    }
    for i in 0..3 {
        let m = format!(
            "<38>1 2026-12-03T10:11:12.{i}Z web1 fonbo 12 - - TRUCO_KO 192.0.2.60 token invalido"
        );
        local.send_to(m.as_bytes(), intake).unwrap();
    }
    local.send_to(b"no priority at all", intake).unwrap();
    let lf = "<13>Dec  3 10:11:12 web1 sercen[3]: TRUCO_KO [192.0.2.60] x\n".repeat(2);
    send_tcp(intake, lf.as_bytes());
    let m = "<13>1 - web1 sercen - - - TRUCO_KO [192.0.2.60] y";
    send_tcp(intake, format!("{} {m}", m.len()).as_bytes());
    assert_eq!(
        stg.wait_counter(SYSLOG_FAILURES, 10.0, Duration::from_secs(5)),
        10.0,
        "{}",
        stg.log()
    );
    assert!(
        stg.wait_counter(
            "stg_guard_syslog_messages_total{result=\"malformed\"}",
            1.0,
            Duration::from_secs(5)
        ) >= 1.0
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(!bans(&stg).contains("192.0.2.60"), "the 10th does not ban");
    local
        .send_to(
            b"<13>Dec  3 10:11:13 vivait: TRUCO_KO [192.0.2.60] fail2ban sip 10:11:13.0",
            intake,
        )
        .unwrap();
    let text = crate::harness::wait_log(
        &stg,
        "TRUCO_KO [192.0.2.60] stg truco",
        Duration::from_secs(5),
    );
    assert!(text.contains("[truco] Ban 192.0.2.60/32"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bans(&stg).contains("\"jail\":\"truco\"") {
        assert!(Instant::now() < deadline, "{}", bans(&stg));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `ip`'s ban; how long it took from `since`.
fn ban_latency(stg: &StgNode, ip: &str, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(15);
    while !bans(stg).contains(&format!("\"{ip}/32\"")) {
        assert!(Instant::now() < deadline, "{ip} not banned\n{}", stg.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    since.elapsed()
}

#[test]
fn a_followed_log_is_read_at_once_on_change_with_a_slow_poll() {
    // The poll would take 10 s: a ban well inside that is inotify's doing.
    const FAST: Duration = Duration::from_millis(1500);
    let dir = temp_dir("guard-tail-inotify");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("fonbo.log");
    // `from_start`: the file is created after the start, and whether the tail's first look
    // comes before or after it must not matter here.
    let guard = format!(
        "tail_poll = \"10s\"\nban_syslog = \"\"\n\n[[guard.logs]]\npath = \"{}\"\n\
         filter = \"truco-ko\"\njail = \"fonbo\"\nmaxretry = 1\nfrom_start = true\n",
        log.display()
    );
    let run_dir = dir.join("node");
    std::fs::create_dir_all(&run_dir).unwrap();
    let stg = StgNode::start_in(
        run_dir,
        &node_config(free_port(), &guard),
        StgOpts::default(),
    );
    let mut took = Vec::new();

    // The file is created with its first line.
    let t = Instant::now();
    append(&log, &truco("192.0.2.70", 1));
    took.push(("created", ban_latency(&stg, "192.0.2.70", t)));
    // Appended to.
    let t = Instant::now();
    append(&log, &truco("192.0.2.71", 1));
    took.push(("appended", ban_latency(&stg, "192.0.2.71", t)));
    // Rotated by rename; the new file is created in the directory (read once the old one
    // has been quiet for the 500 ms rotation grace).
    std::fs::rename(&log, logs.join("fonbo.log.1")).unwrap();
    let t = Instant::now();
    append(&log, &truco("192.0.2.72", 1));
    took.push(("rotated", ban_latency(&stg, "192.0.2.72", t)));
    // Appended to the new file.
    let t = Instant::now();
    append(&log, &truco("192.0.2.73", 1));
    took.push((
        "appended after rotation",
        ban_latency(&stg, "192.0.2.73", t),
    ));
    eprintln!("line → ban with tail_poll 10s: {took:?}");
    for (what, d) in &took {
        assert!(*d < FAST, "{what}: {d:?}\n{}", stg.log());
    }
    assert_eq!(stg.counter("stg_guard_tail_watch_errors_total"), 0.0);

    // A write storm: 2,000 writes, each an event, are a few rounds, not one each.
    let rounds = "stg_guard_tail_rounds_total{jail=\"fonbo\"}";
    let before = stg.counter(rounds);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for line in truco("192.0.2.74", 2000).lines() {
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
    exactly(&stg, LOG_FAILURES, 2004.0, Duration::from_millis(300));
    let storm = stg.counter(rounds) - before;
    eprintln!("2,000 writes read in {storm} rounds");
    assert!(storm < 500.0, "{storm} rounds for 2,000 writes");
}
