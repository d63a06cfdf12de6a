//! The parsed message: one `Bytes` plus offsets into it.
//!
//! [`Message::parse`] validates everything a proxy routes on (start line, Via, From, To,
//! Call-ID, CSeq, Max-Forwards, Content-Length, Contact, Route, Record-Route, Path) and
//! records where every header line is; all other headers stay raw and are forwarded
//! byte-exact. The only allocation beyond the input buffer is the header index.

use bytes::Bytes;

use crate::header::HeaderName;
use crate::scan;
use crate::uri::{Uri, UriError};
use crate::values::{self, NameAddr, ValueError, Via};

/// Most header lines a message may have (RFC 4475 longreq has 34 Vias; real traffic far
/// fewer). Bounds the index a hostile datagram can make us build.
pub const MAX_HEADERS: usize = 256;

/// Byte range inside [`Message::raw`]. `u32` halves the index size; messages are capped far
/// below 4 GiB by the transports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Self {
        // Messages are bounded by the transports' limits (at most 64 KiB datagrams and
        // framer-capped streams), so offsets always fit.
        Self {
            start: start as u32,
            end: end as u32,
        }
    }

    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    fn of(outer: &[u8], inner: &[u8]) -> Self {
        let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
        Self::new(start, start + inner.len())
    }
}

/// A SIP method. Method names are case-sensitive (RFC 3261 §7.1): `invite` is an extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// INFO
    Info,
    /// INVITE
    Invite,
    /// MESSAGE
    Message,
    /// NOTIFY
    Notify,
    /// OPTIONS
    Options,
    /// PRACK
    Prack,
    /// PUBLISH
    Publish,
    /// REFER
    Refer,
    /// REGISTER
    Register,
    /// SUBSCRIBE
    Subscribe,
    /// UPDATE
    Update,
    /// Any other token; the text is in [`Message::method_bytes`].
    Extension,
}

impl Method {
    /// Classifies a method token.
    pub fn from_bytes(b: &[u8]) -> Self {
        match b {
            b"ACK" => Self::Ack,
            b"BYE" => Self::Bye,
            b"CANCEL" => Self::Cancel,
            b"INFO" => Self::Info,
            b"INVITE" => Self::Invite,
            b"MESSAGE" => Self::Message,
            b"NOTIFY" => Self::Notify,
            b"OPTIONS" => Self::Options,
            b"PRACK" => Self::Prack,
            b"PUBLISH" => Self::Publish,
            b"REFER" => Self::Refer,
            b"REGISTER" => Self::Register,
            b"SUBSCRIBE" => Self::Subscribe,
            b"UPDATE" => Self::Update,
            _ => Self::Extension,
        }
    }
}

/// A status code. A newtype rather than an enum so every code round-trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(pub u16);

impl StatusCode {
    /// 100 Trying
    pub const TRYING: Self = Self(100);
    /// 200 OK
    pub const OK: Self = Self(200);
    /// 400 Bad Request
    pub const BAD_REQUEST: Self = Self(400);
    /// 403 Forbidden
    pub const FORBIDDEN: Self = Self(403);
    /// 404 Not Found
    pub const NOT_FOUND: Self = Self(404);
    /// 408 Request Timeout
    pub const REQUEST_TIMEOUT: Self = Self(408);
    /// 416 Unsupported URI Scheme
    pub const UNSUPPORTED_URI_SCHEME: Self = Self(416);
    /// 420 Bad Extension
    pub const BAD_EXTENSION: Self = Self(420);
    /// 481 Call/Transaction Does Not Exist
    pub const CALL_DOES_NOT_EXIST: Self = Self(481);
    /// 482 Loop Detected
    pub const LOOP_DETECTED: Self = Self(482);
    /// 483 Too Many Hops
    pub const TOO_MANY_HOPS: Self = Self(483);
    /// 487 Request Terminated
    pub const REQUEST_TERMINATED: Self = Self(487);
    /// 500 Server Internal Error
    pub const SERVER_INTERNAL_ERROR: Self = Self(500);
    /// 503 Service Unavailable
    pub const SERVICE_UNAVAILABLE: Self = Self(503);
    /// 505 Version Not Supported
    pub const VERSION_NOT_SUPPORTED: Self = Self(505);
    /// 513 Message Too Large
    pub const MESSAGE_TOO_LARGE: Self = Self(513);

