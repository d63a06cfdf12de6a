//! `stg ban test-filter`: stg's `fail2ban-regex`. Runs a fail2ban filter (a `.conf` with
//! fail2ban's option syntax, or a built-in one) over a log file and says what it matched,
//! so an operator can check a filter before a jail uses it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use stg_guard::f2b::{self, Filter, FilterSpec, Tz};

#[derive(Subcommand)]
pub(crate) enum BanCommand {
    /// Run a fail2ban filter over a log file (like `fail2ban-regex`): a summary, or with
    /// `--json` one object per matched line. Exit 0 when something matched, 1 when not.
    TestFilter {
        /// A filter: a path, a name in `--filter-dir` (`sshd`, `sshd.conf`), or a built-in
        /// (`truco-ko`); options in fail2ban's syntax: `sshd.conf[mode=aggressive]`.
        filter: String,
        /// The log file (`-` for standard input).
        logfile: PathBuf,
        /// One JSON object per matched line: {"line", "host", "time", "user"}.
        #[arg(long)]
        json: bool,
        /// Where filter names are looked up.
        #[arg(long, default_value = "/etc/fail2ban/filter.d")]
        filter_dir: PathBuf,
        /// Time zone of the log's local times, as a POSIX TZ rule
        /// (`CET-1CEST,M3.5.0,M10.5.0/3`); default: $TZ when it is one, else UTC.
        #[arg(long)]
        tz: Option<String>,
        /// Stop at the first matching failregex of a line (fail2ban-regex's
        /// `--no-check-all`).
        #[arg(long)]
        no_check_all: bool,
    },
    /// The bans in force on the running node: scope, seconds left, jail.
    List {
        /// Only the bans of this jail (`manual`: operators', `remote`: other nodes').
        #[arg(long)]
        jail: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Per jail: sources failing now, failures and bans since start, bans in force.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Ban an address or prefix now (logged as `TRUCO_KO [<ip>] stg manual ...`).
    Add {
        /// `192.0.2.7`, `2001:db8::1` or a prefix such as `198.51.100.0/24`.
        ip: String,
        /// How long: seconds, or with a unit (`90s`, `30m`, `12h`, `7d`).
        #[arg(long = "for", default_value = "1h")]
        duration: String,
    },
    /// Lift a ban.
    Rm {
        /// As `stg ban list` shows it, or a bare address.
        ip: String,
    },
}

/// `stg ban list|add|rm`: the running node's bans, through its admin endpoint.
pub(crate) fn run_node(config: &stg_config::Config, cmd: BanCommand) -> ExitCode {
    match node_inner(config, cmd) {
        Ok(code) => code,
        Err(crate::reg_cmd::Fail(code, msg)) => {
            eprintln!("stg: {msg}");
            ExitCode::from(code)
        }
    }
}

fn node_inner(
    config: &stg_config::Config,
    cmd: BanCommand,
) -> Result<ExitCode, crate::reg_cmd::Fail> {
    use crate::reg_cmd::{admin_addr, enc, http, Fail};
    let addr = admin_addr(config)?;
    match cmd {
        BanCommand::List { jail, json } => {
            let path = match &jail {
                Some(j) => format!("/guard/bans?jail={}", enc(j)),
                None => "/guard/bans".to_owned(),
            };
            let v = http(addr, "GET", &path)?;
            if json {
                println!("{v}");
            } else {
                for b in v["bans"].as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}s\t{}",
                        b["scope"].as_str().unwrap_or("?"),
                        b["left"].as_u64().unwrap_or(0),
                        b["jail"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BanCommand::Status { json } => {
            let v = http(addr, "GET", "/guard/status")?;
            if json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            // fail2ban-client's words: currently failed, total failed, currently / total banned.
            println!(
                "{:<12} {:>9} {:>9} {:>8} {:>8}",
                "jail", "failing", "failures", "banned", "bans"
            );
            let num = |x: &serde_json::Value| x.as_u64().map_or("-".to_owned(), |n| n.to_string());
            for j in v["jails"].as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:>9} {:>9} {:>8} {:>8}",
                    j["jail"].as_str().unwrap_or("?"),
                    num(&j["failing"]),
                    num(&j["failures"]),
                    num(&j["banned"]),
                    num(&j["bans"])
                );
            }
            println!("banned now: {}", num(&v["banned"]));
            Ok(ExitCode::SUCCESS)
        }
        BanCommand::Add { ip, duration } => {
            let secs = parse_duration(&duration).ok_or_else(|| {
                Fail(
                    crate::exit::USAGE,
                    format!("--for {duration:?}: seconds, or a number with s, m, h or d"),
                )
            })?;
            let v = http(addr, "PUT", &format!("/guard/bans/{}?for={secs}", enc(&ip)))?;
            println!("banned {} for {secs}s", v["banned"].as_str().unwrap_or(&ip));
            Ok(ExitCode::SUCCESS)
        }
        BanCommand::Rm { ip } => {
            let v = http(addr, "DELETE", &format!("/guard/bans/{}", enc(&ip)))?;
            if v["removed"].as_bool() == Some(true) {
                println!("unbanned {ip}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("stg: {ip} was not banned");
                Ok(ExitCode::FAILURE)
            }
        }
        BanCommand::TestFilter { .. } => Ok(run(cmd)),
    }
}

/// `90`, `90s`, `30m`, `12h`, `7d` → seconds.
fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|&n| n > 0)
}

