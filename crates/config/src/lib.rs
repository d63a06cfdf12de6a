//! stg's configuration: one TOML file plus `STG_*` environment overrides, parsed once, at
//! startup, into typed structs.
//!
//! The binary calls [`Config::load`] (or [`Config::from_env`] when there is no file) before it
//! binds anything, then hands each section to the part of the runtime that owns it: `sip` to
//! the edge and the proxy core, `tls` to the listeners, `dns` to the resolver, `admin` to the
//! metrics endpoint, `log` to the subscriber. `stg config check` runs exactly this step.
//!
//! Parsing is the only validation: a value that does not parse, an unknown key (a typo must
//! not be ignored silently) or contradictory settings give one [`ConfigError`] that names the
//! key path, e.g. `sip.listen[1].address: invalid socket address "0.0.0.0:99999": ...`, or the
//! line and column of a TOML syntax error. After that the runtime handles no strings it would
//! have to check again. This crate binds no socket and reads no certificate.
//!
//! [`EXAMPLE`] is a complete, commented file with every key at its default, and
//! `docs/configuration.md` the reference. Defaults need nothing external and expose nothing:
//! every listener is on loopback, no network is trusted, no PROXY header is accepted.

mod env;
mod raw;
mod text;
mod values;
mod web;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::{fmt, io};

pub use ipnet::IpNet;

pub use crate::values::{Host, HostPort, LogFormat, Side, Transport, Upstream};
pub use crate::web::{PathMatch, WebAction, WebConfig, WebProxy, WebRule, WebStatic};

/// Where the binary looks for the file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/stg/stg.toml";

/// A complete configuration file: every key at its default, with what it means. Printed by
/// `stg config example`; a test keeps it equal to [`Config::default`].
pub const EXAMPLE: &str = include_str!("../stg.example.toml");

/// The whole configuration, one field per `[section]` of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub node: NodeConfig,
    pub sip: SipConfig,
    pub tls: TlsConfig,
    pub dns: DnsConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub registrar: RegistrarConfig,
    pub store: StoreConfig,
    pub push: PushConfig,
    pub guard: GuardSection,
    pub portal: PortalConfig,
    pub web: WebConfig,
}

/// `[node]`: who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id in Via and Record-Route parameters and in shared state. None (`""`):
    /// the binary uses the hostname. Always an RFC 3261 `token`, since it lands in parameters.
    pub id: Option<String>,
    /// Where the node keeps its own files: the self-signed certificate, the embedded store.
    /// Default `/var/lib/stg`.
    pub data_dir: PathBuf,
    /// Host names and addresses that also designate this node in a Request-URI (e.g. OPTIONS
    /// health checks), besides the listen and advertise addresses. Default none.
    pub aliases: Vec<Host>,
}

impl NodeConfig {
    /// Where the self-signed certificate is created when `[tls]` names no files.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: None,
            data_dir: PathBuf::from("/var/lib/stg"),
            aliases: Vec::new(),
        }
    }
}

