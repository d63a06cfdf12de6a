//! Grammar of the header values the proxy interprets: name-addr lists (From, To, Contact,
//! Route, Record-Route, Path), Via, CSeq. Views borrow from the message; nothing allocates.

use std::net::IpAddr;

use crate::scan::{self, Cursor};
use crate::uri::{self, Host, Params, Uri};

/// Why a header value is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueError {
    /// A display name that is neither tokens nor a closed quoted string.
    DisplayName,
    /// `<` without `>`, or LWS inside the brackets.
    AngleBrackets,
    /// The URI inside failed to parse.
    Uri(uri::UriError),
    /// A URI with `?`, `,` or `;` that should have been in `<>` (RFC 3261 §20).
    UnenclosedUri,
    /// An empty or illegal parameter.
    Param,
    /// Bytes left after the value, or an empty list element.
    Trailing,
    /// A bad `SIP/2.0/transport` in Via.
    SentProtocol,
    /// A protocol version other than 2.0 in Via.
    Version,
    /// A bad Via sent-by.
    SentBy,
    /// A bad number (CSeq, Max-Forwards, Content-Length) or one out of range.
    Number,
    /// A bad method token in CSeq.
    Method,
    /// An empty value where one is required.
    Empty,
    /// A SIP-date not in GMT.
    Date,
}

impl ValueError {
    /// Short static label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::DisplayName => "display_name",
            Self::AngleBrackets => "angle_brackets",
            Self::Uri(e) => e.reason(),
            Self::UnenclosedUri => "unenclosed_uri",
            Self::Param => "param",
            Self::Trailing => "trailing_bytes",
            Self::SentProtocol => "via_protocol",
            Self::Version => "version",
            Self::SentBy => "via_sent_by",
            Self::Number => "number",
            Self::Method => "method",
            Self::Empty => "empty",
            Self::Date => "date",
        }
    }
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DisplayName => f.write_str(
                "invalid display name (unquoted non-token characters or unterminated quotes)",
            ),
            Self::AngleBrackets => f.write_str("unbalanced '<' '>' or whitespace inside them"),
            Self::Uri(e) => e.fmt(f),
            Self::UnenclosedUri => {
                f.write_str("URI with '?', ',' or ';' must be enclosed in '<' '>'")
            }
            Self::Param => f.write_str("empty or invalid parameter"),
            Self::Trailing => f.write_str("unexpected bytes after the value"),
            Self::SentProtocol => {
                f.write_str("invalid sent-protocol (expected SIP/2.0/<transport>)")
            }
            Self::Version => f.write_str("unsupported SIP version"),
            Self::SentBy => f.write_str("invalid sent-by host or port"),
            Self::Number => f.write_str("invalid or out-of-range number"),
            Self::Method => f.write_str("invalid method"),
            Self::Empty => f.write_str("empty value"),
            Self::Date => f.write_str("SIP-date must be in GMT"),
        }
    }
}

/// Splits a header value into its comma-separated elements, respecting quotes and `<>`.
/// Used only on validated values, for serialization (popping one Route of several).
pub(crate) fn split_list(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped, mut angle) = (false, false, false);
        for (i, &b) in s.iter().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match b {
                b'\\' if quoted => escaped = true,
                b'"' if !angle => quoted = !quoted,
                b'<' if !quoted => angle = true,
                b'>' if !quoted => angle = false,
                b',' if !quoted && !angle => {
                    rest = Some(&s[i + 1..]);
                    return Some(scan::trim(&s[..i]));
                }
                _ => {}
            }
        }
        rest = None;
        Some(scan::trim(s))
    })
}

// === name-addr ===

/// A `name-addr` or `addr-spec` with its header parameters (From, To, Contact, Route...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The whole element as written.
    pub raw: &'a [u8],
    /// Display name as written (quotes kept), if any.
    pub display: Option<&'a [u8]>,
    /// The URI.
    pub uri: Uri<'a>,
    /// Whether the URI was inside `<>`.
    pub angle: bool,
    /// Header parameters `;a=b...` as written; empty when none.
    pub params: &'a [u8],
}

impl<'a> NameAddr<'a> {
    /// Parses exactly one element spanning all of `s` (From, To).
    pub fn parse(s: &'a [u8]) -> Result<Self, ValueError> {
        let mut c = Cursor::new(s);
        let na = parse_name_addr(&mut c, false)?;
        c.skip_lws();
        if !c.at_end() {
            return Err(ValueError::Trailing);
        }
        Ok(na)
    }

