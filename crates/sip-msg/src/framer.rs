//! Sans-IO framing of SIP messages on stream transports (TCP, TLS).
//!
//! On a datagram transport every packet is one message; on a stream the
//! receiver has to find the boundaries itself. RFC 3261 §18.3 says how: the
//! header section ends at the first empty line (CRLF CRLF) and the body is
//! exactly `Content-Length` octets long. [`Framer`] applies that rule to a
//! growing [`BytesMut`] and hands back each whole message as a zero-copy
//! [`Bytes`]; it does not parse SIP beyond what framing needs, so a framed
//! message can still be syntactically invalid and is judged by the parser.
//!
//! The shape follows `tokio_util::codec::LinesCodec` (resumable scan, hard
//! limits, recovery after an oversize message) without depending on tokio, so
//! a thin `Decoder` adapter can live in the I/O crate.
//!
//! # Keep-alives
//!
//! RFC 3261 §7.5 lets CRLFs precede a start line, and RFC 5626 §3.5.1 gives
//! them a meaning on streams: a client sends a double CRLF ("ping") and the
//! server answers with a single CRLF ("pong"). Between messages the framer
//! reports `"\r\n\r\n"` as [`Frame::Ping`] (the caller should answer with
//! `"\r\n"`) and a single `"\r\n"` as [`Frame::Pong`].
//!
//! A buffer holding exactly `"\r\n"` is ambiguous: it is a whole pong, or the
//! first half of a ping whose second half has not arrived. Waiting would
//! stall a real pong until the peer's next message, and RFC 5626 §4.4.1 has
//! the client declare the flow dead if the pong does not come within 10 s,
//! so the framer never waits: it reports [`Frame::Pong`] at once and
//! remembers that the stream just ended with a lone CRLF. If the very next
//! bytes are another CRLF, the four octets were a ping after all and that
//! second CRLF is reported as [`Frame::Ping`]. So a ping cut between its two
//! CRLFs yields `Pong, Ping` instead of `Ping`; the extra pong only refreshes
//! liveness. The price is that two pongs with nothing in between are also
//! reported as `Pong, Ping` (a stream cannot tell them from a ping), and the
//! caller's answer is a stray CRLF that RFC 3261 §7.5 tells the peer to
//! ignore. A buffer holding `"\r"` or `"\r\n\r"` does wait, since the next
//! octet decides.
//!
//! # Limits and recovery
//!
//! [`FramerLimits`] bounds the size of one message, of its body and its
//! number of header fields. An oversize message yields
//! [`FrameError::TooLarge`] once and is then skipped without being
//! buffered, so the caller's buffer stays near `max_message_size`:
//!
//! * if the header section was complete, its `Content-Length` is trusted and
//!   exactly headers + body octets are dropped, across as many calls as it
//!   takes;
//! * if no empty line showed up within `max_message_size` octets, the framer
//!   drops octets up to the next CRLF CRLF and resumes there. That point is
//!   a guess (a body that followed the oversize header section is then framed
//!   as a message of its own and rejected by the parser), but it restores
//!   framing as soon as the peer sends a well-formed message.
//!
//! A `Content-Length` that cannot be trusted (negative, not a number, too
//! big for 64 bits, or two different values; RFC 4475 §3.1.2.3 and §3.3.9)
//! leaves no way to find the next message: that error is fatal and the
//! caller closes the connection (RFC 3261 §18.3).

use std::fmt;
use std::ops::{ControlFlow, Range};

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

/// The empty line that ends a header section (RFC 3261 §7), and a ping.
const CRLFCRLF: &[u8; 4] = b"\r\n\r\n";

/// Octets kept back while skipping an unterminated header section, so that
/// a CRLF CRLF split across two reads is still found.
const TERMINATOR_OVERLAP: usize = CRLFCRLF.len() - 1;

/// Upper bounds the framer enforces on every message of a stream.
///
/// All limits are inclusive: a message of exactly `max_message_size` octets
/// is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramerLimits {
    /// Largest message, header section (including the empty line) plus body,
    /// in octets. Also bounds how far the framer searches for the end of the
    /// header section.
    pub max_message_size: usize,
    /// Largest number of header fields (RFC 3261 §7.3). Folded continuation
    /// lines belong to their field and are not counted separately.
    pub max_headers: usize,
    /// Largest body, as announced by `Content-Length` (RFC 3261 §20.14).
    pub max_body_size: usize,
}

impl Default for FramerLimits {
    /// `65_535` / `256` / `60_000`.
    ///
    /// * `max_message_size`: 65 535 is the most a 16-bit IP/UDP length field
    ///   can describe, so nothing the proxy might have to relay over UDP
    ///   (RFC 3261 §18.1.1) is refused, while one connection can never make
    ///   the proxy buffer more than 64 KiB. RFC 4475 §3.1.1.7 ("longreq")
    ///   warns against small fixed buffers; it fits with room to spare.
    /// * `max_headers`: real traffic carries a few dozen fields and the long
    ///   RFC 4475 torture requests about 50; 256 bounds the parser's per
    ///   message header table without refusing plausible messages.
    /// * `max_body_size`: 60 000 leaves 5 535 octets of header section for a
    ///   message with the largest body, and rejects an oversize body from its
    ///   `Content-Length` alone, before any of it is read.
    fn default() -> Self {
        Self {
            max_message_size: 65_535,
            max_headers: 256,
            max_body_size: 60_000,
        }
    }
}