/// `[sip]`: listeners, the upstream PBX, trust, limits and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipConfig {
    /// The PBX: every new request from the outside goes here. Default `sip:127.0.0.1:5070`.
    pub upstream: Upstream,
    /// Sockets to listen on; never empty, no two on one socket. Default: UDP and TCP on
    /// 127.0.0.1:5060, TLS on :5061, WS on :5062, WSS on :5063, all outside.
    pub listen: Vec<ListenerConfig>,
    /// Sources treated as inside (the PBX side). Default none: loopback is not trusted
    /// unless listed.
    pub trusted_networks: Vec<IpNet>,
    /// The only sources whose PROXY protocol v2 header is accepted. Default none.
    pub load_balancers: Vec<IpNet>,
    /// Answer to the packet's source port even without `;rport` (RFC 3581), since NATed
    /// devices rarely ask for it. Default true.
    pub force_rport: bool,
    /// Largest message accepted, in bytes. Default 65535.
    pub max_message_size: usize,
    /// Most header fields in one message. Default 256.
    pub max_headers: usize,
    /// Largest body accepted, in bytes; at most `max_message_size`. Default 60000.
    pub max_body_size: usize,
    /// Most simultaneous stream connections (TCP, TLS, WS, WSS) in all. Default 100000; the
    /// node also keeps this below its open-file limit, less a reserve.
    pub max_connections: usize,
    /// Most simultaneous connections from one source: one IPv4 address, or one IPv6 prefix
    /// of [`source_prefix_v6`](Self::source_prefix_v6) bits. Default 64.
    pub max_connections_per_source: usize,
    /// The IPv6 prefix length that counts as one source for the per-source limits (a
    /// device usually holds a whole /64). Default 64; 1 to 128.
    pub source_prefix_v6: u8,
    /// Most outbound TCP/TLS connection attempts in flight at once. Default 256.
    pub max_pending_connects: usize,
    /// Longest a write to a stream connection may take before the connection is closed; also
    /// its `TCP_USER_TIMEOUT`. Default 10 s.
    pub write_timeout: Duration,
    /// Origins (`https://host[:port]`) whose pages may open a WebSocket; a WebSocket upgrade
    /// with any other `Origin` is refused (403). An upgrade without `Origin` (a native
    /// client) is accepted. Stored lower case. Default none.
    pub ws_allowed_origins: Vec<String>,
    /// Most requests from the outside waiting for their final answer in the proxy core.
    /// Default 20000.
    pub max_transactions: usize,
    /// The same per outside source (as for
    /// [`max_connections_per_source`](Self::max_connections_per_source)). Default 200.
    pub max_transactions_per_source: usize,
    /// Most bytes of such requests held at once (each is kept with its forwarded copy until
    /// answered). Default 64 MiB.
    pub max_transaction_bytes: usize,
    /// Networks that requests routed from the inside may be sent to. Empty (the default):
    /// any address except loopback, link-local, unspecified, multicast and the node's own.
    /// The configured upstream is always allowed.
    pub allowed_destinations: Vec<IpNet>,
    /// A connection with no traffic for this long is closed. Default 10 minutes.
    pub idle_timeout: Duration,
    /// A message begun on a stream connection must be complete within this, or the
    /// connection is closed (a peer trickling a message byte by byte). Default 30 s.
    pub message_timeout: Duration,
    /// Give up connecting to a TCP/TLS/WS peer after this long. Default 5 s.
    pub tcp_connect_timeout: Duration,
    /// Give up a TLS handshake after this long. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// On shutdown, how long transactions get to finish before connections are closed.
    /// Default 30 s; zero closes at once.
    pub drain_timeout: Duration,
    /// Remove `Server`, `User-Agent` and `Warning` from responses relayed to the internet
    /// (a scanner learns nothing of the PBX). Default true.
    pub hide_product_headers: bool,
    /// Drop requests from known scanners' `User-Agent`s (`friendly-scanner`, `sipcli`, …)
    /// unanswered. Default true.
    pub drop_scanners: bool,
    pub timers: TimersConfig,
}

impl SipConfig {
    /// Whether `ip` is inside, i.e. in [`trusted_networks`](Self::trusted_networks).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        contains(&self.trusted_networks, ip)
    }

    /// Whether `ip` may send a PROXY protocol v2 header, i.e. is in
    /// [`load_balancers`](Self::load_balancers).
    pub fn is_load_balancer(&self, ip: IpAddr) -> bool {
        contains(&self.load_balancers, ip)
    }

    /// Whether a WebSocket upgrade carrying `Origin: origin` may proceed, i.e. `origin` is in
    /// [`ws_allowed_origins`](Self::ws_allowed_origins) (compared case-insensitively).
    pub fn is_allowed_origin(&self, origin: &str) -> bool {
        let origin = origin.trim();
        self.ws_allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d, which no IPv4 network
    // would contain.
    let ip = ip.to_canonical();
    nets.iter().any(|net| net.contains(&ip))
}

