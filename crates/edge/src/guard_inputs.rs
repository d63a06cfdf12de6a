//! The guard's inputs from outside stg, and what operators see of it.
//!
//! - **Log tails** (`[[guard.logs]]`): each file is followed by a [`stg_guard::tail::Tail`]
//!   (sans-IO: rotation, truncation, resume) through its fail2ban filter; each failure is an
//!   event of the log's jail. A tail reads when inotify reports a change in its file's
//!   directory ([`watch`]), when its rotation grace ends, and every `guard.tail_poll`
//!   whatever happens: the `stat` costs nothing and sees what inotify misses (NFS, some
//!   overlay and bind mounts, lost events). Positions are kept in `<data_dir>/guard/tails/`,
//!   written at most once a second and at stop.
//! - **Syslog intake** (`guard.syslog_listen`, UDP and TCP): messages from
//!   `guard.syslog_allowed` sources only (loopback by default), each through the
//!   `guard.syslog_filters` (`truco-ko`), counted in `guard.syslog_jail`. Plain syslog has no
//!   authentication: it is an input from trusted hosts, not a cluster transport (Redis is).
//! - **Status**: each jail's figures for `stg ban status`, which jail banned what for
//!   `stg ban list --jail`, and each ban's `TRUCO_KO` line to the local syslog
//!   (`guard.ban_syslog`), where a fail2ban still running somewhere reads it.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stg_guard::f2b::{self, Filter, FilterSpec, Tz};
use stg_guard::syslog::{self, Framer, MAX_MESSAGE};
use stg_guard::tail::{Position, Stat, Step, Tail, READ_CHUNK};
use stg_guard::{Event, IpNet, Jail, JailStats, Kind};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::conn::Shared;

mod watch;

/// Most reads of one file in one poll round (64 KiB each, 4 MiB): a backlog is read over
/// several rounds, and the other tasks run in between.
const READS_PER_ROUND: usize = 64;

/// Syslog messages queued between the TCP connections and the matcher.
const SYSLOG_QUEUE: usize = 1024;

/// A TCP syslog connection silent this long is closed.
const SYSLOG_IDLE: Duration = Duration::from_secs(300);

/// Scopes whose jail is remembered at most (as many as the bans table holds, twice).
const MAX_JAIL_OF: usize = 200_000;

/// The jails of `[[guard.logs]]` and of the syslog intake, with the ignore list.
pub(crate) fn jails(g: &stg_config::GuardSection, ignore: &[IpNet]) -> Vec<Jail> {
    let mut out: Vec<Jail> = Vec::new();
    let mut add =
        |name: &str, maxretry: u32, findtime: Option<Duration>, bantime: Option<Duration>| {
            if out.iter().any(|j| j.name == name) {
                return;
            }
            let mut j = Jail::new(name, maxretry);
            j.ignore.extend(ignore.iter().copied());
            j.findtime = findtime.unwrap_or(g.findtime);
            j.bantime = bantime.unwrap_or(g.bantime);
            if let Some(inc) = &mut j.increment {
                inc.max = g.max_bantime.max(j.bantime);
            }
            out.push(j);
        };
    for l in &g.logs {
        add(&l.jail, l.maxretry, l.findtime, l.bantime);
    }
    if g.syslog_listen.is_some() {
        add(&g.syslog_jail, g.syslog_maxretry, None, None);
    }
    out
}

/// Loads a filter: a built-in name, a path, or a name in `dir`, with fail2ban's options.
pub(crate) fn load_filter(arg: &str, dir: &Path) -> Result<Filter, String> {
    let (name, opts) = f2b::parse_filter_arg(arg).map_err(|e| format!("{arg}: {e}"))?;
    let spec = if f2b::BUILTIN.iter().any(|(n, _)| *n == name) {
        FilterSpec::builtin(&name, &opts).map_err(|e| format!("{arg}: {e}"))?
    } else {
        let candidates = [
            PathBuf::from(&name),
            dir.join(&name),
            dir.join(format!("{name}.conf")),
        ];
        let path = candidates
            .iter()
            .find(|p| p.is_file())
            .ok_or_else(|| format!("{arg}: no such filter (nor in {})", dir.display()))?;
        FilterSpec::load(path, &opts).map_err(|e| format!("{}: {e}", path.display()))?
    };
    Filter::new(&spec, false).map_err(|e| format!("{arg}: {e}"))
}