/// One unit cut from the stream by [`Framer::decode`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole message exactly as received: start line, header fields, the
    /// empty line and exactly `Content-Length` body octets (RFC 3261 §18.3).
    /// It shares memory with the caller's buffer (no copy).
    Message(Bytes),
    /// A double CRLF between messages, the RFC 5626 §3.5.1 keep-alive ping.
    /// The caller should answer with a single CRLF (a pong). See the module
    /// documentation for how a ping cut in half is reported.
    Ping,
    /// A single CRLF between messages: an RFC 5626 §3.5.1 pong, or a stray
    /// CRLF that RFC 3261 §7.5 says to ignore. Proof of liveness only.
    Pong,
}

/// Which of the [`FramerLimits`] a message broke.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// No empty line within `max_message_size` octets: the header section
    /// alone is too long, and the message's length is unknown.
    HeaderSection,
    /// More than `max_headers` header fields.
    HeaderCount,
    /// `Content-Length` above `max_body_size`.
    BodySize,
    /// Header section plus body above `max_message_size`.
    MessageSize,
}

impl Limit {
    /// Short static label, e.g. for a metrics dimension next to
    /// [`FrameError::reason`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderSection => "header_section",
            Self::HeaderCount => "header_count",
            Self::BodySize => "body_size",
            Self::MessageSize => "message_size",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HeaderSection => "header section longer than the message size limit",
            Self::HeaderCount => "more header fields than allowed",
            Self::BodySize => "Content-Length above the body size limit",
            Self::MessageSize => "header section plus body above the message size limit",
        })
    }
}

/// Why [`Framer::decode`] could not return a message.
///
/// [`is_fatal`](Self::is_fatal) tells whether the stream can go on: after a
/// fatal error the message boundaries are lost and the caller must close the
/// connection (RFC 3261 §18.3).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A message broke one of the [`FramerLimits`]. Not fatal: the framer
    /// skips the message and later calls frame the messages after it. A
    /// proxy cannot answer 513 (RFC 3261 §21.5.14) since the message is not
    /// kept; it may log and count it, or close a connection that keeps
    /// doing this.
    TooLarge {
        /// The limit that was exceeded.
        limit: Limit,
    },
    /// A `Content-Length` value that is not a non-negative decimal number
    /// fitting in 64 bits (RFC 3261 §20.14, RFC 4475 §3.1.2.3 "ncl"). Fatal.
    InvalidContentLength,
    /// Two `Content-Length` fields with different values (RFC 4475 §3.3.9
    /// "mcl01"). Repeating the same value is tolerated. Fatal.
    ConflictingContentLength {
        /// The value of the first `Content-Length` field.
        first: u64,
        /// The first value that differs from it.
        second: u64,
    },
}