    /// Header parameters in order.
    pub fn params(&self) -> Params<'a> {
        Params::new(self.params)
    }

    /// A header parameter by case-insensitive name.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.params().get(name)
    }

    /// The `tag` parameter (RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.param(b"tag").flatten()
    }
}

/// Parses a comma-separated list of name-addrs (Contact, Route, Record-Route, Path).
pub fn parse_name_addr_list(s: &[u8]) -> Result<Vec<NameAddr<'_>>, ValueError> {
    let mut out = Vec::new();
    for_each_name_addr(s, |na| out.push(na))?;
    Ok(out)
}

/// Validates a list without allocating, calling `f` for each element.
pub(crate) fn for_each_name_addr<'a>(
    s: &'a [u8],
    mut f: impl FnMut(NameAddr<'a>),
) -> Result<(), ValueError> {
    let mut c = Cursor::new(s);
    loop {
        let na = parse_name_addr(&mut c, true)?;
        f(na);
        c.skip_lws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return Err(ValueError::Trailing);
        }
    }
}

fn parse_name_addr<'a>(c: &mut Cursor<'a>, in_list: bool) -> Result<NameAddr<'a>, ValueError> {
    c.skip_lws();
    let start = c.pos;
    let mut display = None;
    let angle;
    let uri_raw;
    if c.peek() == Some(b'"') {
        display = Some(c.quoted_string().ok_or(ValueError::DisplayName)?);
        c.skip_lws();
        if c.peek() != Some(b'<') {
            return Err(ValueError::AngleBrackets);
        }
    } else if c.peek() != Some(b'<') {
        // Either `*(token LWS) <` or an addr-spec: try the display-name reading first.
        let save = c.pos;
        let mut end_of_tokens = None;
        while c.token().is_some() {
            end_of_tokens = Some(c.pos);
            c.skip_lws();
        }
        if c.peek() == Some(b'<') {
            display = end_of_tokens.map(|e| &c.s[save..e]);
        } else {
            c.pos = save;
        }
    }
    if c.eat(b'<') {
        angle = true;
        let inner_start = c.pos;
        let len = c
            .rest()
            .iter()
            .position(|&b| b == b'>')
            .ok_or(ValueError::AngleBrackets)?;
        uri_raw = &c.s[inner_start..inner_start + len];
        c.pos = inner_start + len + 1;
        if uri_raw
            .first()
            .is_some_and(|&b| scan::is_wsp(b) || b == b'\r')
            || uri_raw
                .last()
                .is_some_and(|&b| scan::is_wsp(b) || b == b'\n')
        {
            return Err(ValueError::AngleBrackets);
        }
    } else {
        angle = false;
        // An unenclosed addr-spec ends at ';' (header params follow), ',' (next element) or
        // whitespace; it may hold none of '?', ',' or ';' (RFC 3261 §20).
        let t = c.take_while(|b| !matches!(b, b';' | b',' | b' ' | b'\t' | b'\r' | b'\n'));
        if t.is_empty() {
            return Err(if c.at_end() {
                ValueError::Empty
            } else {
                ValueError::Trailing
            });
        }
        if t.contains(&b'?') {
            return Err(ValueError::UnenclosedUri);
        }
        if c.peek() == Some(b',') && !in_list {
            return Err(ValueError::UnenclosedUri);
        }
        uri_raw = t;
    }
    let uri = Uri::parse(uri_raw).map_err(ValueError::Uri)?;
    let params_start = c.pos;
    let params_end = parse_generic_params(c)?;
    let params = &c.s[params_start..params_end];
    Ok(NameAddr {
        raw: &c.s[start..params_end],
        display,
        uri,
        angle,
        params,
    })
}

/// `*( SEMI generic-param )`; returns the end of the last parameter (before trailing LWS).
fn parse_generic_params(c: &mut Cursor<'_>) -> Result<usize, ValueError> {
    let mut end = c.pos;
    while c.eat_sep(b';') {
        c.token().ok_or(ValueError::Param)?;
        if c.eat_sep(b'=') {
            gen_value(c).ok_or(ValueError::Param)?;
        }
        end = c.pos;
    }
    Ok(end)
}

