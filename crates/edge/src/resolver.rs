//! Locating SIP servers: turns the [`ResolveTarget`] of a `Resolve` output of the sans-IO
//! core into an ordered list of `(transport, address)` pairs to try, per RFC 3263 §4.
//!
//! - IP literal: no DNS at all (§4.1, §4.2).
//! - Port given: A/AAAA of the host only (§4.2).
//! - Transport given: SRV `_sip._udp`, `_sip._tcp` or `_sips._tcp` of the host (§4.2,
//!   ordered per RFC 2782), each target's A/AAAA; no SRV records: A/AAAA with the
//!   transport's default port. WS/WSS have no SRV service names (RFC 7118 defines none), so
//!   they go straight to A/AAAA with 5060/5061.
//! - Neither: NAPTR of the host (§4.1): `SIP+D2U`, `SIP+D2T`, `SIPS+D2T` records with flag
//!   `s`, by order then preference, each replacement's SRV. No usable NAPTR: SRV for every
//!   transport we support (§4.1, last paragraphs), `_sips._tcp` only for `sips:`. No SRV
//!   records either: A/AAAA with UDP 5060, or TLS 5061 for `sips:`.
//!
//! A `sips:` URI needs TLS all the way (RFC 3261 §26.2.2): a given
//! transport is upgraded (UDP/TCP to TLS, WS to WSS), and NAPTR/SRV only consider TLS.
//!
//! The list is a failover list (RFC 3263 §4.3): the caller tries the entries in order. Caching,
//! honouring the records' TTLs, is hickory's own; [`Resolver::lookup`] adds a deadline and a
//! short negative cache of its own, so that while a name cannot be resolved (a DNS outage
//! times out rather than answering) a flood of requests costs one lookup every few seconds,
//! not six queries each. The core already asks once per name at a time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ServerOrderingStrategy,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{Name, TokioResolver};
use stg_sip_core::net::Transport;
use stg_sip_core::proxy::ResolveTarget;

/// Why a [`ResolveTarget`] gave no address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The host is empty or not a valid domain name.
    #[error("invalid SIP host {host:?}")]
    InvalidHost {
        /// The host as given.
        host: String,
    },
    /// DNS answered, but no record led to an address.
    #[error("no DNS records for SIP host {host}")]
    NoRecords {
        /// The host as given.
        host: String,
    },
    /// DNS failed (timeout, SERVFAIL, REFUSED, network error) and nothing else led to an
    /// address.
    #[error("DNS lookup for SIP host {host} failed: {reason}")]
    Dns {
        /// The host as given.
        host: String,
        /// hickory's description of the first failure.
        reason: String,
    },
    /// The system resolver configuration could not be read.
    #[error("DNS resolver configuration: {0}")]
    Config(String),
    /// The lookup took longer than its deadline.
    #[error("DNS lookup for SIP host {host} timed out")]
    Timeout {
        /// The host as given.
        host: String,
    },
    /// The same lookup failed a moment ago and is not retried yet.
    #[error("DNS lookup for SIP host {host} failed recently: not retried for a few seconds")]
    Cached {
        /// The host as given.
        host: String,
    },
}

/// How long a failed lookup is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Most failed lookups remembered; beyond it the oldest go (names are chosen by messages).
const NEGATIVE_CAP: usize = 1024;

/// RFC 3263 resolver. Cheap to clone: every clone shares one hickory resolver and its cache.
#[derive(Clone, Debug)]
pub struct Resolver {
    dns: Arc<TokioResolver>,
    failed: Arc<Mutex<HashMap<ResolveTarget, tokio::time::Instant>>>,
}