impl Default for SipConfig {
    fn default() -> Self {
        let listener = |transport, port| ListenerConfig {
            transport,
            address: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            side: Side::Outside,
            proxy_protocol: false,
            advertise: None,
        };
        Self {
            upstream: Upstream {
                scheme_sips: false,
                host: Host::Ip(Ipv4Addr::LOCALHOST.into()),
                port: Some(5070),
                transport: None,
            },
            listen: vec![
                listener(Transport::Udp, 5060),
                listener(Transport::Tcp, 5060),
                listener(Transport::Tls, 5061),
                listener(Transport::Ws, 5062),
                listener(Transport::Wss, 5063),
            ],
            trusted_networks: Vec::new(),
            load_balancers: Vec::new(),
            force_rport: true,
            max_message_size: 65535,
            max_headers: 256,
            max_body_size: 60000,
            max_connections: 100_000,
            max_connections_per_source: 64,
            source_prefix_v6: 64,
            max_pending_connects: 256,
            write_timeout: Duration::from_secs(10),
            ws_allowed_origins: Vec::new(),
            max_transactions: 20_000,
            max_transactions_per_source: 200,
            max_transaction_bytes: 64 << 20,
            allowed_destinations: Vec::new(),
            idle_timeout: Duration::from_secs(600),
            message_timeout: Duration::from_secs(30),
            tcp_connect_timeout: Duration::from_secs(5),
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            hide_product_headers: true,
            drop_scanners: true,
            timers: TimersConfig::default(),
        }
    }
}

/// `[sip.timers]`: the RFC 3261 timer bases (§17.1.1.1, table 4) and timer C (§16.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimersConfig {
    /// RTT estimate, the base of the retransmission timers. Default 500 ms; above zero.
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses. Default 4 s;
    /// at least `t1`.
    pub t2: Duration,
    /// Longest time a message stays in the network. Default 5 s; above zero.
    pub t4: Duration,
    /// How long a proxied INVITE may wait for a final response. Default 3 minutes; at least
    /// 3 minutes (RFC 3261 §16.6 step 11 says "larger than"; 3 minutes is accepted as the
    /// conventional reading).
    pub timer_c: Duration,
}

impl Default for TimersConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_c: Duration::from_secs(180),
        }
    }
}

/// One `[[sip.listen]]` entry: a socket to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub transport: Transport,
    pub address: SocketAddr,
    /// Default outside.
    pub side: Side,
    /// Expect a PROXY protocol v2 header before anything else. Only on stream transports,
    /// and only with `sip.load_balancers` set. Default false.
    pub proxy_protocol: bool,
    /// Written in Via and Record-Route instead of the bound address (behind NAT, or to
    /// publish a DNS name). Default none.
    pub advertise: Option<HostPort>,
}

/// `[tls]`: the certificate of the TLS and WSS listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// None: a self-signed certificate created in [`NodeConfig::tls_dir`].
    pub files: Option<TlsFiles>,
}

/// A certificate chain and its private key, both PEM; the file gives both or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// `[dns]`: the resolver used for the upstream and other host names (RFC 3263).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Servers to ask; empty means those of /etc/resolv.conf. Default empty.
    pub nameservers: Vec<SocketAddr>,
    /// Most answers kept. Default 1024.
    pub cache_size: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            cache_size: 1024,
        }
    }
}

