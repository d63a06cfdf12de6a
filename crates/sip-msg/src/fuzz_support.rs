//! Bodies of the cargo-fuzz targets in `fuzz/fuzz_targets/`, shared with the replay test
//! (`tests/it/replay.rs`) so that every committed regression input and every conformance
//! message runs through the same checks on stable in CI.
//!
//! Not API: hidden from the docs, and, unlike the rest of the crate, it panics on purpose
//! (`assert!`) when an invariant breaks, since a panic is how a fuzzer reports a finding.
//! Each function accepts any bytes; only a bug in this crate makes it panic.

use bytes::{Bytes, BytesMut};

use crate::framer::{Frame, FrameError, Framer, FramerLimits};
use crate::{
    error_response_for_unparsed, HeaderName, Message, Method, NameAddr, ParseErrorKind,
    RequestEdit, StatusCode, Uri, Via, MAX_HEADERS,
};

/// This hop's Via in the fixed edits.
const HOP_VIA: &[u8] = b"SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bKfuzz;rport";
/// This hop's Record-Route in the fixed edits.
const HOP_RR: &[u8] = b"<sip:192.0.2.7;transport=tcp;lr>";
/// The top Via as the received/rport rewrite would write it.
const REWRITTEN_TOP_VIA: &[u8] =
    b"SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKtop;rport=5060;received=198.51.100.1";
/// A strict-router Request-URI (RFC 3261 §16.6 step 6)...
const NEW_REQUEST_URI: &[u8] = b"sip:bob@192.0.2.8:5070;transport=tcp";
/// ...and the Route appended with it.
const APPENDED_ROUTE: &[u8] = b"<sip:bob@pbx.example.com;lr>";
/// The To tag a UAS adds.
const TO_TAG: &[u8] = b"fuzztag";

/// Parses `data` as one message (a UDP datagram); when it parses, reads every field through
/// the accessors and checks that what a proxy writes from it parses again.
///
/// # Panics
/// When an accessor contradicts [`Message::parse`]'s validation, or a request forwarded,
/// answered or cancelled from a parsed message does not itself parse.
pub fn message(data: &[u8]) {
    // The stateless 400 for unparsable requests must cope with anything.
    let _ = error_response_for_unparsed(data, StatusCode::BAD_REQUEST, "Bad Request");
    let Ok(m) = Message::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    read_everything(&m);
    if m.is_request() {
        check_request(&m);
    } else {
        check_response(&m);
    }
}

/// Splits a stream with a [`Framer`], once in the chunk sizes the input chooses and once
/// whole, and checks every frame and what the parser makes of it.
///
/// Input layout: byte 0 picks the limits (0: the defaults; otherwise a message limit of
/// 16 to 4048 octets and one of four header-count limits), byte 1 the body limit as a
/// fraction of the message limit, bytes 2 to 5 the sizes of the chunks the stream arrives
/// in (cycled; 0 means all the rest), and the stream follows.
///
/// # Panics
/// When a frame breaks a limit, the framer stops consuming input, a fatal error does not
/// stick, or the chunked and the whole-buffer runs frame different messages or errors.
pub fn framer(data: &[u8]) {
    let Some((&[limits_byte, body_byte, c0, c1, c2, c3], stream)) = data.split_first_chunk::<6>()
    else {
        return;
    };
    let limits = limits_for(limits_byte, body_byte);
    let chunked = run_framer(limits, stream, [c0, c1, c2, c3]);
    let whole = run_framer(limits, stream, [0; 4]);
    assert_eq!(
        chunked, whole,
        "framing depends on how the stream is split into reads"
    );
    // Whatever the framer cuts, the parser must judge without panicking (the message target
    // covers what is written from it).
    for frame in chunked.into_iter().flatten() {
        if let Ok(m) = Message::parse(frame) {
            read_everything(&m);
        }
    }
}

/// The framer input prefix that stands for default limits and the stream arriving whole;
/// `framer(&[FRAMER_PREFIX, stream].concat())` frames `stream` as a TCP peer sent it.
pub const FRAMER_PREFIX: [u8; 6] = [0; 6];

// === message ===