/// Starts the tails and the syslog intake (their filters are loaded first: a bad filter
/// stops the start with its error).
pub(crate) async fn start(shared: &Arc<Shared>, tx: mpsc::Sender<Event>) -> Result<(), String> {
    let g = &shared.config.guard;
    // A tail's first round may count lines at once (what was written while stg was down):
    // the recorder must be in before, or those counts go nowhere.
    let _ = crate::admin::install_recorder();
    shared.bans.status.ban_syslog.set(g.ban_syslog.clone()).ok();
    let tz = local_tz();
    let state_dir = shared.config.node.data_dir.join("guard").join("tails");
    if !g.logs.is_empty() {
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| format!("guard: {}: {e}", state_dir.display()))?;
    }
    let mut watch = watch::LogWatch::default();
    for l in &g.logs {
        let filter =
            load_filter(&l.filter, &g.filter_dir).map_err(|e| format!("guard.logs: {e}"))?;
        let state_file = state_dir.join(format!(
            "{:016x}.pos",
            stg_guard::tail::head_hash(l.path.as_os_str().as_encoded_bytes(),)
        ));
        let saved = load_position(&state_file, &l.path);
        let worker = Worker {
            path: l.path.clone(),
            tail: Tail::new(saved, l.from_start),
            file: None,
            buf: vec![0; READ_CHUNK],
            matcher: Matcher {
                filter,
                tz: tz.clone(),
                jail: l.jail.clone(),
                findtime: l.findtime.unwrap_or(g.findtime),
                found: Vec::new(),
                now: (crate::now(), unix_secs()),
            },
        };
        tracing::info!(path = %l.path.display(), jail = %l.jail, filter = %l.filter, resume = saved.is_some(), "guard: following a log");
        shared.tasks.spawn(follow(
            worker,
            state_file,
            Wakes {
                poll: g.tail_poll,
                changed: watch.add(&l.path),
            },
            tx.clone(),
            shared.shutdown.clone(),
        ));
    }
    shared.tasks.spawn(watch.run(shared.shutdown.clone()));
    if let Some(addr) = g.syslog_listen {
        let filters = g
            .syslog_filters
            .iter()
            .map(|f| load_filter(f, &g.filter_dir))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("guard.syslog_filters: {e}"))?;
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|e| format!("guard.syslog_listen {addr} (UDP): {e}"))?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("guard.syslog_listen {addr} (TCP): {e}"))?;
        tracing::info!(%addr, allowed = ?g.syslog_allowed, jail = %g.syslog_jail, "guard: syslog intake");
        let intake = Intake {
            allowed: g.syslog_allowed.clone(),
            filters,
            jail: g.syslog_jail.clone(),
            tx,
        };
        let (frames_tx, frames_rx) = mpsc::channel(SYSLOG_QUEUE);
        let slots = Arc::new(tokio::sync::Semaphore::new(g.syslog_max_connections.max(1)));
        shared.tasks.spawn(accept_syslog(
            tcp,
            intake.allowed.clone(),
            slots,
            frames_tx,
            shared.shutdown.clone(),
        ));
        shared
            .tasks
            .spawn(intake.run(udp, frames_rx, shared.shutdown.clone()));
    }
    Ok(())
}

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The zone local log times are written in: `$TZ` when it is a POSIX rule, else the rule
/// at the end of `/etc/localtime` (TZif files end with one), else UTC.
fn local_tz() -> Tz {
    if let Some(tz) = std::env::var("TZ").ok().and_then(|s| Tz::parse_posix(&s)) {
        return tz;
    }
    std::fs::read("/etc/localtime")
        .ok()
        .and_then(|b| {
            let text = String::from_utf8_lossy(&b);
            let footer = text.trim_end_matches('\n').rsplit('\n').next()?.to_owned();
            Tz::parse_posix(&footer)
        })
        .unwrap_or(Tz::UTC)
}

