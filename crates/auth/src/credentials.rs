//! The `Authorization` / `Proxy-Authorization` value (RFC 3261 §25.1 `credentials`,
//! RFC 7616 §3.4): `Digest` followed by comma-separated `name=value` parameters.

use crate::{Algorithm, FailReason};

/// More parameters than any client sends; beyond it the header is refused rather than
/// scanned for duplicates at quadratic cost.
const MAX_PARAMS: usize = 32;

/// Digest credentials as the client sent them.
///
/// Parsing keeps going when a check fails so that the log line still names the user: a
/// credentials value with a [`problem`](Self::problem) is refused by
/// [`Digest::verify`](crate::Digest::verify) with that reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// `username` (empty when it could not be read).
    pub user: String,
    /// `realm`.
    pub realm: String,
    /// `algorithm`, MD5 when absent (RFC 2617 §3.2.2).
    pub algorithm: Algorithm,
    pub(crate) nonce: String,
    pub(crate) uri: String,
    pub(crate) response: String,
    pub(crate) cnonce: String,
    /// `nc` as written (it is hashed as text) and its value.
    pub(crate) nc: String,
    pub(crate) nc_value: u32,
    pub(crate) qop: String,
    pub(crate) opaque: Option<String>,
    pub(crate) problem: Option<FailReason>,
}

impl Credentials {
    /// Parses one header value, checking it against the `realm` that was challenged.
    ///
    /// `None` when the value is not of the `Digest` scheme (another scheme is ignored, as if
    /// absent). A `Digest` value that is unusable still gives `Some`, with a
    /// [`problem`](Self::problem): syntax errors, duplicate or missing parameters
    /// ([`FailReason::Malformed`]), another realm ([`FailReason::WrongRealm`]), an algorithm
    /// we do not know ([`FailReason::BadAlgorithm`]), no `qop=auth` ([`FailReason::BadQop`]).
    pub fn parse(value: &[u8], realm: &str) -> Option<Self> {
        let mut cur = Cursor { s: value, i: 0 };
        cur.skip_lws();
        if !cur.token().eq_ignore_ascii_case(b"Digest") || !cur.skip_lws() {
            return None;
        }
        let mut c = Self {
            user: String::new(),
            realm: String::new(),
            algorithm: Algorithm::Md5,
            nonce: String::new(),
            uri: String::new(),
            response: String::new(),
            cnonce: String::new(),
            nc: String::new(),
            nc_value: 0,
            qop: String::new(),
            opaque: None,
            problem: None,
        };
        let Some(params) = cur.params() else {
            c.problem = Some(FailReason::Malformed);
            return Some(c);
        };
        let mut algorithm = None;
        let mut qop = None;
        let (mut user, mut realm_seen, mut nonce, mut uri, mut response) =
            (false, false, false, false, false);
        let (mut cnonce, mut nc) = (false, false);
        let mut malformed = false;
        for (name, value) in params {
            let Ok(value) = String::from_utf8(value) else {
                malformed = true;
                continue;
            };
            let lower = name.to_ascii_lowercase();
            match &lower[..] {
                b"username" => (c.user, user) = (value, true),
                b"realm" => (c.realm, realm_seen) = (value, true),
                b"nonce" => (c.nonce, nonce) = (value, true),
                b"uri" => (c.uri, uri) = (value, true),
                b"response" => (c.response, response) = (value, true),
                b"cnonce" => (c.cnonce, cnonce) = (value, true),
                b"nc" => (c.nc, nc) = (value, true),
                b"opaque" => c.opaque = Some(value),
                b"algorithm" => algorithm = Some(value),
                b"qop" => qop = Some(value),
                _ => {}
            }
        }
        if nc {
            match parse_nc(&c.nc) {
                Some(v) => c.nc_value = v,
                None => malformed = true,
            }
        }
        let algorithm = match algorithm {
            None => Some(Algorithm::Md5),
            Some(a) => Algorithm::parse(&a),
        };
        c.algorithm = algorithm.unwrap_or(Algorithm::Md5);
        let qop_auth = qop
            .as_deref()
            .is_some_and(|q| q.eq_ignore_ascii_case("auth"));
        c.qop = qop.unwrap_or_default();
        c.problem = if malformed
            || !(user && realm_seen && nonce && uri && response)
            || c.user.is_empty()
        {
            Some(FailReason::Malformed)
        } else if c.realm != realm {
            Some(FailReason::WrongRealm)
        } else if algorithm.is_none() {
            Some(FailReason::BadAlgorithm)
        } else if !(qop_auth && cnonce && nc) {
            Some(FailReason::BadQop)
        } else {
            None
        };
        Some(c)
    }

    /// Why these credentials cannot be accepted whatever the password, if they cannot.
    pub fn problem(&self) -> Option<FailReason> {
        self.problem
    }

    /// `uri` (the digest-uri), for a caller that compares it with the Request-URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// `opaque`, if sent.
    pub fn opaque(&self) -> Option<&str> {
        self.opaque.as_deref()
    }
}