impl Resolver {
    /// A resolver with a cache of `cache_size` records.
    ///
    /// `nameservers` empty: the system configuration (`/etc/resolv.conf`, and `/etc/hosts`
    /// like libc). Otherwise exactly these servers, over UDP (TCP when truncated), tried in the
    /// given order, without `/etc/hosts`: whoever names servers wants their answers.
    pub fn new(nameservers: &[SocketAddr], cache_size: usize) -> Result<Self, ResolveError> {
        let mut builder = if nameservers.is_empty() {
            let mut b =
                TokioResolver::builder_tokio().map_err(|e| ResolveError::Config(e.to_string()))?;
            b.options_mut().use_hosts_file = ResolveHosts::Always;
            b
        } else {
            let mut config = ResolverConfig::new();
            for &ns in nameservers {
                config.add_name_server(NameServerConfig::new(ns, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(ns, Protocol::Tcp));
            }
            let mut b =
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
            let opts = b.options_mut();
            opts.use_hosts_file = ResolveHosts::Never;
            // "In order": hickory would otherwise reorder by measured RTT and ask two servers
            // at once.
            opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
            opts.num_concurrent_reqs = 1;
            b
        };
        let opts = builder.options_mut();
        opts.cache_size = cache_size;
        // Both families, so a v6-only (or v4-only) target still resolves; `Run::addrs` puts
        // IPv4 first since an edge is more likely to have v4 connectivity.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Ok(Self {
            dns: Arc::new(builder.build()),
            failed: Arc::default(),
        })
    }

    /// [`Self::resolve`] bounded by `deadline`, with failures remembered for a few seconds
    /// (a failure answered from memory is [`ResolveError::Cached`]).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is recorded until the lookup ends.
    pub async fn lookup(
        &self,
        target: &ResolveTarget,
        deadline: Duration,
    ) -> Result<Vec<(Transport, SocketAddr)>, ResolveError> {
        let now = tokio::time::Instant::now();
        {
            let failed = self
                .failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if failed.get(target).is_some_and(|&until| now < until) {
                return Err(ResolveError::Cached {
                    host: target.host.clone(),
                });
            }
        }
        let result = match tokio::time::timeout(deadline, self.resolve(target)).await {
            Ok(r) => r,
            Err(_) => Err(ResolveError::Timeout {
                host: target.host.clone(),
            }),
        };
        let mut failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if result.is_ok() {
            failed.remove(target);
        } else {
            let now = tokio::time::Instant::now();
            failed.retain(|_, until| *until > now);
            if failed.len() >= NEGATIVE_CAP {
                if let Some(oldest) = failed
                    .iter()
                    .min_by_key(|(_, u)| **u)
                    .map(|(k, _)| k.clone())
                {
                    failed.remove(&oldest);
                }
            }
            failed.insert(target.clone(), now + NEGATIVE_TTL);
        }
        result
    }

    /// RFC 3263 §4: the addresses to try, in preference order, each with its transport.
    ///
    /// Never empty on `Ok`. Duplicates are removed (first occurrence wins).
    pub async fn resolve(
        &self,
        target: &ResolveTarget,
    ) -> Result<Vec<(Transport, SocketAddr)>, ResolveError> {
        let host = strip_brackets(&target.host);
        let transport = target
            .transport
            .map(|t| if target.sips { secure(t) } else { t });
        let fallback_transport = transport.unwrap_or(if target.sips {
            Transport::Tls
        } else {
            Transport::Udp
        });

        if let Ok(ip) = host.parse::<IpAddr>() {
            let port = target.port.unwrap_or(fallback_transport.default_port());
            return Ok(vec![(fallback_transport, SocketAddr::new(ip, port))]);
        }
        let Ok(name) = Name::from_utf8(host) else {
            return Err(ResolveError::InvalidHost {
                host: target.host.clone(),
            });
        };
        if host.is_empty() || name.is_root() {
            return Err(ResolveError::InvalidHost {
                host: target.host.clone(),
            });
        }

        let mut run = Run::new(&self.dns);
        if let Some(port) = target.port {
            // §4.2: an explicit port means no SRV.
            run.addrs(name, port, fallback_transport).await;
        } else if let Some(t) = transport {
            if let Some(service) = srv_service(t) {
                run.srv(service, &name, t).await;
            }
            if run.out.is_empty() && !run.srv_found {
                run.addrs(name, t.default_port(), t).await;
            }
        } else {
            run.naptr(&name, target.sips).await;
            if run.out.is_empty() {
                let transports: &[Transport] = if target.sips {
                    &[Transport::Tls]
                } else {
                    &[Transport::Udp, Transport::Tcp, Transport::Tls]
                };
                for &t in transports {
                    if let Some(service) = srv_service(t) {
                        run.srv(service, &name, t).await;
                    }
                }
            }
            if run.out.is_empty() && !run.srv_found {
                run.addrs(name, fallback_transport.default_port(), fallback_transport)
                    .await;
            }
        }
        run.finish(&target.host)
    }
}

