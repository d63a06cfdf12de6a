//! The file as serde sees it, and its one conversion into the public typed structs.
//!
//! Every raw field is optional so the defaults live in one place, the public `Default`
//! impls; a present field replaces its default. Single values parse while serde walks the
//! tree (see `text`), so their errors carry the key path; checks across keys follow here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::text::{Nameserver, Parse};
use crate::{
    AdminConfig, ApnsAuth, ApnsConfig, Config, DnsConfig, FcmConfig, Host, HostPort,
    ListenerConfig, LogConfig, LogFormat, NodeConfig, PushConfig, PushMode, RegistrarConfig,
    RegistrarDomain, RegistrarMode, Side, SipConfig, StoreConfig, TimersConfig, TlsConfig,
    TlsFiles, Transport, Upstream, WebhookConfig,
};

/// A key whose value cannot be used, before the environment variable behind it is known.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) key: String,
    pub(crate) message: String,
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Converts the tree (file plus overrides) into the typed configuration.
pub(crate) fn convert(tree: toml::Table) -> Result<Config, Invalid> {
    let raw: RawConfig =
        serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
            let message = crate::one_line(e.inner().message());
            // serde says "field"; the file and the docs say "key".
            let message = match message.strip_prefix("unknown field") {
                Some(rest) => format!("unknown key{rest}"),
                None => message,
            };
            invalid(e.path().to_string(), message)
        })?;
    Ok(Config {
        node: raw.node.convert()?,
        sip: raw.sip.convert()?,
        tls: raw.tls.convert()?,
        dns: raw.dns.convert(),
        admin: raw.admin.convert(),
        log: raw.log.convert()?,
        registrar: raw.registrar.convert()?,
        store: raw.store.convert()?,
        push: raw.push.convert()?,
        guard: raw.guard.convert()?,
        portal: raw.portal.convert()?,
        web: raw.web.convert()?,
    })
}