fn load_position(file: &Path, path: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(file).ok()?;
    let (pos, named) = text.split_once('\n')?;
    // The file also names the log, in case two paths ever hash alike.
    (named.trim_end_matches('\n') == path.to_string_lossy()).then_some(())?;
    Position::decode(pos)
}

fn save_position(file: &Path, path: &Path, pos: &Position) {
    let tmp = file.with_extension("tmp");
    let text = format!("{}\n{}\n", pos.encode(), path.to_string_lossy());
    let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = r {
        metrics::counter!("stg_guard_tail_errors_total").increment(1);
        tracing::warn!(error = %e, file = %file.display(), "guard: log position not saved");
    }
}

/// One followed log: its tail, its open file and its filter.
struct Worker {
    path: PathBuf,
    tail: Tail,
    file: Option<File>,
    buf: Vec<u8>,
    matcher: Matcher,
}

fn stat_of(m: &std::fs::Metadata) -> Stat {
    Stat {
        id: stg_guard::tail::FileId {
            dev: m.dev(),
            ino: m.ino(),
        },
        len: m.len(),
    }
}

impl Worker {
    /// One poll round (blocking file I/O: run off the runtime's threads); `false` when it
    /// stopped at its read cap with more to read.
    fn round(&mut self) -> bool {
        self.matcher.now = (crate::now(), unix_secs());
        let now = self.matcher.now.0;
        for _ in 0..READS_PER_ROUND + 4 {
            let path = std::fs::metadata(&self.path).ok().map(|m| stat_of(&m));
            let open = self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map(|m| stat_of(&m));
            let m = &mut self.matcher;
            match self.tail.poll(now, path, open, |l| m.line(l)) {
                Step::Wait => return true,
                Step::Open => match File::open(&self.path).and_then(|f| {
                    let st = stat_of(&f.metadata()?);
                    Ok((f, st))
                }) {
                    Ok((f, st)) => {
                        self.file = Some(f);
                        self.tail.opened(st);
                    }
                    Err(_) => {
                        self.file = None;
                        self.tail.open_failed();
                        return true;
                    }
                },
                Step::Head { max } => {
                    let n = self.read_at(0, max);
                    self.tail.head(&self.buf[..n]);
                }
                Step::Read { offset, max } => {
                    let n = self.read_at(offset, max);
                    if n == 0 {
                        return true;
                    }
                    let (tail, buf, m) = (&mut self.tail, &self.buf, &mut self.matcher);
                    tail.read(&buf[..n], |l| m.line(l));
                }
            }
        }
        false
    }

    fn read_at(&mut self, offset: u64, max: usize) -> usize {
        let max = max.min(self.buf.len());
        let Some(f) = &self.file else { return 0 };
        match f.read_at(&mut self.buf[..max], offset) {
            Ok(n) => n,
            Err(e) => {
                metrics::counter!("stg_guard_tail_errors_total").increment(1);
                tracing::warn!(error = %e, path = %self.path.display(), "guard: log not read; reopening");
                self.file = None;
                0
            }
        }
    }
}

/// A filter and the failures it found in a round.
struct Matcher {
    filter: Filter,
    tz: Tz,
    jail: String,
    findtime: Duration,
    /// (source, user, seconds ago)
    found: Vec<(IpAddr, Option<String>, u64)>,
    /// The round's time: monotonic and unix seconds.
    now: (Instant, i64),
}

impl Matcher {
    fn line(&mut self, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = String::from_utf8_lossy(raw);
        let unix = self.now.1;
        for f in self.filter.process_line(&text, unix, &self.tz) {
            if !f.is_failure() {
                continue;
            }
            let Some(ip) = f.id.as_deref().and_then(|h| h.parse::<IpAddr>().ok()) else {
                // A host name: fail2ban would resolve it; stg bans addresses only.
                metrics::counter!("stg_guard_input_unbannable_total").increment(1);
                continue;
            };
            let ago = f.time.map_or(0, |t| (unix - t).max(0) as u64);
            if ago >= self.findtime.as_secs() {
                // Out of the window already (a backlog read after a restart).
                metrics::counter!("stg_guard_input_too_old_total").increment(1);
                tracing::debug!(line = %text, ago, jail = %self.jail, "guard: a failure older than findtime");
                continue;
            }
            let user = f.ticket.get("user").map(str::to_owned);
            self.found.push((ip, user, ago));
        }
    }
}