/// `[guard]`: intrusion prevention. Authentication failures are counted per source; past a
/// jail's threshold the source is banned: refused by every listener before anything is
/// parsed, and dropped by the kernel when `firewall` is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSection {
    /// Count failures and ban. Default true.
    pub enabled: bool,
    /// Sources never banned, besides `sip.trusted_networks` and `sip.load_balancers`
    /// (the nodes, HAProxy, the floating IP, the PBX). Default none.
    pub ignore: Vec<IpNet>,
    /// Also enforce bans in stg's own nftables table (needs `nft` and CAP_NET_ADMIN); the
    /// table is not emptied at stop, so bans hold while stg restarts. Default false.
    pub firewall: bool,
    /// The nftables table (family `inet`). Default `stg`.
    pub firewall_table: String,
    /// The failure that brings a source's count in the window to this bans it (SIP digest
    /// failures; the seed's "more than ten"). Default 11.
    pub sip_maxretry: u32,
    /// Out-of-dialog requests answered 403/404/484/604 (a user scan such as `svwar`) that
    /// ban the source. Default 20.
    pub probe_maxretry: u32,
    /// Whether such answers count over UDP too, where the source address may be forged:
    /// the ban they decide is then withheld from an address that authenticated within a
    /// day (a spoofer cannot lock a user out). Default true (`svwar` speaks only UDP).
    pub udp_probes: bool,
    /// The window failures are counted in. Default 10 min.
    pub findtime: Duration,
    /// A first ban's length; each repeat doubles it. Default 1 h.
    pub bantime: Duration,
    /// The longest ban a repeat offender gets. Default 7 days.
    pub max_bantime: Duration,
    /// `[[guard.logs]]`: external log files followed, each with its filter and jail.
    pub logs: Vec<GuardLog>,
    /// Where filter names of `logs` and `syslog_filters` are looked up (as `NAME` or
    /// `NAME.conf`). Default `/etc/fail2ban/filter.d`.
    pub filter_dir: PathBuf,
    /// How often each followed log is checked whatever inotify says (the fallback: a change
    /// wakes its tail at once where inotify works). Default 1 s.
    pub tail_poll: Duration,
    /// The syslog intake (UDP and TCP on this address), for `TRUCO_KO` lines of other
    /// hosts. Default none.
    pub syslog_listen: Option<SocketAddr>,
    /// Sources the intake accepts; others are dropped and counted. Default loopback.
    pub syslog_allowed: Vec<IpNet>,
    /// Filters every syslog message goes through. Default `["truco-ko"]`.
    pub syslog_filters: Vec<String>,
    /// The jail of syslog failures. Default `truco`.
    pub syslog_jail: String,
    /// The syslog failure that bans. Default 11.
    pub syslog_maxretry: u32,
    /// Most TCP connections to the intake at once. Default 64.
    pub syslog_max_connections: usize,
    /// Where each ban's `TRUCO_KO [<ip>] stg <jail> <time>` line is sent as a syslog
    /// datagram (the local syslog socket); None (`""`) for nowhere. Default `/dev/log`.
    pub ban_syslog: Option<PathBuf>,
}

/// `[[guard.logs]]`: one external log file and what to look for in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardLog {
    /// The file (followed across rotation by rename and by truncation).
    pub path: PathBuf,
    /// A fail2ban filter: a path, a name in `guard.filter_dir`, or a built-in (`truco-ko`),
    /// with fail2ban's options (`sshd.conf[mode=aggressive]`).
    pub filter: String,
    /// The jail its failures count in (created with the values below).
    pub jail: String,
    /// The failure that bans. Default 11.
    pub maxretry: u32,
    /// Default `guard.findtime`.
    pub findtime: Option<Duration>,
    /// Default `guard.bantime`.
    pub bantime: Option<Duration>,
    /// A file without a saved position is read from its start (its old failures count by
    /// their dates) rather than from its end. Default false.
    pub from_start: bool,
}

impl Default for GuardSection {
    fn default() -> Self {
        Self {
            enabled: true,
            ignore: Vec::new(),
            firewall: false,
            firewall_table: "stg".to_owned(),
            sip_maxretry: 11,
            probe_maxretry: 20,
            udp_probes: true,
            findtime: Duration::from_secs(600),
            bantime: Duration::from_secs(3600),
            max_bantime: Duration::from_secs(7 * 86_400),
            logs: Vec::new(),
            filter_dir: PathBuf::from("/etc/fail2ban/filter.d"),
            tail_poll: Duration::from_secs(1),
            syslog_listen: None,
            syslog_allowed: vec![
                IpNet::V4(ipnet::Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
                IpNet::V6(ipnet::Ipv6Net::new_assert(
                    std::net::Ipv6Addr::LOCALHOST,
                    128,
                )),
            ],
            syslog_filters: vec!["truco-ko".to_owned()],
            syslog_jail: "truco".to_owned(),
            syslog_maxretry: 11,
            syslog_max_connections: 64,
            ban_syslog: Some(PathBuf::from("/dev/log")),
        }
    }
}

/// `[portal]`: the authentication service (the Sercen role): login page and API, session
/// tokens, the token check for internal services. It has no listener of its own: the web
/// front serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalConfig {
    /// The realm whose users log in (the users table is per realm). "": the same default as
    /// `stg user add` (`registrar.realm`, else the first registrar domain that is not `*`),
    /// and when there is none, whichever realm the user has a portal password in. Default "".
    pub realm: String,
    /// Where a browser goes after logging in: a path on this site (never another site: no
    /// open redirect). Default `/`.
    pub landing_page: String,
    /// How long a session token is accepted. Default 8 h (a working day).
    pub token_lifetime: Duration,
    /// The session cookie's name (an RFC 6265 token). Default `stg_session`.
    pub cookie_name: String,
    /// The token signing secret (at least 32 bytes, the whole file), created 0600 with 32
    /// random bytes when missing; copy it to every node of a cluster so that any node
    /// accepts a token issued by another. Default `<node.data_dir>/portal.key`.
    pub key_file: Option<PathBuf>,
    /// argon2id memory cost of new password hashes, KiB. Default 19456 (19 MiB).
    pub argon2_memory_kib: u32,
    /// argon2id passes. Default 2.
    pub argon2_iterations: u32,
    /// argon2id lanes. Default 1.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (each holds a core and `argon2_memory_kib` for tens
    /// of milliseconds). Default 1: a login flood cannot take the SIP core's CPU.
    pub max_hashing: usize,
    /// Logins waiting for a hashing slot; beyond it a login is answered 503 at once.
    /// Default 64.
    pub max_waiting: usize,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            realm: String::new(),
            landing_page: "/".to_owned(),
            token_lifetime: Duration::from_secs(8 * 3600),
            cookie_name: "stg_session".to_owned(),
            key_file: None,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_hashing: 1,
            max_waiting: 64,
        }
    }
}

