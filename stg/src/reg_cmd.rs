//! `stg reg list|show|rm`: the registrations in the binding store of the node's
//! configuration. A Redis store (`[store] url = "redis://…"`) is read directly, with `SCAN`
//! (never `KEYS`); the embedded store is locked by the running node, so it is read through
//! the node's admin endpoint (`admin.listen`, `/registrar/…`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use serde_json::{json, Value};
use stg_config::Config;
use stg_registrar::Binding;
use stg_store::Bindings;

use crate::exit;

#[derive(Subcommand)]
pub(crate) enum RegCommand {
    /// List the registered AORs (`user@host`), sorted.
    ///
    /// PATTERN is a Redis glob over `user@host` (`*`, `?`, `[…]`; default `*`). User parts
    /// may hold a literal `*` (`40004*01@…`): escape it as `\*`, or give `--exact`.
    List {
        /// Glob over `user@host`.
        pattern: Option<String>,
        /// Match PATTERN literally (no glob characters).
        #[arg(long)]
        exact: bool,
        /// At most this many AORs.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// JSON output: `{"aors": [...], "truncated": bool}`.
        #[arg(long)]
        json: bool,
    },
    /// Every contact of one AOR, decoded (undecodable values are shown raw with the error).
    Show {
        /// `user@host` (a `sip:` or `fs:` prefix is ignored).
        aor: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove one AOR's bindings, or only the one whose hash field (instance) is INSTANCE.
    Rm {
        /// `user@host`.
        aor: String,
        /// The hash field as `stg reg show` prints it (`"<urn:uuid:…>"`); quotes and angle
        /// brackets may be left out.
        instance: Option<String>,
    },
}

/// A failure: what to print and the exit code.
pub(crate) struct Fail(pub(crate) u8, pub(crate) String);

impl Fail {
    fn unavailable(msg: impl Into<String>) -> Self {
        Self(exit::UNAVAILABLE, msg.into())
    }
}

/// The single-threaded runtime of a one-shot command (`stg reg`, `stg user`).
pub(crate) fn command_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("stg: cannot start the runtime: {e}");
            ExitCode::from(exit::OSERR)
        })
}

