//! SIP message text for tests: a request or response with the Vias and headers given, in
//! that order, optionally padded to an exact size; and two small readers of what came back
//! (status code, header values) that do not need the parser under test.

/// A message being written: start line, Vias, other headers in order, `Content-Length`
/// (unless left out), blank line, body.
#[derive(Debug, Clone)]
pub struct SipMessage {
    start: String,
    vias: Vec<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_length: bool,
}

/// A Via value: `SIP/2.0/{transport} {sent_by};branch={branch}`.
pub fn via(transport: &str, sent_by: &str, branch: &str) -> String {
    format!("SIP/2.0/{transport} {sent_by};branch={branch}")
}

impl SipMessage {
    /// `METHOD uri SIP/2.0` with `Max-Forwards: 70`, `From` (with a tag), `To`, `Call-ID` and
    /// `CSeq: 1 METHOD`; no Via yet.
    pub fn request(method: &str, uri: &str, call_id: &str) -> Self {
        Self {
            start: format!("{method} {uri} SIP/2.0"),
            vias: Vec::new(),
            headers: vec![
                ("Max-Forwards".into(), "70".into()),
                ("From".into(), "<sip:alice@example.com>;tag=a1".into()),
                ("To".into(), "<sip:bob@example.com>".into()),
                ("Call-ID".into(), call_id.into()),
                ("CSeq".into(), format!("1 {method}")),
            ],
            body: Vec::new(),
            content_length: true,
        }
    }

    /// `SIP/2.0 code reason` with `From`, `To` (tagged), `Call-ID` and `CSeq: 1 method`; no
    /// Via yet.
    pub fn response(code: u16, reason: &str, method: &str, call_id: &str) -> Self {
        Self {
            start: format!("SIP/2.0 {code} {reason}"),
            vias: Vec::new(),
            headers: vec![
                ("From".into(), "<sip:alice@example.com>;tag=a1".into()),
                ("To".into(), "<sip:bob@example.com>;tag=b1".into()),
                ("Call-ID".into(), call_id.into()),
                ("CSeq".into(), format!("1 {method}")),
            ],
            body: Vec::new(),
            content_length: true,
        }
    }

    /// Appends a Via (the value, without `Via: `); the first one added is the top one.
    pub fn via(mut self, value: &str) -> Self {
        self.vias.push(value.to_string());
        self
    }

    /// Appends a header line.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces the first header of that name (case-insensitive), or appends it.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        match self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(h) => h.1 = value.to_string(),
            None => self.headers.push((name.to_string(), value.to_string())),
        }
        self
    }

    /// Removes every header of that name (case-insensitive).
    pub fn remove(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// The body (`Content-Length` follows it).
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    /// No `Content-Length` line at all.
    pub fn without_content_length(mut self) -> Self {
        self.content_length = false;
        self
    }

    /// Adds an `X-Pad` header so that the whole message is exactly `size` bytes; a message
    /// already within 12 bytes of `size` (or over it) gets no pad.
    pub fn padded_to(self, size: usize) -> Self {
        let overhead = "X-Pad: \r\n".len();
        let len = self.len();
        if len + overhead + 1 > size {
            return self;
        }
        self.header("X-Pad", &"p".repeat(size - len - overhead))
    }

    /// The size of [`Self::build`].
    pub fn len(&self) -> usize {
        self.build().len()
    }

    /// Whether the message would be empty (never: there is always a start line).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The message as sent on the wire.
    pub fn build(&self) -> Vec<u8> {
        let mut s = String::with_capacity(512);
        s.push_str(&self.start);
        s.push_str("\r\n");
        for v in &self.vias {
            s.push_str("Via: ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        for (n, v) in &self.headers {
            s.push_str(n);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        if self.content_length {
            s.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        s.push_str("\r\n");
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The status code of a response's start line; `None` for a request or garbage.
pub fn status_code(raw: &[u8]) -> Option<u16> {
    let line = raw.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    (parts.next()? == "SIP/2.0").then_some(())?;
    parts.next()?.parse().ok()
}

/// The values of every header line named `name` (case-insensitive; long form only, no
/// folded lines), in order.
pub fn header_values(raw: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_and_padded() {
        let m = SipMessage::request("OPTIONS", "sip:x@127.0.0.1", "c1")
            .via(&via("UDP", "127.0.0.1:5", "z9hG4bK-1"))
            .header("Proxy-Require", "foo")
            .padded_to(700);
        let raw = m.build();
        assert_eq!(raw.len(), 700);
        assert!(raw.starts_with(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP"));
        assert_eq!(header_values(&raw, "call-id"), ["c1"]);
        assert_eq!(status_code(&raw), None);
        let r = SipMessage::response(200, "OK", "OPTIONS", "c1").build();
        assert_eq!(status_code(&r), Some(200));
    }
}