impl FrameError {
    /// Whether the connection has to be closed: `true` when the framer can no
    /// longer tell where the next message starts.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::TooLarge { .. } => false,
            Self::InvalidContentLength | Self::ConflictingContentLength { .. } => true,
        }
    }

    /// Short static label, e.g. for a metrics dimension.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::InvalidContentLength => "bad_content_length",
            Self::ConflictingContentLength { .. } => "conflicting_content_length",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { limit } => write!(f, "SIP message too large: {limit}"),
            Self::InvalidContentLength => f.write_str("invalid Content-Length value"),
            Self::ConflictingContentLength { first, second } => {
                write!(f, "conflicting Content-Length values {first} and {second}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// What [`Framer::decode`] returns; named to keep the helpers' types short.
type Decoded = Result<Option<Frame>, FrameError>;

/// Where the framer stands in the stream. Offsets count from the front of the
/// caller's buffer, which holds the current message from its first octet on.
#[derive(Debug, Clone)]
enum State {
    /// Between messages: keep-alive CRLFs or a start line come next.
    Idle,
    /// Inside a header section; no CRLF CRLF starts before `scan_from`.
    Headers { scan_from: usize },
    /// Header section checked; the message is `total` octets long.
    Body { total: usize },
    /// Dropping the rest of an oversize message of known length.
    Discard { remaining: u64 },
    /// Dropping an oversize header section of unknown length up to CRLF CRLF.
    Resync,
    /// Framing is lost; the error has been reported once.
    Failed(FrameError),
}

/// Resumable splitter of a SIP byte stream into [`Frame`]s (RFC 3261 §18.3).
///
/// Feed it by appending received octets to a [`BytesMut`] and calling
/// [`decode`](Self::decode) until it returns `Ok(None)`. Work is linear in the
/// number of octets received, however they are split into reads.
///
/// ```
/// use bytes::BytesMut;
/// use stg_sip_msg::framer::{Frame, Framer};
///
/// let mut framer = Framer::default();
/// let mut buf = BytesMut::from(&b"\r\n\r\nOPTIONS sip:a@example.com SIP/2.0\r\nl: 2\r\n\r\nhi"[..]);
/// assert_eq!(framer.decode(&mut buf), Ok(Some(Frame::Ping)));
/// let Ok(Some(Frame::Message(message))) = framer.decode(&mut buf) else {
///     panic!("one whole message is buffered");
/// };
/// assert!(message.starts_with(b"OPTIONS") && message.ends_with(b"\r\n\r\nhi"));
/// assert_eq!(framer.decode(&mut buf), Ok(None));
/// assert!(buf.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct Framer {
    limits: FramerLimits,
    state: State,
    /// The last thing consumed was a lone CRLF reported as a pong at the end
    /// of the buffer; a CRLF right after it completes a ping.
    half_ping: bool,
    terminator: memmem::Finder<'static>,
}

impl Default for Framer {
    /// A framer with [`FramerLimits::default`].
    fn default() -> Self {
        Self::new(FramerLimits::default())
    }
}

impl Framer {
    /// A framer positioned at the start of a stream.
    pub fn new(limits: FramerLimits) -> Self {
        Self {
            limits,
            state: State::Idle,
            half_ping: false,
            terminator: memmem::Finder::new(CRLFCRLF),
        }
    }

    /// The limits this framer enforces.
    pub fn limits(&self) -> FramerLimits {
        self.limits
    }

    /// Cuts the next frame off the front of `buf`.
    ///
    /// * `Ok(Some(frame))`: the frame's octets have been removed from `buf`.
    /// * `Ok(None)`: more octets are needed; append them and call again.
    ///   Octets of a message being skipped after [`FrameError::TooLarge`]
    ///   are removed from `buf` here too, so it does not grow while a large
    ///   message is dropped.
    /// * `Err(e)` with `!e.is_fatal()`: one oversize message is being
    ///   skipped; keep calling, later messages are framed normally. Each
    ///   oversize message is reported once.
    /// * `Err(e)` with `e.is_fatal()`: the stream cannot be framed any more
    ///   and the connection should be closed. The offending message is left
    ///   at the front of `buf` (e.g. for logging); every later call returns
    ///   the same error and empties `buf`.
    ///
    /// The caller must only ever append to `buf` between calls. Any input is
    /// safe: this never panics.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Decoded {
        loop {
            let step = match &self.state {
                State::Idle => self.between_messages(buf),
                State::Headers { scan_from } => {
                    let scan_from = *scan_from;
                    self.scan_header_section(buf, scan_from)
                }
                State::Body { total } => {
                    let total = *total;
                    ControlFlow::Break(self.take_message(buf, total))
                }
                State::Discard { .. } => {
                    self.discard(buf);
                    self.continue_if_idle()
                }
                State::Resync => {
                    self.resync(buf);
                    self.continue_if_idle()
                }
                State::Failed(error) => {
                    let error = error.clone();
                    buf.clear();
                    ControlFlow::Break(Err(error))
                }
            };
            if let ControlFlow::Break(decoded) = step {
                return decoded;
            }
        }
    }

    fn continue_if_idle(&self) -> ControlFlow<Decoded> {
        if matches!(self.state, State::Idle) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(Ok(None))
        }
    }

    /// Keep-alive CRLFs, or the first octet of a message (module docs).
    fn between_messages(&mut self, buf: &mut BytesMut) -> ControlFlow<Decoded> {
        let Some(&first) = buf.first() else {
            return ControlFlow::Break(Ok(None));
        };
        if first != b'\r' {
            return self.start_message();
        }
        let Some(&second) = buf.get(1) else {
            return ControlFlow::Break(Ok(None));
        };
        if second != b'\n' {
            // Not a keep-alive; the parser will reject whatever this is.
            return self.start_message();
        }
        if self.half_ping {
            self.half_ping = false;
            buf.advance(2);
            return ControlFlow::Break(Ok(Some(Frame::Ping)));
        }
        let frame = match (buf.get(2), buf.get(3)) {
            (None, _) => {
                buf.advance(2);
                self.half_ping = true;
                Frame::Pong
            }
            (Some(b'\r'), None) => return ControlFlow::Break(Ok(None)),
            (Some(b'\r'), Some(b'\n')) => {
                buf.advance(CRLFCRLF.len());
                Frame::Ping
            }
            _ => {
                buf.advance(2);
                Frame::Pong
            }
        };
        ControlFlow::Break(Ok(Some(frame)))
    }

    fn start_message(&mut self) -> ControlFlow<Decoded> {
        self.half_ping = false;
        self.state = State::Headers { scan_from: 0 };
        ControlFlow::Continue(())
    }

    /// Looks for the empty line, only in octets not searched before and never
    /// past `max_message_size`.
    fn scan_header_section(
        &mut self,
        buf: &mut BytesMut,
        scan_from: usize,
    ) -> ControlFlow<Decoded> {
        let max = self.limits.max_message_size;
        let end = buf.len().min(max);
        // min() keeps a caller that broke the append-only contract from
        // causing an out-of-range slice.
        let start = scan_from.min(end);
        if let Some(at) = self.terminator.find(&buf[start..end]) {
            return self.header_section_complete(buf, start + at + CRLFCRLF.len());
        }
        // A terminator may begin in the last three octets searched.
        let resume = end.saturating_sub(TERMINATOR_OVERLAP).max(start);
        if buf.len() < max {
            self.state = State::Headers { scan_from: resume };
            return ControlFlow::Break(Ok(None));
        }
        // Any empty line would end past the limit. Nothing before `resume`
        // can hold a terminator, so drop it now rather than search it again.
        buf.advance(resume);
        self.state = State::Resync;
        self.resync(buf);
        ControlFlow::Break(Err(FrameError::TooLarge {
            limit: Limit::HeaderSection,
        }))
    }

    /// Decides from the complete header section how long the message is.
    fn header_section_complete(
        &mut self,
        buf: &mut BytesMut,
        header_len: usize,
    ) -> ControlFlow<Decoded> {
        let summary = match HeaderSummary::scan(&buf[..header_len]) {
            Ok(summary) => summary,
            Err(error) => {
                self.state = State::Failed(error.clone());
                return ControlFlow::Break(Err(error));
            }
        };
        // RFC 3261 §18.3 makes Content-Length mandatory on streams, but a
        // message without it is taken to have no body, which is what a
        // message without a body would announce anyway (RFC 3261 §20.14).
        let body = summary.content_length.unwrap_or(0);
        let total = to_u64(header_len).saturating_add(body);
        let within_limit = usize::try_from(total)
            .ok()
            .filter(|&total| total <= self.limits.max_message_size);
        let limit = if summary.fields > self.limits.max_headers {
            Limit::HeaderCount
        } else if body > to_u64(self.limits.max_body_size) {
            Limit::BodySize
        } else if let Some(total) = within_limit {
            self.state = State::Body { total };
            return ControlFlow::Continue(());
        } else {
            Limit::MessageSize
        };
        self.state = State::Discard { remaining: total };
        self.discard(buf);
        ControlFlow::Break(Err(FrameError::TooLarge { limit }))
    }

    fn take_message(&mut self, buf: &mut BytesMut, total: usize) -> Decoded {
        if buf.len() < total {
            // One allocation for the whole body rather than one per read;
            // `total` is within `max_message_size`.
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        self.state = State::Idle;
        Ok(Some(Frame::Message(buf.split_to(total).freeze())))
    }

    fn discard(&mut self, buf: &mut BytesMut) {
        let State::Discard { remaining } = &mut self.state else {
            return;
        };
        let n = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
        buf.advance(n);
        *remaining -= to_u64(n);
        if *remaining == 0 {
            self.state = State::Idle;
        }
    }

    /// Drops octets up to and including the next CRLF CRLF. Each call looks
    /// again at no more than the three octets kept back by the previous one.
    fn resync(&mut self, buf: &mut BytesMut) {
        match self.terminator.find(buf) {
            Some(at) => {
                buf.advance(at + CRLFCRLF.len());
                self.state = State::Idle;
            }
            None => buf.advance(buf.len().saturating_sub(TERMINATOR_OVERLAP)),
        }
    }
}

