//! Serialization: what a proxy hop changes, written around byte-exact copies of the rest.
//!
//! Every function writes one new buffer sized up front; untouched header lines are copied
//! as they arrived (name spelling, compact forms, folds), which is what lets unknown
//! headers and methods pass through unchanged (RFC 3261 §16.6).

use bytes::{BufMut, Bytes, BytesMut};

use crate::header::HeaderName;
use crate::message::{Message, StatusCode};
use crate::scan;
use crate::values;

/// How a proxy changes a request it forwards (RFC 3261 §16.6).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestEdit<'a> {
    /// New Request-URI (strict-router compatibility, §16.4); `None` keeps it.
    pub request_uri: Option<&'a [u8]>,
    /// Replacement for the received top Via value (to add `received`/`rport`, §18.2.1).
    pub top_via: Option<&'a [u8]>,
    /// This hop's Via value, put on top.
    pub via: &'a [u8],
    /// Record-Route values to put on top, top first.
    pub record_route: &'a [&'a [u8]],
    /// How many Route values to remove from the top (this proxy's own entries).
    pub pop_routes: usize,
    /// A Route value to append last (strict-router compatibility).
    pub append_route: Option<&'a [u8]>,
    /// Remove the last Route value: it became the Request-URI (a strict router before us,
    /// RFC 3261 §16.4).
    pub remove_last_route: bool,
    /// The Max-Forwards to write (already decremented, or 70 when absent).
    pub max_forwards: u32,
    /// Headers removed entirely (a registrar's rewritten Contact).
    pub drop: &'a [HeaderName],
    /// Headers added right after this hop's Via, in order (a Path value goes first, RFC
    /// 3327 §4.3; replacements for `drop`).
    pub extra: &'a [(&'a str, &'a [u8])],
}