/// Calls every accessor and checks what parse promises about them.
fn read_everything(m: &Message) {
    let headers = m.headers().count();
    assert!(headers <= MAX_HEADERS);
    for h in m.headers() {
        assert!(!h.name.is_empty());
        let _ = m.header_values_by_name(h.name).count();
    }
    let _ = (m.start_line(), m.raw(), m.has_content_length(), m.body());
    assert!(m.max_forwards().is_none_or(|n| n <= 255));
    assert!(!m.call_id().is_empty());
    let _ = m.cseq();

    let top = m.top_via().expect("parse validated a Via");
    read_via(&top);
    let mut count = 0;
    for (i, via) in m.vias().enumerate() {
        read_via(&via);
        if i == 0 {
            assert_eq!(via, top);
        }
        count += 1;
    }
    assert_eq!(count, m.via_count(), "vias() and via_count() disagree");

    let from = m.from().expect("parse validated From");
    let to = m.to().expect("parse validated To");
    read_name_addr(&from);
    read_name_addr(&to);
    assert_eq!(m.from_tag(), from.tag());
    assert_eq!(m.to_tag(), to.tag());
    for na in m.routes().chain(m.record_routes()).chain(m.contacts()) {
        read_name_addr(&na);
    }
    for id in [
        HeaderName::Require,
        HeaderName::ProxyRequire,
        HeaderName::Supported,
    ] {
        for tag in m.option_tags(id) {
            assert!(!tag.is_empty());
        }
    }

    if m.is_request() {
        assert!(m.method().is_some() && m.status().is_none());
        assert_eq!(
            m.method_bytes(),
            m.cseq_method(),
            "parse checks the CSeq method"
        );
        let uri = m.request_uri().expect("parse validated the Request-URI");
        assert_eq!(uri.as_bytes(), m.request_uri_bytes());
        read_uri(&uri);
    } else {
        let status = m.status().expect("a response has a status");
        assert!((100..=699).contains(&status.0));
        let _ = (status.class(), status.canonical_reason(), m.reason_phrase());
        assert!(m.method().is_none() && m.request_uri().is_none());
    }
}

fn read_via(v: &Via<'_>) {
    let _ = (
        v.branch(),
        v.received(),
        v.rport(),
        v.transport,
        v.host.ip(),
    );
    assert!(!v.sent_by().is_empty());
    for _ in v.params() {}
}

fn read_name_addr(na: &NameAddr<'_>) {
    let _ = (na.tag(), na.display, na.angle);
    for _ in na.params() {}
    read_uri(&na.uri);
}

fn read_uri(uri: &Uri<'_>) {
    if let Some(sip) = uri.as_sip() {
        let _ = (sip.transport(), sip.lr(), sip.host.ip(), sip.user, sip.port);
        for _ in sip.params() {}
    }
}

/// `Message::parse` of bytes this crate wrote for `from`, which must succeed. `added` is how
/// many header lines the writer may have added: going over [`MAX_HEADERS`] that way is the
/// one accepted failure (`None`).
fn reparse(out: Bytes, from: &Message, added: usize, what: &str) -> Option<Message> {
    match Message::parse(out.clone()) {
        Ok(m) => {
            read_everything(&m);
            Some(m)
        }
        Err(e)
            if e.kind == ParseErrorKind::TooManyHeaders
                && from.headers().count() + added > MAX_HEADERS =>
        {
            None
        }
        Err(e) => panic!(
            "{what} of a parsed message does not parse: {e}\n--- input ---\n{}\n--- output ---\n{}",
            String::from_utf8_lossy(from.raw()),
            String::from_utf8_lossy(&out),
        ),
    }
}