/// What starts a tail's poll round besides its own deadline.
struct Wakes {
    /// The fallback: a round at least this often.
    poll: Duration,
    /// Notified on each change of the file (one permit at most: a burst is one more round).
    changed: Arc<tokio::sync::Notify>,
}

/// Follows one log until the node stops: one round at a time, woken by a change of the
/// file, the end of a rotation's grace, or `poll` after the last round.
async fn follow(
    mut worker: Worker,
    state_file: PathBuf,
    wakes: Wakes,
    tx: mpsc::Sender<Event>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(wakes.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved = worker.tail.position();
    let mut saved_at = crate::now();
    let mut last = stg_guard::tail::TailStats::default();
    let jail = worker.matcher.jail.clone();
    loop {
        let due = worker
            .tail
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            () = wakes.changed.notified() => {}
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
        }
        let Ok((w, caught_up)) = tokio::task::spawn_blocking(move || {
            let caught_up = worker.round();
            (worker, caught_up)
        })
        .await
        else {
            return;
        };
        worker = w;
        if !caught_up {
            // A backlog: the next round right after this one's events are sent, without
            // waiting for a change that may not come.
            wakes.changed.notify_one();
        }
        // The fallback counts from the last round, whatever started it.
        tick.reset();
        let now = worker.matcher.now.0;
        for (ip, user, ago) in worker.matcher.found.drain(..) {
            let at = now.checked_sub(Duration::from_secs(ago)).unwrap_or(now);
            // Waits while the engine's queue is full: a backlog is read at the engine's
            // pace, and the file keeps what is not read yet.
            send(&tx, event(ip, &jail, user, at, "log")).await;
        }
        metrics::counter!("stg_guard_tail_rounds_total", "jail" => jail.clone()).increment(1);
        let s = worker.tail.stats();
        metrics::counter!("stg_guard_tail_lines_total", "jail" => jail.clone())
            .increment(s.lines - last.lines);
        metrics::counter!("stg_guard_tail_cut_lines_total", "jail" => jail.clone())
            .increment(s.cut - last.cut);
        metrics::counter!("stg_guard_tail_rotations_total", "jail" => jail.clone())
            .increment(s.rotations - last.rotations);
        metrics::counter!("stg_guard_tail_truncations_total", "jail" => jail.clone())
            .increment(s.truncations - last.truncations);
        last = s;
        let pos = worker.tail.position();
        if pos != saved && now.saturating_duration_since(saved_at) >= Duration::from_secs(1) {
            if let Some(p) = &pos {
                save_position(&state_file, &worker.path, p);
            }
            saved = pos;
            saved_at = now;
        }
    }
    if let Some(p) = worker.tail.position() {
        if Some(p) != saved {
            save_position(&state_file, &worker.path, &p);
        }
    }
}

fn event(ip: IpAddr, jail: &str, user: Option<String>, at: Instant, input: &'static str) -> Event {
    metrics::counter!("stg_guard_input_failures_total", "input" => input).increment(1);
    Event {
        source: ip,
        kind: Kind::External {
            jail: jail.to_owned(),
        },
        user,
        at,
        // A trusted service's log (or the internal syslog intake) names the address.
        proven: true,
    }
}

async fn send(tx: &mpsc::Sender<Event>, ev: Event) {
    if tx.send(ev).await.is_err() {
        // The guard task has ended: the node is stopping.
        metrics::counter!("stg_guard_events_dropped_total").increment(1);
    }
}

