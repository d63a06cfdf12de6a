//! A child process that the test owns: its output goes to a log file, and it is killed (by
//! its PID, nothing broader) when the handle drops, with the log printed if the test is
//! failing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A spawned program (SIPp, Kamailio, redis-server, the node under test...).
pub struct Process {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr into `log` and stdin closed. A missing program
    /// fails the test naming the Debian package to install.
    pub fn spawn(name: &str, package: &str, mut cmd: Command, log: &Path) -> Self {
        let f = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
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
            name: name.to_string(),
            log: log.to_path_buf(),
        }
    }

    /// The process id (of the program itself: a wrapper such as `prlimit` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Is it still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the exit; `None` on timeout (the process keeps running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit; kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.wait_exit(timeout) {
            return s;
        }
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    /// Kills it now (SIGKILL to its PID) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`HUP`, `TERM`...) to this process only.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    /// Everything it wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // `Child::kill` is kill(pid, SIGKILL) on this child only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} output ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.output()
            );
        }
    }
}