/// One resolution: the addresses found so far and the first hard DNS failure, which is only
/// reported when nothing was found (a broken record type must not hide working ones).
struct Run<'a> {
    dns: &'a TokioResolver,
    out: Vec<(Transport, SocketAddr)>,
    /// Some SRV RRset existed, even if its targets gave nothing: then §4.2 forbids the A/AAAA
    /// fallback (and a lone target "." means "decidedly not available", RFC 2782).
    srv_found: bool,
    error: Option<String>,
}

impl<'a> Run<'a> {
    fn new(dns: &'a TokioResolver) -> Self {
        Self {
            dns,
            out: Vec::new(),
            srv_found: false,
            error: None,
        }
    }

    fn failed(&mut self, what: &str, e: &hickory_resolver::ResolveError) {
        // NXDOMAIN/NODATA is an answer, not a failure: it just moves us to the next step.
        // hickory reports SERVFAIL, REFUSED & co. as "no records" too, hence the rcode check.
        let empty_answer = matches!(
            e.proto().map(ProtoError::kind),
            Some(ProtoErrorKind::NoRecordsFound {
                response_code: ResponseCode::NoError | ResponseCode::NXDomain,
                ..
            })
        );
        if empty_answer {
            return;
        }
        tracing::debug!(lookup = what, error = %e, "DNS lookup failed");
        if self.error.is_none() {
            self.error = Some(e.to_string());
        }
    }

    /// §4.1 NAPTR step; follows each usable record's SRV.
    async fn naptr(&mut self, name: &Name, sips: bool) {
        let lookup = match self.dns.lookup(name.clone(), RecordType::NAPTR).await {
            Ok(l) => l,
            Err(e) => return self.failed("NAPTR", &e),
        };
        let mut records: Vec<_> = lookup
            .iter()
            .filter_map(|r| match r {
                RData::NAPTR(n) if n.flags().eq_ignore_ascii_case(b"s") => {
                    let t = naptr_transport(n.services())?;
                    (!sips || t == Transport::Tls)
                        .then(|| (n.order(), n.preference(), t, n.replacement().clone()))
                }
                _ => None,
            })
            .collect();
        // Stable: equal order and preference keep the server's order.
        records.sort_by_key(|&(order, pref, ..)| (order, pref));
        for (_, _, t, replacement) in records {
            self.srv_at(&replacement, t).await;
        }
    }

    /// SRV lookup of `<service>.<name>`.
    async fn srv(&mut self, service: &str, name: &Name, t: Transport) {
        let srv_name = match Name::from_ascii(service).and_then(|s| s.append_domain(name)) {
            Ok(n) => n,
            Err(e) => return self.failed("SRV", &e.into()),
        };
        self.srv_at(&srv_name, t).await;
    }

    async fn srv_at(&mut self, srv_name: &Name, t: Transport) {
        let lookup = match self.dns.srv_lookup(srv_name.clone()).await {
            Ok(l) => l,
            Err(e) => return self.failed("SRV", &e),
        };
        let records: Vec<SrvRecord> = lookup
            .iter()
            .map(|s| SrvRecord {
                priority: s.priority(),
                weight: s.weight(),
                port: s.port(),
                target: s.target().clone(),
            })
            .collect();
        if records.is_empty() {
            return;
        }
        self.srv_found = true;
        for r in order_srv(records, &mut os_random) {
            if r.target.is_root() {
                continue;
            }
            self.addrs(r.target, r.port, t).await;
        }
    }