/// What a proxy writes for a request: forwarded (two edits), answered, cancelled, ACKed.
fn check_request(m: &Message) {
    let max_forwards = m.max_forwards().map_or(70, |n| n.saturating_sub(1));
    // A plain loose-routing hop: one Via, one Record-Route, pop our Route.
    let plain = RequestEdit {
        via: HOP_VIA,
        record_route: &[HOP_RR],
        pop_routes: 1,
        max_forwards,
        ..RequestEdit::default()
    };
    // Everything at once: strict-router Request-URI, rewritten top Via, appended Route.
    let full = RequestEdit {
        request_uri: Some(NEW_REQUEST_URI),
        top_via: Some(REWRITTEN_TOP_VIA),
        via: HOP_VIA,
        record_route: &[HOP_RR, HOP_RR],
        pop_routes: 2,
        append_route: Some(APPENDED_ROUTE),
        remove_last_route: true,
        max_forwards,
        drop: &[],
        extra: &[],
    };
    for edit in [plain, full] {
        // New Via, Record-Routes, Max-Forwards, Content-Length, appended Route.
        let added = 1 + edit.record_route.len() + 3;
        let Some(f) = reparse(m.forward_request(&edit), m, added, "forward_request") else {
            continue;
        };
        assert!(f.is_request());
        assert_eq!(f.method_bytes(), m.method_bytes());
        assert_eq!(
            f.request_uri_bytes(),
            edit.request_uri.unwrap_or(m.request_uri_bytes())
        );
        assert_eq!(f.call_id(), m.call_id());
        assert_eq!((f.cseq(), f.cseq_method()), (m.cseq(), m.cseq_method()));
        assert_eq!((f.from_tag(), f.to_tag()), (m.from_tag(), m.to_tag()));
        assert_eq!(f.body(), m.body());
        assert_eq!(f.max_forwards(), Some(max_forwards));
        assert_eq!(f.via_count(), m.via_count() + 1, "forwarding adds one Via");
        let top = f.top_via().expect("reparsed");
        assert_eq!(top.raw, HOP_VIA);
        if let Some(rewritten) = edit.top_via {
            assert_eq!(f.vias().nth(1).map(|v| v.raw), Some(rewritten));
        }
        let rr: Vec<&[u8]> = f.record_routes().map(|na| na.raw).collect();
        assert_eq!(
            rr.len(),
            m.record_routes().count() + edit.record_route.len()
        );
        assert_eq!(&rr[..edit.record_route.len()], edit.record_route);
        // The last Route goes too when asked, unless the top pops already took it.
        let left = m.routes().count().saturating_sub(edit.pop_routes);
        let expected_routes = left - usize::from(edit.remove_last_route && left > 0)
            + usize::from(edit.append_route.is_some());
        assert_eq!(f.routes().count(), expected_routes, "Route pop/append");
        if let Some(appended) = edit.append_route {
            assert_eq!(f.routes().last().map(|na| na.raw), Some(appended));
        }
    }

    // A UAS answer (RFC 3261 §8.2.6), with and without a rewritten top Via.
    for top_via in [None, Some(REWRITTEN_TOP_VIA)] {
        let extra: &[(&str, &[u8])] = &[("Server", b"stg"), ("Warning", b"399 stg \"fuzz\"")];
        let out = m.response(
            StatusCode::TOO_MANY_HOPS,
            None,
            Some(TO_TAG),
            top_via,
            extra,
        );
        let Some(r) = reparse(out, m, extra.len() + 1, "response") else {
            continue;
        };
        assert_eq!(r.status(), Some(StatusCode::TOO_MANY_HOPS));
        assert_eq!(r.call_id(), m.call_id());
        assert_eq!((r.cseq(), r.cseq_method()), (m.cseq(), m.cseq_method()));
        assert_eq!(r.from_tag(), m.from_tag());
        assert_eq!(r.to_tag(), Some(m.to_tag().unwrap_or(TO_TAG)));
        assert_eq!(r.via_count(), m.via_count());
        if let Some(top) = top_via {
            assert_eq!(r.top_via().map(|v| v.raw), Some(top));
        }
    }

    if m.method() == Some(Method::Invite) {
        let out = m.cancel_request(Some(b"SIP;cause=200"));
        if let Some(c) = reparse(out, m, 4, "cancel_request") {
            assert_eq!(c.method(), Some(Method::Cancel));
            assert_eq!(c.request_uri_bytes(), m.request_uri_bytes());
            assert_eq!((c.cseq(), c.cseq_method()), (m.cseq(), &b"CANCEL"[..]));
            assert_eq!(c.call_id(), m.call_id());
            assert_eq!(c.via_count(), 1);
            assert_eq!(c.top_via(), m.top_via(), "CANCEL keeps the top Via");
            assert_eq!(c.routes().count(), m.routes().count());
            assert_eq!((c.from_tag(), c.to_tag()), (m.from_tag(), m.to_tag()));
        }
        // The request as its own "response": ACK's To comes from it.
        let out = m.ack_for(m);
        if let Some(a) = reparse(out, m, 4, "ack_for") {
            assert_eq!(a.method(), Some(Method::Ack));
            assert_eq!((a.cseq(), a.cseq_method()), (m.cseq(), &b"ACK"[..]));
            assert_eq!(a.to_tag(), m.to_tag());
        }
    }
}

