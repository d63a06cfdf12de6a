//! The syslog intake's parsing, sans-IO: one message (RFC 5424, or the BSD format of RFC
//! 3164 as `logger` and rsyslog send it) into its parts, and the framing of a TCP stream
//! (RFC 6587: octet counting, or a newline after each message).
//!
//! Only the message text matters to the guard (it goes through a filter such as
//! `truco-ko`); the header is parsed to find where the text starts, and kept for logs. The
//! sender's timestamp is not used: the intake counts failures at their arrival, so a host
//! with a wrong clock cannot place failures outside the window.

use std::borrow::Cow;

/// Longest message taken (a datagram, or a frame on TCP); longer ones are refused.
pub const MAX_MESSAGE: usize = 8192;

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// No `<PRI>` at the start, or a priority above 191.
    #[error("no valid <PRI>")]
    Priority,
    /// An RFC 5424 header that does not parse.
    #[error("bad RFC 5424 header")]
    Header,
    /// Longer than [`MAX_MESSAGE`].
    #[error("message too long")]
    TooLong,
}

/// Which format a message was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// RFC 3164 (BSD syslog).
    Bsd,
    /// RFC 5424.
    Ietf,
}

/// One parsed message; the fields borrow from the datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Its format.
    pub format: Format,
    /// Facility (0..=23).
    pub facility: u8,
    /// Severity (0..=7).
    pub severity: u8,
    /// The timestamp as written (not interpreted).
    pub timestamp: Option<&'a [u8]>,
    /// The sending host, when the header names one.
    pub host: Option<&'a [u8]>,
    /// The application (5424 APP-NAME, 3164 TAG without its `[pid]`).
    pub app: Option<&'a [u8]>,
    /// The message text.
    pub msg: &'a [u8],
}

impl Message<'_> {
    /// The text as a string (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.msg)
    }
}

/// Parses one message (a UDP datagram, or a frame from [`Framer`]). A trailing newline or
/// NUL is dropped.
pub fn parse(data: &[u8]) -> Result<Message<'_>, Malformed> {
    if data.len() > MAX_MESSAGE {
        return Err(Malformed::TooLong);
    }
    let mut data = data;
    while let [rest @ .., b'\n' | b'\r' | 0] = data {
        data = rest;
    }
    let (pri, rest) = priority(data).ok_or(Malformed::Priority)?;
    let (facility, severity) = (pri / 8, pri % 8);
    if let Some(r) = rest.strip_prefix(b"1 ") {
        return ietf(r, facility, severity);
    }
    Ok(bsd(rest, facility, severity))
}

/// `<N>` with 1 to 3 digits, N ≤ 191.
fn priority(data: &[u8]) -> Option<(u8, &[u8])> {
    let rest = data.strip_prefix(b"<")?;
    let end = rest.iter().take(4).position(|&b| b == b'>')?;
    let digits = &rest[..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // A leading zero is only allowed for 0 itself (RFC 5424 §6.2.1).
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    let n: u16 = digits
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    let n = u8::try_from(n).ok().filter(|&n| n <= 191)?;
    Some((n, &rest[end + 1..]))
}

/// Splits at the first space: (token, rest after it); the whole when there is none.
fn token(data: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b' ', data) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn nil(t: &[u8]) -> Option<&[u8]> {
    (t != b"-").then_some(t)
}

/// `TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP STRUCTURED-DATA [SP MSG]`.
fn ietf(data: &[u8], facility: u8, severity: u8) -> Result<Message<'_>, Malformed> {
    let (ts, rest) = token(data);
    let (host, rest) = token(rest);
    let (app, rest) = token(rest);
    let (procid, rest) = token(rest);
    let (msgid, rest) = token(rest);
    let printable = |t: &[u8], max: usize| {
        !t.is_empty() && t.len() <= max && t.iter().all(|b| (33..=126).contains(b))
    };
    let ok = printable(ts, 64)
        && printable(host, 255)
        && printable(app, 48)
        && printable(procid, 128)
        && printable(msgid, 32);
    if !ok {
        return Err(Malformed::Header);
    }
    let rest = structured_data(rest).ok_or(Malformed::Header)?;
    let msg = match rest {
        [] => rest,
        [b' ', m @ ..] => m.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(m),
        _ => return Err(Malformed::Header),
    };
    Ok(Message {
        format: Format::Ietf,
        facility,
        severity,
        timestamp: nil(ts),
        host: nil(host),
        app: nil(app),
        msg,
    })
}

