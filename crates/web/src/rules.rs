//! The access decision, sans-IO: from a request's host, path and client address to what the
//! front does with it (refuse, redirect, route, or 404), following `[web]`'s rules.
//!
//! Paths are compared decoded and normalised, the way the applications behind will see
//! them, so `/sercen/%67etautenticacionapache`, `/x/../sercen/getautenticacionapache` or
//! Tomcat's `/sercen;a=b/getautenticacionapache` cannot slip past a rule written for
//! `/sercen/getautenticacionapache`: an encoded `/`, `\` or control character, a dot segment
//! or an empty segment is refused outright (400), and `;parameters` are left out of the
//! compared path.

use std::net::IpAddr;

use stg_config::{PathMatch, WebAction, WebConfig};

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// 400: a path that cannot be compared safely (counted as a probe).
    BadPath,
    /// Close the connection without an answer: a host the front does not serve.
    DropHost,
    /// 403: an internal path from outside, or a page never served directly.
    Forbidden,
    /// 404, counted as a probe: nothing serves this path.
    NotFound,
    /// Proxy to `web.proxy[i]`.
    Proxy(usize),
    /// 302 to this location.
    Redirect(String),
    /// Serve from `web.static[i]`.
    Static(usize),
    /// None of the front's own routes: the mounted application (portal) decides.
    App,
}

/// The rules, routes and networks of `[web]`, ready to decide.
#[derive(Debug)]
pub(crate) struct Rules {
    config: WebConfig,
    /// Whether an application (the portal) is mounted: unrouted paths go to it.
    app: bool,
}

impl Rules {
    pub(crate) fn new(config: WebConfig, app: bool) -> Self {
        Self { config, app }
    }

    pub(crate) fn config(&self) -> &WebConfig {
        &self.config
    }

    /// Whether `host` (from `Host` or the authority, any port and case) is served.
    pub(crate) fn host_allowed(&self, host: &str) -> bool {
        self.config.hosts.is_empty() || self.config.hosts.iter().any(|h| h == host)
    }

    /// Decides for a request to `host` (normalised: [`host_of`]) and `raw_path` (as
    /// received, percent-encoded) from `client`.
    pub(crate) fn decide(&self, host: &str, raw_path: &str, client: IpAddr) -> Decision {
        if !self.host_allowed(host) {
            return Decision::DropHost;
        }
        let Some(path) = normalise(raw_path) else {
            return Decision::BadPath;
        };
        for rule in &self.config.rules {
            if !rule.path.matches(&path) {
                continue;
            }
            match &rule.action {
                WebAction::Internal if self.config.is_internal(client) => break,
                WebAction::Internal | WebAction::Deny => return Decision::Forbidden,
                WebAction::Redirect(to) => return Decision::Redirect(to.clone()),
            }
        }
        self.route(host, &path)
    }

    /// The longest matching prefix among the routes for `host`, else among the routes for
    /// any host; a proxy route wins a tie with a static one.
    fn route(&self, host: &str, path: &str) -> Decision {
        let mut best: Option<(bool, usize, Decision)> = None;
        let mut consider = |for_host: bool, prefix: &str, d: Decision| {
            if !PathMatch::Prefix(prefix.to_owned()).matches(path) {
                return;
            }
            let better = match &best {
                None => true,
                Some((h, len, _)) => (for_host, prefix.len()) > (*h, *len),
            };
            if better {
                best = Some((for_host, prefix.len(), d));
            }
        };
        for (i, p) in self.config.proxy.iter().enumerate() {
            match &p.host {
                Some(h) if h != host => {}
                h => consider(h.is_some(), &p.prefix, Decision::Proxy(i)),
            }
        }
        for (i, s) in self.config.static_dirs.iter().enumerate() {
            consider(false, &s.prefix, Decision::Static(i));
        }
        match best {
            Some((_, _, d)) => d,
            None if self.app => Decision::App,
            None => Decision::NotFound,
        }
    }
}