fn allowed(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

fn syslog_metric(result: &'static str) {
    metrics::counter!("stg_guard_syslog_messages_total", "result" => result).increment(1);
}

/// The syslog intake's matcher: UDP datagrams directly, TCP frames through a queue.
struct Intake {
    allowed: Vec<IpNet>,
    filters: Vec<Filter>,
    jail: String,
    tx: mpsc::Sender<Event>,
}

impl Intake {
    async fn run(
        mut self,
        udp: tokio::net::UdpSocket,
        mut frames: mpsc::Receiver<(IpAddr, Vec<u8>)>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        // One more byte than the cap, to tell an over-long datagram.
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = udp.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    if !allowed(&self.allowed, from.ip()) {
                        syslog_metric("refused");
                        continue;
                    }
                    let data = buf[..n].to_vec();
                    if let Some(ev) = self.message(from.ip(), &data) {
                        send(&self.tx, ev).await;
                    }
                }
                Some((ip, frame)) = frames.recv() => {
                    if let Some(ev) = self.message(ip, &frame) {
                        send(&self.tx, ev).await;
                    }
                }
            }
        }
    }

    /// A message's failure, if any: one per message, whichever filter sees it first.
    fn message(&mut self, from: IpAddr, data: &[u8]) -> Option<Event> {
        let m = match syslog::parse(data) {
            Ok(m) => m,
            Err(e) => {
                syslog_metric("malformed");
                tracing::debug!(%from, error = %e, "guard: syslog message refused");
                return None;
            }
        };
        syslog_metric("accepted");
        let text = m.text();
        let now = crate::now();
        let unix = unix_secs();
        for filter in &mut self.filters {
            let Some(f) = filter
                .process_dated(&text, unix)
                .into_iter()
                .find(|f| f.is_failure())
            else {
                continue;
            };
            let Some(ip) = f.id.as_deref().and_then(|h| h.parse::<IpAddr>().ok()) else {
                metrics::counter!("stg_guard_input_unbannable_total").increment(1);
                continue;
            };
            let user = f.ticket.get("user").map(str::to_owned);
            return Some(event(ip, &self.jail, user, now, "syslog"));
        }
        None
    }
}

async fn accept_syslog(
    listener: tokio::net::TcpListener,
    allowed_nets: Vec<IpNet>,
    slots: Arc<tokio::sync::Semaphore>,
    frames: mpsc::Sender<(IpAddr, Vec<u8>)>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((sock, from)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if !allowed(&allowed_nets, from.ip()) {
            syslog_metric("refused");
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("stg_guard_syslog_connections_refused_total").increment(1);
            continue;
        };
        let frames = frames.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            syslog_connection(sock, from, frames, stop).await;
        });
    }
}

async fn syslog_connection(
    mut sock: tokio::net::TcpStream,
    from: SocketAddr,
    frames: mpsc::Sender<(IpAddr, Vec<u8>)>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(SYSLOG_IDLE, sock.read(&mut buf)) => match r {
                Ok(Ok(n)) if n > 0 => n,
                _ => return,
            },
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    if frames.try_send((from.ip(), frame)).is_err() {
                        syslog_metric("dropped");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    syslog_metric("malformed");
                    tracing::debug!(%from, error = %e, "guard: syslog stream closed");
                    return;
                }
            }
        }
    }
}

/// What `stg ban status` and `stg ban list --jail` read, and where ban lines go.
#[derive(Default)]
pub(crate) struct Status {
    jails: Mutex<Vec<JailStats>>,
    /// The jail that banned each scope here (or `manual`, `remote`).
    jail_of: Mutex<HashMap<IpNet, String>>,
    /// Bans by operators and from other nodes, which no jail of this node counts.
    others: Mutex<HashMap<&'static str, u64>>,
    pub(crate) ban_syslog: OnceLock<Option<PathBuf>>,
    socket: OnceLock<Option<std::os::unix::net::UnixDatagram>>,
}

impl Status {
    /// The engine's figures after an event.
    pub(crate) fn record(&self, stats: Vec<JailStats>) {
        *self
            .jails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stats;
    }