/// `gen-value` = token / host / quoted-string (hosts bring `:` `[` `]`).
fn gen_value<'a>(c: &mut Cursor<'a>) -> Option<&'a [u8]> {
    if c.peek() == Some(b'"') {
        return c.quoted_string();
    }
    let v = c.take_while(|b| scan::is_token(b) || matches!(b, b':' | b'[' | b']'));
    (!v.is_empty()).then_some(v)
}

// === Via ===

/// One `via-parm` (RFC 3261 §20.42), RFC 3581 and RFC 5118 aware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// The whole element as written.
    pub raw: &'a [u8],
    /// Transport token as written (`UDP`, `TCP`, `TLS`, `WS`, `WSS`, `SCTP`, extensions).
    pub transport: &'a [u8],
    /// sent-by host as written (brackets kept for IPv6).
    pub host_raw: &'a [u8],
    /// sent-by host, interpreted.
    pub host: Host<'a>,
    /// sent-by port, if written.
    pub port: Option<u16>,
    /// `;name[=value]...` as written; empty when none.
    pub params: &'a [u8],
}

impl<'a> Via<'a> {
    /// Via parameters in order.
    pub fn params(&self) -> Params<'a> {
        Params::new(self.params)
    }

    /// A Via parameter by case-insensitive name.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.params().get(name)
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.param(b"branch").flatten()
    }

    /// `received`, brackets tolerated (RFC 5118 §4.5).
    pub fn received(&self) -> Option<IpAddr> {
        let v = self.param(b"received").flatten()?;
        let v = v
            .strip_prefix(b"[")
            .and_then(|v| v.strip_suffix(b"]"))
            .unwrap_or(v);
        std::str::from_utf8(v).ok()?.parse().ok()
    }

    /// `rport` (RFC 3581): `Some(None)` when present without a value.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.param(b"rport")
            .map(|v| v.and_then(|v| scan::parse_u64(v, 65535).map(|p| p as u16)))
    }

    /// sent-by as written: `host[:port]`, the transaction key part of RFC 3261 §17.2.3.
    pub fn sent_by(&self) -> &'a [u8] {
        let start = self.host_raw.as_ptr() as usize - self.raw.as_ptr() as usize;
        let mut end = start + self.host_raw.len();
        if self.port.is_some() {
            let mut c = Cursor::new(self.raw);
            c.pos = end;
            if c.eat_sep(b':') {
                c.take_while(|b| b.is_ascii_digit());
                end = c.pos;
            }
        }
        &self.raw[start..end]
    }
}

/// Parses a Via header value (one or more via-parms) calling `f` for each.
pub(crate) fn for_each_via<'a>(s: &'a [u8], mut f: impl FnMut(Via<'a>)) -> Result<(), ValueError> {
    let mut c = Cursor::new(s);
    loop {
        f(parse_via(&mut c)?);
        c.skip_lws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return Err(ValueError::Trailing);
        }
    }
}

/// Parses all via-parms of one header value.
pub fn parse_via_list(s: &[u8]) -> Result<Vec<Via<'_>>, ValueError> {
    let mut out = Vec::new();
    for_each_via(s, |v| out.push(v))?;
    Ok(out)
}

fn parse_via<'a>(c: &mut Cursor<'a>) -> Result<Via<'a>, ValueError> {
    c.skip_lws();
    let start = c.pos;
    let name = c.token().ok_or(ValueError::SentProtocol)?;
    if !c.eat_sep(b'/') {
        return Err(ValueError::SentProtocol);
    }
    let version = c.token().ok_or(ValueError::SentProtocol)?;
    if !c.eat_sep(b'/') {
        return Err(ValueError::SentProtocol);
    }
    let transport = c.token().ok_or(ValueError::SentProtocol)?;
    if !name.eq_ignore_ascii_case(b"SIP") {
        return Err(ValueError::SentProtocol);
    }
    if version != b"2.0" {
        return Err(ValueError::Version);
    }
    if !c.skip_lws() {
        return Err(ValueError::SentBy);
    }
    let host_raw = if c.peek() == Some(b'[') {
        let len = c
            .rest()
            .iter()
            .position(|&b| b == b']')
            .ok_or(ValueError::SentBy)?;
        let h = &c.s[c.pos..=c.pos + len];
        c.pos += len + 1;
        h
    } else {
        c.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    let host = uri::parse_host(host_raw).ok_or(ValueError::SentBy)?;
    let port = if c.eat_sep(b':') {
        let d = c.take_while(|b| b.is_ascii_digit());
        Some(scan::parse_u64(d, 65535).ok_or(ValueError::SentBy)? as u16)
    } else {
        None
    };
    let params_start = c.pos;
    let params_end = parse_generic_params(c)?;
    Ok(Via {
        raw: &c.s[start..params_end],
        transport,
        host_raw,
        host,
        port,
        params: &c.s[params_start..params_end],
    })
}