/// The host of a `Host` header or an authority: lower case, without port or userinfo.
pub(crate) fn host_of(authority: &str) -> String {
    let a = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(rest) = a.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((h, _)) => format!("[{h}]"),
            None => a.to_owned(),
        }
    } else {
        a.split(':').next().unwrap_or_default().to_owned()
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The decoded path as the applications see it, with `;parameters` left out of each
/// segment; `None` when it cannot be compared safely (see the module docs).
pub(crate) fn normalise(raw: &str) -> Option<String> {
    if !raw.starts_with('/') {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
            let (hi, lo) = (hex(i + 1)?, hex(i + 2)?);
            let c = (hi * 16 + lo) as u8;
            // An encoded separator or control character means something else to each
            // application: refused rather than guessed.
            if c == b'/' || c == b'\\' || c == b';' || c.is_ascii_control() {
                return None;
            }
            decoded.push(c);
            i += 3;
        } else {
            if b == b'\\' || b.is_ascii_control() {
                return None;
            }
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let mut out = String::with_capacity(decoded.len());
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    for (n, seg) in segments.into_iter().enumerate() {
        let seg = seg.split(';').next().unwrap_or_default();
        if seg == "." || seg == ".." || (seg.is_empty() && n != last) {
            return None;
        }
        out.push('/');
        out.push_str(seg);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use stg_config::{WebProxy, WebRule, WebStatic};

    use super::*;

    const OUTSIDE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));
    const INSIDE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    fn proxy(prefix: &str, host: Option<&str>) -> WebProxy {
        WebProxy {
            prefix: prefix.to_owned(),
            host: host.map(str::to_owned),
            upstream: "http://127.0.0.1:8080".to_owned(),
            strip_prefix: false,
            preserve_host: true,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            token: false,
            name: prefix.to_owned(),
        }
    }

    /// The seed's table (READING.md §4) as rules.
    fn seed() -> Rules {
        let mut c = WebConfig {
            hosts: vec!["stg.example.com".to_owned()],
            internal_networks: vec!["10.0.0.0/8".parse().unwrap()],
            ..WebConfig::default()
        };
        c.rules = vec![
            WebRule {
                path: PathMatch::Prefix("/sercen/getautenticacionapache".to_owned()),
                action: WebAction::Internal,
            },
            WebRule {
                path: PathMatch::Exact("/vivait/index.html".to_owned()),
                action: WebAction::Deny,
            },
            WebRule {
                path: PathMatch::Exact("/vivait".to_owned()),
                action: WebAction::Redirect("/vivait/app/".to_owned()),
            },
        ];
        c.proxy = vec![
            proxy("/sercen/getautenticacionapache", None),
            proxy("/fonbo/", None),
            proxy("/fonbo/", Some("stg.example.com")),
        ];
        c.static_dirs = vec![WebStatic {
            prefix: "/vivait/".to_owned(),
            dir: "/nonexistent".into(),
        }];
        Rules::new(c, false)
    }

    #[test]
    fn the_seed_table() {
        let r = seed();
        let h = "stg.example.com";
        let internal = "/sercen/getautenticacionapache";
        assert_eq!(r.decide(h, internal, OUTSIDE), Decision::Forbidden);
        assert_eq!(r.decide(h, internal, INSIDE), Decision::Proxy(0));
        assert_eq!(r.decide(h, "/sercen/", OUTSIDE), Decision::NotFound);
        assert_eq!(
            r.decide(h, "/vivait", OUTSIDE),
            Decision::Redirect("/vivait/app/".to_owned())
        );
        assert_eq!(
            r.decide(h, "/vivait/index.html", INSIDE),
            Decision::Forbidden
        );
        assert_eq!(
            r.decide(h, "/vivait/app/x.js", OUTSIDE),
            Decision::Static(0)
        );
        assert_eq!(
            r.decide("other.example.com", "/vivait", OUTSIDE),
            Decision::DropHost
        );
        assert_eq!(r.decide("192.0.2.1", internal, INSIDE), Decision::DropHost);
        // The host's own route beats the route for any host.
        assert_eq!(r.decide(h, "/fonbo/a", OUTSIDE), Decision::Proxy(2));
    }

    #[test]
    fn encoded_and_dotted_paths_do_not_slip_past_a_rule() {
        let r = seed();
        let h = "stg.example.com";
        for sneaky in [
            "/sercen/%67etautenticacionapache",
            "/sercen;jsessionid=1/getautenticacionapache",
            "/sercen/getautenticacionapache;x",
        ] {
            assert_eq!(
                r.decide(h, sneaky, OUTSIDE),
                Decision::Forbidden,
                "{sneaky}"
            );
        }
        for bad in [
            "/x/../sercen/getautenticacionapache",
            "/./sercen/getautenticacionapache",
            "//sercen/getautenticacionapache",
            "/sercen%2fgetautenticacionapache",
            "/sercen\\getautenticacionapache",
            "/%00",
            "/%zz",
            "/%c0%af",
            "relative",
        ] {
            assert_eq!(r.decide(h, bad, OUTSIDE), Decision::BadPath, "{bad}");
        }
        assert_eq!(normalise("/a/b/").as_deref(), Some("/a/b/"));
        assert_eq!(normalise("/").as_deref(), Some("/"));
        assert_eq!(normalise("/a%20b").as_deref(), Some("/a b"));
    }

    #[test]
    fn hosts_lose_port_case_and_userinfo() {
        assert_eq!(host_of("STG.example.com:8443"), "stg.example.com");
        assert_eq!(host_of("stg.example.com."), "stg.example.com");
        assert_eq!(host_of("[2001:db8::1]:443"), "[2001:db8::1]");
        assert_eq!(host_of("u@h:1"), "h");
        let open = Rules::new(WebConfig::default(), true);
        assert!(open.host_allowed("anything"));
        assert_eq!(open.decide("x", "/nothing", OUTSIDE), Decision::App);
    }
}