/// Replaces `slot` with the value the file gave, if it gave one.
pub(crate) fn set<T>(slot: &mut T, value: Option<Parse<T>>) {
    if let Some(Parse(value)) = value {
        *slot = value;
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of sections")]
struct RawConfig {
    node: RawNode,
    sip: RawSip,
    tls: RawTls,
    dns: RawDns,
    admin: RawAdmin,
    log: RawLog,
    registrar: RawRegistrar,
    store: RawStore,
    push: RawPush,
    guard: RawGuard,
    portal: RawPortal,
    web: crate::web::RawWeb,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [portal] table")]
struct RawPortal {
    realm: Option<String>,
    landing_page: Option<String>,
    token_lifetime: Option<Parse<Duration>>,
    cookie_name: Option<String>,
    key_file: Option<Parse<Option<PathBuf>>>,
    argon2_memory_kib: Option<u32>,
    argon2_iterations: Option<u32>,
    argon2_parallelism: Option<u32>,
    max_hashing: Option<usize>,
    max_waiting: Option<usize>,
}

impl RawPortal {
    fn convert(self) -> Result<crate::PortalConfig, Invalid> {
        let mut p = crate::PortalConfig::default();
        if let Some(r) = self.realm {
            p.realm = r.trim().to_owned();
        }
        if let Some(l) = self.landing_page {
            p.landing_page = l.trim().to_owned();
        }
        // A path on this site: "//host" and "/\\host" are other sites to browsers.
        let l = &p.landing_page;
        if !l.starts_with('/')
            || l.starts_with("//")
            || l.starts_with("/\\")
            || l.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(invalid(
                "portal.landing_page",
                format!("{l:?} is not a path on this site (write e.g. \"/\" or \"/app/\")"),
            ));
        }
        set(&mut p.token_lifetime, self.token_lifetime);
        if p.token_lifetime < Duration::from_secs(60) {
            return Err(invalid("portal.token_lifetime", "at least 1m"));
        }
        if let Some(c) = self.cookie_name {
            p.cookie_name = c.trim().to_owned();
        }
        let cookie_ok = !p.cookie_name.is_empty()
            && p.cookie_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        if !cookie_ok {
            return Err(invalid(
                "portal.cookie_name",
                "letters, digits and !#$%&'*+-.^_`|~ only (an RFC 6265 token)",
            ));
        }
        set(&mut p.key_file, self.key_file);
        p.argon2_memory_kib = self.argon2_memory_kib.unwrap_or(p.argon2_memory_kib);
        p.argon2_iterations = self.argon2_iterations.unwrap_or(p.argon2_iterations);
        p.argon2_parallelism = self.argon2_parallelism.unwrap_or(p.argon2_parallelism);
        // argon2's own bounds (m >= 8 KiB per lane), and ours: one login must not take
        // more than 256 MiB, 16 passes or 8 cores.
        if !(1..=8).contains(&p.argon2_parallelism) {
            return Err(invalid("portal.argon2_parallelism", "from 1 to 8"));
        }
        if !(1..=16).contains(&p.argon2_iterations) {
            return Err(invalid("portal.argon2_iterations", "from 1 to 16"));
        }
        let min_m = 8 * p.argon2_parallelism;
        if !(min_m..=256 * 1024).contains(&p.argon2_memory_kib) {
            return Err(invalid(
                "portal.argon2_memory_kib",
                format!("from {min_m} (8 per lane) to 262144 (256 MiB)"),
            ));
        }
        p.max_hashing = self.max_hashing.unwrap_or(p.max_hashing);
        if p.max_hashing == 0 {
            return Err(invalid("portal.max_hashing", "at least 1"));
        }
        p.max_waiting = self.max_waiting.unwrap_or(p.max_waiting);
        Ok(p)
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [guard] table")]
struct RawGuard {
    enabled: Option<bool>,
    ignore: Option<Vec<Parse<IpNet>>>,
    firewall: Option<bool>,
    firewall_table: Option<String>,
    sip_maxretry: Option<u32>,
    probe_maxretry: Option<u32>,
    udp_probes: Option<bool>,
    findtime: Option<Parse<Duration>>,
    bantime: Option<Parse<Duration>>,
    max_bantime: Option<Parse<Duration>>,
    logs: Option<Vec<RawGuardLog>>,
    filter_dir: Option<Parse<PathBuf>>,
    tail_poll: Option<Parse<Duration>>,
    syslog_listen: Option<Parse<Option<SocketAddr>>>,
    syslog_allowed: Option<Vec<Parse<IpNet>>>,
    syslog_filters: Option<Vec<String>>,
    syslog_jail: Option<String>,
    syslog_maxretry: Option<u32>,
    syslog_max_connections: Option<usize>,
    ban_syslog: Option<Parse<Option<PathBuf>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[guard.logs]] table")]
struct RawGuardLog {
    path: Parse<PathBuf>,
    filter: String,
    jail: String,
    maxretry: Option<u32>,
    findtime: Option<Parse<Duration>>,
    bantime: Option<Parse<Duration>>,
    from_start: Option<bool>,
}

/// A jail name: it becomes a metric label value and a word of the `TRUCO_KO` line.
fn jail_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The node's own jails; a log or the syslog intake cannot take their names.
const BUILTIN_JAILS: &[&str] = &["sip", "portal", "token", "probe", "sipprobe", "manual"];

impl RawGuard {
    fn convert(self) -> Result<crate::GuardSection, Invalid> {
        let mut g = crate::GuardSection::default();
        g.enabled = self.enabled.unwrap_or(g.enabled);
        if let Some(v) = self.ignore {
            g.ignore = v.into_iter().map(|Parse(n)| n).collect();
        }
        g.firewall = self.firewall.unwrap_or(g.firewall);
        g.sip_maxretry = self.sip_maxretry.unwrap_or(g.sip_maxretry);
        g.probe_maxretry = self.probe_maxretry.unwrap_or(g.probe_maxretry);
        g.udp_probes = self.udp_probes.unwrap_or(g.udp_probes);
        if g.probe_maxretry == 0 {
            return Err(invalid("guard.probe_maxretry", "at least 1".to_owned()));
        }
        set(&mut g.findtime, self.findtime);
        set(&mut g.bantime, self.bantime);
        set(&mut g.max_bantime, self.max_bantime);
        if g.sip_maxretry == 0 {
            return Err(invalid("guard.sip_maxretry", "at least 1".to_owned()));
        }
        for (key, d) in [("findtime", g.findtime), ("bantime", g.bantime)] {
            if d.is_zero() {
                return Err(invalid(format!("guard.{key}"), "above zero".to_owned()));
            }
        }
        if g.max_bantime < g.bantime {
            return Err(invalid(
                "guard.max_bantime",
                "at least guard.bantime".to_owned(),
            ));
        }
        if let Some(t) = self.firewall_table {
            let ok = !t.is_empty()
                && t.len() <= 32
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(invalid(
                    "guard.firewall_table",
                    format!("{t:?}: 1 to 32 letters, digits, '_' or '-'"),
                ));
            }
            g.firewall_table = t;
        }
        set(&mut g.filter_dir, self.filter_dir);
        set(&mut g.tail_poll, self.tail_poll);
        if g.tail_poll < Duration::from_millis(10) || g.tail_poll > Duration::from_secs(60) {
            return Err(invalid("guard.tail_poll", "10ms to 60s".to_owned()));
        }
        set(&mut g.syslog_listen, self.syslog_listen);
        if let Some(v) = self.syslog_allowed {
            g.syslog_allowed = v.into_iter().map(|Parse(n)| n).collect();
        }
        if let Some(f) = self.syslog_filters {
            g.syslog_filters = f;
        }
        if let Some(j) = self.syslog_jail {
            g.syslog_jail = j;
        }
        if !jail_name_ok(&g.syslog_jail) || BUILTIN_JAILS.contains(&g.syslog_jail.as_str()) {
            return Err(invalid(
                "guard.syslog_jail",
                format!(
                    "{:?}: 1 to 32 letters, digits, '_' or '-', not one of {BUILTIN_JAILS:?}",
                    g.syslog_jail
                ),
            ));
        }
        g.syslog_maxretry = self.syslog_maxretry.unwrap_or(g.syslog_maxretry);
        if g.syslog_maxretry == 0 {
            return Err(invalid("guard.syslog_maxretry", "at least 1".to_owned()));
        }
        g.syslog_max_connections = self
            .syslog_max_connections
            .unwrap_or(g.syslog_max_connections);
        set(&mut g.ban_syslog, self.ban_syslog);
        for (i, l) in self.logs.unwrap_or_default().into_iter().enumerate() {
            let key = |k: &str| format!("guard.logs[{i}].{k}");
            if !jail_name_ok(&l.jail) || BUILTIN_JAILS.contains(&l.jail.as_str()) {
                return Err(invalid(
                    key("jail"),
                    format!(
                        "{:?}: 1 to 32 letters, digits, '_' or '-', not one of {BUILTIN_JAILS:?}",
                        l.jail
                    ),
                ));
            }
            if l.filter.trim().is_empty() {
                return Err(invalid(key("filter"), "a filter name or file".to_owned()));
            }
            let log = crate::GuardLog {
                path: l.path.0,
                filter: l.filter,
                jail: l.jail,
                maxretry: l.maxretry.unwrap_or(11),
                findtime: l.findtime.map(|Parse(d)| d),
                bantime: l.bantime.map(|Parse(d)| d),
                from_start: l.from_start.unwrap_or(false),
            };
            if log.maxretry == 0 {
                return Err(invalid(key("maxretry"), "at least 1".to_owned()));
            }
            if log.findtime.is_some_and(|d| d.is_zero()) || log.bantime.is_some_and(|d| d.is_zero())
            {
                return Err(invalid(
                    key("findtime"),
                    "findtime and bantime above zero".to_owned(),
                ));
            }
            if g.logs.iter().any(|o: &crate::GuardLog| o.path == log.path) {
                return Err(invalid(
                    key("path"),
                    "this file is already followed".to_owned(),
                ));
            }
            // Several logs may feed one jail: it is created once, so they must agree on it.
            if let Some(o) = g.logs.iter().find(|o| o.jail == log.jail) {
                if (o.maxretry, o.findtime, o.bantime) != (log.maxretry, log.findtime, log.bantime)
                {
                    return Err(invalid(
                        key("jail"),
                        format!(
                            "jail {:?} is defined with other values by an earlier log",
                            log.jail
                        ),
                    ));
                }
            }
            if log.jail == g.syslog_jail && g.syslog_listen.is_some() {
                return Err(invalid(key("jail"), "the syslog intake's jail".to_owned()));
            }
            g.logs.push(log);
        }
        Ok(g)
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [node] table")]
struct RawNode {
    id: Option<Parse<Option<String>>>,
    data_dir: Option<Parse<PathBuf>>,
    aliases: Option<Vec<Parse<Host>>>,
}

impl RawNode {
    fn convert(self) -> Result<NodeConfig, Invalid> {
        let mut node = NodeConfig::default();
        set(&mut node.id, self.id);
        set(&mut node.data_dir, self.data_dir);
        if let Some(aliases) = self.aliases {
            node.aliases = aliases.into_iter().map(|Parse(a)| a).collect();
        }
        if let Some(id) = &node.id {
            if let Some(c) = id.chars().find(|&c| !is_token_char(c)) {
                return Err(invalid(
                    "node.id",
                    format!(
                        "{id:?} contains {c:?}; the id goes into SIP parameters, so it is \
                         limited to letters, digits and -.!%*_+`'~"
                    ),
                ));
            }
        }
        if node.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data_dir", "must not be empty"));
        }
        Ok(node)
    }
}

/// RFC 3261 §25.1 `token`.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [sip] table")]
struct RawSip {
    upstream: Option<Parse<Upstream>>,
    listen: Option<Vec<RawListener>>,
    trusted_networks: Option<Vec<Parse<IpNet>>>,
    load_balancers: Option<Vec<Parse<IpNet>>>,
    force_rport: Option<bool>,
    max_message_size: Option<usize>,
    max_headers: Option<usize>,
    max_body_size: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    source_prefix_v6: Option<u8>,
    max_pending_connects: Option<usize>,
    write_timeout: Option<Parse<Duration>>,
    ws_allowed_origins: Option<Vec<String>>,
    max_transactions: Option<usize>,
    max_transactions_per_source: Option<usize>,
    max_transaction_bytes: Option<usize>,
    allowed_destinations: Option<Vec<Parse<IpNet>>>,
    idle_timeout: Option<Parse<Duration>>,
    message_timeout: Option<Parse<Duration>>,
    tcp_connect_timeout: Option<Parse<Duration>>,
    tls_handshake_timeout: Option<Parse<Duration>>,
    drain_timeout: Option<Parse<Duration>>,
    hide_product_headers: Option<bool>,
    drop_scanners: Option<bool>,
    timers: RawTimers,
}

impl RawSip {
    fn convert(self) -> Result<SipConfig, Invalid> {
        let nets = |v: Vec<Parse<IpNet>>| v.into_iter().map(|Parse(n)| n).collect();
        let mut sip = SipConfig::default();
        set(&mut sip.upstream, self.upstream);
        if let Some(v) = self.trusted_networks {
            sip.trusted_networks = nets(v);
        }
        if let Some(v) = self.load_balancers {
            sip.load_balancers = nets(v);
        }
        sip.force_rport = self.force_rport.unwrap_or(sip.force_rport);
        sip.max_message_size = self.max_message_size.unwrap_or(sip.max_message_size);
        sip.max_headers = self.max_headers.unwrap_or(sip.max_headers);
        sip.max_body_size = self.max_body_size.unwrap_or(sip.max_body_size);
        sip.max_connections = self.max_connections.unwrap_or(sip.max_connections);
        sip.max_connections_per_source = self
            .max_connections_per_source
            .unwrap_or(sip.max_connections_per_source);
        sip.source_prefix_v6 = self.source_prefix_v6.unwrap_or(sip.source_prefix_v6);
        sip.max_pending_connects = self
            .max_pending_connects
            .unwrap_or(sip.max_pending_connects);
        set(&mut sip.write_timeout, self.write_timeout);
        if let Some(origins) = self.ws_allowed_origins {
            sip.ws_allowed_origins = origins
                .into_iter()
                .enumerate()
                .map(|(i, o)| {
                    check_origin(&o)
                        .map_err(|why| invalid(format!("sip.ws_allowed_origins[{i}]"), why))
                })
                .collect::<Result<_, _>>()?;
        }
        sip.max_transactions = self.max_transactions.unwrap_or(sip.max_transactions);
        sip.max_transactions_per_source = self
            .max_transactions_per_source
            .unwrap_or(sip.max_transactions_per_source);
        sip.max_transaction_bytes = self
            .max_transaction_bytes
            .unwrap_or(sip.max_transaction_bytes);
        if let Some(v) = self.allowed_destinations {
            sip.allowed_destinations = nets(v);
        }
        set(&mut sip.idle_timeout, self.idle_timeout);
        set(&mut sip.message_timeout, self.message_timeout);
        set(&mut sip.tcp_connect_timeout, self.tcp_connect_timeout);
        set(&mut sip.tls_handshake_timeout, self.tls_handshake_timeout);
        set(&mut sip.drain_timeout, self.drain_timeout);
        sip.hide_product_headers = self
            .hide_product_headers
            .unwrap_or(sip.hide_product_headers);
        sip.drop_scanners = self.drop_scanners.unwrap_or(sip.drop_scanners);
        sip.timers = self.timers.convert()?;
        if let Some(listen) = self.listen {
            sip.listen = listen.into_iter().map(RawListener::convert).collect();
        }

        for (key, value) in [
            ("sip.max_message_size", sip.max_message_size),
            ("sip.max_headers", sip.max_headers),
            ("sip.max_connections", sip.max_connections),
            (
                "sip.max_connections_per_source",
                sip.max_connections_per_source,
            ),
            ("sip.max_pending_connects", sip.max_pending_connects),
            ("sip.max_transactions", sip.max_transactions),
            (
                "sip.max_transactions_per_source",
                sip.max_transactions_per_source,
            ),
            ("sip.max_transaction_bytes", sip.max_transaction_bytes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if !(1..=128).contains(&sip.source_prefix_v6) {
            return Err(invalid(
                "sip.source_prefix_v6",
                format!(
                    "{} is not a prefix length from 1 to 128",
                    sip.source_prefix_v6
                ),
            ));
        }
        if sip.max_body_size > sip.max_message_size {
            return Err(invalid(
                "sip.max_body_size",
                format!(
                    "{} exceeds sip.max_message_size ({}), which includes the body",
                    sip.max_body_size, sip.max_message_size
                ),
            ));
        }
        for (key, value) in [
            ("sip.idle_timeout", sip.idle_timeout),
            ("sip.message_timeout", sip.message_timeout),
            ("sip.tcp_connect_timeout", sip.tcp_connect_timeout),
            ("sip.tls_handshake_timeout", sip.tls_handshake_timeout),
            ("sip.write_timeout", sip.write_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        check_listeners(&sip)?;
        Ok(sip)
    }
}

/// A WebSocket origin as browsers send it (RFC 6454 §6.2): `http://` or `https://`, a host,
/// an optional port, nothing after; returned in lower case.
fn check_origin(text: &str) -> Result<String, String> {
    const FORM: &str =
        "expected an origin like https://webcall.example.com or https://192.0.2.7:8443";
    let lower = text.trim().to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| format!("{text:?}: {FORM}"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{text:?}: {FORM} (scheme, host and port only; no path, not even a trailing /)"
        ));
    }
    <HostPort as crate::text::FromText>::from_text(rest)
        .map(|_| lower.clone())
        .map_err(|why| format!("{text:?}: {why}"))
}

fn check_listeners(sip: &SipConfig) -> Result<(), Invalid> {
    if sip.listen.is_empty() {
        return Err(invalid("sip.listen", "at least one listener is needed"));
    }
    // UDP has its own port space; TCP, TLS, WS and WSS all bind TCP sockets, so two of them
    // on one address collide just as two TCP listeners would.
    let mut bound: HashMap<(bool, SocketAddr), usize> = HashMap::new();
    for (i, l) in sip.listen.iter().enumerate() {
        let key = |field| format!("sip.listen[{i}].{field}");
        if l.proxy_protocol {
            if !l.transport.is_reliable() {
                return Err(invalid(
                    key("proxy_protocol"),
                    "a PROXY protocol header needs a stream transport, not udp",
                ));
            }
            if sip.load_balancers.is_empty() {
                return Err(invalid(
                    key("proxy_protocol"),
                    "sip.load_balancers is empty, so no PROXY header would ever be accepted: \
                     list the balancers' addresses there",
                ));
            }
        }
        if let Some(first) = bound.insert((l.transport.is_reliable(), l.address), i) {
            let other = sip.listen[first].transport;
            let message = if other == l.transport {
                format!(
                    "{} {} is already sip.listen[{first}]",
                    l.transport, l.address
                )
            } else {
                format!(
                    "{} is already bound by sip.listen[{first}] ({other}); tcp, tls, ws and \
                     wss listeners share the TCP port space",
                    l.address
                )
            };
            return Err(invalid(key("address"), message));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[sip.listen]] table")]
struct RawListener {
    transport: Parse<Transport>,
    address: Parse<SocketAddr>,
    side: Option<Parse<Side>>,
    proxy_protocol: Option<bool>,
    advertise: Option<Parse<Option<HostPort>>>,
}

impl RawListener {
    fn convert(self) -> ListenerConfig {
        ListenerConfig {
            transport: self.transport.0,
            address: self.address.0,
            side: self.side.map_or(Side::Outside, |Parse(s)| s),
            proxy_protocol: self.proxy_protocol.unwrap_or(false),
            advertise: self.advertise.and_then(|Parse(a)| a),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [sip.timers] table")]
struct RawTimers {
    t1: Option<Parse<Duration>>,
    t2: Option<Parse<Duration>>,
    t4: Option<Parse<Duration>>,
    timer_c: Option<Parse<Duration>>,
}

impl RawTimers {
    fn convert(self) -> Result<TimersConfig, Invalid> {
        let mut timers = TimersConfig::default();
        set(&mut timers.t1, self.t1);
        set(&mut timers.t2, self.t2);
        set(&mut timers.t4, self.t4);
        set(&mut timers.timer_c, self.timer_c);
        let show = |d| humantime::format_duration(d).to_string();
        if timers.t1.is_zero() {
            return Err(invalid("sip.timers.t1", "must be longer than zero"));
        }
        if timers.t2 < timers.t1 {
            return Err(invalid(
                "sip.timers.t2",
                format!(
                    "{} is shorter than sip.timers.t1 ({})",
                    show(timers.t2),
                    show(timers.t1)
                ),
            ));
        }
        if timers.t4.is_zero() {
            return Err(invalid("sip.timers.t4", "must be longer than zero"));
        }
        if timers.timer_c < Duration::from_secs(180) {
            return Err(invalid(
                "sip.timers.timer_c",
                format!(
                    "{} is shorter than the 3 minutes RFC 3261 §16.6 requires",
                    show(timers.timer_c)
                ),
            ));
        }
        Ok(timers)
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [tls] table")]
struct RawTls {
    certificate: Option<Parse<Option<PathBuf>>>,
    private_key: Option<Parse<Option<PathBuf>>>,
}

impl RawTls {
    fn convert(self) -> Result<TlsConfig, Invalid> {
        let certificate = self.certificate.and_then(|Parse(p)| p);
        let private_key = self.private_key.and_then(|Parse(p)| p);
        let files = match (certificate, private_key) {
            (Some(certificate), Some(private_key)) => Some(TlsFiles {
                certificate,
                private_key,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "tls.private_key",
                    "missing: tls.certificate is set, so its private key must be too",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls.certificate",
                    "missing: tls.private_key is set, so its certificate must be too",
                ))
            }
        };
        Ok(TlsConfig { files })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [dns] table")]
struct RawDns {
    nameservers: Option<Vec<Parse<Nameserver>>>,
    cache_size: Option<usize>,
}

impl RawDns {
    fn convert(self) -> DnsConfig {
        let mut dns = DnsConfig::default();
        if let Some(servers) = self.nameservers {
            dns.nameservers = servers.into_iter().map(|Parse(n)| n.0).collect();
        }
        dns.cache_size = self.cache_size.unwrap_or(dns.cache_size);
        dns
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [admin] table")]
struct RawAdmin {
    listen: Option<Parse<Option<SocketAddr>>>,
}

impl RawAdmin {
    fn convert(self) -> AdminConfig {
        let mut admin = AdminConfig::default();
        set(&mut admin.listen, self.listen);
        admin
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [log] table")]
struct RawLog {
    format: Option<Parse<LogFormat>>,
    level: Option<Parse<String>>,
}

impl RawLog {
    fn convert(self) -> Result<LogConfig, Invalid> {
        let mut log = LogConfig::default();
        set(&mut log.format, self.format);
        set(&mut log.level, self.level);
        if log.level.is_empty() {
            return Err(invalid(
                "log.level",
                "must not be empty; write e.g. info or info,stg_edge=debug",
            ));
        }
        Ok(log)
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [registrar] table")]
struct RawRegistrar {
    domains: Option<Vec<RawDomain>>,
    min_expires: Option<Parse<Duration>>,
    max_expires: Option<Parse<Duration>>,
    default_expires: Option<Parse<Duration>>,
    max_contacts: Option<usize>,
    strip_push_params: Option<bool>,
    realm: Option<String>,
    digest_algorithms: Option<Vec<String>>,
    nonce_ttl: Option<Parse<Duration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[registrar.domains]] table")]
struct RawDomain {
    name: String,
    mode: String,
    authenticate: Option<bool>,
}

impl RawRegistrar {
    fn convert(self) -> Result<RegistrarConfig, Invalid> {
        let mut r = RegistrarConfig::default();
        if let Some(domains) = self.domains {
            r.domains = Vec::with_capacity(domains.len());
            for (i, d) in domains.into_iter().enumerate() {
                let key = |k: &str| format!("registrar.domains[{i}].{k}");
                let mode = match d.mode.as_str() {
                    "through" => RegistrarMode::Through,
                    "local" => RegistrarMode::Local,
                    other => {
                        return Err(invalid(
                            key("mode"),
                            format!("{other:?} is neither \"through\" nor \"local\""),
                        ))
                    }
                };
                let name = d.name.trim().to_owned();
                if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '@') {
                    return Err(invalid(
                        key("name"),
                        format!("{:?} is not a domain (or \"*\" for every domain)", d.name),
                    ));
                }
                if r.domains.iter().any(|o| o.name.eq_ignore_ascii_case(&name)) {
                    return Err(invalid(key("name"), format!("{name} is listed twice")));
                }
                let authenticate = d.authenticate.unwrap_or(false);
                if authenticate && mode == RegistrarMode::Through {
                    return Err(invalid(
                        key("authenticate"),
                        "needs mode = \"local\": in through mode the PBX holds the credentials \
                         and challenges itself",
                    ));
                }
                r.domains.push(RegistrarDomain {
                    name,
                    mode,
                    authenticate,
                });
            }
        }
        set(&mut r.min_expires, self.min_expires);
        set(&mut r.max_expires, self.max_expires);
        set(&mut r.default_expires, self.default_expires);
        set(&mut r.nonce_ttl, self.nonce_ttl);
        if r.nonce_ttl < Duration::from_secs(1) {
            return Err(invalid("registrar.nonce_ttl", "must be at least 1 s"));
        }
        r.max_contacts = self.max_contacts.unwrap_or(r.max_contacts);
        r.strip_push_params = self.strip_push_params.unwrap_or(r.strip_push_params);
        r.realm = self.realm.unwrap_or(r.realm);
        if let Some(algs) = self.digest_algorithms {
            if algs.is_empty() {
                return Err(invalid(
                    "registrar.digest_algorithms",
                    "must name at least one of \"SHA-256\", \"MD5\"",
                ));
            }
            for a in &algs {
                if a != "SHA-256" && a != "MD5" {
                    return Err(invalid(
                        "registrar.digest_algorithms",
                        format!("{a:?} is neither \"SHA-256\" nor \"MD5\""),
                    ));
                }
            }
            r.digest_algorithms = algs;
        }
        let show = |d| humantime::format_duration(d).to_string();
        if r.min_expires > r.max_expires {
            return Err(invalid(
                "registrar.min_expires",
                format!(
                    "{} is longer than registrar.max_expires ({})",
                    show(r.min_expires),
                    show(r.max_expires)
                ),
            ));
        }
        if r.default_expires < r.min_expires || r.default_expires > r.max_expires {
            return Err(invalid(
                "registrar.default_expires",
                "must lie between registrar.min_expires and registrar.max_expires",
            ));
        }
        if r.max_contacts == 0 {
            return Err(invalid("registrar.max_contacts", "must be at least 1"));
        }
        Ok(r)
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [store] table")]
struct RawStore {
    url: Option<String>,
    users_url: Option<String>,
}

impl RawStore {
    fn convert(self) -> Result<StoreConfig, Invalid> {
        let s = StoreConfig {
            url: self.url.unwrap_or_default().trim().to_owned(),
            users_url: self.users_url.unwrap_or_default().trim().to_owned(),
        };
        let bindings_ok = s.url.is_empty()
            || s.url == "embedded"
            || s.url.starts_with("redis://")
            || s.url.starts_with("rediss://")
            || s.url.starts_with("redis+sentinel://");
        if !bindings_ok {
            return Err(invalid(
                "store.url",
                "must be \"\" (the embedded store), redis://… or redis+sentinel://…",
            ));
        }
        let users_ok = s.users_url.is_empty()
            || [
                "sqlite:",
                "mysql://",
                "mariadb://",
                "postgres://",
                "postgresql://",
            ]
            .iter()
            .any(|p| s.users_url.starts_with(p));
        if !users_ok {
            return Err(invalid(
                "store.users_url",
                "must be \"\" (SQLite in node.data_dir), sqlite:…, mysql://… or postgres://…",
            ));
        }
        Ok(s)
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [push] table")]
struct RawPush {
    mode: Option<String>,
    timeout: Option<Parse<Duration>>,
    call_fork_timeout: Option<Parse<Duration>>,
    message_accept_timeout: Option<Parse<Duration>>,
    message_delivery_timeout: Option<Parse<Duration>>,
    max_stored_messages: Option<usize>,
    ttl: Option<Parse<Duration>>,
    max_in_flight: Option<usize>,
    apns: RawApns,
    fcm: RawFcm,
    webhook: RawWebhook,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [push.apns] table")]
struct RawApns {
    url: Option<String>,
    sandbox_url: Option<String>,
    team_id: Option<String>,
    key_id: Option<String>,
    key_file: Option<Parse<Option<PathBuf>>>,
    certificate: Option<Parse<Option<PathBuf>>>,
    private_key: Option<Parse<Option<PathBuf>>>,
    ca_file: Option<Parse<Option<PathBuf>>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [push.fcm] table")]
struct RawFcm {
    service_account: Option<Parse<Option<PathBuf>>>,
    url: Option<String>,
    ca_file: Option<Parse<Option<PathBuf>>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [push.webhook] table")]
struct RawWebhook {
    url: Option<String>,
    ca_file: Option<Parse<Option<PathBuf>>>,
}

/// A provider's base URL: `https://host[:port]`, nothing after but an optional `/`.
fn check_base_url(key: &str, url: &str) -> Result<String, Invalid> {
    let url = url.trim().trim_end_matches('/');
    let ok = url.strip_prefix("https://").is_some_and(|rest| {
        !rest.is_empty()
            && !rest.contains(['/', '?', '#', '@', ' '])
            && <HostPort as crate::text::FromText>::from_text(rest).is_ok()
    });
    if ok {
        Ok(url.to_owned())
    } else {
        Err(invalid(
            key,
            format!("{url:?}: expected https://host or https://host:port, nothing after"),
        ))
    }
}

impl RawPush {
    fn convert(self) -> Result<PushConfig, Invalid> {
        let mut p = PushConfig::default();
        if let Some(mode) = self.mode {
            p.mode = match mode.as_str() {
                "log" => PushMode::Log,
                "live" => PushMode::Live,
                other => {
                    return Err(invalid(
                        "push.mode",
                        format!("{other:?} is neither \"log\" nor \"live\""),
                    ))
                }
            };
        }
        set(&mut p.timeout, self.timeout);
        set(&mut p.call_fork_timeout, self.call_fork_timeout);
        set(&mut p.message_accept_timeout, self.message_accept_timeout);
        set(
            &mut p.message_delivery_timeout,
            self.message_delivery_timeout,
        );
        set(&mut p.ttl, self.ttl);
        p.max_in_flight = self.max_in_flight.unwrap_or(p.max_in_flight);
        for (key, value) in [
            ("push.timeout", p.timeout),
            ("push.call_fork_timeout", p.call_fork_timeout),
            ("push.message_accept_timeout", p.message_accept_timeout),
            ("push.message_delivery_timeout", p.message_delivery_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        if p.message_accept_timeout > Duration::from_secs(30) {
            return Err(invalid(
                "push.message_accept_timeout",
                "must be at most 30 s: the sender gives up at 32 s (timer F) and would never \
                 hear the 202",
            ));
        }
        p.max_stored_messages = self.max_stored_messages.unwrap_or(p.max_stored_messages);
        if p.max_stored_messages == 0 {
            return Err(invalid("push.max_stored_messages", "must be at least 1"));
        }
        if p.ttl < Duration::from_secs(1) {
            return Err(invalid(
                "push.ttl",
                "must be at least 1 s (providers count whole seconds)",
            ));
        }
        if p.max_in_flight == 0 {
            return Err(invalid("push.max_in_flight", "must be at least 1"));
        }
        p.apns = self.apns.convert()?;
        p.fcm = self.fcm.convert()?;
        p.webhook = self.webhook.convert()?;
        if p.mode == PushMode::Live
            && p.apns.auth.is_none()
            && p.fcm.service_account.is_none()
            && p.webhook.url.is_none()
        {
            return Err(invalid(
                "push.mode",
                "\"live\" needs push.apns (key_file or certificate), push.fcm.service_account \
                 or push.webhook.url; without them use \"log\"",
            ));
        }
        Ok(p)
    }
}

impl RawApns {
    fn convert(self) -> Result<ApnsConfig, Invalid> {
        let mut a = ApnsConfig::default();
        if let Some(url) = self.url {
            a.url = check_base_url("push.apns.url", &url)?;
        }
        if let Some(url) = self.sandbox_url {
            a.sandbox_url = check_base_url("push.apns.sandbox_url", &url)?;
        }
        let path = |v: Option<Parse<Option<PathBuf>>>| v.and_then(|Parse(p)| p);
        a.ca_file = path(self.ca_file);
        let team_id = self.team_id.unwrap_or_default().trim().to_owned();
        let key_id = self.key_id.unwrap_or_default().trim().to_owned();
        let key_file = path(self.key_file);
        let certificate = path(self.certificate);
        let private_key = path(self.private_key);
        a.auth = match (key_file, certificate, private_key) {
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    "push.apns.certificate",
                    "push.apns.key_file is set too: choose token (key_file) or certificate \
                     authentication",
                ))
            }
            (Some(key_file), None, _) => {
                for (key, value) in [
                    ("push.apns.team_id", &team_id),
                    ("push.apns.key_id", &key_id),
                ] {
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return Err(invalid(
                            key,
                            "token authentication (push.apns.key_file) needs Apple's \
                             10-character id here, letters and digits",
                        ));
                    }
                }
                Some(ApnsAuth::Token {
                    team_id,
                    key_id,
                    key_file,
                })
            }
            (None, Some(certificate), Some(private_key)) => Some(ApnsAuth::Certificate {
                certificate,
                private_key,
            }),
            (None, Some(_), None) => {
                return Err(invalid(
                    "push.apns.private_key",
                    "missing: push.apns.certificate is set, so its private key must be too",
                ))
            }
            (None, None, Some(_)) => {
                return Err(invalid(
                    "push.apns.certificate",
                    "missing: push.apns.private_key is set, so its certificate must be too",
                ))
            }
            (None, None, None) => None,
        };
        Ok(a)
    }
}

impl RawFcm {
    fn convert(self) -> Result<FcmConfig, Invalid> {
        let mut f = FcmConfig::default();
        if let Some(url) = self.url {
            f.url = check_base_url("push.fcm.url", &url)?;
        }
        f.service_account = self.service_account.and_then(|Parse(p)| p);
        f.ca_file = self.ca_file.and_then(|Parse(p)| p);
        Ok(f)
    }
}

impl RawWebhook {
    fn convert(self) -> Result<WebhookConfig, Invalid> {
        let url = self
            .url
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty());
        if let Some(u) = &url {
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"))
                .unwrap_or_default();
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            if authority.is_empty()
                || authority.contains(['@', ' ', '#'])
                || <HostPort as crate::text::FromText>::from_text(authority).is_err()
                || u.contains(char::is_whitespace)
            {
                return Err(invalid(
                    "push.webhook.url",
                    format!("{u:?}: expected http://host[:port]/path or https://…"),
                ));
            }
        }
        Ok(WebhookConfig {
            url,
            ca_file: self.ca_file.and_then(|Parse(p)| p),
        })
    }
}