    /// 1xx.
    pub fn is_provisional(self) -> bool {
        self.0 < 200
    }

    /// 2xx.
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }

    /// The class, 1 to 6.
    pub fn class(self) -> u16 {
        self.0 / 100
    }

    /// The RFC 3261 reason phrase stg writes for its own responses.
    pub fn canonical_reason(self) -> &'static str {
        match self.0 {
            100 => "Trying",
            200 => "OK",
            180 => "Ringing",
            202 => "Accepted",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            407 => "Proxy Authentication Required",
            408 => "Request Timeout",
            413 => "Request Entity Too Large",
            416 => "Unsupported URI Scheme",
            420 => "Bad Extension",
            421 => "Extension Required",
            423 => "Interval Too Brief",
            480 => "Temporarily Unavailable",
            481 => "Call/Transaction Does Not Exist",
            482 => "Loop Detected",
            483 => "Too Many Hops",
            487 => "Request Terminated",
            500 => "Server Internal Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Server Time-out",
            505 => "Version Not Supported",
            513 => "Message Too Large",
            _ => "Unknown",
        }
    }
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

// === errors ===

/// What is wrong with a message. [`ParseError::status`] maps it to the response a UAS or
/// proxy gives (400, or 505 for a version), [`ParseError::reason`] to a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// No bytes, or no start line.
    Empty,
    /// Start line not `Method SP URI SP SIP/2.0` or `SIP/2.0 SP code SP reason`.
    StartLine,
    /// A SIP version other than 2.0.
    Version,
    /// The Request-URI is malformed.
    RequestUri(UriError),
    /// The Request-URI carries `?headers` (RFC 4475 §3.1.2.11).
    RequestUriHeaders,
    /// A header line without a name or colon.
    HeaderLine,
    /// A known header's value is malformed.
    Header(HeaderName, ValueError),
    /// A mandatory header is missing.
    Missing(HeaderName),
    /// A single-valued header appears twice with different values.
    Duplicate(HeaderName),
    /// The CSeq method differs from the request method.
    CSeqMethod,
    /// Content-Length says more bytes than the message carries.
    ContentLength,
    /// Headers end without an empty line.
    Truncated,
    /// More than [`MAX_HEADERS`] header lines.
    TooManyHeaders,
}

/// A malformed message, with where it went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong.
    pub kind: ParseErrorKind,
    /// Byte offset of the offending line.
    pub offset: usize,
    /// 1-based line number of the offending line.
    pub line: usize,
}