pub(crate) fn run(cmd: BanCommand) -> ExitCode {
    match cmd {
        BanCommand::TestFilter {
            filter,
            logfile,
            json,
            filter_dir,
            tz,
            no_check_all,
        } => test_filter(&filter, &logfile, json, &filter_dir, tz, !no_check_all),
        other => {
            eprintln!("stg: this command needs the node's configuration");
            let _ = other;
            ExitCode::from(crate::exit::USAGE)
        }
    }
}

/// Finds the filter: built-in name, path, or name in the filter directory.
fn load(arg: &str, dir: &Path) -> Result<(FilterSpec, String), String> {
    let (name, opts) = f2b::parse_filter_arg(arg).map_err(|e| e.to_string())?;
    if f2b::BUILTIN.iter().any(|(n, _)| *n == name) {
        let spec = FilterSpec::builtin(&name, &opts).map_err(|e| e.to_string())?;
        return Ok((spec, format!("{name} (built-in)")));
    }
    let candidates = [
        PathBuf::from(&name),
        dir.join(&name),
        dir.join(format!("{name}.conf")),
    ];
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        return Err(format!(
            "no filter `{name}`: not a built-in ({}), not a file, not in {}",
            f2b::BUILTIN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            dir.display()
        ));
    };
    let spec = FilterSpec::load(path, &opts).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((spec, path.display().to_string()))
}

fn zone(arg: Option<String>) -> Result<Tz, String> {
    match arg {
        Some(s) => Tz::parse_posix(&s).ok_or_else(|| format!("--tz {s}: not a POSIX TZ rule")),
        None => Ok(std::env::var("TZ")
            .ok()
            .and_then(|s| Tz::parse_posix(&s))
            .unwrap_or(Tz::UTC)),
    }
}

fn test_filter(
    arg: &str,
    logfile: &Path,
    json: bool,
    dir: &Path,
    tz: Option<String>,
    check_all: bool,
) -> ExitCode {
    let started = Instant::now();
    let tz = match zone(tz) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("stg: {e}");
            return ExitCode::from(crate::exit::USAGE);
        }
    };
    let (spec, source) = match load(arg, dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stg: {e}");
            return ExitCode::from(crate::exit::NOINPUT);
        }
    };
    let mut filter = match Filter::new(&spec, check_all) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("stg: {source}: {e}");
            return ExitCode::from(crate::exit::CONFIG);
        }
    };
    let input: Box<dyn Read> = if logfile == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        match std::fs::File::open(logfile) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("stg: {}: {e}", logfile.display());
                return ExitCode::from(crate::exit::NOINPUT);
            }
        }
    };
    let n_regex = filter.failregex().len();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut run = Run {
        filter: &mut filter,
        tz: &tz,
        now,
        json,
        matched: 0,
        ignored: 0,
        hits: vec![0u64; n_regex],
        out: &mut out,
    };
    let scanned = if run.filter.has_prefilter() {
        run.scan_blocks(input)
    } else {
        run.scan_lines(input)
    };
    let lines = match scanned {
        Ok(n) => n,
        Err(e) => {
            eprintln!("stg: {}: {e}", logfile.display());
            return ExitCode::from(crate::exit::NOINPUT);
        }
    };
    let (matched, ignored, hits) = (run.matched, run.ignored, run.hits);
    if !json {
        let total: u64 = hits.iter().sum();
        let _ = writeln!(out, "Filter   : {source}");
        let _ = writeln!(out, "Log file : {}", logfile.display());
        let _ = writeln!(
            out,
            "Engines  : {} regexes, {} on the backtracking engine; literal prefilter {}",
            filter.failregex().len(),
            filter.backtracking_regexes(),
            if filter.has_prefilter() {
                format!("on {:?}", filter.prefilter_literals())
            } else {
                "off".to_owned()
            }
        );
        let _ = writeln!(out, "\nFailregex: {total} total");
        let _ = writeln!(out, "|-  #) [# of hits] regular expression");
        for (i, (r, h)) in filter.failregex().iter().zip(&hits).enumerate() {
            if *h > 0 {
                let _ = writeln!(out, "|  {:>2}) [{h}] {r}", i + 1);
            }
        }
        let _ = writeln!(out, "`-");
        let secs = started.elapsed().as_secs_f64();
        let _ = writeln!(
            out,
            "\nLines: {lines} lines, {ignored} ignored, {matched} matched, {} missed\n\
             [processed in {secs:.2} sec, {:.0} lines/s]",
            lines - matched - ignored,
            lines as f64 / secs.max(1e-9)
        );
    }
    let _ = out.flush();
    if matched > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// One run over a log: the filter, where results go, the counts.