pub(crate) fn run(config: &Config, command: RegCommand) -> ExitCode {
    let runtime = match command_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(run_inner(config, command)) {
        Ok(code) => code,
        Err(Fail(code, msg)) => {
            eprintln!("stg: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn run_inner(config: &Config, command: RegCommand) -> Result<ExitCode, Fail> {
    let store = Store::open(config).await?;
    match command {
        RegCommand::List {
            pattern,
            exact,
            limit,
            json,
        } => {
            let pattern = pattern.map_or_else(|| "*".to_owned(), |p| normalize_aor(&p).to_owned());
            let pattern = if exact {
                stg_store::escape_glob(&pattern)
            } else {
                pattern
            };
            let limit = limit.max(1);
            let (aors, truncated) = store.list(&pattern, limit).await?;
            if json {
                println!("{}", json!({ "aors": aors, "truncated": truncated }));
            } else {
                for a in &aors {
                    println!("{a}");
                }
                if truncated {
                    eprintln!("stg: stopped at {limit} AORs (--limit)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RegCommand::Show { aor, json } => {
            let aor = normalize_aor(&aor);
            let fields = store.get(aor).await?;
            let now = unix_now();
            if json {
                let bindings: Vec<Value> = fields
                    .iter()
                    .map(|(f, v)| binding_json(f, v, now))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "aor": aor, "now": now, "bindings": bindings })
                    )
                    .unwrap_or_default()
                );
            } else if !fields.is_empty() {
                print!("{}", show_text(aor, &fields, now));
            }
            if fields.is_empty() {
                if !json {
                    eprintln!("stg: no bindings for {aor}");
                }
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        RegCommand::Rm { aor, instance } => {
            let aor = normalize_aor(&aor);
            let Some(instance) = instance else {
                let n = store.get(aor).await?.len();
                return if store.remove(aor, None).await? {
                    println!("removed {aor} ({n} binding(s))");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("stg: no bindings for {aor}");
                    Ok(ExitCode::FAILURE)
                };
            };
            let fields = store.get(aor).await?;
            let Some(field) = find_field(&fields, &instance) else {
                eprintln!("stg: {aor} has no binding {instance}");
                return Ok(ExitCode::FAILURE);
            };
            if store.remove(aor, Some(field)).await? {
                println!("removed {field} of {aor}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("stg: {aor} has no binding {field}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// `sip:u@h`, `fs:u@h`, `<sip:u@h>` → `u@h`.
pub(crate) fn normalize_aor(s: &str) -> &str {
    let s = s.trim();
    let s = s
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(s);
    ["fs:", "sips:", "sip:"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s)
}

/// The hash field named by `wanted`: exactly, else ignoring quotes, angle brackets and case.
fn find_field<'a>(fields: &'a BTreeMap<String, String>, wanted: &str) -> Option<&'a str> {
    if let Some((f, _)) = fields.get_key_value(wanted) {
        return Some(f);
    }
    let bare = |s: &str| {
        s.trim_matches(|c| c == '"' || c == '<' || c == '>')
            .to_owned()
    };
    let w = bare(wanted);
    fields
        .keys()
        .find(|f| bare(f).eq_ignore_ascii_case(&w))
        .map(String::as_str)
}

// === where the bindings are ===

pub(crate) enum Store {
    /// Redis, directly.
    Direct(Bindings),
    /// The embedded store, through the running node's admin endpoint.
    Node(SocketAddr),
}

/// The running node's admin endpoint, as this configuration names it.
pub(crate) fn admin_addr(config: &Config) -> Result<SocketAddr, Fail> {
    let Some(mut addr) = config.admin.listen else {
        return Err(Fail(
            exit::CONFIG,
            "the running node is reached through its admin endpoint, and this configuration \
             has none (admin.listen = \"\")"
                .into(),
        ));
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

impl Store {
    pub(crate) async fn open(config: &Config) -> Result<Self, Fail> {
        let url = config.store.url.as_str();
        if url.is_empty() || url == "embedded" {
            return admin_addr(config).map(Self::Node);
        }
        Bindings::open(url, &config.node.data_dir)
            .await
            .map(Self::Direct)
            .map_err(|e| Fail(exit::CONFIG, e.to_string()))
    }

    async fn list(&self, pattern: &str, limit: usize) -> Result<(Vec<String>, bool), Fail> {
        match self {
            Self::Direct(b) => {
                let mut aors = b.scan(pattern, limit).await.map_err(store_fail)?;
                aors.sort();
                let truncated = aors.len() >= limit;
                Ok((aors, truncated))
            }
            Self::Node(addr) => {
                let v = node_http(
                    *addr,
                    "GET",
                    &format!("/registrar/aors?pattern={}&limit={limit}", enc(pattern)),
                )?;
                let aors = v["aors"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .ok_or_else(|| Fail::unavailable("bad answer from the node (no aors)"))?;
                Ok((aors, v["truncated"].as_bool().unwrap_or(false)))
            }
        }
    }

    pub(crate) async fn get(&self, aor: &str) -> Result<BTreeMap<String, String>, Fail> {
        match self {
            Self::Direct(b) => b.get(aor).await.map(|r| r.fields).map_err(store_fail),
            Self::Node(addr) => {
                let v = node_http(*addr, "GET", &format!("/registrar/aor/{}", enc(aor)))?;
                let obj = v
                    .as_object()
                    .ok_or_else(|| Fail::unavailable("bad answer from the node (not a hash)"))?;
                Ok(obj
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect())
            }
        }
    }

    async fn remove(&self, aor: &str, field: Option<&str>) -> Result<bool, Fail> {
        match self {
            Self::Direct(b) => b.remove(aor, field).await.map_err(store_fail),
            Self::Node(addr) => {
                let mut path = format!("/registrar/aor/{}", enc(aor));
                if let Some(f) = field {
                    path.push_str("?field=");
                    path.push_str(&enc(f));
                }
                let v = node_http(*addr, "DELETE", &path)?;
                Ok(v["removed"].as_bool().unwrap_or(false))
            }
        }
    }
}

fn store_fail(e: stg_store::StoreError) -> Fail {
    if e.is_transient() {
        Fail::unavailable(e.to_string())
    } else {
        Fail(exit::SOFTWARE, e.to_string())
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One request to the node's admin endpoint; the JSON body of a 200.
/// [`http`] for the embedded store: a node that is not running is explained.
fn node_http(addr: SocketAddr, method: &str, path: &str) -> Result<Value, Fail> {
    http(addr, method, path).map_err(|Fail(code, msg)| {
        Fail(
            code,
            format!("{msg}; the embedded store is held by the running node, read through it"),
        )
    })
}

pub(crate) fn http(addr: SocketAddr, method: &str, path: &str) -> Result<Value, Fail> {
    let not_running = |e: &dyn std::fmt::Display| {
        Fail::unavailable(format!(
            "cannot reach the node's admin endpoint at {addr} ({e}): is the node running \
             (stg run)? check admin.listen in the configuration given with --config"
        ))
    };
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| not_running(&e))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| not_running(&e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| not_running(&e))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Fail::unavailable(format!("no HTTP answer from {addr}")))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status == "404" {
        return Err(Fail::unavailable(format!(
            "the process at {addr} has no {} endpoint (an older stg?)",
            path.split('?').next().unwrap_or(path)
        )));
    }
    let v: Value = serde_json::from_str(body).map_err(|_| {
        Fail::unavailable(format!(
            "{addr} answered {status}: {}",
            body.trim().chars().take(200).collect::<String>()
        ))
    })?;
    if status != "200" {
        let msg = v["error"].as_str().unwrap_or("error").to_owned();
        return Err(Fail::unavailable(format!(
            "the node answered {status}: {msg}"
        )));
    }
    Ok(v)
}

// === decoding ===

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn expires_in(b: &Binding, now: u64) -> i64 {
    let at = i128::from(b.updated_at) + i128::from(b.expires) - i128::from(now);
    i64::try_from(at).unwrap_or(if at < 0 { i64::MIN } else { i64::MAX })
}

/// What an `fs-conn-id` that is one of stg's flow tokens names (its MAC is not checked:
/// the key lives in the running process).
fn flow_of(conn_id: Option<&str>) -> Option<stg_sip_core::net::Flow> {
    stg_sip_core::proxy::peek_flow_token(conn_id?)
}

fn binding_json(field: &str, value: &str, now: u64) -> Value {
    let b = match Binding::decode(field, value) {
        Ok(b) => b,
        Err(e) => return json!({ "field": field, "raw": value, "error": e.to_string() }),
    };
    let flow = flow_of(b.conn_id.as_deref()).map(|f| {
        json!({
            "transport": f.transport.to_string(),
            "remote": f.remote.to_string(),
            "conn": f.conn.map(|c| c.0),
            "listener": f.listener.0,
        })
    });
    let push = b
        .push()
        .map(|p| json!({ "provider": p.provider, "prid": p.prid, "param": p.param }));
    json!({
        "field": field,
        "raw": value,
        "display_name": b.display_name,
        "uri": b.uri,
        "instance": b.instance(),
        "reg_id": b.reg_id(),
        "push": push,
        "conn_id": b.conn_id,
        "flow": flow,
        "node": b.path.first(),
        "path": b.path,
        "user_agent": b.user_agent,
        "accept": b.accept,
        "call_id": b.call_id,
        "cseq": b.cseq,
        "expires": b.expires,
        "expires_in": expires_in(&b, now),
        "updated_at": b.updated_at,
        "updated_at_utc": utc(b.updated_at),
        "alias": b.alias,
        "used_as_route": b.used_as_route,
        "params": b.params.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
    })
}

fn show_text(aor: &str, fields: &BTreeMap<String, String>, now: u64) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "{aor}: {} binding(s)", fields.len());
    for (i, (field, value)) in fields.iter().enumerate() {
        let _ = writeln!(o, "\n[{}] {field}", i + 1);
        let b = match Binding::decode(field, value) {
            Ok(b) => b,
            Err(e) => {
                let _ = writeln!(o, "  UNDECODABLE  {e}");
                let _ = writeln!(o, "  raw          {value}");
                continue;
            }
        };
        let mut line = |k: &str, v: &str| {
            let _ = writeln!(o, "  {k:<12} {v}");
        };
        if let Some(d) = &b.display_name {
            line("display name", d);
        }
        line("uri", &b.uri);
        line("instance", b.instance().unwrap_or("-"));
        if let Some(r) = b.reg_id() {
            line("reg-id", &r.to_string());
        }
        match b.push() {
            Some(p) => line(
                "push",
                &format!(
                    "provider={} prid={} param={}",
                    p.provider,
                    p.prid,
                    p.param.as_deref().unwrap_or("-")
                ),
            ),
            None => line("push", "-"),
        }
        let conn = match (&b.conn_id, flow_of(b.conn_id.as_deref())) {
            (None, _) => "-".to_owned(),
            (Some(c), None) => format!("{c} (not a stg flow token)"),
            (Some(c), Some(f)) => format!(
                "{c}\n{:15}stg flow: {} from {}, connection {}, listener {}",
                "",
                f.transport,
                f.remote,
                f.conn.map_or("-".to_owned(), |c| c.0.to_string()),
                f.listener.0
            ),
        };
        line("conn id", &conn);
        line("node", b.path.first().map_or("-", String::as_str));
        line(
            "path",
            &b.path
                .iter()
                .map(|p| format!("<{p}>"))
                .collect::<Vec<_>>()
                .join(","),
        );
        line("user agent", b.user_agent.as_deref().unwrap_or("-"));
        line("accept", &b.accept.join(", "));
        line("call-id", &b.call_id);
        line("cseq", &b.cseq.to_string());
        let left = expires_in(&b, now);
        let state = if left > 0 {
            format!("expires in {left} s")
        } else {
            format!("EXPIRED {} s ago", left.unsigned_abs())
        };
        line("expires", &format!("{} s ({state})", b.expires));
        line(
            "updated at",
            &format!("{} ({})", b.updated_at, utc(b.updated_at)),
        );
        line(
            "flags",
            &format!(
                "alias={} usedAsRoute={}",
                if b.alias { "yes" } else { "no" },
                if b.used_as_route { "yes" } else { "no" }
            ),
        );
        let params: String = b
            .params
            .iter()
            .map(|(n, v)| match v {
                Some(v) => format!(";{n}={v}"),
                None => format!(";{n}"),
            })
            .collect();
        line("params", if params.is_empty() { "-" } else { &params });
    }
    o
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
fn utc(t: u64) -> String {
    let days = i64::try_from(t / 86_400).unwrap_or(0);
    let secs = t % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_764_757_800), "2025-12-03T10:30:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(normalize_aor("sip:a*1@h"), "a*1@h");
        assert_eq!(normalize_aor("<sips:a@h>"), "a@h");
        assert_eq!(normalize_aor("fs:a@h"), "a@h");
        assert_eq!(enc("40004*01@x y"), "40004%2A01%40x%20y");
        let mut f = BTreeMap::new();
        f.insert("\"<urn:uuid:AB>\"".to_owned(), String::new());
        assert_eq!(find_field(&f, "urn:uuid:ab"), Some("\"<urn:uuid:AB>\""));
        assert_eq!(
            find_field(&f, "\"<urn:uuid:AB>\""),
            Some("\"<urn:uuid:AB>\"")
        );
        assert_eq!(find_field(&f, "urn:uuid:cd"), None);
    }
}