impl ParseError {
    /// The response code to answer a request with.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ParseErrorKind::Version => StatusCode::VERSION_NOT_SUPPORTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Short static label for metrics (`parse_failures_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ParseErrorKind::Empty => "empty",
            ParseErrorKind::StartLine => "start_line",
            ParseErrorKind::Version => "version",
            ParseErrorKind::RequestUri(_) => "request_uri",
            ParseErrorKind::RequestUriHeaders => "request_uri_headers",
            ParseErrorKind::HeaderLine => "header_line",
            ParseErrorKind::Header(h, _) => match h {
                HeaderName::Via => "bad_via",
                HeaderName::From => "bad_from",
                HeaderName::To => "bad_to",
                HeaderName::CallId => "bad_call_id",
                HeaderName::CSeq => "bad_cseq",
                HeaderName::MaxForwards => "bad_max_forwards",
                HeaderName::ContentLength => "bad_content_length",
                HeaderName::Contact => "bad_contact",
                HeaderName::Route | HeaderName::RecordRoute | HeaderName::Path => "bad_route",
                _ => "bad_header",
            },
            ParseErrorKind::Missing(_) => "missing_header",
            ParseErrorKind::Duplicate(_) => "duplicate_header",
            ParseErrorKind::CSeqMethod => "cseq_method_mismatch",
            ParseErrorKind::ContentLength => "content_length",
            ParseErrorKind::Truncated => "truncated",
            ParseErrorKind::TooManyHeaders => "too_many_headers",
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match self.kind {
            ParseErrorKind::Empty => f.write_str("empty message"),
            ParseErrorKind::StartLine => f.write_str(
                "malformed start line (expected 'METHOD SP Request-URI SP SIP/2.0' with single spaces, or 'SIP/2.0 SP code SP reason')",
            ),
            ParseErrorKind::Version => f.write_str("SIP version is not 2.0"),
            ParseErrorKind::RequestUri(e) => write!(f, "Request-URI: {e}"),
            ParseErrorKind::RequestUriHeaders => {
                f.write_str("Request-URI: '?headers' are not allowed in a Request-URI")
            }
            ParseErrorKind::HeaderLine => f.write_str("header line without 'name:'"),
            ParseErrorKind::Header(h, e) => write!(f, "{}: {e}", h.as_str()),
            ParseErrorKind::Missing(h) => write!(f, "missing mandatory header {}", h.as_str()),
            ParseErrorKind::Duplicate(h) => {
                write!(f, "{} appears more than once with different values", h.as_str())
            }
            ParseErrorKind::CSeqMethod => f.write_str("CSeq method does not match the request method"),
            ParseErrorKind::ContentLength => {
                f.write_str("Content-Length is larger than the bytes that follow the headers")
            }
            ParseErrorKind::Truncated => f.write_str("headers not terminated by an empty line"),
            ParseErrorKind::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header lines"),
        }
    }
}

impl std::error::Error for ParseError {}

// === message ===

/// One header line of a message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeaderLine {
    pub(crate) id: HeaderName,
    pub(crate) name: Span,
    pub(crate) value: Span,
    /// The whole line, folds and line end included: what serialization copies.
    pub(crate) line: Span,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Start {
    Request {
        method: Method,
        method_text: Span,
        uri: Span,
    },
    Response {
        status: StatusCode,
        reason: Span,
    },
}

/// A parsed SIP request or response over one shared buffer.
#[derive(Clone, Debug)]
pub struct Message {
    pub(crate) raw: Bytes,
    pub(crate) start: Start,
    pub(crate) start_line: Span,
    pub(crate) headers: Vec<HeaderLine>,
    pub(crate) body: Span,
    call_id: Span,
    cseq: u32,
    cseq_method: Span,
    max_forwards: Option<u32>,
    has_content_length: bool,
    from_tag: Option<Span>,
    to_tag: Option<Span>,
}

/// A borrowed view of one header line.
#[derive(Clone, Copy, Debug)]
pub struct HeaderRef<'a> {
    /// Which header, if stg interprets it.
    pub id: HeaderName,
    /// The name as written.
    pub name: &'a [u8],
    /// The value, trimmed, folds included.
    pub value: &'a [u8],
}

struct Builder<'a> {
    raw: &'a [u8],
    line_no: usize,
}

impl Builder<'_> {
    fn err(&self, kind: ParseErrorKind, offset: usize) -> ParseError {
        ParseError {
            kind,
            offset,
            line: self.line_no,
        }
    }
}