/// What framing needs to know about a header section.
#[derive(Debug)]
struct HeaderSummary {
    fields: usize,
    content_length: Option<u64>,
}

impl HeaderSummary {
    /// `head` is a header section including its final empty line.
    ///
    /// Lines end at CRLF only, the same rule that found the empty line; a
    /// bare LF is line content. Continuation lines (RFC 3261 §7.3.1) are
    /// joined to their field, so a folded `Content-Length` is read whole and
    /// an indented `l: 5` inside another field's value is not mistaken for
    /// one.
    fn scan(head: &[u8]) -> Result<Self, FrameError> {
        let block = head.strip_suffix(b"\r\n").unwrap_or(head);
        let mut summary = Self {
            fields: 0,
            content_length: None,
        };
        let mut field: Option<Range<usize>> = None;
        let mut in_start_line = true;
        let mut line_start = 0;
        for lf in memchr::memchr_iter(b'\n', block) {
            if lf == 0 || block[lf - 1] != b'\r' {
                continue;
            }
            let line = line_start..lf - 1;
            line_start = lf + 1;
            if in_start_line {
                // The start line is no header field, whatever it looks like.
                in_start_line = false;
            } else if matches!(block.get(line.start), Some(b' ' | b'\t')) {
                if let Some(field) = &mut field {
                    field.end = line.end;
                }
            } else {
                if let Some(done) = field.replace(line) {
                    summary.observe(&block[done])?;
                }
                summary.fields += 1;
            }
        }
        if let Some(done) = field {
            summary.observe(&block[done])?;
        }
        Ok(summary)
    }

    /// Notes the value of a `Content-Length` field (long or compact form,
    /// RFC 3261 §7.3.3 and §20.14); ignores any other field.
    fn observe(&mut self, field: &[u8]) -> Result<(), FrameError> {
        let Some(colon) = memchr::memchr(b':', field) else {
            return Ok(());
        };
        // Header names are case-insensitive and HCOLON allows whitespace
        // before the colon (RFC 3261 §7.3.1, §25.1).
        let name = trim_lws(&field[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            return Ok(());
        }
        let value = parse_content_length(&field[colon + 1..])?;
        match self.content_length {
            Some(first) if first != value => Err(FrameError::ConflictingContentLength {
                first,
                second: value,
            }),
            _ => {
                self.content_length = Some(value);
                Ok(())
            }
        }
    }
}

/// `1*DIGIT` surrounded by optional linear white space (RFC 3261 §20.14).
/// Leading zeros are allowed; a sign, an empty value or more than 64 bits
/// are not.
fn parse_content_length(raw: &[u8]) -> Result<u64, FrameError> {
    let digits = trim_lws(raw);
    if digits.is_empty() {
        return Err(FrameError::InvalidContentLength);
    }
    digits
        .iter()
        .try_fold(0u64, |acc, &b| {
            if !b.is_ascii_digit() {
                return None;
            }
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })
        .ok_or(FrameError::InvalidContentLength)
}

/// Strips SP, HTAB and the CRLFs of folded lines (RFC 3261 §25.1 LWS) from
/// both ends.
fn trim_lws(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

/// Lossless on every platform Rust supports; saturates instead of panicking.
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    type Out = Vec<Result<Frame, FrameError>>;

    fn small_limits() -> FramerLimits {
        FramerLimits {
            max_message_size: 512,
            max_headers: 8,
            max_body_size: 256,
        }
    }

    /// Decodes everything `buf` allows, stopping at a fatal error.
    fn drain(framer: &mut Framer, buf: &mut BytesMut, out: &mut Out) -> bool {
        for _ in 0..100_000 {
            match framer.decode(buf) {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => return true,
                Err(error) => {
                    let fatal = error.is_fatal();
                    out.push(Err(error));
                    if fatal {
                        return false;
                    }
                }
            }
        }
        panic!("decode kept returning frames without consuming input");
    }

    /// Feeds `data` in chunks of the given sizes (the rest in one last
    /// chunk), decoding after each.
    fn feed(limits: FramerLimits, data: &[u8], sizes: impl IntoIterator<Item = usize>) -> Out {
        let mut framer = Framer::new(limits);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = data;
        let mut sizes = sizes.into_iter();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            buf.extend_from_slice(chunk);
            if !drain(&mut framer, &mut buf, &mut out) {
                break;
            }
        }
        out
    }