impl Config {
    /// The token signing secret's file: `portal.key_file`, else `<node.data_dir>/portal.key`.
    pub fn portal_key_file(&self) -> PathBuf {
        self.portal
            .key_file
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("portal.key"))
    }

    /// The realm of portal logins (see [`PortalConfig::realm`]); `None`: any realm.
    pub fn portal_realm(&self) -> Option<String> {
        Some(self.portal.realm.clone())
            .filter(|r| !r.is_empty())
            .or_else(|| Some(self.registrar.realm.clone()).filter(|r| !r.is_empty()))
            .or_else(|| {
                self.registrar
                    .domains
                    .iter()
                    .find(|d| d.name != "*")
                    .map(|d| d.name.clone())
            })
    }
}

/// `[admin]`: the operator's HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where Prometheus `/metrics` is served; None (`""`) disables it. Default 127.0.0.1:9090.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 9090)),
        }
    }
}

/// How a registrar domain takes registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrarMode {
    /// The PBX is the registrar; stg passes the REGISTER on with its Path and stores the
    /// binding when the PBX answers 2xx (the seed's Flexisip `reg-on-response`).
    Through,
    /// stg is the registrar: digest challenge, binding store, answer.
    Local,
}

/// One `[[registrar.domains]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarDomain {
    /// A SIP domain, or `*` for every REGISTER (and calls to the node's own names).
    pub name: String,
    /// `through` or `local`.
    pub mode: RegistrarMode,
    /// Local mode: devices of this domain (their From host) must answer a digest challenge
    /// (407) before their INVITEs and MESSAGEs go to the PBX. Default false.
    pub authenticate: bool,
}

/// `[registrar]`: which REGISTERs stg takes and the rules of its bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Empty: REGISTER is forwarded like any request and nothing is stored. Default: every
    /// domain, `through`.
    pub domains: Vec<RegistrarDomain>,
    /// Shortest registration accepted in local mode (423 below it). Default 60 s.
    pub min_expires: Duration,
    /// Longest registration granted in local mode. Default 1 day.
    pub max_expires: Duration,
    /// Granted when the device asks for none. Default 1 hour.
    pub default_expires: Duration,
    /// Contacts kept per AOR; beyond it the oldest is evicted. Default 10.
    pub max_contacts: usize,
    /// Remove RFC 8599 push parameters from the Contact sent to the PBX. Default true.
    pub strip_push_params: bool,
    /// Digest realm of local mode; "" = the domain of the request. Default "".
    pub realm: String,
    /// Digest algorithms offered in challenges (`SHA-256`, `MD5`), strongest first whatever
    /// the order. Default both. Clients that read only the first challenge and know only
    /// MD5 (SIPp, old phones) need `["MD5"]`.
    pub digest_algorithms: Vec<String>,
    /// How long a digest nonce may be used; an older one is answered `stale=true`.
    /// Default 5 min.
    pub nonce_ttl: Duration,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            domains: vec![RegistrarDomain {
                name: "*".to_owned(),
                mode: RegistrarMode::Through,
                authenticate: false,
            }],
            min_expires: Duration::from_secs(60),
            max_expires: Duration::from_secs(86_400),
            default_expires: Duration::from_secs(3600),
            max_contacts: 10,
            strip_push_params: true,
            realm: String::new(),
            digest_algorithms: vec!["SHA-256".to_owned(), "MD5".to_owned()],
            nonce_ttl: Duration::from_secs(300),
        }
    }
}

