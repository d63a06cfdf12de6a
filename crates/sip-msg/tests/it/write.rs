//! What a proxy hop writes.

use bytes::Bytes;
use stg_sip_msg::{error_response_for_unparsed, Message, RequestEdit, StatusCode};

fn msg(s: &str) -> Message {
    Message::parse(Bytes::copy_from_slice(s.replace('\n', "\r\n").as_bytes())).unwrap()
}

const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0
v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK0
Max-Forwards: 10
Route: <sip:stg.example.com;lr>, <sip:pbx.example.com;lr>
Record-Route: <sip:other;lr>
f: <sip:alice@example.com>;tag=a
t: <sip:bob@example.com>
i: call-1
CSeq: 1 INVITE
X-Unknown:   keep  me   exactly
l: 4

body";

#[test]
fn forward_request_edits_only_what_it_must() {
    let m = msg(INVITE);
    let out = m.forward_request(&RequestEdit {
        top_via: Some(b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport=5060;received=127.0.0.1"),
        via: b"SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKstg",
        record_route: &[b"<sip:10.0.0.1;lr>"],
        pop_routes: 1,
        max_forwards: 9,
        ..Default::default()
    });
    let text = std::str::from_utf8(&out).unwrap();
    let expected = "INVITE sip:bob@example.com SIP/2.0\r
Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKstg\r
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport=5060;received=127.0.0.1, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK0\r
Max-Forwards: 9\r
Route: <sip:pbx.example.com;lr>\r
Record-Route: <sip:10.0.0.1;lr>\r
Record-Route: <sip:other;lr>\r
f: <sip:alice@example.com>;tag=a\r
t: <sip:bob@example.com>\r
i: call-1\r
CSeq: 1 INVITE\r
X-Unknown:   keep  me   exactly\r
l: 4\r
\r
body";
    assert_eq!(text, expected);
    let again = Message::parse(out).unwrap();
    assert_eq!(again.via_count(), 3);
}

#[test]
fn forward_request_adds_missing_max_forwards_and_content_length() {
    let m = msg("OPTIONS sip:x@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1
From: <sip:a@example.com>
To: <sip:x@example.com>
Call-ID: c
CSeq: 1 OPTIONS

");
    let out = m.forward_request(&RequestEdit {
        via: b"SIP/2.0/TCP 10.0.0.1;branch=z9hG4bKx",
        max_forwards: 70,
        ..Default::default()
    });
    let f = Message::parse(out).unwrap();
    assert_eq!(f.max_forwards(), Some(70));
    assert!(f.has_content_length());
}

#[test]
fn forward_response_pops_one_via() {
    let m = msg("SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKstg, SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1
From: <sip:alice@example.com>;tag=a
To: <sip:bob@example.com>;tag=b
Call-ID: c
CSeq: 1 INVITE
Content-Length: 0

");
    let out = Message::parse(m.forward_response()).unwrap();
    assert_eq!(out.via_count(), 1);
    assert_eq!(out.top_via().unwrap().branch(), Some(&b"z9hG4bK1"[..]));
}

#[test]
fn response_copies_dialog_headers_and_adds_tag() {
    let m = msg(INVITE);
    let r = Message::parse(m.response(
        StatusCode::BAD_EXTENSION,
        None,
        Some(b"t1"),
        None,
        &[("Unsupported", b"foo")],
    ))
    .unwrap();
    assert_eq!(r.status(), Some(StatusCode::BAD_EXTENSION));
    assert_eq!(r.to_tag(), Some(&b"t1"[..]));
    assert_eq!(r.via_count(), 2);
    assert_eq!(
        r.header_values_by_name(b"Unsupported").next(),
        Some(&b"foo"[..])
    );
    assert_eq!(r.call_id(), b"call-1");
}

#[test]
fn cancel_and_ack() {
    let m = msg(INVITE);
    let c = Message::parse(m.cancel_request(None)).unwrap();
    assert_eq!(c.cseq_method(), b"CANCEL");
    assert_eq!(c.via_count(), 1);
    assert_eq!(c.routes().count(), 2);
    let resp = msg("SIP/2.0 486 Busy Here
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1
From: <sip:alice@example.com>;tag=a
To: <sip:bob@example.com>;tag=busy
Call-ID: call-1
CSeq: 1 INVITE
Content-Length: 0

");
    let a = Message::parse(m.ack_for(&resp)).unwrap();
    assert_eq!(a.method_bytes(), b"ACK");
    assert_eq!(a.to_tag(), Some(&b"busy"[..]));
}

#[test]
fn error_response_from_garbage() {
    let raw = b"INVITE <sip:x> SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: a\r\nCall-ID: x\r\n\r\n";
    let r = error_response_for_unparsed(raw, StatusCode::BAD_REQUEST, "Bad Request").unwrap();
    let r = Message::parse(r);
    // Missing To/CSeq in the request: the copy is incomplete, but it is routable.
    assert!(r.is_err() || r.unwrap().status() == Some(StatusCode::BAD_REQUEST));
    assert!(
        error_response_for_unparsed(b"SIP/2.0 200 OK\r\n\r\n", StatusCode::BAD_REQUEST, "x")
            .is_none()
    );
    assert!(
        error_response_for_unparsed(b"INVITE x SIP/2.0\r\n\r\n", StatusCode::BAD_REQUEST, "x")
            .is_none()
    );
}

#[test]
fn forward_request_removes_the_last_route_for_a_strict_router() {
    let m = msg("BYE sip:tok@10.0.0.1;lr SIP/2.0
Via: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1
Route: <sip:a@x;lr>, <sip:b@y;lr>
Route: <sip:dev@192.0.2.1:5062>
From: <sip:b@example.com>;tag=1
To: <sip:a@example.com>;tag=2
Call-ID: c
CSeq: 2 BYE
Content-Length: 0

");
    let out = Message::parse(m.forward_request(&RequestEdit {
        request_uri: Some(b"sip:dev@192.0.2.1:5062"),
        via: b"SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKs",
        pop_routes: 1,
        remove_last_route: true,
        max_forwards: 69,
        ..Default::default()
    }))
    .unwrap();
    let routes: Vec<_> = out.routes().map(|r| r.uri.as_bytes().to_vec()).collect();
    assert_eq!(routes, vec![b"sip:b@y;lr".to_vec()]);
    assert_eq!(out.request_uri_bytes(), b"sip:dev@192.0.2.1:5062");
}