/// Skips `-` or one or more `[id param="value" ...]` elements (values escape `"`, `\` and
/// `]` with a backslash); what follows them.
fn structured_data(data: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = data.strip_prefix(b"-") {
        return Some(rest);
    }
    let mut i = 0;
    if data.first() != Some(&b'[') {
        return None;
    }
    while data.get(i) == Some(&b'[') {
        i += 1;
        let mut quoted = false;
        loop {
            match *data.get(i)? {
                b'\\' if quoted => i += 2,
                b'"' => {
                    quoted = !quoted;
                    i += 1;
                }
                b']' if !quoted => {
                    i += 1;
                    break;
                }
                _ => i += 1,
            }
        }
    }
    data.get(i..)
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `Mmm dd hh:mm:ss` (15 bytes, the day padded with a space or a zero); its length.
fn bsd_timestamp(d: &[u8]) -> Option<usize> {
    let d = d.get(..15)?;
    let month = MONTHS.iter().any(|m| &d[..3] == *m);
    let day = d[3] == b' '
        && (d[4] == b' ' || d[4].is_ascii_digit())
        && d[5].is_ascii_digit()
        && d[6] == b' ';
    let time = d[7..15].iter().enumerate().all(|(i, b)| {
        if i == 2 || i == 5 {
            *b == b':'
        } else {
            b.is_ascii_digit()
        }
    });
    (month && day && time).then_some(15)
}

/// RFC 3164 is a convention more than a format: a header when one is recognisable, the
/// whole as the message otherwise (§4.3.3).
fn bsd(data: &[u8], facility: u8, severity: u8) -> Message<'_> {
    let mut m = Message {
        format: Format::Bsd,
        facility,
        severity,
        timestamp: None,
        host: None,
        app: None,
        msg: data,
    };
    let Some(n) = bsd_timestamp(data) else {
        return m;
    };
    m.timestamp = Some(&data[..n]);
    let rest = data[n..].strip_prefix(b" ").unwrap_or(&data[n..]);
    // `logger` to /dev/log writes no host: the first word is then the tag (`vivait:`,
    // `sshd[12]:`). Over the network a host comes first.
    let (first, after) = token(rest);
    let rest = if is_tag(first) {
        rest
    } else {
        m.host = (!first.is_empty()).then_some(first);
        after
    };
    let (tag, after) = token(rest);
    if is_tag(tag) {
        let name_end = tag
            .iter()
            .position(|&b| b == b'[' || b == b':')
            .unwrap_or(tag.len());
        m.app = Some(&tag[..name_end]);
        m.msg = after;
    } else {
        m.msg = rest;
    }
    m
}

/// `name:` or `name[pid]:`.
fn is_tag(t: &[u8]) -> bool {
    let Some(body) = t.strip_suffix(b":") else {
        return false;
    };
    let name = match body.strip_suffix(b"]") {
        Some(b) => match memchr::memchr(b'[', b) {
            Some(i) => &b[..i],
            None => return false,
        },
        None => body,
    };
    !name.is_empty()
        && name.len() <= 48
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(b))
}

/// Why a TCP stream is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame longer than [`MAX_MESSAGE`] (counted or not).
    #[error("frame too long")]
    TooLong,
    /// An octet count that is not a number.
    #[error("bad octet count")]
    Count,
}