    fn whole(limits: FramerLimits, data: &[u8]) -> Out {
        feed(limits, data, [])
    }

    fn bytewise(limits: FramerLimits, data: &[u8]) -> Out {
        feed(limits, data, std::iter::repeat(1))
    }

    /// Merges the `Pong` that a ping cut between its CRLFs yields into the
    /// `Ping` that follows it (module docs).
    fn normalise(out: Out) -> Out {
        let mut merged: Out = Vec::with_capacity(out.len());
        for item in out {
            if item == Ok(Frame::Ping) && merged.last() == Some(&Ok(Frame::Pong)) {
                merged.pop();
            }
            merged.push(item);
        }
        merged
    }

    fn message(extra: &str, body: &[u8]) -> Vec<u8> {
        let mut m = format!(
            "OPTIONS sip:bob@example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK776\r\n\
             Call-ID: a84b4c76e66710\r\n\
             {extra}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        m.extend_from_slice(body);
        m
    }

    fn msg(bytes: &[u8]) -> Result<Frame, FrameError> {
        Ok(Frame::Message(Bytes::copy_from_slice(bytes)))
    }

    fn too_large(limit: Limit) -> Result<Frame, FrameError> {
        Err(FrameError::TooLarge { limit })
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn byte_at_a_time_two_pipelined_messages() {
        let a = message("", b"");
        let b = message("Content-Type: text/plain\r\n", b"hello\r\n");
        let stream = cat(&[&a, &b]);
        let expected = vec![msg(&a), msg(&b)];
        assert_eq!(bytewise(small_limits(), &stream), expected);
        assert_eq!(whole(small_limits(), &stream), expected);
    }

    #[test]
    fn message_split_at_every_position() {
        let a = message("", b"v=0\r\n\r\n\r\no=- 1 1 IN IP4 192.0.2.1\r\n");
        let b = message("", b"x");
        let stream = cat(&[&a, &b]);
        let expected = vec![msg(&a), msg(&b)];
        for cut in 0..=stream.len() {
            assert_eq!(
                feed(small_limits(), &stream, [cut]),
                expected,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bodies_containing_blank_lines_are_framed_by_content_length() {
        let a = message("", b"\r\n\r\n");
        let b = message("", b"\r\n\r\nINVITE sip:x SIP/2.0\r\n\r\n");
        let c = message("", b"");
        let stream = cat(&[&a, &b, &c]);
        let expected = vec![msg(&a), msg(&b), msg(&c)];
        assert_eq!(whole(small_limits(), &stream), expected);
        assert_eq!(bytewise(small_limits(), &stream), expected);
    }

    #[test]
    fn keep_alives_between_messages() {
        let a = message("", b"");
        let stream = cat(&[
            b"\r\n\r\n",
            &a,
            b"\r\n",
            &a,
            b"\r\n\r\n\r\n",
            &a,
            b"\r\n\r\n",
        ]);
        let expected = vec![
            Ok(Frame::Ping),
            msg(&a),
            Ok(Frame::Pong),
            msg(&a),
            Ok(Frame::Ping),
            Ok(Frame::Pong),
            msg(&a),
            Ok(Frame::Ping),
        ];
        assert_eq!(whole(small_limits(), &stream), expected);
        assert_eq!(normalise(bytewise(small_limits(), &stream)), expected);
    }

    #[test]
    fn lone_crlf_is_a_pong_at_once_and_completes_a_ping_if_a_crlf_follows() {
        let mut framer = Framer::default();
        let mut buf = BytesMut::from(&b"\r"[..]);
        assert_eq!(framer.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"\n");
        // Never wait on a lone CRLF: it may be the pong a keep-alive timer
        // is waiting for.
        assert_eq!(framer.decode(&mut buf), Ok(Some(Frame::Pong)));
        assert!(buf.is_empty());
        buf.extend_from_slice(b"\r");
        assert_eq!(framer.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"\n");
        assert_eq!(framer.decode(&mut buf), Ok(Some(Frame::Ping)));
        // That CRLF was used up by the ping: the next one is a pong again.
        buf.extend_from_slice(b"\r\n");
        assert_eq!(framer.decode(&mut buf), Ok(Some(Frame::Pong)));
        assert_eq!(framer.decode(&mut buf), Ok(None));

        // "\r\n\r" waits for the octet that tells ping from pong.
        let mut framer = Framer::default();
        let mut buf = BytesMut::from(&b"\r\n\r"[..]);
        assert_eq!(framer.decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"\r\n\r");
        buf.extend_from_slice(b"\n");
        assert_eq!(framer.decode(&mut buf), Ok(Some(Frame::Ping)));
        assert!(buf.is_empty());

        // A message right after the pong ends the half-ping state.
        let a = message("", b"");
        let mut framer = Framer::default();
        let mut buf = BytesMut::from(&b"\r\n"[..]);
        assert_eq!(framer.decode(&mut buf), Ok(Some(Frame::Pong)));
        buf.extend_from_slice(&a);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(
            framer.decode(&mut buf),
            Ok(Some(Frame::Message(Bytes::from(a))))
        );
        assert_eq!(framer.decode(&mut buf), Ok(Some(Frame::Pong)));
    }

    #[test]
    fn compact_and_unusual_content_length_forms() {
        let body = b"hello";
        let head = "INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n";
        for cl in [
            "l: 5",
            "L:5",
            "l \t: 5 ",
            "content-length: 5",
            "CONTENT-LENGTH   :   0005",
            "Content-Length:\r\n 5",
            "Content-Length: 5\r\nl: 05",
        ] {
            let m = format!("{head}{cl}\r\nSubject: x\r\n\r\n").into_bytes();
            let m = cat(&[&m, body]);
            let next = message("", b"");
            let stream = cat(&[&m, &next]);
            let expected = vec![msg(&m), msg(&next)];
            assert_eq!(whole(small_limits(), &stream), expected, "{cl:?}");
            assert_eq!(bytewise(small_limits(), &stream), expected, "{cl:?}");
        }
        // Lookalikes that are not Content-Length.
        for other in [
            "X-l: 5",
            "Content-Lengths: 5",
            "Subject: hi\r\n l: 5",
            "ll: 5",
        ] {
            let m = format!("{head}{other}\r\n\r\n").into_bytes();
            assert_eq!(whole(small_limits(), &m), vec![msg(&m)], "{other:?}");
        }
        // The start line is not a header field.
        let m = b"l: 5 SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(whole(small_limits(), m), vec![msg(m)]);
    }

    #[test]
    fn missing_content_length_means_empty_body() {
        let a = b"OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n";
        let b = message("", b"abc");
        let stream = cat(&[a, &b]);
        let expected = vec![msg(a), msg(&b)];
        assert_eq!(whole(small_limits(), &stream), expected);
        assert_eq!(bytewise(small_limits(), &stream), expected);
    }

    #[test]
    fn untrustworthy_content_length_is_fatal() {
        let head = "INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n";
        for cl in [
            "Content-Length: -999",
            "Content-Length: +5",
            "Content-Length: five",
            "Content-Length: 5 5",
            "Content-Length:",
            "l: 0x10",
            "Content-Length: 18446744073709551616",
            "Content-Length: 99999999999999999999999",
        ] {
            let m = format!("{head}{cl}\r\n\r\nbody").into_bytes();
            for out in [whole(small_limits(), &m), bytewise(small_limits(), &m)] {
                assert_eq!(out, vec![Err(FrameError::InvalidContentLength)], "{cl:?}");
            }
        }
        let m = format!("{head}Content-Length: 13\r\nl: 5\r\n\r\nThere's no way").into_bytes();
        let conflict = FrameError::ConflictingContentLength {
            first: 13,
            second: 5,
        };
        assert_eq!(whole(small_limits(), &m), vec![Err(conflict.clone())]);
        assert_eq!(bytewise(small_limits(), &m), vec![Err(conflict.clone())]);
        assert!(conflict.is_fatal());
        assert_eq!(conflict.reason(), "conflicting_content_length");
        assert_eq!(
            FrameError::InvalidContentLength.reason(),
            "bad_content_length"
        );

        // Same value twice is fine.
        let m = format!("{head}Content-Length: 4\r\nl: 004\r\n\r\nbody").into_bytes();
        assert_eq!(whole(small_limits(), &m), vec![msg(&m)]);
    }

    #[test]
    fn fatal_error_sticks_and_stops_buffering() {
        let m = b"INVITE sip:b SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        let mut framer = Framer::default();
        let mut buf = BytesMut::from(&m[..]);
        assert_eq!(
            framer.decode(&mut buf),
            Err(FrameError::InvalidContentLength)
        );
        // Left in place for the caller to log.
        assert_eq!(&buf[..], &m[..]);
        buf.extend_from_slice(&message("", b""));
        assert_eq!(
            framer.decode(&mut buf),
            Err(FrameError::InvalidContentLength)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_header_section_is_skipped_up_to_the_blank_line() {
        let mut big = b"INVITE sip:b@example.com SIP/2.0\r\nContent-Length: 3\r\n".to_vec();
        while big.len() <= small_limits().max_message_size {
            big.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let good = message("", b"ok");
        let stream = cat(&[&good, &big, &good, b"\r\n\r\n", &good]);
        let expected = vec![
            msg(&good),
            too_large(Limit::HeaderSection),
            msg(&good),
            Ok(Frame::Ping),
            msg(&good),
        ];
        assert_eq!(whole(small_limits(), &stream), expected);
        assert_eq!(normalise(bytewise(small_limits(), &stream)), expected);
        for cut in 0..stream.len() {
            assert_eq!(
                normalise(feed(small_limits(), &stream, [cut])),
                expected,
                "cut at {cut}"
            );
        }
        let err = FrameError::TooLarge {
            limit: Limit::HeaderSection,
        };
        assert!(!err.is_fatal());
        assert_eq!(err.reason(), "too_large");
    }

    #[test]
    fn terminator_straddling_the_limit_is_found_while_resyncing() {
        let limits = small_limits();
        for shift in 0..6 {
            let mut big = b"INVITE sip:b SIP/2.0\r\n".to_vec();
            big.resize(limits.max_message_size - 2 + shift, b'a');
            big.extend_from_slice(b"\r\n\r\n");
            let good = message("", b"");
            let stream = cat(&[&big, &good]);
            let expected = if big.len() <= limits.max_message_size {
                vec![msg(&big), msg(&good)]
            } else {
                vec![too_large(Limit::HeaderSection), msg(&good)]
            };
            assert_eq!(whole(limits, &stream), expected, "shift {shift}");
            assert_eq!(bytewise(limits, &stream), expected, "shift {shift}");
        }
    }

    #[test]
    fn oversize_body_and_message_and_header_count_are_discarded_exactly() {
        let good = message("", b"ok");
        let body_too_big = message("", &[b'\n'; 300]);
        let padding = format!("X-Pad: {}\r\n", "p".repeat(300));
        let message_too_big = message(&padding, &[b'\r'; 200]);
        let many = "X-H: 1\r\n".repeat(10);
        let too_many_headers = message(&many, b"\r\n\r\nbody");
        let stream = cat(&[
            &body_too_big,
            &good,
            &message_too_big,
            b"\r\n",
            &good,
            &too_many_headers,
            &good,
        ]);
        let expected = vec![
            too_large(Limit::BodySize),
            msg(&good),
            too_large(Limit::MessageSize),
            Ok(Frame::Pong),
            msg(&good),
            too_large(Limit::HeaderCount),
            msg(&good),
        ];
        assert_eq!(whole(small_limits(), &stream), expected);
        assert_eq!(bytewise(small_limits(), &stream), expected);
        for cut in 0..stream.len() {
            assert_eq!(
                feed(small_limits(), &stream, [cut]),
                expected,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let limits = small_limits();
        let body = vec![b'b'; limits.max_body_size];
        let pad = |n: usize| format!("X-Pad: {}\r\n", "p".repeat(n));
        let base = message(&pad(0), &body).len();
        let exact = message(&pad(limits.max_message_size - base), &body);
        assert_eq!(exact.len(), limits.max_message_size);
        assert_eq!(whole(limits, &exact), vec![msg(&exact)]);
        let over = message(&pad(limits.max_message_size - base + 1), &body);
        assert_eq!(whole(limits, &over), vec![too_large(Limit::MessageSize)]);
        let body_over = message("", &[b'b'; 257]);
        assert_eq!(whole(limits, &body_over), vec![too_large(Limit::BodySize)]);

        // message() writes Via, Call-ID and Content-Length.
        let at_count = message(&"X: 1\r\n".repeat(limits.max_headers - 3), b"");
        assert_eq!(whole(limits, &at_count), vec![msg(&at_count)]);
        let over_count = message(&"X: 1\r\n".repeat(limits.max_headers - 2), b"");
        assert_eq!(
            whole(limits, &over_count),
            vec![too_large(Limit::HeaderCount)]
        );
    }

    #[test]
    fn buffer_stays_bounded_while_discarding_a_huge_message() {
        let limits = small_limits();
        let good = message("", b"ok");
        let mut framer = Framer::new(limits);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        buf.extend_from_slice(b"MESSAGE sip:b SIP/2.0\r\nContent-Length: 2000000\r\n\r\n");
        let chunk = [b'x'; 4096];
        let mut sent = 0;
        while sent < 2_000_000 {
            let n = chunk.len().min(2_000_000 - sent);
            buf.extend_from_slice(&chunk[..n]);
            sent += n;
            assert!(drain(&mut framer, &mut buf, &mut out));
            assert!(
                buf.len() <= limits.max_message_size,
                "buffer grew to {}",
                buf.len()
            );
        }
        buf.extend_from_slice(&good);
        assert!(drain(&mut framer, &mut buf, &mut out));
        assert_eq!(out, vec![too_large(Limit::BodySize), msg(&good)]);

        // Same for an endless header section.
        let mut framer = Framer::new(limits);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        buf.extend_from_slice(b"INVITE sip:b SIP/2.0\r\n");
        let line = b"X-Junk: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n".repeat(100);
        for _ in 0..500 {
            buf.extend_from_slice(&line);
            assert!(drain(&mut framer, &mut buf, &mut out));
            assert!(
                buf.len() <= limits.max_message_size,
                "buffer grew to {}",
                buf.len()
            );
        }
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(&good);
        assert!(drain(&mut framer, &mut buf, &mut out));
        assert_eq!(out, vec![too_large(Limit::HeaderSection), msg(&good)]);
    }

    #[test]
    fn degenerate_limits_do_not_panic() {
        let good = message("", b"ok");
        let stream = cat(&[&good, b"\r\n\r\n", &good, b"\r\n"]);
        for max in 0..8 {
            let limits = FramerLimits {
                max_message_size: max,
                max_headers: max,
                max_body_size: max,
            };
            for out in [whole(limits, &stream), bytewise(limits, &stream)] {
                assert!(out
                    .iter()
                    .all(|r| r.as_ref().map_or_else(|e| !e.is_fatal(), |_| true)));
            }
        }
    }

    /// xorshift64*: deterministic, dependency-free pseudo-random numbers.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % to_u64(n)).unwrap_or(0)
        }
    }

    #[test]
    fn pseudo_random_streams_frame_the_same_however_they_are_split() {
        let limits = small_limits();
        let mut oversize_headers = b"SUBSCRIBE sip:b SIP/2.0\r\nContent-Length: 7\r\n".to_vec();
        while oversize_headers.len() <= limits.max_message_size {
            oversize_headers.extend_from_slice(b"Accept: application/pidf+xml, text/plain\r\n");
        }
        oversize_headers.extend_from_slice(b"\r\n");
        let binary: Vec<u8> = (0..=255u8).rev().collect();
        let pool: Vec<(Vec<u8>, Result<Frame, FrameError>)> = vec![
            (message("", b""), Ok(Frame::Pong)),
            (message("", b"\r\n\r\n"), Ok(Frame::Pong)),
            (message("", b"\r"), Ok(Frame::Pong)),
            (message("", &binary[..200]), Ok(Frame::Pong)),
            (
                b"SIP/2.0 200 OK\r\nl:3\r\nv: SIP/2.0/TCP h\r\n\r\n\r\n\r".to_vec(),
                Ok(Frame::Pong),
            ),
            (
                b"NOTIFY sip:a SIP/2.0\r\nContent-Length:\r\n\t 2\r\n\r\n\r\n".to_vec(),
                Ok(Frame::Pong),
            ),
            (
                message("", &cat(&[&binary, b"!"])),
                too_large(Limit::BodySize),
            ),
            (
                message(&format!("X-Pad: {}\r\n", "q".repeat(300)), &[b'\n'; 200]),
                too_large(Limit::MessageSize),
            ),
            (
                message(&"a: b\r\n".repeat(9), b""),
                too_large(Limit::HeaderCount),
            ),
            (oversize_headers, too_large(Limit::HeaderSection)),
        ];
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..12 {
                match rng.below(4) {
                    0 => {
                        stream.extend_from_slice(b"\r\n\r\n");
                        expected.push(Ok(Frame::Ping));
                    }
                    1 => {
                        stream.extend_from_slice(b"\r\n");
                        expected.push(Ok(Frame::Pong));
                    }
                    _ => {}
                }
                let (bytes, outcome) = &pool[rng.below(pool.len())];
                stream.extend_from_slice(bytes);
                expected.push(match outcome {
                    Ok(_) => msg(bytes),
                    Err(e) => Err(e.clone()),
                });
            }
            assert_eq!(whole(limits, &stream), expected, "seed {seed}");
            let sizes: Vec<usize> = (0..stream.len()).map(|_| 1 + rng.below(64)).collect();
            assert_eq!(
                normalise(feed(limits, &stream, sizes)),
                expected,
                "seed {seed}"
            );
            if seed % 8 == 0 {
                assert_eq!(
                    normalise(bytewise(limits, &stream)),
                    expected,
                    "seed {seed}"
                );
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let alphabet = b"\r\n\r\n:lL 0123456789-Content-Length\t";
        for seed in 1..=200u64 {
            let mut rng = Rng(seed);
            let len = rng.below(600);
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(4) == 0 {
                        u8::try_from(rng.below(256)).unwrap_or(0)
                    } else {
                        alphabet[rng.below(alphabet.len())]
                    }
                })
                .collect();
            let limits = FramerLimits {
                max_message_size: 1 + rng.below(300),
                max_headers: rng.below(10),
                max_body_size: rng.below(300),
            };
            let sizes: Vec<usize> = (0..len).map(|_| 1 + rng.below(16)).collect();
            let split = feed(limits, &data, sizes);
            assert_eq!(
                normalise(split),
                normalise(whole(limits, &data)),
                "seed {seed}"
            );
        }
    }

    fn conformance_dir() -> PathBuf {
        std::env::var_os("STG_CONFORMANCE_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
            PathBuf::from,
        )
    }

    #[test]
    fn rfc4475_torture_messages_when_streamed() {
        let dir = conformance_dir().join("rfc4475");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "RFC 4475 conformance files not found at {} ({e}); set STG_CONFORMANCE_DIR",
                dir.display()
            )
        });
        let mut files: Vec<PathBuf> = entries
            .map(|entry| entry.expect("readable directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "dat"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 49,
            "only {} .dat files in {}",
            files.len(),
            dir.display()
        );

        // Content-Length is deliberately wrong, missing or followed by extra
        // octets in these; every other file is exactly one message.
        let irregular = ["baddn", "clerr", "dblreq", "inv2543", "mcl01", "ncl"];
        let mut seen = Vec::new();
        for path in &files {
            let data = std::fs::read(path).expect("readable torture file");
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let out = whole(FramerLimits::default(), &data);
            assert_eq!(
                normalise(bytewise(FramerLimits::default(), &data)),
                normalise(out.clone()),
                "{name}: byte-at-a-time differs from one read"
            );
            match name.as_str() {
                "ncl" => assert_eq!(out, vec![Err(FrameError::InvalidContentLength)], "{name}"),
                "mcl01" => assert_eq!(
                    out,
                    vec![Err(FrameError::ConflictingContentLength {
                        first: 13,
                        second: 5
                    })],
                    "{name}"
                ),
                // No empty line (baddn) or a body shorter than announced
                // (clerr): a stream would wait for more.
                "baddn" | "clerr" => assert_eq!(out, vec![], "{name}"),
                "inv2543" => {
                    let end = memmem::find(&data, CRLFCRLF).expect("header section end") + 4;
                    assert_eq!(out, vec![msg(&data[..end])], "{name}");
                }
                "dblreq" => {
                    let end = memmem::find(&data, CRLFCRLF).expect("header section end") + 4;
                    assert_eq!(out.first(), Some(&msg(&data[..end])), "{name}");
                    assert_eq!(out.get(1), Some(&Ok(Frame::Pong)), "{name}");
                    assert!(out.iter().all(Result::is_ok), "{name}: {out:?}");
                }
                _ => assert_eq!(out, vec![msg(&data)], "{name}"),
            }
            seen.push(name);
        }
        for required in ["wsinv", "ncl", "mcl01"].iter().chain(&irregular) {
            assert!(
                seen.iter().any(|s| s == required),
                "{required}.dat missing from {}",
                dir.display()
            );
        }
    }
}
