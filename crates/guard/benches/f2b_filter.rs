//! Line rate of fail2ban filters on a syslog-like log shaped like `bench/guard-filter.sh`'s
//! (sshd failures and successes, cron, postfix, kernel and web-app lines), without the
//! file reading: `cargo bench -p stg-guard --bench f2b_filter [-- LINES]`.
//! Needs `STG_CONFORMANCE_DIR` for fail2ban's `sshd.conf` (read in place).

use std::path::PathBuf;
use std::time::Instant;

use stg_guard::f2b::{Filter, FilterSpec, Tz};

/// The same mix as the shell benchmark: per 40 lines, one sshd failure, one `TRUCO_KO`,
/// seven `Accepted`, six pam, six cron, eight postfix, six web app, five kernel.
fn log(n: usize) -> Vec<String> {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut seed = 42u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    (0..n)
        .map(|i| {
            let t = i % 86400;
            let ts = format!(
                "{} {:2} {:02}:{:02}:{:02}",
                MON[(i / 2_678_400) % 12],
                (i / 86400) % 28 + 1,
                t / 3600,
                t / 60 % 60,
                t % 60
            );
            let ip = format!("198.{}.{}.{}", 18 + rand(2), rand(256), rand(256));
            let pid = 1000 + rand(30000);
            match i % 40 {
                0 => format!(
                    "{ts} srv sshd[{pid}]: Failed password for invalid user admin from {ip} \
                     port {} ssh2",
                    1024 + pid
                ),
                1 => format!("{ts} srv sercen[{pid}]: TRUCO_KO [{ip}] fail2ban sip 10:11:12.123"),
                2..8 => format!(
                    "{ts} srv sshd[{pid}]: Accepted publickey for deploy from 10.0.{}.{} port {} \
                     ssh2: ED25519 SHA256:abc",
                    rand(256),
                    rand(256),
                    1024 + pid
                ),
                8..14 => format!(
                    "{ts} srv sshd[{pid}]: pam_unix(sshd:session): session opened for user \
                     deploy(uid=1000) by (uid=0)"
                ),
                14..20 => format!(
                    "{ts} srv CRON[{pid}]: (root) CMD (command -v debian-sa1 > /dev/null && \
                     debian-sa1 1 1)"
                ),
                20..28 => format!("{ts} srv postfix/smtpd[{pid}]: connect from unknown[{ip}]"),
                28..34 => {
                    format!("{ts} srv fonbo[{pid}]: GET /fonbo/api/v1/status 200 12ms user={pid}")
                }
                _ => format!(
                    "{ts} srv kernel: [{i}.{pid:06}] IN=eth0 OUT= SRC={ip} DST=10.0.0.1 LEN=60 \
                     PROTO=TCP DPT=443"
                ),
            }
        })
        .collect()
}

fn run(name: &str, spec: &FilterSpec, lines: &[String]) {
    let tz = Tz::UTC;
    let now = 1_767_225_600; // 2026-01-01
    let mut best = f64::MAX;
    let mut counts = (0, 0);
    for _ in 0..3 {
        let mut f = Filter::new(spec, true).expect("filter compiles");
        let (mut candidates, mut failures) = (0usize, 0usize);
        #[allow(clippy::disallowed_methods)] // a benchmark measures the real clock
        let t0 = Instant::now();
        for l in lines {
            if f.has_prefilter() && f.next_candidate(l.as_bytes()).is_none() {
                continue;
            }
            candidates += 1;
            failures += f
                .process_line(l, now, &tz)
                .iter()
                .filter(|x| x.is_failure())
                .count();
        }
        best = best.min(t0.elapsed().as_secs_f64());
        counts = (candidates, failures);
    }
    println!(
        "{name:10} {} lines, {} candidates, {} failures: {:.3} s, {:.2} M lines/s, {:.0} ns per \
         candidate",
        lines.len(),
        counts.0,
        counts.1,
        best,
        lines.len() as f64 / best / 1e6,
        best * 1e9 / counts.0.max(1) as f64
    );
}

fn main() {
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(400_000);
    let lines = log(n);
    run(
        "truco-ko",
        &FilterSpec::builtin("truco-ko", &[]).expect("built in"),
        &lines,
    );
    match std::env::var_os("STG_CONFORMANCE_DIR") {
        Some(dir) => {
            let path = PathBuf::from(dir).join("fail2ban/filter.d/sshd.conf");
            run(
                "sshd",
                &FilterSpec::load(&path, &[]).expect("sshd.conf"),
                &lines,
            );
        }
        None => eprintln!("STG_CONFORMANCE_DIR unset: sshd.conf skipped"),
    }
}