struct Run<'a, W: Write> {
    filter: &'a mut Filter,
    tz: &'a Tz,
    now: i64,
    json: bool,
    matched: u64,
    ignored: u64,
    hits: Vec<u64>,
    out: &'a mut W,
}

/// Bytes read at once by the block scanner.
const BLOCK: usize = 1 << 20;

impl<W: Write> Run<'_, W> {
    /// One line (without its end of line), number `no` (from 1).
    fn line(&mut self, raw: &[u8], no: u64) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // Log files are mostly UTF-8; a stray byte must not stop the run.
        let text = String::from_utf8_lossy(raw);
        let failures = self.filter.process_line(&text, self.now, self.tz);
        if self.filter.last_ignored() {
            self.ignored += 1;
        }
        let mut line_matched = false;
        for f in failures.iter().filter(|f| f.is_failure()) {
            self.hits[f.regex] += 1;
            if self.json && !line_matched {
                let time = f.time.map(|t| f2b::format_local(t + self.tz.offset_at(t)));
                // Written by hand to keep the documented key order (line first).
                let j = |v: Option<&str>| serde_json::Value::from(v).to_string();
                let _ = writeln!(
                    self.out,
                    "{{\"line\": {no}, \"host\": {}, \"time\": {}, \"user\": {}}}",
                    j(f.id.as_deref()),
                    j(time.as_deref()),
                    j(f.ticket.get("user"))
                );
            }
            line_matched = true;
        }
        if line_matched {
            self.matched += 1;
        }
    }

    /// Every line through the filter (a filter without prefilter).
    fn scan_lines(&mut self, input: Box<dyn Read>) -> std::io::Result<u64> {
        let mut reader = BufReader::with_capacity(BLOCK, input);
        let mut buf = Vec::with_capacity(4096);
        let mut lines = 0;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                return Ok(lines);
            }
            lines += 1;
            let raw = buf.strip_suffix(b"\n").unwrap_or(&buf);
            self.line(raw, lines);
        }
    }

    /// Blocks of lines: the prefilter's automaton runs over the whole block, and only the
    /// lines that hold one of its literals are cut out and filtered (the others cannot
    /// match); lines are counted with `memchr`.
    fn scan_blocks(&mut self, mut input: Box<dyn Read>) -> std::io::Result<u64> {
        let mut buf = vec![0u8; BLOCK];
        let mut filled = 0;
        let mut lines = 0u64;
        loop {
            if filled == buf.len() {
                // One line longer than the block: grow.
                buf.resize(buf.len() * 2, 0);
            }
            let n = match input.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            filled += n;
            let eof = n == 0;
            // Complete lines only, unless the input ended.
            let end = if eof {
                filled
            } else {
                match memchr::memrchr(b'\n', &buf[..filled]) {
                    Some(i) => i + 1,
                    None => continue,
                }
            };
            let region = &buf[..end];
            let (mut pos, mut counted) = (0, 0);
            while pos < end {
                let Some(off) = self.filter.next_candidate(&region[pos..]) else {
                    break;
                };
                let hit = pos + off;
                let start = memchr::memrchr(b'\n', &region[pos..hit]).map_or(pos, |i| pos + i + 1);
                let stop = memchr::memchr(b'\n', &region[hit..]).map_or(end, |i| hit + i);
                lines += memchr::memchr_iter(b'\n', &region[counted..start]).count() as u64;
                counted = start;
                self.line(&region[start..stop], lines + 1);
                pos = stop + 1;
            }
            lines += memchr::memchr_iter(b'\n', &region[counted..end]).count() as u64;
            if eof {
                // A last line without its end of line is a line too.
                if end > 0 && buf[end - 1] != b'\n' {
                    lines += 1;
                }
                return Ok(lines);
            }
            buf.copy_within(end..filled, 0);
            filled -= end;
        }
    }
}
