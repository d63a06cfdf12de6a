//! Starting the real `stg` binary with a test configuration, and small helpers shared by the
//! interop tests. Every child process is tracked by PID and killed on drop; ports come from
//! the OS; files live in a per-test temp dir.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The conformance corpus: `STG_CONFORMANCE_DIR` or `../shared/conformance`.
pub(crate) fn conformance_dir() -> PathBuf {
    let dir = std::env::var_os("STG_CONFORMANCE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"),
        PathBuf::from,
    );
    assert!(
        dir.join("rfc4475/manifest.tsv").is_file(),
        "conformance corpus not found at {} (set STG_CONFORMANCE_DIR)",
        dir.display()
    );
    dir
}

/// `../shared` (bench scenarios, Kamailio config), or `STG_SHARED_DIR`.
pub(crate) fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("STG_SHARED_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
        PathBuf::from,
    );
    assert!(
        dir.join("bench").is_dir(),
        "shared dir not found at {} (set STG_SHARED_DIR)",
        dir.display()
    );
    dir
}

/// Rows of a manifest: (name, expected).
pub(crate) fn manifest(sub: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(conformance_dir().join(sub).join("manifest.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (c[0].to_string(), c[3].to_string())
        })
        .collect()
}

/// A fresh directory under the system temp dir.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "stg-it-{}-{}-{}",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A port free on 127.0.0.1 for both UDP and TCP at the moment of the call.
pub(crate) fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

pub(crate) fn free_port_on(ip: &str) -> u16 {
    for _ in 0..100 {
        let t = TcpListener::bind((ip, 0)).unwrap();
        let p = t.local_addr().unwrap().port();
        if UdpSocket::bind((ip, p)).is_ok() {
            return p;
        }
    }
    panic!("no free port on {ip}");
}

/// A running `stg run`.
pub(crate) struct StgNode {
    child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) admin: SocketAddr,
    log: PathBuf,
}

impl StgNode {
    /// Writes `config` (its `[admin]` section is added here) and starts the node; returns
    /// once `/health` answers.
    pub(crate) fn start(name: &str, config: &str) -> Self {
        let dir = temp_dir(name);
        let admin_port = free_port();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let full = format!(
            "[node]\ndata_dir = \"{}\"\n\n[admin]\nlisten = \"{admin}\"\n\n[log]\nformat = \"human\"\nlevel = \"debug\"\n\n{config}",
            dir.join("data").display()
        );
        let cfg = dir.join("stg.toml");
        std::fs::write(&cfg, full).unwrap();
        let log = dir.join("stg.log");
        let child = Command::new(env!("CARGO_BIN_EXE_stg"))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start stg");
        let mut node = Self {
            child,
            dir,
            admin,
            log,
        };
        node.wait_healthy();
        node
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
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
        self.child.id()
    }

    /// Everything the node logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text of `/metrics`.
    pub(crate) fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap_or_default()
    }

    /// One metric's value (first sample whose line starts with `prefix`).
    pub(crate) fn metric(&self, prefix: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Sends a signal to the node (`HUP`, `TERM`).
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; `None` on timeout.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Is it still running?
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A path inside the node's temp dir.
    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
}

impl Drop for StgNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- stg log ({}) ---\n{}", self.log.display(), self.log());
        }
    }
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

/// A child process killed on drop (SIPp, Kamailio, HAProxy, dnsmasq...).
pub(crate) struct Peer {
    pub(crate) child: Child,
    pub(crate) name: &'static str,
    pub(crate) log: PathBuf,
}

impl Peer {
    /// Spawns `cmd` with stdout+stderr into `log`. A missing program fails naming the package.
    pub(crate) fn spawn(name: &'static str, package: &str, mut cmd: Command, log: &Path) -> Self {
        let f = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {name} ({e}): install the Debian package `{package}`")
            });
        Self {
            child,
            name,
            log: log.to_path_buf(),
        }
    }

    /// Waits for exit; kills it after `timeout`.
    pub(crate) fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} output ---\n{}", self.name, self.output());
        }
    }
}

/// Runs the current test again inside a new network namespace that has only loopback (plus
/// the given addresses on `lo`): traffic that names outside hosts goes nowhere. Returns
/// `true` when the caller is already inside and should do the work.
pub(crate) fn in_isolated_netns(test: &str, extra_lo_addrs: &[&str]) -> bool {
    if std::env::var_os("STG_IN_NETNS").is_some() {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let mut script = String::from("set -e; ip link set lo up; ");
    for a in extra_lo_addrs {
        script.push_str(&format!("ip addr add {a}/32 dev lo; "));
    }
    script.push_str("exec \"$0\" --exact \"$1\" --nocapture --test-threads=1");
    let out = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", &script])
        .arg(&exe)
        .arg(test)
        .env("STG_IN_NETNS", "1")
        .output()
        .expect(
            "unshare (util-linux) must be installed; the test needs root for network namespaces",
        );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "test in isolated netns failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "the netns run did not run the test:\n{text}"
    );
    false
}