/// RFC 6587 framing of one TCP connection: each frame is either `LEN SP MSG` (octet
/// counting, when it starts with a digit) or `MSG LF` (also ended by NUL or CR LF).
/// Buffers at most [`MAX_MESSAGE`] plus a count.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Bytes received.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if any. After an error the connection is to be closed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        // Empty lines between frames are nothing.
        let skip = self
            .buf
            .iter()
            .position(|b| !matches!(b, b'\n' | b'\r' | 0))
            .unwrap_or(self.buf.len());
        self.buf.drain(..skip);
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        if first.is_ascii_digit() {
            let Some(sp) = self.buf.iter().take(6).position(|&b| b == b' ') else {
                return if self.buf.len() >= 6 {
                    Err(FrameError::Count)
                } else {
                    Ok(None)
                };
            };
            let digits = &self.buf[..sp];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(FrameError::Count);
            }
            let len = digits
                .iter()
                .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
            if len > MAX_MESSAGE {
                return Err(FrameError::TooLong);
            }
            if self.buf.len() < sp + 1 + len {
                return Ok(None);
            }
            let frame = self.buf[sp + 1..sp + 1 + len].to_vec();
            self.buf.drain(..sp + 1 + len);
            return Ok(Some(frame));
        }
        match self.buf.iter().position(|&b| b == b'\n' || b == 0) {
            Some(i) if i <= MAX_MESSAGE + 1 => {
                let mut frame: Vec<u8> = self.buf.drain(..=i).collect();
                frame.pop();
                if frame.last() == Some(&b'\r') {
                    frame.pop();
                }
                Ok(Some(frame))
            }
            Some(_) => Err(FrameError::TooLong),
            None if self.buf.len() > MAX_MESSAGE + 1 => Err(FrameError::TooLong),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3164_from_logger_and_from_the_network() {
        // `logger -d -t vivait` to /dev/log: no host.
        let m = parse(b"<13>Dec  3 10:11:12 vivait: TRUCO_KO [192.0.2.7] fail2ban sip 10:11:12.1")
            .unwrap();
        assert_eq!((m.format, m.facility, m.severity), (Format::Bsd, 1, 5));
        assert_eq!(m.timestamp, Some(&b"Dec  3 10:11:12"[..]));
        assert_eq!(m.host, None);
        assert_eq!(m.app, Some(&b"vivait"[..]));
        assert_eq!(m.text(), "TRUCO_KO [192.0.2.7] fail2ban sip 10:11:12.1");
        // `logger -n peer --rfc3164`: a host, a tag with a pid.
        let m = parse(b"<38>Dec 13 01:02:03 web1 fonbo[123]: TRUCO_KO 10.0.0.7 token invalido\n")
            .unwrap();
        assert_eq!(m.host, Some(&b"web1"[..]));
        assert_eq!(m.app, Some(&b"fonbo"[..]));
        assert_eq!(m.text(), "TRUCO_KO 10.0.0.7 token invalido");
        // No recognisable header: all of it is the message.
        let m = parse(b"<0>TRUCO_KO 10.0.0.8 x").unwrap();
        assert_eq!(m.text(), "TRUCO_KO 10.0.0.8 x");
        let m = parse(b"<191>Dec  3 10:11:12 host just words").unwrap();
        assert_eq!((m.host, m.app), (Some(&b"host"[..]), None));
        assert_eq!(m.text(), "just words");
    }

    #[test]
    fn rfc5424_with_and_without_structured_data() {
        let m = parse(
            b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 \
              [exampleSDID@32473 iut=\"3\" eventSource=\"Appl\\\"ic]ation\"][x@1 a=\"b\"] \
              \xEF\xBB\xBFTRUCO_KO [2001:db8::1] stg sip",
        )
        .unwrap();
        assert_eq!((m.format, m.facility, m.severity), (Format::Ietf, 20, 5));
        assert_eq!(m.host, Some(&b"mymachine.example.com"[..]));
        assert_eq!(m.app, Some(&b"evntslog"[..]));
        assert_eq!(m.text(), "TRUCO_KO [2001:db8::1] stg sip");
        let m = parse(b"<13>1 - - - - - -").unwrap();
        assert_eq!((m.host, m.app, m.msg), (None, None, &b""[..]));
        let m = parse(b"<13>1 2024-01-01T00:00:00Z h app 1 - - TRUCO_KO 192.0.2.1").unwrap();
        assert_eq!(m.text(), "TRUCO_KO 192.0.2.1");
    }

    #[test]
    fn garbage_is_refused_never_a_panic() {
        for bad in [
            &b""[..],
            b"no pri",
            b"<>x",
            b"<192>x",
            b"<1a>x",
            b"<01>x",
            b"<9999>x",
            b"<13",
        ] {
            assert_eq!(parse(bad), Err(Malformed::Priority), "{bad:?}");
        }
        for bad in [
            &b"<13>1 "[..],
            b"<13>1 ts host",
            b"<13>1 ts host app pid msgid [unterminated",
            b"<13>1 ts host app pid msgid x",
            b"<13>1 ts host app pid msgid -x",
        ] {
            assert_eq!(parse(bad), Err(Malformed::Header), "{bad:?}");
        }
        assert_eq!(parse(&[b'a'; MAX_MESSAGE + 1]), Err(Malformed::TooLong));
        // Every prefix of valid messages: an answer, no panic.
        for good in [
            &b"<165>1 2003-10-11T22:14:15.003Z h a - ID47 [e@1 a=\"\\\\\"] m"[..],
            b"<13>Dec  3 10:11:12 web fonbo[1]: TRUCO_KO 10.0.0.7",
        ] {
            for i in 0..=good.len() {
                let _ = parse(&good[..i]);
            }
        }
    }

    #[test]
    fn tcp_framing_octet_counting_and_newlines() {
        let mut f = Framer::default();
        f.push(b"10 <13>hello\n<13>sec");
        assert_eq!(
            f.next_frame().unwrap().as_deref(),
            Some(&b"<13>hello\n"[..])
        );
        assert_eq!(f.next_frame().unwrap(), None);
        f.push(b"ond\r\n\n<13>third\x00");
        assert_eq!(f.next_frame().unwrap().as_deref(), Some(&b"<13>second"[..]));
        assert_eq!(f.next_frame().unwrap().as_deref(), Some(&b"<13>third"[..]));
        assert_eq!(f.next_frame().unwrap(), None);
        // A count split over reads.
        f.push(b"4");
        assert_eq!(f.next_frame().unwrap(), None);
        f.push(b" <1>x");
        assert_eq!(f.next_frame().unwrap().as_deref(), Some(&b"<1>x"[..]));
        let mut f = Framer::default();
        f.push(b"99999 x");
        assert_eq!(f.next_frame(), Err(FrameError::TooLong));
        let mut f = Framer::default();
        f.push(b"1234567 x");
        assert_eq!(f.next_frame(), Err(FrameError::Count));
        let mut f = Framer::default();
        f.push(&vec![b'a'; MAX_MESSAGE + 2]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLong));
    }
}