// === CSeq ===

/// Parses `CSeq: 1*DIGIT LWS Method`; the number must be below 2^31 (RFC 3261 §8.1.1.5).
pub(crate) fn parse_cseq(s: &[u8]) -> Result<(u32, &[u8]), ValueError> {
    let mut c = Cursor::new(s);
    c.skip_lws();
    let digits = c.take_while(|b| b.is_ascii_digit());
    let n = scan::parse_u64(digits, (1 << 31) - 1).ok_or(ValueError::Number)?;
    if !c.skip_lws() {
        return Err(ValueError::Method);
    }
    let method = c.token().ok_or(ValueError::Method)?;
    c.skip_lws();
    if !c.at_end() {
        return Err(ValueError::Trailing);
    }
    Ok((n as u32, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_forms() {
        let na = NameAddr::parse(b"\"A \\\"b\\\"\" <sip:a@example.com;x=1>;tag=9").unwrap();
        assert!(na.angle);
        assert_eq!(na.tag(), Some(&b"9"[..]));
        let na = NameAddr::parse(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(na.display, Some(&b"caller"[..]));
        let na = NameAddr::parse(b"sip:+1972@gw1.example.net;unknownparam").unwrap();
        assert!(!na.angle);
        assert_eq!(na.param(b"unknownparam"), Some(None));
        let na = NameAddr::parse(b"Bob Smith <sip:bob@example.com>").unwrap();
        assert_eq!(na.display, Some(&b"Bob Smith"[..]));
    }

    #[test]
    fn name_addr_rejects() {
        for bad in [
            &b"\"Mr. J. User <sip:j.user@example.com>"[..],
            b"\"Watson, Thomas\" < sip:t.watson@example.org >",
            b"Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43",
            b"<sip:a@example.com>;;;;",
            b"sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            b"<sip:a@example.com",
            b"",
        ] {
            assert!(
                NameAddr::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lists() {
        let l = parse_name_addr_list(b"<sip:a@x;lr>, \"B, C\" <sip:b@y>;q=0.5 ,sip:c@z").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[1].display, Some(&b"\"B, C\""[..]));
        let parts: Vec<_> = split_list(b"<sip:a@x;lr>, \"B, C\" <sip:b@y>").collect();
        assert_eq!(parts, vec![&b"<sip:a@x;lr>"[..], b"\"B, C\" <sip:b@y>"]);
    }

    #[test]
    fn via_forms() {
        let v =
            parse_via_list(b"SIP  /   2.0\r\n  /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v[0].branch(), Some(&b"390skdjuw"[..]));
        assert_eq!(v[0].transport, b"UDP");
        let v = parse_via_list(
            b"SIP/2.0/TCP [2001:db8::9:1]:6050;received=2001:db8::9:255;branch=z9hG4bKas3;rport",
        )
        .unwrap();
        assert_eq!(v[0].port, Some(6050));
        assert_eq!(v[0].received(), Some("2001:db8::9:255".parse().unwrap()));
        assert_eq!(v[0].rport(), Some(None));
        assert_eq!(v[0].sent_by(), b"[2001:db8::9:1]:6050");
        let v = parse_via_list(b"SIP/2.0/UDP 192.0.2.2;received=[2001:db8::9:255]").unwrap();
        assert_eq!(v[0].received(), Some("2001:db8::9:255".parse().unwrap()));
        let v =
            parse_via_list(b"SIP/2.0/UDP a.example.com:5060;branch=1, SIP/2.0/TCP b:5;branch=2")
                .unwrap();
        assert_eq!(v.len(), 2);
        assert!(parse_via_list(b"SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert_eq!(
            parse_via_list(b"SIP/7.0/UDP 192.0.2.15").unwrap_err(),
            ValueError::Version
        );
    }

    #[test]
    fn cseq() {
        assert_eq!(
            parse_cseq(b"0009 \r\n INVITE").unwrap(),
            (9, &b"INVITE"[..])
        );
        assert!(parse_cseq(b"36893488147419103232 INVITE").is_err());
        assert!(parse_cseq(b"1INVITE").is_err());
    }
}