fn put_header(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// `n` in decimal, without `format!` (the send path writes numbers into every message).
pub fn put_decimal(out: &mut impl BufMut, n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// Writes `Name: v1, v2` for the values `front..end` of a list header (nothing when that
/// range is empty).
fn put_list_range(out: &mut BytesMut, name: &[u8], value: &[u8], front: usize, end: usize) {
    let mut first = true;
    for item in values::split_list(value).take(end).skip(front) {
        if first {
            out.put_slice(name);
            out.put_slice(b": ");
            first = false;
        } else {
            out.put_slice(b", ");
        }
        out.put_slice(item);
    }
    if !first {
        out.put_slice(b"\r\n");
    }
}

impl Message {
    /// Serializes this request as a proxy forwards it: `edit` applied, everything else
    /// byte-exact, and a `Content-Length` always present (a UDP request without one may
    /// leave over a stream transport).
    pub fn forward_request(&self, edit: &RequestEdit<'_>) -> Bytes {
        let raw = &self.raw[..];
        let rr_len: usize = edit
            .record_route
            .iter()
            .map(|r| r.len() + 16)
            .sum::<usize>()
            + edit
                .extra
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>();
        let mut out = BytesMut::with_capacity(
            raw.len() + edit.via.len() + rr_len + edit.top_via.map_or(0, <[u8]>::len) + 64,
        );
        match edit.request_uri {
            Some(uri) => {
                out.put_slice(self.method_bytes());
                out.put_u8(b' ');
                out.put_slice(uri);
                out.put_slice(b" SIP/2.0\r\n");
            }
            None => {
                out.put_slice(self.start_line());
                out.put_slice(b"\r\n");
            }
        }
        put_header(&mut out, "Via", edit.via);
        for (name, value) in edit.extra {
            put_header(&mut out, name, value);
        }
        let mut wrote_rr = edit.record_route.is_empty();
        let put_rr = |out: &mut BytesMut| {
            for rr in edit.record_route {
                put_header(out, "Record-Route", rr);
            }
        };
        if self.max_forwards().is_none() {
            out.put_slice(b"Max-Forwards: ");
            put_decimal(&mut out, edit.max_forwards);
            out.put_slice(b"\r\n");
        }
        let mut to_pop = edit.pop_routes;
        let mut first_via = true;
        let last_route = self.headers.iter().rposition(|h| h.id == HeaderName::Route);
        let mut appended = edit.append_route.is_none();
        for (i, h) in self.headers.iter().enumerate() {
            if edit.drop.contains(&h.id) && h.id != HeaderName::Other {
                continue;
            }
            match h.id {
                HeaderName::Via if first_via => {
                    first_via = false;
                    match edit.top_via {
                        Some(top) => {
                            out.put_slice(b"Via: ");
                            out.put_slice(top);
                            let v = &raw[h.value.range()];
                            for rest in values::split_list(v).skip(1) {
                                out.put_slice(b", ");
                                out.put_slice(rest);
                            }
                            out.put_slice(b"\r\n");
                        }
                        None => out.put_slice(&raw[h.line.range()]),
                    }
                }
                HeaderName::MaxForwards => {
                    out.put_slice(&raw[h.name.range()]);
                    out.put_slice(b": ");
                    put_decimal(&mut out, edit.max_forwards);
                    out.put_slice(b"\r\n");
                }
                HeaderName::Route
                    if to_pop > 0 || (edit.remove_last_route && Some(i) == last_route) =>
                {
                    let value = &raw[h.value.range()];
                    let n = values::split_list(value).count();
                    let front = to_pop.min(n);
                    let end = if edit.remove_last_route && Some(i) == last_route {
                        n.saturating_sub(1).max(front)
                    } else {
                        n
                    };
                    to_pop -= front;
                    put_list_range(&mut out, &raw[h.name.range()], value, front, end);
                }
                HeaderName::RecordRoute if !wrote_rr => {
                    put_rr(&mut out);
                    wrote_rr = true;
                    out.put_slice(&raw[h.line.range()]);
                }
                _ => out.put_slice(&raw[h.line.range()]),
            }
            if Some(i) == last_route && !appended {
                if let Some(r) = edit.append_route {
                    put_header(&mut out, "Route", r);
                }
                appended = true;
            }
        }
        if !appended {
            if let Some(r) = edit.append_route {
                put_header(&mut out, "Route", r);
            }
        }
        if !wrote_rr {
            put_rr(&mut out);
        }
        self.put_body(&mut out);
        out.freeze()
    }

    /// Serializes this response with its top via-parm removed (RFC 3261 §16.7 step 9).
    pub fn forward_response(&self) -> Bytes {
        self.forward_response_edited(&[], &[])
    }

    /// [`Self::forward_response`] with the headers named in `drop` removed and `extra`
    /// added after the Vias (a registrar's 2xx with the device's own Contacts).
    pub fn forward_response_edited(&self, drop: &[HeaderName], extra: &[(&str, &[u8])]) -> Bytes {
        let raw = &self.raw[..];
        let extra_len: usize = extra.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        let mut out = BytesMut::with_capacity(raw.len() + 32 + extra_len);
        out.put_slice(self.start_line());
        out.put_slice(b"\r\n");
        let mut first_via = true;
        let mut extra_written = extra.is_empty();
        for h in &self.headers {
            if h.id != HeaderName::Via && !extra_written {
                for (name, value) in extra {
                    put_header(&mut out, name, value);
                }
                extra_written = true;
            }
            if drop.contains(&h.id) && h.id != HeaderName::Other {
                continue;
            }
            if h.id == HeaderName::Via && first_via {
                first_via = false;
                put_list_range(
                    &mut out,
                    &raw[h.name.range()],
                    &raw[h.value.range()],
                    1,
                    usize::MAX,
                );
                continue;
            }
            out.put_slice(&raw[h.line.range()]);
        }
        if !extra_written {
            for (name, value) in extra {
                put_header(&mut out, name, value);
            }
        }
        self.put_body(&mut out);
        out.freeze()
    }

    /// The end of a forwarded message: a `Content-Length` when the original had none (it may
    /// leave over a stream transport), the empty line, the body.
    fn put_body(&self, out: &mut BytesMut) {
        if !self.has_content_length() {
            out.put_slice(b"Content-Length: ");
            put_decimal(out, self.body().len() as u32);
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
        out.put_slice(self.body());
    }

    /// A response to this request (RFC 3261 §8.2.6): Via lines (top one replaced when
    /// `top_via` is given), From, To (with `to_tag` added when it has none), Call-ID, CSeq,
    /// then `extra` headers, and an empty body.
    pub fn response(
        &self,
        status: StatusCode,
        reason: Option<&str>,
        to_tag: Option<&[u8]>,
        top_via: Option<&[u8]>,
        extra: &[(&str, &[u8])],
    ) -> Bytes {
        let raw = &self.raw[..];
        let mut out = BytesMut::with_capacity(512);
        out.put_slice(b"SIP/2.0 ");
        put_decimal(&mut out, u32::from(status.0));
        out.put_u8(b' ');
        out.put_slice(reason.unwrap_or(status.canonical_reason()).as_bytes());
        out.put_slice(b"\r\n");
        let mut first_via = true;
        for h in &self.headers {
            match h.id {
                HeaderName::Via => {
                    if first_via {
                        if let Some(top) = top_via {
                            out.put_slice(b"Via: ");
                            out.put_slice(top);
                            for rest in values::split_list(&raw[h.value.range()]).skip(1) {
                                out.put_slice(b", ");
                                out.put_slice(rest);
                            }
                            out.put_slice(b"\r\n");
                            first_via = false;
                            continue;
                        }
                    }
                    first_via = false;
                    out.put_slice(&raw[h.line.range()]);
                }
                HeaderName::To => {
                    out.put_slice(scan::trim(&raw[h.line.range()]));
                    if let (None, Some(tag)) = (self.to_tag(), to_tag) {
                        out.put_slice(b";tag=");
                        out.put_slice(tag);
                    }
                    out.put_slice(b"\r\n");
                }
                HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    out.put_slice(&raw[h.line.range()]);
                }
                _ => {}
            }
        }
        for (name, value) in extra {
            put_header(&mut out, name, value);
        }
        out.put_slice(b"Content-Length: 0\r\n\r\n");
        out.freeze()
    }

    /// A CANCEL for this (forwarded) INVITE (RFC 3261 §9.1): same Request-URI, top Via,
    /// Route set, From, To, Call-ID and CSeq number; `reason` is a Reason header value
    /// (RFC 3326), e.g. why a forked call stops ringing on this device.
    pub fn cancel_request(&self, reason: Option<&[u8]>) -> Bytes {
        self.derived_request(b"CANCEL", None, reason)
    }

    /// The ACK a proxy's client transaction sends for a non-2xx final `response` to this
    /// INVITE (RFC 3261 §17.1.1.3): To taken from the response.
    pub fn ack_for(&self, response: &Self) -> Bytes {
        let to = response.header_values(HeaderName::To).next();
        self.derived_request(b"ACK", to, None)
    }

    fn derived_request(&self, method: &[u8], to: Option<&[u8]>, reason: Option<&[u8]>) -> Bytes {
        let raw = &self.raw[..];
        let mut out = BytesMut::with_capacity(raw.len().min(2048) + 64);
        out.put_slice(method);
        out.put_u8(b' ');
        out.put_slice(self.request_uri_bytes());
        out.put_slice(b" SIP/2.0\r\n");
        if let Some(via) = self.header_values(HeaderName::Via).next() {
            if let Some(top) = values::split_list(via).next() {
                put_header(&mut out, "Via", top);
            }
        }
        out.put_slice(b"Max-Forwards: 70\r\n");
        for h in &self.headers {
            match h.id {
                HeaderName::Route | HeaderName::From | HeaderName::CallId => {
                    out.put_slice(&raw[h.line.range()]);
                }
                HeaderName::To => match to {
                    Some(to) => put_header(&mut out, "To", to),
                    None => out.put_slice(&raw[h.line.range()]),
                },
                _ => {}
            }
        }
        out.put_slice(b"CSeq: ");
        put_decimal(&mut out, self.cseq());
        out.put_u8(b' ');
        out.put_slice(method);
        out.put_slice(b"\r\n");
        if let Some(r) = reason {
            put_header(&mut out, "Reason", r);
        }
        out.put_slice(b"Content-Length: 0\r\n\r\n");
        out.freeze()
    }
}

/// A stateless error response to a request that did not parse (RFC 3261 §16.3 asks for a
/// 400 where one can be routed): copies whichever Via, From, To, Call-ID and CSeq lines can
/// be found. `None` when the bytes are a response, an ACK, or have no Via line (nothing
/// could route the answer: the caller drops and counts).
pub fn error_response_for_unparsed(raw: &[u8], status: StatusCode, reason: &str) -> Option<Bytes> {
    let text_start = raw.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let raw = &raw[text_start..];
    let first_end = memchr::memchr(b'\n', raw).unwrap_or(raw.len());
    let first = &raw[..first_end];
    if first.len() >= 4 && first[..4].eq_ignore_ascii_case(b"SIP/") {
        return None;
    }
    if first.starts_with(b"ACK ") {
        return None;
    }
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(b"SIP/2.0 ");
    put_decimal(&mut out, u32::from(status.0));
    out.put_u8(b' ');
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
    let mut pos = (first_end + 1).min(raw.len());
    let mut have_via = false;
    while pos < raw.len() {
        let end = memchr::memchr(b'\n', &raw[pos..]).map_or(raw.len(), |e| pos + e + 1);
        let mut line_end = end;
        // Keep folded continuation lines with their header.
        while line_end < raw.len() && scan::is_wsp(raw[line_end]) {
            line_end =
                memchr::memchr(b'\n', &raw[line_end..]).map_or(raw.len(), |e| line_end + e + 1);
        }
        let line = &raw[pos..line_end];
        if scan::trim(line).is_empty() {
            break;
        }
        let name_end = line
            .iter()
            .position(|&b| b == b':' || scan::is_wsp(b))
            .unwrap_or(0);
        let id = HeaderName::from_bytes(&line[..name_end]);
        if matches!(
            id,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) {
            have_via |= id == HeaderName::Via;
            out.put_slice(scan::trim(line));
            out.put_slice(b"\r\n");
        }
        pos = line_end;
    }
    if !have_via {
        return None;
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
    Some(out.freeze())
}