/// Finds the end of the line starting at `from`: returns (content end, next line start).
fn line_end(raw: &[u8], from: usize) -> Option<(usize, usize)> {
    let lf = from + memchr::memchr(b'\n', &raw[from..])?;
    let end = if lf > from && raw[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((end, lf + 1))
}

impl Message {
    /// Parses one whole message: a UDP datagram or a frame cut by the stream framer.
    ///
    /// Bytes past `Content-Length` are ignored (RFC 3261 §18.3: a datagram's trailing
    /// octets, RFC 4475 §3.1.1.8); without `Content-Length` the body runs to the end.
    pub fn parse(raw: Bytes) -> Result<Self, ParseError> {
        let r: &[u8] = &raw;
        let mut b = Builder { raw: r, line_no: 1 };
        // RFC 3261 §7.5: ignore CRLFs before the start line.
        let mut pos = 0;
        while pos < r.len() && (r[pos] == b'\r' || r[pos] == b'\n') {
            if r[pos] == b'\n' {
                b.line_no += 1;
            }
            pos += 1;
        }
        if pos == r.len() {
            return Err(b.err(ParseErrorKind::Empty, 0));
        }
        let (sl_end, mut pos_next) =
            line_end(r, pos).ok_or_else(|| b.err(ParseErrorKind::Truncated, pos))?;
        let start_line = Span::new(pos, sl_end);
        let start = parse_start_line(&b, pos, &r[pos..sl_end])?;

        let mut headers: Vec<HeaderLine> = Vec::with_capacity(24);
        let body_start;
        loop {
            b.line_no += 1;
            let line_start = pos_next;
            if line_start >= r.len() {
                return Err(b.err(ParseErrorKind::Truncated, line_start));
            }
            let (mut end, mut next) = line_end(r, line_start)
                .ok_or_else(|| b.err(ParseErrorKind::Truncated, line_start))?;
            if end == line_start {
                body_start = next;
                break;
            }
            if scan::is_wsp(r[line_start]) {
                // A fold with no header to continue.
                return Err(b.err(ParseErrorKind::HeaderLine, line_start));
            }
            // Unfold: continuation lines start with SP/HT.
            while next < r.len() && scan::is_wsp(r[next]) {
                b.line_no += 1;
                (end, next) =
                    line_end(r, next).ok_or_else(|| b.err(ParseErrorKind::Truncated, next))?;
            }
            if headers.len() == MAX_HEADERS {
                return Err(b.err(ParseErrorKind::TooManyHeaders, line_start));
            }
            let text = &r[line_start..end];
            let name_len = text
                .iter()
                .position(|&x| !scan::is_token(x))
                .unwrap_or(text.len());
            let mut c = scan::Cursor::new(text);
            c.pos = name_len;
            c.take_while(scan::is_wsp);
            if name_len == 0 || !c.eat(b':') {
                return Err(b.err(ParseErrorKind::HeaderLine, line_start));
            }
            c.skip_lws();
            let value = scan::trim(c.rest());
            let name = &text[..name_len];
            headers.push(HeaderLine {
                id: HeaderName::from_bytes(name),
                name: Span::of(r, name),
                value: Span::of(r, value),
                line: Span::new(line_start, next),
            });
            pos_next = next;
        }

        let mut m = Self {
            start,
            start_line,
            headers: Vec::new(),
            body: Span::default(),
            call_id: Span::default(),
            cseq: 0,
            cseq_method: Span::default(),
            max_forwards: None,
            has_content_length: false,
            from_tag: None,
            to_tag: None,
            raw: Bytes::new(),
        };
        let content_length = m.check_headers(&mut b, &headers)?;
        let available = r.len() - body_start;
        let body_len = match content_length {
            Some(cl) if cl > available => {
                b.line_no = 1;
                return Err(b.err(ParseErrorKind::ContentLength, body_start));
            }
            Some(cl) => cl,
            None => available,
        };
        m.body = Span::new(body_start, body_start + body_len);
        m.has_content_length = content_length.is_some();
        m.headers = headers;
        m.raw = raw;
        Ok(m)
    }

    /// Validates the headers the proxy interprets; returns the Content-Length.
    fn check_headers(
        &mut self,
        b: &mut Builder<'_>,
        headers: &[HeaderLine],
    ) -> Result<Option<usize>, ParseError> {
        let r = b.raw;
        let mut seen: [Option<Span>; 6] = [None; 6];
        let mut have_via = false;
        let mut content_length = None;
        for h in headers {
            let v = &r[h.value.range()];
            let off = h.line.start as usize;
            let bad = |e: ValueError| ParseError {
                kind: ParseErrorKind::Header(h.id, e),
                offset: off,
                line: line_of(r, off),
            };
            if h.id.is_singleton() {
                let slot = match h.id {
                    HeaderName::CallId => 0,
                    HeaderName::CSeq => 1,
                    HeaderName::From => 2,
                    HeaderName::To => 3,
                    HeaderName::MaxForwards => 4,
                    _ => 5,
                };
                if let Some(prev) = seen[slot] {
                    if r[prev.range()] != *v {
                        return Err(ParseError {
                            kind: ParseErrorKind::Duplicate(h.id),
                            offset: off,
                            line: line_of(r, off),
                        });
                    }
                    continue;
                }
                seen[slot] = Some(h.value);
            }
            match h.id {
                HeaderName::Via => {
                    values::for_each_via(v, |_| ()).map_err(|e| match e {
                        ValueError::Version => ParseError {
                            kind: ParseErrorKind::Version,
                            offset: off,
                            line: line_of(r, off),
                        },
                        e => bad(e),
                    })?;
                    have_via = true;
                }
                HeaderName::From | HeaderName::To => {
                    let na = NameAddr::parse(v).map_err(bad)?;
                    // tag-param = "tag" EQUAL token: a bare `;tag` would make every
                    // response we build carry two tags.
                    if na.param(b"tag") == Some(None) {
                        return Err(bad(ValueError::Param));
                    }
                    let tag = na.tag().map(|t| Span::of(r, t));
                    if h.id == HeaderName::From {
                        self.from_tag = tag;
                    } else {
                        self.to_tag = tag;
                    }
                }
                HeaderName::CallId => {
                    if v.is_empty() || !v.iter().all(|b| b.is_ascii_graphic()) {
                        return Err(bad(ValueError::Empty));
                    }
                    self.call_id = h.value;
                }
                HeaderName::CSeq => {
                    let (n, method) = values::parse_cseq(v).map_err(bad)?;
                    self.cseq = n;
                    self.cseq_method = Span::of(r, method);
                }
                HeaderName::MaxForwards => {
                    let n = scan::parse_u64(v, 255).ok_or(bad(ValueError::Number))?;
                    self.max_forwards = Some(n as u32);
                }
                HeaderName::ContentLength => {
                    let n = scan::parse_u64(v, u32::MAX.into()).ok_or(bad(ValueError::Number))?;
                    content_length = Some(n as usize);
                }
                HeaderName::Contact if v != b"*" => {
                    values::for_each_name_addr(v, |_| ()).map_err(bad)?;
                }
                HeaderName::Route | HeaderName::RecordRoute | HeaderName::Path => {
                    values::for_each_name_addr(v, |_| ()).map_err(bad)?;
                }
                // Only the zone is checked: SIP-date is RFC 1123 in GMT (RFC 4475 §3.1.2.12);
                // nothing in stg reads the date itself.
                HeaderName::Date if !v.ends_with(b" GMT") => return Err(bad(ValueError::Date)),
                _ => {}
            }
        }
        b.line_no = 1;
        let missing = |h| ParseError {
            kind: ParseErrorKind::Missing(h),
            offset: 0,
            line: 1,
        };
        if !have_via {
            return Err(missing(HeaderName::Via));
        }
        for (slot, h) in [
            (2, HeaderName::From),
            (3, HeaderName::To),
            (0, HeaderName::CallId),
            (1, HeaderName::CSeq),
        ] {
            if seen[slot].is_none() {
                return Err(missing(h));
            }
        }
        if let Start::Request { method_text, .. } = self.start {
            if r[method_text.range()] != r[self.cseq_method.range()] {
                return Err(ParseError {
                    kind: ParseErrorKind::CSeqMethod,
                    offset: 0,
                    line: 1,
                });
            }
        }
        Ok(content_length)
    }

    // === accessors ===

    /// The whole buffer the message was parsed from.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// A zero-copy `Bytes` for a slice borrowed from this message.
    ///
    /// # Panics
    /// If `part` does not point into this message's buffer (a caller bug).
    pub fn slice(&self, part: &[u8]) -> Bytes {
        if part.is_empty() {
            return Bytes::new();
        }
        self.raw.slice_ref(part)
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, Start::Request { .. })
    }

    /// The request method; `None` for a response.
    pub fn method(&self) -> Option<Method> {
        match self.start {
            Start::Request { method, .. } => Some(method),
            Start::Response { .. } => None,
        }
    }

    /// The request method text (for extension methods); empty for a response.
    pub fn method_bytes(&self) -> &[u8] {
        match self.start {
            Start::Request { method_text, .. } => &self.raw[method_text.range()],
            Start::Response { .. } => b"",
        }
    }

    /// The Request-URI as written; empty for a response.
    pub fn request_uri_bytes(&self) -> &[u8] {
        match self.start {
            Start::Request { uri, .. } => &self.raw[uri.range()],
            Start::Response { .. } => b"",
        }
    }

    /// The Request-URI, parsed.
    pub fn request_uri(&self) -> Option<Uri<'_>> {
        match self.start {
            Start::Request { uri, .. } => Uri::parse(&self.raw[uri.range()]).ok(),
            Start::Response { .. } => None,
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<StatusCode> {
        match self.start {
            Start::Response { status, .. } => Some(status),
            Start::Request { .. } => None,
        }
    }

    /// The reason phrase of a response, as written (may be empty or non-ASCII UTF-8).
    pub fn reason_phrase(&self) -> &[u8] {
        match self.start {
            Start::Response { reason, .. } => &self.raw[reason.range()],
            Start::Request { .. } => b"",
        }
    }

    /// The start line without its line end.
    pub fn start_line(&self) -> &[u8] {
        &self.raw[self.start_line.range()]
    }

    /// All header lines in order.
    pub fn headers(&self) -> impl Iterator<Item = HeaderRef<'_>> {
        self.headers.iter().map(|h| HeaderRef {
            id: h.id,
            name: &self.raw[h.name.range()],
            value: &self.raw[h.value.range()],
        })
    }

    /// Values of every line of one known header, in order.
    pub fn header_values(&self, id: HeaderName) -> impl Iterator<Item = &[u8]> {
        self.headers
            .iter()
            .filter(move |h| h.id == id)
            .map(|h| &self.raw[h.value.range()])
    }

    /// Values of an unknown header by case-insensitive name.
    pub fn header_values_by_name<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |h| self.raw[h.name.range()].eq_ignore_ascii_case(name))
            .map(|h| &self.raw[h.value.range()])
    }

    /// Every via-parm, top first, across all Via lines.
    pub fn vias(&self) -> impl Iterator<Item = Via<'_>> {
        self.header_values(HeaderName::Via).flat_map(|v| {
            // Validated in parse; an empty Vec cannot happen but costs nothing to handle.
            values::parse_via_list(v).unwrap_or_default()
        })
    }

    /// The top via-parm (validated present by parse).
    pub fn top_via(&self) -> Option<Via<'_>> {
        let v = self.header_values(HeaderName::Via).next()?;
        let mut first = None;
        let mut c = 0;
        // Parse only up to the first element.
        let _ = values::for_each_via(v, |via| {
            if c == 0 {
                first = Some(via);
            }
            c += 1;
        });
        first
    }

    /// Number of via-parms.
    pub fn via_count(&self) -> usize {
        self.header_values(HeaderName::Via)
            .map(|v| values::split_list(v).count())
            .sum()
    }

    /// The From header (validated present).
    pub fn from(&self) -> Option<NameAddr<'_>> {
        NameAddr::parse(self.header_values(HeaderName::From).next()?).ok()
    }

    /// The To header (validated present).
    pub fn to(&self) -> Option<NameAddr<'_>> {
        NameAddr::parse(self.header_values(HeaderName::To).next()?).ok()
    }

    /// The From tag.
    pub fn from_tag(&self) -> Option<&[u8]> {
        self.from_tag.map(|s| &self.raw[s.range()])
    }

    /// The To tag: present on in-dialog requests and on most responses.
    pub fn to_tag(&self) -> Option<&[u8]> {
        self.to_tag.map(|s| &self.raw[s.range()])
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &[u8] {
        &self.raw[self.call_id.range()]
    }

    /// CSeq number.
    pub fn cseq(&self) -> u32 {
        self.cseq
    }

    /// CSeq method text.
    pub fn cseq_method(&self) -> &[u8] {
        &self.raw[self.cseq_method.range()]
    }

    /// Max-Forwards, if present (RFC 2543 peers omit it).
    pub fn max_forwards(&self) -> Option<u32> {
        self.max_forwards
    }

    /// Whether the message carried a Content-Length header.
    pub fn has_content_length(&self) -> bool {
        self.has_content_length
    }

    /// The body (exactly Content-Length bytes).
    pub fn body(&self) -> &[u8] {
        &self.raw[self.body.range()]
    }

    /// Every Route entry, top first.
    pub fn routes(&self) -> impl Iterator<Item = NameAddr<'_>> {
        self.name_addrs(HeaderName::Route)
    }

    /// Every Record-Route entry, top first.
    pub fn record_routes(&self) -> impl Iterator<Item = NameAddr<'_>> {
        self.name_addrs(HeaderName::RecordRoute)
    }

    /// Every Contact entry (none for `Contact: *`).
    pub fn contacts(&self) -> impl Iterator<Item = NameAddr<'_>> {
        self.name_addrs(HeaderName::Contact)
    }

    fn name_addrs(&self, id: HeaderName) -> impl Iterator<Item = NameAddr<'_>> {
        self.header_values(id)
            .filter(|v| *v != b"*")
            .flat_map(|v| values::parse_name_addr_list(v).unwrap_or_default())
    }

    /// Option-tags of every line of a token-list header (Require, Proxy-Require, Supported).
    pub fn option_tags(&self, id: HeaderName) -> impl Iterator<Item = &[u8]> {
        self.header_values(id)
            .flat_map(|v| v.split(|&b| b == b','))
            .map(scan::trim)
            .filter(|t| !t.is_empty())
    }
}