/// `nc`: exactly 8 hex digits (RFC 7616 §3.4), and a count starts at 1.
fn parse_nc(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok().filter(|&n| n > 0)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Skips linear white space, folded lines included; true when there was some.
    fn skip_lws(&mut self) -> bool {
        let start = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
        self.i > start
    }

    /// RFC 3261 §25.1 `token` (possibly empty).
    fn token(&mut self) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(is_token) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// A parameter value: a quoted string, unescaped, or a bare value up to the next comma
    /// or white space. Bare values are taken more loosely than `token` because clients
    /// write `uri=sip:...` unquoted and refusing them would gain nothing.
    fn value(&mut self) -> Option<Vec<u8>> {
        if self.peek() == Some(b'"') {
            self.i += 1;
            let mut out = Vec::new();
            loop {
                match self.peek()? {
                    b'"' => {
                        self.i += 1;
                        return Some(out);
                    }
                    b'\\' => {
                        let c = *self.s.get(self.i + 1)?;
                        if c == b'\r' || c == b'\n' {
                            return None;
                        }
                        out.push(c);
                        self.i += 2;
                    }
                    c => {
                        out.push(c);
                        self.i += 1;
                    }
                }
            }
        }
        let start = self.i;
        while self.peek().is_some_and(|b| {
            !matches!(b, b',' | b' ' | b'\t' | b'\r' | b'\n' | b'"') && !b.is_ascii_control()
        }) {
            self.i += 1;
        }
        (self.i > start).then(|| self.s[start..self.i].to_vec())
    }

    /// `name=value *(, name=value)` to the end; `None` on a syntax error or a name given
    /// twice (case-insensitively).
    fn params(&mut self) -> Option<Vec<(&'a [u8], Vec<u8>)>> {
        let mut out: Vec<(&'a [u8], Vec<u8>)> = Vec::new();
        loop {
            self.skip_lws();
            let name = self.token();
            if name.is_empty() || out.len() == MAX_PARAMS {
                return None;
            }
            if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return None;
            }
            self.skip_lws();
            if self.peek() != Some(b'=') {
                return None;
            }
            self.i += 1;
            self.skip_lws();
            out.push((name, self.value()?));
            self.skip_lws();
            match self.peek() {
                None => return Some(out),
                Some(b',') => self.i += 1,
                Some(_) => return None,
            }
        }
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// The parameters of a challenge or credentials value, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn test_params(value: &str) -> Vec<(String, String)> {
    let mut cur = Cursor {
        s: value.as_bytes(),
        i: 0,
    };
    cur.skip_lws();
    assert_eq!(cur.token(), b"Digest");
    assert!(cur.skip_lws());
    cur.params()
        .expect("parsable")
        .into_iter()
        .map(|(n, v)| {
            (
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v).unwrap(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "sip.example.com";

    fn parse(s: &str) -> Credentials {
        Credentials::parse(s.as_bytes(), REALM).expect("Digest credentials")
    }

    const GOOD: &str = r#"Digest username="alice", realm="sip.example.com", nonce="abc", uri="sip:sip.example.com", response="0123", algorithm=SHA-256, cnonce="xyz", qop=auth, nc=00000001, opaque="op""#;

    #[test]
    fn parses_all_fields() {
        let c = parse(GOOD);
        assert_eq!(c.problem(), None);
        assert_eq!(c.user, "alice");
        assert_eq!(c.realm, REALM);
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(c.nonce, "abc");
        assert_eq!(c.uri(), "sip:sip.example.com");
        assert_eq!(c.response, "0123");
        assert_eq!(c.cnonce, "xyz");
        assert_eq!((c.nc.as_str(), c.nc_value), ("00000001", 1));
        assert_eq!(c.qop, "auth");
        assert_eq!(c.opaque(), Some("op"));
    }

    #[test]
    fn names_are_case_insensitive_and_white_space_is_free() {
        let c = parse(
            "digest  USERNAME = \"alice\" ,Realm=\"sip.example.com\",\r\n NONCE=\"abc\",\tUri=\"sip:x\",RESPONSE=\"0\",cnonce=\"c\",QOP=\"auth\",nc=0000000A,algorithm=md5",
        );
        assert_eq!(c.problem(), None);
        assert_eq!(
            (c.user.as_str(), c.algorithm, c.nc_value),
            ("alice", Algorithm::Md5, 10)
        );
        assert_eq!(c.qop, "auth");
    }

    #[test]
    fn quoted_strings_unescape() {
        let c = parse(&GOOD.replace(r#""alice""#, r#""al\"i\\ce, x=y""#));
        assert_eq!(c.problem(), None);
        assert_eq!(c.user, r#"al"i\ce, x=y"#);
    }

    #[test]
    fn unquoted_uri_is_accepted() {
        let c = parse(&GOOD.replace(
            r#"uri="sip:sip.example.com""#,
            "uri=sip:bob@example.com;transport=tcp",
        ));
        assert_eq!(c.problem(), None);
        assert_eq!(c.uri(), "sip:bob@example.com;transport=tcp");
    }

    #[test]
    fn other_schemes_are_not_digest_credentials() {
        assert_eq!(
            Credentials::parse(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l", REALM),
            None
        );
        assert_eq!(Credentials::parse(b"Digestusername=\"a\"", REALM), None);
        assert_eq!(Credentials::parse(b"", REALM), None);
        assert_eq!(Credentials::parse(b"Digest", REALM), None);
    }

    #[test]
    fn duplicate_params_are_rejected() {
        for dup in [
            r#", username="mallory""#,
            r#", USERNAME="alice""#,
            ", nc=00000002",
            ", foo=1, Foo=2",
        ] {
            let c = parse(&format!("{GOOD}{dup}"));
            assert_eq!(c.problem(), Some(FailReason::Malformed), "{dup}");
        }
    }

    #[test]
    fn problems() {
        let cases = [
            (GOOD.replace(", qop=auth", ""), FailReason::BadQop),
            (GOOD.replace("qop=auth", "qop=auth-int"), FailReason::BadQop),
            (GOOD.replace(r#", cnonce="xyz""#, ""), FailReason::BadQop),
            (GOOD.replace(", nc=00000001", ""), FailReason::BadQop),
            (GOOD.replace("nc=00000001", "nc=1"), FailReason::Malformed),
            (
                GOOD.replace("nc=00000001", "nc=00000000"),
                FailReason::Malformed,
            ),
            (
                GOOD.replace("nc=00000001", "nc=0000000g"),
                FailReason::Malformed,
            ),
            (
                GOOD.replace(r#", uri="sip:sip.example.com""#, ""),
                FailReason::Malformed,
            ),
            (
                GOOD.replace(r#"username="alice", "#, ""),
                FailReason::Malformed,
            ),
            (GOOD.replace(r#""alice""#, r#""""#), FailReason::Malformed),
            (
                GOOD.replace(r#", response="0123""#, ""),
                FailReason::Malformed,
            ),
            (GOOD.replace(r#"nonce="abc", "#, ""), FailReason::Malformed),
            (
                GOOD.replace("sip.example.com\",", "other.example.com\","),
                FailReason::WrongRealm,
            ),
            (
                GOOD.replace("SHA-256", "MD5-sess"),
                FailReason::BadAlgorithm,
            ),
            (
                GOOD.replace("SHA-256", "SHA-512-256"),
                FailReason::BadAlgorithm,
            ),
            (format!("{GOOD},"), FailReason::Malformed),
            (format!("{GOOD} x"), FailReason::Malformed),
            (
                GOOD.replace(r#""alice""#, r#""alice"#),
                FailReason::Malformed,
            ),
            (
                GOOD.replace(r#""alice""#, "\"al\\\nice\""),
                FailReason::Malformed,
            ),
            (GOOD.replace("qop=auth", "qop="), FailReason::Malformed),
            (GOOD.replace("qop=auth", "=auth"), FailReason::Malformed),
        ];
        for (s, want) in cases {
            assert_eq!(parse(&s).problem(), Some(want), "{s}");
        }
        // The user is still read for the log line when a later check fails.
        assert_eq!(parse(&GOOD.replace(", qop=auth", "")).user, "alice");
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let mut v = GOOD.as_bytes().to_vec();
        let at = GOOD.find("alice").unwrap();
        v[at] = 0xff;
        assert_eq!(
            Credentials::parse(&v, REALM).unwrap().problem(),
            Some(FailReason::Malformed)
        );
    }

    #[test]
    fn too_many_params_are_refused() {
        let mut s = GOOD.to_string();
        for i in 0..MAX_PARAMS {
            s.push_str(&format!(", x{i}=1"));
        }
        assert_eq!(parse(&s).problem(), Some(FailReason::Malformed));
    }

    /// A small xorshift so the garbage is reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_and_truncations_never_panic() {
        let b = GOOD.as_bytes();
        for end in 0..=b.len() {
            crate::fuzz_credentials(&b[..end]);
            let _ = Credentials::parse(&b[..end], REALM);
        }
        let alphabet = b"Digest =,\"\\ \t\r\nabcnonce=username\xff\x00";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = (rng.next() % 96) as usize;
            let mut v: Vec<u8> = if rng.next().is_multiple_of(2) {
                b"Digest ".to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..len {
                let r = rng.next();
                v.push(if r.is_multiple_of(4) {
                    r as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                });
            }
            crate::fuzz_credentials(&v);
        }
        // Mutations of a valid value: flip, drop or duplicate one byte.
        for i in 0..b.len() {
            let mut v = b.to_vec();
            v[i] ^= 0x20;
            crate::fuzz_credentials(&v);
            let mut v = b.to_vec();
            v.remove(i);
            crate::fuzz_credentials(&v);
            let mut v = b.to_vec();
            v.insert(i, b[i]);
            crate::fuzz_credentials(&v);
        }
    }
}