/// `[store]`: where bindings and credentials live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreConfig {
    /// Bindings: "" = the embedded store in `node.data_dir`; `redis://host:port[/db]`, or
    /// `redis+sentinel://host:port[,host:port…]/master` (Flexisip's `fs:<aor>` layout).
    pub url: String,
    /// SIP credentials: "" = SQLite in `node.data_dir`; `mysql://…`, `postgres://…`.
    pub users_url: String,
}

/// How pushes leave the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    /// One INFO log line per push, nothing sent: the embedded default, for a node with no
    /// provider credentials.
    Log,
    /// Sent to APNs, FCM or the webhook, whichever `[push.*]` section is configured.
    Live,
}

/// `[push]`: waking sleeping devices (RFC 8599) and how long calls and messages wait for
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// Default log.
    pub mode: PushMode,
    /// An INVITE branch to a device with push parameters that has not answered within this
    /// is pushed (a device's `pn-timeout` wins). Default 5 s.
    pub timeout: Duration,
    /// How long a call keeps waiting for a pushed device to come back. Default 90 s.
    pub call_fork_timeout: Duration,
    /// A MESSAGE to a pushed device is answered 202 after this with no answer. Default 5 s.
    pub message_accept_timeout: Duration,
    /// How long a MESSAGE is kept for a device that does not come back; also the expiry of
    /// message pushes. Default 7 days.
    pub message_delivery_timeout: Duration,
    /// Most messages kept for one device (the oldest are kept; a further one is refused,
    /// and its sender still had its 202). Default 100.
    pub max_stored_messages: usize,
    /// Expiry of call pushes at the provider (APNs `apns-expiration`, FCM `ttl`): a device
    /// offline longer is not woken for a call long gone. Default 60 s; whole seconds.
    pub ttl: Duration,
    /// Most pushes in flight per provider; beyond it a push is refused and counted.
    /// Default 256.
    pub max_in_flight: usize,
    pub apns: ApnsConfig,
    pub fcm: FcmConfig,
    pub webhook: WebhookConfig,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            mode: PushMode::Log,
            timeout: Duration::from_secs(5),
            call_fork_timeout: Duration::from_secs(90),
            message_accept_timeout: Duration::from_secs(5),
            message_delivery_timeout: Duration::from_secs(7 * 86_400),
            max_stored_messages: 100,
            ttl: Duration::from_secs(60),
            max_in_flight: 256,
            apns: ApnsConfig::default(),
            fcm: FcmConfig::default(),
            webhook: WebhookConfig::default(),
        }
    }
}

/// How stg proves itself to APNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApnsAuth {
    /// Token-based: ES256 JWTs signed with the team's `.p8` key.
    Token {
        team_id: String,
        key_id: String,
        key_file: PathBuf,
    },
    /// Certificate-based: a client certificate (mutual TLS), PEM, with its private key.
    Certificate {
        certificate: PathBuf,
        private_key: PathBuf,
    },
}

/// `[push.apns]`: Apple Push Notification service (HTTP/2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsConfig {
    /// Production gateway (`pn-provider=apns`). Default `https://api.push.apple.com`.
    pub url: String,
    /// Sandbox gateway (`pn-provider=apns.dev`). Default
    /// `https://api.sandbox.push.apple.com`.
    pub sandbox_url: String,
    /// None: APNs is not configured (its pushes go to the webhook if there is one).
    pub auth: Option<ApnsAuth>,
    /// Extra trusted roots, PEM, besides the built-in web PKI roots. Default none.
    pub ca_file: Option<PathBuf>,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            url: "https://api.push.apple.com".to_owned(),
            sandbox_url: "https://api.sandbox.push.apple.com".to_owned(),
            auth: None,
            ca_file: None,
        }
    }
}

