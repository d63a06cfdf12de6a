//! SIP and SIPS URIs (RFC 3261 §19.1, §25.1) with IPv6 references (RFC 5118), as borrowed
//! views. Nothing is unescaped: a proxy forwards URIs byte-exact, and comparison of escaped
//! forms (RFC 3261 §19.1.4) is done where it is needed, not here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::scan::{self, Cursor};

/// A parsed `Request-URI` or `addr-spec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Uri<'a> {
    /// `sip:` or `sips:`.
    Sip(SipUri<'a>),
    /// Any other `absoluteURI` (`tel:`, `urn:`, `nobodyKnowsThisScheme:`...), kept opaque.
    Other {
        /// The scheme as written.
        scheme: &'a [u8],
        /// The whole URI.
        raw: &'a [u8],
    },
}

impl<'a> Uri<'a> {
    /// Parses a whole URI; every byte must belong to it.
    pub fn parse(s: &'a [u8]) -> Result<Self, UriError> {
        let colon = s.iter().position(|&b| b == b':').ok_or(UriError::Scheme)?;
        let scheme = &s[..colon];
        let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return Err(UriError::Scheme);
        }
        if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
            return SipUri::parse(s).map(Uri::Sip);
        }
        // absoluteURI: opaque, but it must hold no whitespace or separators a parser above
        // would trip on (RFC 3261 §25.1 `uric`).
        let rest = &s[colon + 1..];
        if rest.is_empty()
            || !rest
                .iter()
                .all(|&b| b.is_ascii_graphic() && b != b'<' && b != b'>' && b != b'"')
        {
            return Err(UriError::Opaque);
        }
        Ok(Uri::Other { scheme, raw: s })
    }

    /// The SIP URI, when this is one.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            Uri::Other { .. } => None,
        }
    }

    /// The URI bytes as written.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Uri::Sip(u) => u.raw,
            Uri::Other { raw, .. } => raw,
        }
    }
}

/// Why a URI did not parse; [`UriError::reason`] is the metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UriError {
    /// No scheme, or one with illegal characters.
    Scheme,
    /// A non-SIP URI with illegal characters.
    Opaque,
    /// Bad user or password characters.
    UserInfo,
    /// Bad host (hostname, IPv4 or bracketed IPv6 reference).
    Host,
    /// Port not a number in 0..=65535.
    Port,
    /// Empty or illegal uri-parameter.
    Param,
    /// Malformed `?headers`.
    Headers,
}

impl UriError {
    /// Short static label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Scheme => "uri_scheme",
            Self::Opaque => "uri_opaque",
            Self::UserInfo => "uri_userinfo",
            Self::Host => "uri_host",
            Self::Port => "uri_port",
            Self::Param => "uri_param",
            Self::Headers => "uri_headers",
        }
    }
}

impl std::fmt::Display for UriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Scheme => "missing or invalid URI scheme",
            Self::Opaque => "invalid characters in URI",
            Self::UserInfo => "invalid user or password in URI",
            Self::Host => "invalid host in URI",
            Self::Port => "invalid port in URI",
            Self::Param => "empty or invalid URI parameter",
            Self::Headers => "invalid URI headers",
        };
        f.write_str(s)
    }
}

/// A `host` of a SIP URI or Via sent-by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Host<'a> {
    /// A DNS name (case-insensitive, as written).
    Name(&'a [u8]),
    /// An IPv4 literal.
    V4(Ipv4Addr),
    /// A bracketed IPv6 reference. `None` when the text is accepted by the RFC 3261 ABNF but
    /// is no RFC 4291 address (RFC 5118 §4.10's three colons): tolerated, never routed to.
    V6(Option<Ipv6Addr>),
}

impl Host<'_> {
    /// The address, when the host is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Host::V4(a) => Some(IpAddr::V4(a)),
            Host::V6(Some(a)) => Some(IpAddr::V6(a)),
            _ => None,
        }
    }
}

/// Parses `host` (hostname / IPv4address / IPv6reference) that spans all of `s`.
pub(crate) fn parse_host(s: &[u8]) -> Option<Host<'_>> {
    if let Some(inner) = s.strip_prefix(b"[").and_then(|r| r.strip_suffix(b"]")) {
        return parse_ipv6_text(inner).map(Host::V6);
    }
    if s.is_empty() {
        return None;
    }
    if s.iter().all(|&b| b.is_ascii_digit() || b == b'.') {
        return std::str::from_utf8(s).ok()?.parse().ok().map(Host::V4);
    }
    let ok = s
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && s[0] != b'.'
        && s[0] != b'-';
    ok.then_some(Host::Name(s))
}

