//! redis-server processes owned by one test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stg_testkit::{free_port, temp_dir, Process};

/// A redis-server on 127.0.0.1, killed (by PID) when dropped.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    proc: Process,
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        Self::start_on(free_port(), &temp_dir("redis"), &[])
    }

    /// On `port`, files in `dir`, with more `redis-server` arguments.
    pub(crate) fn start_on(port: u16, dir: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .args(extra);
        let log = dir.join(format!("redis-{port}.log"));
        let proc = Process::spawn("redis-server", "redis-server", cmd, &log);
        let s = Self {
            port,
            dir: dir.to_path_buf(),
            proc,
        };
        s.wait_ready();
        s
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain (sync) client connection, to look at what the store wrote.
    pub(crate) fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("redis-server on {}: {e}", self.port))
    }

    pub(crate) fn kill(&mut self) {
        self.proc.kill();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            let ok = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ok.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} not ready: {ok:?}\n{}",
                self.port,
                self.proc.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