    /// A ban took effect on this node: which jail, and its `TRUCO_KO` line to syslog.
    pub(crate) fn banned(&self, jail: &str, scope: IpNet) {
        {
            let mut m = self
                .jail_of
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if m.len() >= MAX_JAIL_OF {
                // Stale entries (bans long expired) go; names of live bans may too, and
                // show as `?` until they end.
                m.clear();
            }
            m.insert(scope.trunc(), jail.to_owned());
        }
        for other in ["manual", "remote"] {
            if jail == other {
                *self
                    .others
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(other)
                    .or_default() += 1;
            }
        }
        self.syslog_line(jail, scope.addr());
    }

    /// The jail that banned `scope`, if known.
    pub(crate) fn jail_of(&self, scope: IpNet) -> Option<String> {
        self.jail_of
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&scope.trunc())
            .cloned()
    }

    /// `stg ban status`: per jail, sources failing now, failures and bans since start,
    /// bans in force (`bans` is the node's list of bans in force).
    pub(crate) fn json(&self, bans: &[(IpNet, Duration)]) -> serde_json::Value {
        let mut now: HashMap<String, u64> = HashMap::new();
        for (scope, _) in bans {
            *now.entry(self.jail_of(*scope).unwrap_or_else(|| "?".to_owned()))
                .or_default() += 1;
        }
        let jails = self
            .jails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let others = self
            .others
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut rows: Vec<serde_json::Value> = jails
            .iter()
            .map(|j| {
                serde_json::json!({
                    "jail": j.name,
                    "failing": j.failing,
                    "failures": j.failures,
                    "banned": now.remove(&j.name).unwrap_or(0),
                    "bans": j.bans,
                })
            })
            .collect();
        for name in ["manual", "remote", "?"] {
            let banned = now.remove(name).unwrap_or(0);
            let total = others.get(name).copied().unwrap_or(0);
            if banned > 0 || total > 0 {
                rows.push(serde_json::json!({
                    "jail": name, "failing": null, "failures": null,
                    "banned": banned, "bans": total,
                }));
            }
        }
        serde_json::json!({ "jails": rows, "banned": bans.len() })
    }

    /// `<13>Mmm dd hh:mm:ss stg[pid]: TRUCO_KO [<ip>] stg <jail> <hh:mm:ss.mmm>` to the
    /// local syslog socket, as `logger -t` writes it; never blocks (dropped and counted).
    fn syslog_line(&self, jail: &str, ip: IpAddr) {
        let Some(Some(path)) = self.ban_syslog.get() else {
            return;
        };
        let sock = self.socket.get_or_init(|| {
            let s = std::os::unix::net::UnixDatagram::unbound().ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        });
        let Some(sock) = sock else { return };
        let line = ban_line(SystemTime::now(), std::process::id(), jail, ip);
        if sock.send_to(line.as_bytes(), path).is_err() {
            metrics::counter!("stg_guard_syslog_line_errors_total").increment(1);
        }
    }
}

/// The syslog datagram of a ban (UTC times).
fn ban_line(t: SystemTime, pid: u32, jail: &str, ip: IpAddr) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = ms / 1000;
    let (_, month, day) = civil(secs / 86_400);
    let tod = secs % 86_400;
    let (h, m, s) = (tod / 3600, tod / 60 % 60, tod % 60);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mon = MONTHS[(month as usize).clamp(1, 12) - 1];
    format!(
        "<13>{mon} {day:>2} {h:02}:{m:02}:{s:02} stg[{pid}]: TRUCO_KO [{ip}] stg {jail} {h:02}:{m:02}:{s:02}.{:03}",
        ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's civil_from_days).
fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_lines_read_as_the_seed_writes_them_and_parse_back() {
        // 2026-12-03 14:05:09.042 UTC
        let t = UNIX_EPOCH + Duration::from_millis(1_796_306_709_042);
        let line = ban_line(t, 42, "sip", "192.0.2.7".parse().unwrap());
        assert_eq!(
            line,
            "<13>Dec  3 14:05:09 stg[42]: TRUCO_KO [192.0.2.7] stg sip 14:05:09.042"
        );
        let m = syslog::parse(line.as_bytes()).unwrap();
        assert_eq!(m.app, Some(&b"stg"[..]));
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
    }
}