/// The text inside `[` `]`: `Some(None)` for ABNF-legal text that is not an address.
fn parse_ipv6_text(inner: &[u8]) -> Option<Option<Ipv6Addr>> {
    let chars_ok = !inner.is_empty()
        && inner
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        && inner.iter().filter(|&&b| b == b':').count() >= 2;
    if !chars_ok {
        return None;
    }
    Some(std::str::from_utf8(inner).ok()?.parse().ok())
}

/// A SIP or SIPS URI. All slices borrow from the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// The whole URI as written.
    pub raw: &'a [u8],
    /// `sips:` rather than `sip:`.
    pub sips: bool,
    /// The user part, still escaped (`user;par=u%40example.net` in RFC 4475 semiuri).
    pub user: Option<&'a [u8]>,
    /// The password, if any (deprecated but legal).
    pub password: Option<&'a [u8]>,
    /// The host as written (brackets included for IPv6).
    pub host_raw: &'a [u8],
    /// The host, interpreted.
    pub host: Host<'a>,
    /// The port, if written.
    pub port: Option<u16>,
    /// `;name[=value]...` as written, leading `;` included; empty when none.
    pub params: &'a [u8],
    /// `hname=hvalue&...` after `?`, if any.
    pub headers: Option<&'a [u8]>,
}

impl<'a> SipUri<'a> {
    /// Parses a `sip:`/`sips:` URI spanning all of `s`.
    pub fn parse(s: &'a [u8]) -> Result<Self, UriError> {
        let (sips, rest_at) = if s.len() >= 4 && s[..4].eq_ignore_ascii_case(b"sip:") {
            (false, 4)
        } else if s.len() >= 5 && s[..5].eq_ignore_ascii_case(b"sips:") {
            (true, 5)
        } else {
            return Err(UriError::Scheme);
        };
        let rest = &s[rest_at..];
        // '@' can appear only as the userinfo delimiter: users, passwords, params and
        // headers must escape it.
        let (user, password, hostpart) = match rest.iter().position(|&b| b == b'@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let (user, password) = match userinfo.iter().position(|&b| b == b':') {
                    Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                    None => (userinfo, None),
                };
                if user.is_empty() || !scan::all_escaped(user, scan::is_user_char) {
                    return Err(UriError::UserInfo);
                }
                if let Some(p) = password {
                    if !scan::all_escaped(p, scan::is_password_char) {
                        return Err(UriError::UserInfo);
                    }
                }
                (Some(user), password, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let mut c = Cursor::new(hostpart);
        let host_raw = if c.peek() == Some(b'[') {
            let end = hostpart
                .iter()
                .position(|&b| b == b']')
                .ok_or(UriError::Host)?;
            c.pos = end + 1;
            &hostpart[..=end]
        } else {
            c.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        let host = parse_host(host_raw).ok_or(UriError::Host)?;
        let port = if c.eat(b':') {
            let digits = c.take_while(|b| b.is_ascii_digit());
            let port = scan::parse_u64(digits, 65535).ok_or(UriError::Port)?;
            Some(port as u16)
        } else {
            None
        };
        let params_start = c.pos;
        while c.eat(b';') {
            let name = c.take_while(|b| scan::is_param_char(b) || b == b'%');
            if name.is_empty() || !scan::all_escaped(name, scan::is_param_char) {
                return Err(UriError::Param);
            }
            if c.eat(b'=') {
                let value = c.take_while(|b| scan::is_param_char(b) || b == b'%');
                if value.is_empty() || !scan::all_escaped(value, scan::is_param_char) {
                    return Err(UriError::Param);
                }
            }
        }
        let params = &hostpart[params_start..c.pos];
        let headers = if c.eat(b'?') {
            let h = c.rest();
            let ok = h.split(|&b| b == b'&').all(|pair| {
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    return false;
                };
                eq > 0
                    && scan::all_escaped(&pair[..eq], scan::is_hnv_char)
                    && scan::all_escaped(&pair[eq + 1..], scan::is_hnv_char)
            });
            if !ok {
                return Err(UriError::Headers);
            }
            c.pos = hostpart.len();
            Some(h)
        } else {
            None
        };
        if !c.at_end() {
            return Err(match c.peek() {
                Some(b':') => UriError::Port,
                _ => UriError::Host,
            });
        }
        Ok(SipUri {
            raw: s,
            sips,
            user,
            password,
            host_raw,
            host,
            port,
            params,
            headers,
        })
    }

    /// The uri-parameters, in order.
    pub fn params(&self) -> Params<'a> {
        Params::new(self.params)
    }

