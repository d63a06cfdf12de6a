//! A fresh network namespace with only loopback (`unshare --net`, as root): traffic that
//! names outside hosts (192.0.2.x, 10.0.0.x in Vias and URIs) goes nowhere but to listeners
//! the test itself put on `lo`. Either the current test re-runs itself inside one
//! ([`Netns::run_test_inside`]), or one program is started inside one ([`Netns::command`]).

use std::ffi::OsStr;
use std::process::Command;

/// Set in the environment of whatever runs inside.
const INSIDE: &str = "STG_IN_NETNS";

/// Is this process already inside a namespace made by [`Netns`]?
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// What the namespace gets besides `lo` up.
#[derive(Debug, Clone, Default)]
pub struct Netns {
    addrs: Vec<String>,
    hostname: Option<String>,
}

impl Netns {
    /// Loopback only (127.0.0.0/8 and ::1).
    pub fn new() -> Self {
        Self::default()
    }

    /// One more address on `lo`: `"10.0.0.6"` (a /32), `"fd00::1"` (a /128), or with an
    /// explicit prefix, `"fd00::1/64"`.
    pub fn addr(mut self, a: &str) -> Self {
        self.addrs.push(a.to_string());
        self
    }

    /// Several more addresses on `lo`.
    pub fn addrs(mut self, list: &[&str]) -> Self {
        self.addrs.extend(list.iter().map(|a| (*a).to_string()));
        self
    }

    /// Also a new UTS namespace with this hostname (so a test knows the hostname that must
    /// not leak, whatever the machine is called).
    pub fn hostname(mut self, h: &str) -> Self {
        self.hostname = Some(h.to_string());
        self
    }

    fn script(&self) -> String {
        let mut s = String::from("set -e; ip link set lo up; ");
        for a in &self.addrs {
            let v6 = a.contains(':');
            let cidr = if a.contains('/') {
                a.clone()
            } else if v6 {
                format!("{a}/128")
            } else {
                format!("{a}/32")
            };
            if v6 {
                s.push_str(&format!("ip -6 addr add {cidr} dev lo nodad; "));
            } else {
                s.push_str(&format!("ip addr add {cidr} dev lo; "));
            }
        }
        if let Some(h) = &self.hostname {
            s.push_str(&format!("hostname {h}; "));
        }
        s.push_str("exec \"$0\" \"$@\"");
        s
    }

    /// `program` started inside a new namespace set up as described; add its arguments to
    /// the returned command. The namespace ends with the last process in it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.arg("--net");
        if self.hostname.is_some() {
            cmd.arg("--uts");
        }
        cmd.args(["--", "sh", "-c", &self.script()])
            .arg(program)
            .env(INSIDE, "1");
        cmd
    }

    /// Runs the calling test again, alone, inside a new namespace, and fails if it fails
    /// there. Returns `true` when the caller is already inside and should do the work, so a
    /// test starts with `if !Netns::new().run_test_inside() { return; }`. The test is found
    /// by its thread's name, which the test harness sets to the test's path.
    pub fn run_test_inside(&self) -> bool {
        if inside() {
            return true;
        }
        let thread = std::thread::current();
        let test = thread
            .name()
            .filter(|n| *n != "main")
            .expect("run_test_inside must be called from a test's own thread");
        let exe = std::env::current_exe().unwrap();
        let out = self
            .command(&exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .output()
            .expect("unshare (util-linux) must be installed; the test needs root for namespaces");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{test} failed in its network namespace:\n{text}"
        );
        assert!(
            text.contains("1 passed"),
            "the namespace run did not run {test}:\n{text}"
        );
        // What the test printed inside (its figures), shown with `--nocapture`.
        print!("{text}");
        false
    }
}