    /// A/AAAA of `name`, IPv4 first.
    async fn addrs(&mut self, name: Name, port: u16, t: Transport) {
        let lookup = match self.dns.lookup_ip(name).await {
            Ok(l) => l,
            Err(e) => return self.failed("A/AAAA", &e),
        };
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort_by_key(IpAddr::is_ipv6);
        for ip in ips {
            let entry = (t, SocketAddr::new(ip, port));
            if !self.out.contains(&entry) {
                self.out.push(entry);
            }
        }
    }

    fn finish(self, host: &str) -> Result<Vec<(Transport, SocketAddr)>, ResolveError> {
        if !self.out.is_empty() {
            return Ok(self.out);
        }
        let host = host.to_owned();
        Err(match self.error {
            Some(reason) => ResolveError::Dns { host, reason },
            None => ResolveError::NoRecords { host },
        })
    }
}

/// An SRV record, detached from hickory so the ordering is testable without DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SrvRecord {
    priority: u16,
    weight: u16,
    port: u16,
    target: Name,
}

/// RFC 2782 target selection: ascending priority; within one priority a weighted random
/// draw without replacement, weight-0 records only winning when the draw is 0.
///
/// `random(n)` returns a uniform number in `0..=n`; injectable so tests are deterministic.
fn order_srv(mut records: Vec<SrvRecord>, random: &mut dyn FnMut(u64) -> u64) -> Vec<SrvRecord> {
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let len = rest
            .iter()
            .take_while(|r| r.priority == first.priority)
            .count();
        let (group, tail) = rest.split_at(len);
        rest = tail;
        // RFC 2782: weight-0 records go to the front of the running sum.
        let mut group: Vec<&SrvRecord> = group.iter().collect();
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u64 = group.iter().map(|r| u64::from(r.weight)).sum();
            let draw = random(total).min(total);
            let mut sum = 0;
            let pick = group
                .iter()
                .position(|r| {
                    sum += u64::from(r.weight);
                    sum >= draw
                })
                .unwrap_or(0);
            out.push(group.remove(pick).clone());
        }
    }
    out
}

/// The OS random source; on failure (never seen on Linux) the draw degrades to 0, which
/// still yields a valid, merely deterministic, order.
fn os_random(n: u64) -> u64 {
    // `n < 2^32` (u16 weights, few records), so the modulo bias is negligible.
    getrandom::u64().map_or(0, |x| x % (n + 1))
}

/// RFC 3263 §4.1 services we speak; SCTP (`D2S`) and others are dropped.
fn naptr_transport(service: &[u8]) -> Option<Transport> {
    [
        (&b"SIP+D2U"[..], Transport::Udp),
        (b"SIP+D2T", Transport::Tcp),
        (b"SIPS+D2T", Transport::Tls),
    ]
    .into_iter()
    .find(|(s, _)| s.eq_ignore_ascii_case(service))
    .map(|(_, t)| t)
}

/// RFC 3263 §4.2 SRV service labels; WS/WSS have none.
fn srv_service(t: Transport) -> Option<&'static str> {
    match t {
        Transport::Udp => Some("_sip._udp"),
        Transport::Tcp => Some("_sip._tcp"),
        Transport::Tls => Some("_sips._tcp"),
        Transport::Ws | Transport::Wss => None,
    }
}

/// The transport a `sips:` URI must use instead (RFC 3261 §26.2.2: TLS on every hop).
fn secure(t: Transport) -> Transport {
    match t {
        Transport::Udp | Transport::Tcp | Transport::Tls => Transport::Tls,
        Transport::Ws | Transport::Wss => Transport::Wss,
    }
}