fn line_of(raw: &[u8], offset: usize) -> usize {
    1 + memchr::memchr_iter(b'\n', &raw[..offset.min(raw.len())]).count()
}

fn parse_start_line(b: &Builder<'_>, at: usize, line: &[u8]) -> Result<Start, ParseError> {
    let err = |k| b.err(k, at);
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = line
            .iter()
            .position(|&x| x == b' ')
            .ok_or(err(ParseErrorKind::StartLine))?;
        check_version(&line[..sp]).map_err(err)?;
        let rest = &line[sp + 1..];
        let code_len = rest.iter().position(|&x| x == b' ').unwrap_or(rest.len());
        let code = &rest[..code_len];
        if code.len() != 3 {
            return Err(err(ParseErrorKind::StartLine));
        }
        let n = scan::parse_u64(code, 699).ok_or(err(ParseErrorKind::StartLine))?;
        if n < 100 {
            return Err(err(ParseErrorKind::StartLine));
        }
        let reason_start = at + sp + 1 + code_len + usize::from(code_len < rest.len());
        return Ok(Start::Response {
            status: StatusCode(n as u16),
            reason: Span::new(reason_start.min(at + line.len()), at + line.len()),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version, single spaces (RFC 4475 §3.1.2.9/10).
    let mut parts = line.split(|&x| x == b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(err(ParseErrorKind::StartLine));
    };
    if method.is_empty() || !method.iter().all(|&x| scan::is_token(x)) {
        return Err(err(ParseErrorKind::StartLine));
    }
    check_version(version).map_err(err)?;
    if uri.is_empty() || uri.contains(&b'\t') {
        return Err(err(ParseErrorKind::StartLine));
    }
    let parsed = Uri::parse(uri).map_err(|e| err(ParseErrorKind::RequestUri(e)))?;
    if parsed.as_sip().is_some_and(|u| u.headers.is_some()) {
        return Err(err(ParseErrorKind::RequestUriHeaders));
    }
    let method_text = Span::new(at, at + method.len());
    let uri_start = at + method.len() + 1;
    Ok(Start::Request {
        method: Method::from_bytes(method),
        method_text,
        uri: Span::new(uri_start, uri_start + uri.len()),
    })
}

/// `SIP/2.0`, case-insensitive; another well-formed version is [`ParseErrorKind::Version`].
fn check_version(v: &[u8]) -> Result<(), ParseErrorKind> {
    if v.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    let well_formed = v.len() > 4
        && v[..4].eq_ignore_ascii_case(b"SIP/")
        && v[4..].split(|&b| b == b'.').count() == 2
        && v[4..]
            .split(|&b| b == b'.')
            .all(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    Err(if well_formed {
        ParseErrorKind::Version
    } else {
        ParseErrorKind::StartLine
    })
}