/// A proxy forwards a response upstream with its own (top) Via removed.
fn check_response(m: &Message) {
    let out = m.forward_response();
    if m.via_count() < 2 {
        // Nothing left to route it by: the proxy drops it instead (RFC 3261 §16.7 step 9).
        return;
    }
    let Some(f) = reparse(out, m, 1, "forward_response") else {
        return;
    };
    assert_eq!(f.status(), m.status());
    assert_eq!(f.reason_phrase(), m.reason_phrase());
    assert_eq!(
        f.via_count(),
        m.via_count() - 1,
        "forwarding removes one Via"
    );
    assert_eq!(
        f.top_via().map(|v| v.raw),
        m.vias().nth(1).map(|v| v.raw),
        "the second Via becomes the top one"
    );
    assert_eq!(f.call_id(), m.call_id());
    assert_eq!((f.cseq(), f.cseq_method()), (m.cseq(), m.cseq_method()));
    assert_eq!((f.from_tag(), f.to_tag()), (m.from_tag(), m.to_tag()));
    assert_eq!(f.body(), m.body());
}

// === framer ===

fn limits_for(limits_byte: u8, body_byte: u8) -> FramerLimits {
    if limits_byte == 0 {
        return FramerLimits::default();
    }
    let max_message_size = 16 + usize::from(limits_byte & 0x3f) * 64;
    FramerLimits {
        max_message_size,
        max_headers: [1, 4, 16, 256][usize::from(limits_byte >> 6)],
        // 0 to twice the message limit, so each of the two body checks can trip.
        max_body_size: max_message_size * usize::from(body_byte) / 128,
    }
}

/// What one run produced, keep-alives left out (how a ping is split changes how it is
/// reported, by design; see the framer's module docs).
type Outcome = Result<Bytes, FrameError>;

fn run_framer(limits: FramerLimits, stream: &[u8], sizes: [u8; 4]) -> Vec<Outcome> {
    let mut framer = Framer::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = stream;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = match usize::from(*size) {
            0 => rest.len(),
            n => n.min(rest.len()),
        };
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(chunk);
        if !drain(&mut framer, &mut buf, limits, &mut out) {
            break;
        }
    }
    out
}

/// Decodes until the framer wants more input; `false` after a fatal error.
fn drain(
    framer: &mut Framer,
    buf: &mut BytesMut,
    limits: FramerLimits,
    out: &mut Vec<Outcome>,
) -> bool {
    // Each call consumes octets or reports an oversize message once, so a buffer of n octets
    // takes at most about 2n calls.
    let bound = 2 * buf.len() + 8;
    for _ in 0..bound {
        match framer.decode(buf) {
            Ok(None) => return true,
            Ok(Some(Frame::Ping | Frame::Pong)) => {}
            Ok(Some(Frame::Message(msg))) => {
                assert!(!msg.is_empty());
                assert!(
                    msg.len() <= limits.max_message_size,
                    "framed {} octets past the {} limit",
                    msg.len(),
                    limits.max_message_size
                );
                let head_end = memchr::memmem::find(&msg, b"\r\n\r\n")
                    .expect("a framed message holds its empty line")
                    + 4;
                assert!(msg.len() - head_end <= limits.max_body_size);
                out.push(Ok(msg));
            }
            Err(e) if e.is_fatal() => {
                // The error sticks and the stream is dropped.
                assert_eq!(framer.decode(buf), Err(e.clone()));
                assert!(buf.is_empty());
                out.push(Err(e));
                return false;
            }
            Err(e) => out.push(Err(e)),
        }
    }
    panic!("the framer stopped consuming input");
}
