//! Byte classes and a small cursor shared by the grammar parsers (RFC 3261 §25.1).
//!
//! Every parser here works on a borrowed `&[u8]` and never allocates. Header values may
//! still contain line folding (`CRLF 1*WSP`): [`Cursor::skip_lws`] treats a fold as
//! whitespace, which is what RFC 3261 §7.3.1 says it is.

// The byte classes below are one table lookup each: the parser asks them for every byte of
// every header it validates (a third of its instructions went to `is_token` alone).
const TOKEN: u8 = 1;
const USER: u8 = 2;
const PASSWORD: u8 = 4;
const PARAM: u8 = 8;
const HNV: u8 = 16;

/// The classes as RFC 3261 §25.1 writes them; [`CLASSES`] is built from these.
mod grammar {
    pub(super) const fn token(b: u8) -> bool {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            )
    }

    /// `unreserved` = alphanum / mark.
    pub(super) const fn unreserved(b: u8) -> bool {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            )
    }

    pub(super) const fn user(b: u8) -> bool {
        unreserved(b) || matches!(b, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/')
    }

    pub(super) const fn password(b: u8) -> bool {
        unreserved(b) || matches!(b, b'&' | b'=' | b'+' | b'$' | b',')
    }

    pub(super) const fn param(b: u8) -> bool {
        unreserved(b) || matches!(b, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$')
    }

    pub(super) const fn hnv(b: u8) -> bool {
        unreserved(b) || matches!(b, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$')
    }
}

static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if grammar::token(b) {
            c |= TOKEN;
        }
        if grammar::user(b) {
            c |= USER;
        }
        if grammar::password(b) {
            c |= PASSWORD;
        }
        if grammar::param(b) {
            c |= PARAM;
        }
        if grammar::hnv(b) {
            c |= HNV;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// `token` characters: alphanum and `-.!%*_+`'~`.
#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    CLASSES[b as usize] & TOKEN != 0
}

/// Characters allowed in a URI `user` besides escapes.
#[inline]
pub(crate) fn is_user_char(b: u8) -> bool {
    CLASSES[b as usize] & USER != 0
}

/// Characters allowed in a URI `password` besides escapes.
#[inline]
pub(crate) fn is_password_char(b: u8) -> bool {
    CLASSES[b as usize] & PASSWORD != 0
}

/// `paramchar` of a uri-parameter, besides escapes.
#[inline]
pub(crate) fn is_param_char(b: u8) -> bool {
    CLASSES[b as usize] & PARAM != 0
}

/// `hname`/`hvalue` characters of URI headers, besides escapes.
#[inline]
pub(crate) fn is_hnv_char(b: u8) -> bool {
    CLASSES[b as usize] & HNV != 0
}

pub(crate) fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Checks `%` HEXDIG HEXDIG at `i`.
pub(crate) fn is_escape_at(s: &[u8], i: usize) -> bool {
    s.len() > i + 2 && s[i] == b'%' && s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit()
}

/// True when every byte is an allowed char or a valid `%XX` escape.
pub(crate) fn all_escaped(s: &[u8], allowed: impl Fn(u8) -> bool) -> bool {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if !is_escape_at(s, i) {
                return false;
            }
            i += 3;
        } else if allowed(s[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Parses an unsigned decimal with leading zeros allowed, rejecting overflow past `max`.
pub(crate) fn parse_u64(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if v > max {
            return None;
        }
    }
    Some(v)
}

/// Trims SP, HT, CR and LF at both ends (folds included).
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = s.iter().position(|b| !is_ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// A forward-only position in a header value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor<'a> {
    pub(crate) s: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Self { s, pos: 0 }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.s[self.pos.min(self.s.len())..]
    }

    /// Skips linear whitespace: SP, HT, and a line fold (CRLF or LF followed by SP/HT).
    /// Returns whether anything was skipped.
    pub(crate) fn skip_lws(&mut self) -> bool {
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.pos += 1,
                Some(b'\r') if self.s.get(self.pos + 1) == Some(&b'\n') => {
                    match self.s.get(self.pos + 2) {
                        Some(&b) if is_wsp(b) => self.pos += 3,
                        _ => break,
                    }
                }
                Some(b'\n') => match self.s.get(self.pos + 1) {
                    Some(&b) if is_wsp(b) => self.pos += 2,
                    _ => break,
                },
                _ => break,
            }
        }
        self.pos > start
    }

    /// Consumes `b` if it is next; no whitespace skipping.
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// `SWS b SWS`: RFC 3261's separators (SEMI, COMMA, EQUAL, SLASH, COLON) allow LWS on
    /// both sides. Restores the position when `b` is not there.
    pub(crate) fn eat_sep(&mut self, b: u8) -> bool {
        let save = self.pos;
        self.skip_lws();
        if self.eat(b) {
            self.skip_lws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    /// Consumes the longest run of bytes matching `f`.
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if !f(b) {
                break;
            }
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    pub(crate) fn token(&mut self) -> Option<&'a [u8]> {
        let t = self.take_while(is_token);
        (!t.is_empty()).then_some(t)
    }

    /// A `quoted-string` including its quotes: quoted-pair escapes any byte but CR/LF
    /// (RFC 3261 allows %x00-09 / %x0B-0C / %x0E-7F after the backslash: a raw NUL is data).
    pub(crate) fn quoted_string(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(&self.s[start..self.pos]);
                }
                b'\\' => {
                    let next = *self.s.get(self.pos + 1)?;
                    if next == b'\r' || next == b'\n' {
                        return None;
                    }
                    self.pos += 2;
                }
                b'\r' | b'\n' => {
                    // Only a fold may appear inside quotes.
                    if !self.skip_lws() {
                        return None;
                    }
                }
                _ => self.pos += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_table_is_the_grammar() {
        for b in 0..=255u8 {
            assert_eq!(is_token(b), grammar::token(b), "{b}");
            assert_eq!(is_user_char(b), grammar::user(b), "{b}");
            assert_eq!(is_password_char(b), grammar::password(b), "{b}");
            assert_eq!(is_param_char(b), grammar::param(b), "{b}");
            assert_eq!(is_hnv_char(b), grammar::hnv(b), "{b}");
        }
    }

    #[test]
    fn lws_skips_folds_only() {
        let mut c = Cursor::new(b" \t\r\n  x");
        assert!(c.skip_lws());
        assert_eq!(c.peek(), Some(b'x'));
        let mut c = Cursor::new(b" \r\nx");
        c.skip_lws();
        assert_eq!(c.peek(), Some(b'\r'));
    }

    #[test]
    fn quoted_string_with_escaped_nul() {
        let mut c = Cursor::new(b"\"a\\\0b\\\"\" rest");
        assert_eq!(c.quoted_string(), Some(&b"\"a\\\0b\\\"\""[..]));
        let mut c = Cursor::new(b"\"unterminated");
        assert_eq!(c.quoted_string(), None);
    }

    #[test]
    fn numbers_reject_overflow() {
        assert_eq!(parse_u64(b"0009", u64::MAX), Some(9));
        assert_eq!(parse_u64(b"36893488147419103232", u64::MAX), None);
        assert_eq!(parse_u64(b"300", 255), None);
        assert_eq!(parse_u64(b"", 255), None);
        assert_eq!(parse_u64(b"-1", 255), None);
    }
}