/// `[push.fcm]`: Firebase Cloud Messaging, HTTP v1 API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmConfig {
    /// The service account's JSON key file; None: FCM is not configured.
    pub service_account: Option<PathBuf>,
    /// Default `https://fcm.googleapis.com`.
    pub url: String,
    /// Extra trusted roots, PEM. Default none.
    pub ca_file: Option<PathBuf>,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            service_account: None,
            url: "https://fcm.googleapis.com".to_owned(),
            ca_file: None,
        }
    }
}

/// `[push.webhook]`: an operator's HTTP endpoint that receives the pushes no native client
/// takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL; None: no webhook.
    pub url: Option<String>,
    /// Extra trusted roots for an https URL, PEM. Default none.
    pub ca_file: Option<PathBuf>,
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Default auto.
    pub format: LogFormat,
    /// A `tracing` EnvFilter directive such as `info` or `info,stg_edge=debug`; only checked
    /// to be non-empty here. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".to_owned(),
        }
    }
}

impl Config {
    /// Parses TOML text, applies the `STG_*` overrides among `vars`, and converts the result.
    ///
    /// `vars` is usually the process environment. `std::env::vars()` panics on a variable
    /// that is not Unicode, anywhere in the environment; `std::env::vars_os()` filtered
    /// through `into_string` does not.
    pub fn from_toml_str(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::parse(text, None, vars)
    }

    /// Reads the file at `path`, then as [`from_toml_str`](Self::from_toml_str).
    pub fn load(
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, Some(path), vars)
    }

    /// No file at all: the defaults plus the `STG_*` overrides among `vars`.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        Self::parse("", None, vars)
    }

    fn parse(
        text: &str,
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::syntax(text, file, &e))?;
        let overrides = env::apply(&mut tree, vars)?;
        raw::convert(tree).map_err(|invalid| ConfigError::Invalid {
            env_var: overrides.var_for(&invalid.key).map(str::to_owned),
            key: invalid.key,
            message: invalid.message,
        })
    }
}

/// Why the configuration could not be loaded. Every variant names where to look: the file,
/// the line and column, the environment variable or the key path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The text is not TOML. `line` and `column` count from 1, columns in characters.
    #[error("{}line {line}, column {column}: {message}", FilePrefix(path.as_deref()))]
    Syntax {
        path: Option<PathBuf>,
        line: usize,
        column: usize,
        message: String,
    },
    /// An `STG_*__*` variable that cannot be applied: its value is not valid TOML, or its
    /// name does not lead to a key.
    #[error("{var}: {message}")]
    Env { var: String, message: String },
    /// A key is unknown, its value does not parse, or it contradicts another key.
    /// `env_var` names the variable that set it, if one did.
    #[error("{key}{}: {message}", FromEnv(env_var.as_deref()))]
    Invalid {
        /// e.g. `sip.listen[1].address`.
        key: String,
        env_var: Option<String>,
        message: String,
    },
}

impl ConfigError {
    fn syntax(text: &str, file: Option<&Path>, error: &toml::de::Error) -> Self {
        let offset = error.span().map_or(0, |span| span.start).min(text.len());
        // A span can end inside a multi-byte character; back off to its start.
        let offset = (0..=offset)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self::Syntax {
            path: file.map(Path::to_owned),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            message: one_line(error.message()),
        }
    }
}

/// toml's messages span lines ("invalid string\nexpected ..."); an error is one line.
fn one_line(message: &str) -> String {
    message.trim().replace('\n', "; ")
}

struct FilePrefix<'a>(Option<&'a Path>);

impl fmt::Display for FilePrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}: ", path.display()),
            None => Ok(()),
        }
    }
}

struct FromEnv<'a>(Option<&'a str>);

impl fmt::Display for FromEnv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(var) => write!(f, " (set by {var})"),
            None => Ok(()),
        }
    }
}