    /// A uri-parameter by case-insensitive name: `Some(None)` for a flag like `lr`.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.params().get(name)
    }

    /// The `transport=` parameter.
    pub fn transport(&self) -> Option<&'a [u8]> {
        self.param(b"transport").flatten()
    }

    /// Whether the `lr` parameter is present (RFC 3261 loose routing).
    pub fn lr(&self) -> bool {
        self.param(b"lr").is_some()
    }
}

/// Iterator over `;name[=value]` parameters (URI or header parameters), tolerant of LWS
/// around `;` and `=` and of quoted values containing `;`. Input is assumed validated.
#[derive(Clone, Debug)]
pub struct Params<'a> {
    rest: &'a [u8],
}

impl<'a> Params<'a> {
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        Self { rest: raw }
    }
}

impl<'a> Params<'a> {
    /// The first parameter named `name` (case-insensitive): `Some(None)` for a flag.
    pub fn get(mut self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// Where the parameter at the start of `s` ends: the first `;` outside a quoted string.
/// Quotes are rare in URI parameters: one `memchr2` finds the end, and only a `"` before it
/// takes the byte-by-byte path.
fn param_end(s: &[u8]) -> usize {
    match memchr::memchr2(b';', b'"', s) {
        None => s.len(),
        Some(i) if s[i] == b';' => i,
        Some(_) => {
            let (mut in_quotes, mut escaped) = (false, false);
            for (i, &b) in s.iter().enumerate() {
                if escaped {
                    escaped = false;
                } else if in_quotes && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quotes = !in_quotes;
                } else if b == b';' && !in_quotes {
                    return i;
                }
            }
            s.len()
        }
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let s = scan::trim(self.rest);
            let s = s.strip_prefix(b";")?;
            let end = param_end(s);
            let item = &s[..end];
            self.rest = &s[end..];
            let item = scan::trim(item);
            if item.is_empty() {
                continue;
            }
            return Some(match item.iter().position(|&b| b == b'=') {
                Some(eq) => (scan::trim(&item[..eq]), Some(scan::trim(&item[eq + 1..]))),
                None => (item, None),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_ends_at_the_first_semicolon_outside_quotes() {
        assert_eq!(param_end(b"lr;transport=tcp"), 2);
        assert_eq!(param_end(b"lr"), 2);
        assert_eq!(param_end(b"x=\"a;b\";y"), 7);
        assert_eq!(param_end(b"x=\"a\\\";b\";y"), 9);
        assert_eq!(param_end(b"x=\"open;y"), 9);
    }

    fn sip(s: &str) -> SipUri<'_> {
        SipUri::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn basic_forms() {
        let u = sip("sip:alice@example.com:5070;transport=tcp;lr");
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.host, Host::Name(b"example.com"));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), Some(&b"tcp"[..]));
        assert!(u.lr());
        let u = sip("sips:10.0.0.5");
        assert!(u.sips);
        assert_eq!(u.host, Host::V4(Ipv4Addr::new(10, 0, 0, 5)));
    }

    #[test]
    fn semicolon_in_user_part() {
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(u.params, b"");
    }

    #[test]
    fn ipv6_references() {
        let u = sip("sip:[2001:db8::10]:5070");
        assert_eq!(u.host.ip(), Some("2001:db8::10".parse().unwrap()));
        assert_eq!(u.port, Some(5070));
        let u = sip("sip:[2001:db8::10:5070]");
        assert_eq!(u.port, None);
        assert_eq!(u.host.ip(), Some("2001:db8::10:5070".parse().unwrap()));
        let u = sip("sip:user@[2001:db8:::192.0.2.1]");
        assert_eq!(u.host, Host::V6(None));
        assert!(SipUri::parse(b"sip:2001:db8::10").is_err());
    }

    #[test]
    fn rejects() {
        for bad in [
            "sip:",
            "sip:user@",
            "sip:a b@example.com",
            "sip:example.com;",
            "sip:example.com;=x",
            "sip:example.com:99999",
            "sip:example.com?",
            "sip:256.1.1.1",
            "<sip:example.com>",
        ] {
            assert!(Uri::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_schemes_are_opaque() {
        let u = Uri::parse(b"nobodyKnowsThisScheme:totallyopaquecontent").unwrap();
        assert!(matches!(u, Uri::Other { .. }));
        assert!(Uri::parse(b"soap.beep://192.0.2.103:3002").is_ok());
    }

    #[test]
    fn params_iterate_with_lws_and_quotes() {
        let p: Vec<_> = Params::new(b" ; tag = 12 ;x=\"a;b\"; lr").collect();
        assert_eq!(
            p,
            vec![
                (&b"tag"[..], Some(&b"12"[..])),
                (&b"x"[..], Some(&b"\"a;b\""[..])),
                (&b"lr"[..], None)
            ]
        );
    }
}