/// `[::1]` → `::1`: IPv6 references keep their brackets in URIs (RFC 3261 §25.1).
fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::UdpSocket;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// While a name cannot be resolved (a nameserver that swallows every query), a burst
    /// of lookups costs one bounded attempt; the rest are answered from the negative cache.
    #[tokio::test]
    async fn failed_lookups_are_remembered_briefly() {
        let hole = UdpSocket::bind("127.0.0.1:0").expect("bind");
        hole.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let r = Resolver::new(&[hole.local_addr().unwrap()], 64).expect("resolver");
        let target = ResolveTarget {
            host: "pbx.example.test".into(),
            port: None,
            transport: None,
            sips: false,
        };
        let first = r.lookup(&target, Duration::from_millis(300)).await;
        assert!(
            matches!(first, Err(ResolveError::Timeout { .. })),
            "{first:?}"
        );
        let mut buf = [0u8; 512];
        let mut queries = 0;
        while hole.recv_from(&mut buf).is_ok() {
            queries += 1;
        }
        assert!(queries >= 1);
        let started = Instant::now();
        for _ in 0..50 {
            let again = r.lookup(&target, Duration::from_millis(300)).await;
            assert!(
                matches!(again, Err(ResolveError::Cached { .. })),
                "{again:?}"
            );
        }
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(
            hole.recv_from(&mut buf).is_err(),
            "no query while remembered"
        );
    }

    /// dnsmasq on 127.0.0.1:`port`, killed (by its own PID) on drop.
    struct Dnsmasq {
        child: Child,
        port: u16,
    }

    impl Dnsmasq {
        fn start(records: &[&str]) -> Self {
            let port = {
                let s = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
                s.local_addr().expect("local addr").port()
            };
            let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "dnsmasq"]
                .into_iter()
                .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
                .unwrap_or("dnsmasq");
            let mut cmd = Command::new(bin);
            cmd.args([
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--pid-file=",
                // Authoritative NXDOMAIN for unknown names instead of REFUSED.
                "--local=/example.test/",
            ]);
            cmd.args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    panic!("dnsmasq not found: install the Debian package `dnsmasq-base` ({e})")
                }
                Err(e) => panic!("cannot start dnsmasq: {e}"),
            };
            let mut d = Self { child, port };
            d.wait_ready();
            d
        }

        fn addr(&self) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], self.port))
        }

        /// Until dnsmasq answers a raw A query; fails with its stderr if it exited.
        fn wait_ready(&mut self) {
            // id 0x5354, RD, one question: plain.example.test A IN.
            let mut q = vec![0x53, 0x54, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in ["plain", "example", "test"] {
                q.push(label.len() as u8);
                q.extend_from_slice(label.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    let mut err = String::new();
                    if let Some(mut s) = self.child.stderr.take() {
                        let _ = s.read_to_string(&mut err);
                    }
                    panic!("dnsmasq exited ({status}): {err}");
                }
                let _ = sock.send_to(&q, self.addr());
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if n >= 2 && buf[..2] == q[..2] {
                        return;
                    }
                }
            }
            panic!("dnsmasq did not answer on {} within 10 s", self.addr());
        }
    }

    impl Drop for Dnsmasq {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn target(
        host: &str,
        port: Option<u16>,
        transport: Option<Transport>,
        sips: bool,
    ) -> ResolveTarget {
        ResolveTarget {
            host: host.to_owned(),
            port,
            transport,
            sips,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[tokio::test]
    async fn rfc3263_against_dnsmasq() {
        let dns = Dnsmasq::start(&[
            "--host-record=plain.example.test,127.0.0.11",
            "--host-record=t1.example.test,127.0.0.11",
            "--host-record=t2.example.test,127.0.0.12",
            "--host-record=srv.example.test,127.0.0.13",
            "--host-record=n-tcp.example.test,127.0.0.21",
            "--host-record=n-udp.example.test,127.0.0.22",
            "--host-record=n-tls.example.test,127.0.0.23",
            "--host-record=s-udp.example.test,127.0.0.31",
            "--host-record=s-tls.example.test,127.0.0.33",
            // Transport given: two priorities, the higher-numbered listed first.
            "--srv-host=_sip._tcp.srv.example.test,t1.example.test,5071,20,0",
            "--srv-host=_sip._tcp.srv.example.test,t2.example.test,5072,10,0",
            // NAPTR chain, listed out of order, with services we must drop.
            "--naptr-record=naptr.example.test,30,10,s,SIPS+D2T,,_sips._tcp.naptr.example.test",
            "--naptr-record=naptr.example.test,20,10,s,SIP+D2U,,_sip._udp.naptr.example.test",
            "--naptr-record=naptr.example.test,10,10,s,SIP+D2T,,_sip._tcp.naptr.example.test",
            "--naptr-record=naptr.example.test,5,10,s,SIP+D2S,,_sip._sctp.naptr.example.test",
            "--naptr-record=naptr.example.test,5,10,u,E2U+sip,!^.*$!sip:x@example.test!,",
            "--srv-host=_sip._tcp.naptr.example.test,n-tcp.example.test,5080,0,0",
            "--srv-host=_sip._udp.naptr.example.test,n-udp.example.test,5090,0,0",
            "--srv-host=_sips._tcp.naptr.example.test,n-tls.example.test,5091,0,0",
            // No NAPTR, SRV only.
            "--srv-host=_sip._udp.srvonly.example.test,s-udp.example.test,5100,0,0",
            "--srv-host=_sips._tcp.srvonly.example.test,s-tls.example.test,5101,0,0",
            // SRV saying "decidedly not available".
            "--srv-host=_sip._udp.gone.example.test",
            "--host-record=gone.example.test,127.0.0.14",
        ]);
        let r = Resolver::new(&[dns.addr()], 64).expect("resolver");
        let ok = |v: &[(Transport, &str)]| -> Vec<(Transport, SocketAddr)> {
            v.iter().map(|&(t, a)| (t, sa(a))).collect()
        };

        // IP literals: no DNS.
        let got = r
            .resolve(&target("127.0.0.99", None, None, false))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Udp, "127.0.0.99:5060")]));
        let got = r.resolve(&target("[::1]", None, None, true)).await.unwrap();
        assert_eq!(got, ok(&[(Transport::Tls, "[::1]:5061")]));
        let got = r
            .resolve(&target("[::1]", Some(5080), Some(Transport::Tcp), false))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Tcp, "[::1]:5080")]));

        // Name with port: A only, even though srv.example.test has SRV records.
        let got = r
            .resolve(&target("srv.example.test", Some(5070), None, false))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Udp, "127.0.0.13:5070")]));
        let got = r
            .resolve(&target(
                "plain.example.test",
                Some(5070),
                Some(Transport::Tcp),
                false,
            ))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Tcp, "127.0.0.11:5070")]));

        // Transport given: SRV by priority.
        let got = r
            .resolve(&target(
                "srv.example.test",
                None,
                Some(Transport::Tcp),
                false,
            ))
            .await
            .unwrap();
        assert_eq!(
            got,
            ok(&[
                (Transport::Tcp, "127.0.0.12:5072"),
                (Transport::Tcp, "127.0.0.11:5071")
            ])
        );
        // Transport given, no SRV for it: A with the default port.
        let got = r
            .resolve(&target(
                "srv.example.test",
                None,
                Some(Transport::Udp),
                false,
            ))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Udp, "127.0.0.13:5060")]));
        // WS: never SRV.
        let got = r
            .resolve(&target(
                "srv.example.test",
                None,
                Some(Transport::Ws),
                false,
            ))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Ws, "127.0.0.13:5060")]));
        let got = r
            .resolve(&target("srv.example.test", None, Some(Transport::Ws), true))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Wss, "127.0.0.13:5061")]));

        // NAPTR → SRV → A: TCP (order 10) before UDP (20) before TLS (30); SCTP and ENUM dropped.
        let got = r
            .resolve(&target("naptr.example.test", None, None, false))
            .await
            .unwrap();
        assert_eq!(
            got,
            ok(&[
                (Transport::Tcp, "127.0.0.21:5080"),
                (Transport::Udp, "127.0.0.22:5090"),
                (Transport::Tls, "127.0.0.23:5091"),
            ])
        );
        // sips: only SIPS+D2T.
        let got = r
            .resolve(&target("naptr.example.test", None, None, true))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Tls, "127.0.0.23:5091")]));
        // sips with transport=tcp means TLS: `_sips._tcp`.
        let got = r
            .resolve(&target(
                "naptr.example.test",
                None,
                Some(Transport::Tcp),
                true,
            ))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Tls, "127.0.0.23:5091")]));

        // No NAPTR: SRV per transport, UDP, TCP, TLS.
        let got = r
            .resolve(&target("srvonly.example.test", None, None, false))
            .await
            .unwrap();
        assert_eq!(
            got,
            ok(&[
                (Transport::Udp, "127.0.0.31:5100"),
                (Transport::Tls, "127.0.0.33:5101")
            ])
        );
        let got = r
            .resolve(&target("srvonly.example.test", None, None, true))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Tls, "127.0.0.33:5101")]));

        // Nothing but A: UDP 5060, TLS 5061 for sips.
        let got = r
            .resolve(&target("plain.example.test", None, None, false))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Udp, "127.0.0.11:5060")]));
        let got = r
            .resolve(&target("plain.example.test.", None, None, true))
            .await
            .unwrap();
        assert_eq!(got, ok(&[(Transport::Tls, "127.0.0.11:5061")]));

        // SRV target ".": no A fallback.
        let e = r
            .resolve(&target(
                "gone.example.test",
                None,
                Some(Transport::Udp),
                false,
            ))
            .await
            .unwrap_err();
        assert!(matches!(e, ResolveError::NoRecords { .. }), "{e:?}");

        // Unknown host (NXDOMAIN).
        let e = r
            .resolve(&target("nothere.example.test", None, None, false))
            .await
            .unwrap_err();
        assert!(matches!(e, ResolveError::NoRecords { .. }), "{e:?}");
        assert!(e.to_string().contains("nothere.example.test"), "{e}");
        // Outside the server's zone: REFUSED is a DNS failure, not an empty answer.
        let e = r
            .resolve(&target("nothere.example.org", Some(5060), None, false))
            .await
            .unwrap_err();
        assert!(matches!(e, ResolveError::Dns { .. }), "{e:?}");
        assert!(e.to_string().contains("nothere.example.org"), "{e}");
        // Not a host at all.
        let e = r.resolve(&target("", None, None, false)).await.unwrap_err();
        assert!(matches!(e, ResolveError::InvalidHost { .. }), "{e:?}");
    }

    fn rec(priority: u16, weight: u16, port: u16) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: Name::from_ascii("t.example.test.").expect("name"),
        }
    }

    fn ports(v: Vec<SrvRecord>) -> Vec<u16> {
        v.into_iter().map(|r| r.port).collect()
    }

    #[test]
    fn srv_order_priority_then_weighted_draw() {
        let records = vec![rec(20, 0, 1), rec(10, 10, 2), rec(10, 0, 3), rec(10, 30, 4)];
        // Draw 0: weight-0 first, then the first in running-sum order.
        assert_eq!(ports(order_srv(records.clone(), &mut |_| 0)), [3, 2, 4, 1]);
        // Draw max: always the last of the running sum.
        assert_eq!(ports(order_srv(records.clone(), &mut |n| n)), [4, 2, 3, 1]);
        // Draw 11 of 0..=40: sums are 0 (port 3), 10 (2), 40 (4) → port 4; then 11 of 0..=10 → 2.
        let mut draws = [11, 10, 0, 0].into_iter();
        assert_eq!(
            ports(order_srv(records, &mut |_| draws.next().unwrap_or(0))),
            [4, 2, 3, 1]
        );
    }

    #[test]
    fn srv_order_weights_are_proportional() {
        // Over every possible draw of 0..=40, the weight-30 record wins 30 of 41 times.
        let records = vec![rec(0, 10, 1), rec(0, 30, 2), rec(0, 0, 3)];
        let wins = (0..=40u64)
            .filter(|&d| order_srv(records.clone(), &mut |_| d)[0].port == 2)
            .count();
        assert_eq!(wins, 30);
    }

    #[test]
    fn naptr_services() {
        assert_eq!(naptr_transport(b"sip+d2u"), Some(Transport::Udp));
        assert_eq!(naptr_transport(b"SIP+D2T"), Some(Transport::Tcp));
        assert_eq!(naptr_transport(b"SIPS+D2T"), Some(Transport::Tls));
        assert_eq!(naptr_transport(b"SIP+D2S"), None);
        assert_eq!(naptr_transport(b"E2U+sip"), None);
    }
}
