//! Parse and proxy-hop serialization throughput on the messages a Linphone client sends,
//! and allocations per message.
//!
//! `cargo bench -p stg-sip-msg --bench parse` prints the allocation counts first (the
//! global allocator is `stats_alloc`'s counting wrapper around the system allocator), then
//! runs criterion. Figures go in notes, not assertions (STYLE.md §6).

use std::alloc::System;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use stg_sip_msg::{Message, RequestEdit};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Linphone's INVITE through an outbound proxy (TLS, `alias`/`rport` Via, a GRUU-ready
/// Contact with `+sip.instance`), with its SDP offer; about 1 KB.
const INVITE_HEAD: &str = "INVITE sip:bob@sip.example.org SIP/2.0\r
Via: SIP/2.0/TLS 192.168.1.23:37893;alias;branch=z9hG4bK.Qw3rTyUi0;rport\r
Route: <sip:stg.example.org;transport=tls;lr>\r
From: \"Alice\" <sip:alice@sip.example.org>;tag=8Fh~3sLk2\r
To: <sip:bob@sip.example.org>\r
CSeq: 20 INVITE\r
Call-ID: pQ4-R9xZ1a\r
Max-Forwards: 70\r
Supported: replaces, outbound, gruu, path, record-aware\r
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, PRACK, UPDATE\r
Content-Type: application/sdp\r
Contact: <sip:alice@192.168.1.23:37893;transport=tls>;+sip.instance=\"<urn:uuid:5b6f6a7e-5d1c-4c3e-9a5b-0e6f1d2c3b4a>\"\r
User-Agent: LinphoneAndroid/5.2.5 (Pixel 7) LinphoneSDK/5.3.47 (tags/5.3.47^0)\r
Accept: application/sdp\r
Accept: text/plain\r
Accept: application/vnd.gsma.rcs-ft-http+xml\r
";

const INVITE_SDP: &str = "v=0\r
o=alice 1234 5678 IN IP4 192.168.1.23\r
s=Talk\r
c=IN IP4 192.168.1.23\r
t=0 0\r
m=audio 7078 RTP/AVP 96 0 8 101\r
a=rtpmap:96 opus/48000/2\r
a=fmtp:96 useinbandfec=1\r
a=rtpmap:101 telephone-event/8000\r
";

/// Linphone's REGISTER with RFC 8599 push parameters in the Contact URI.
const REGISTER: &str = "REGISTER sip:sip.example.org SIP/2.0\r
Via: SIP/2.0/TLS 192.168.1.23:37893;alias;branch=z9hG4bK.Ab12Cd34E;rport\r
Route: <sip:stg.example.org;transport=tls;lr>\r
From: <sip:alice@sip.example.org>;tag=Zx9~Yw8Vu\r
To: sip:alice@sip.example.org\r
CSeq: 21 REGISTER\r
Call-ID: Kp3-Lm4Nq\r
Max-Forwards: 70\r
Supported: replaces, outbound, gruu, path\r
Accept: application/sdp\r
Accept: text/plain\r
Accept: application/vnd.gsma.rcs-ft-http+xml\r
Contact: <sip:alice@192.168.1.23:37893;transport=tls;pn-prid=cT5xQ0rVJ0M:APA91bH3xTq-8kLmNoPqRsTuVwXyZ0123456789abcdefGHIJKLmnopQRSTuvwxYZ;pn-provider=fcm;pn-param=linphone-1a2b3c;pn-silent=1;pn-timeout=0;pn-msg-str=IM_MSG;pn-call-str=IC_MSG;pn-groupchat-str=GC_MSG;pn-call-snd=notes_of_the_optimistic.caf;pn-msg-snd=msg.caf>;+sip.instance=\"<urn:uuid:5b6f6a7e-5d1c-4c3e-9a5b-0e6f1d2c3b4a>\";+org.linphone.specs=\"conference/1.0,ephemeral/1.1,groupchat/1.1,lime\"\r
Expires: 3600\r
User-Agent: LinphoneAndroid/5.2.5 (Pixel 7) LinphoneSDK/5.3.47 (tags/5.3.47^0)\r
Content-Length: 0\r
\r
";

/// The callee's 200 OK to the INVITE as it reaches stg: stg's Via on top, Record-Route.
const OK_HEAD: &str = "SIP/2.0 200 Ok\r
Via: SIP/2.0/TLS 203.0.113.5:5061;branch=z9hG4bKstg.1a2b3c4d\r
Via: SIP/2.0/TLS 192.168.1.23:37893;alias;branch=z9hG4bK.Qw3rTyUi0;rport=37893;received=198.51.100.20\r
Record-Route: <sip:203.0.113.5:5061;transport=tls;lr>\r
From: \"Alice\" <sip:alice@sip.example.org>;tag=8Fh~3sLk2\r
To: <sip:bob@sip.example.org>;tag=Hb7~Kq2Lp\r
Call-ID: pQ4-R9xZ1a\r
CSeq: 20 INVITE\r
Contact: <sip:bob@10.0.0.7:41234;transport=tls>;+sip.instance=\"<urn:uuid:0f1e2d3c-4b5a-6978-8a9b-acbdcedfe0f1>\"\r
User-Agent: LinphoneiOS/5.2.4 (iPhone) LinphoneSDK/5.3.47\r
Supported: replaces, outbound, gruu, path\r
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, PRACK, UPDATE\r
Content-Type: application/sdp\r
";

const OK_SDP: &str = "v=0\r
o=bob 4321 8765 IN IP4 10.0.0.7\r
s=Talk\r
c=IN IP4 10.0.0.7\r
t=0 0\r
m=audio 7078 RTP/AVP 96 101\r
a=rtpmap:96 opus/48000/2\r
a=fmtp:96 useinbandfec=1\r
a=rtpmap:101 telephone-event/8000\r
";

/// What stg changes on a hop: its Via, one Record-Route, its own Route popped,
/// Max-Forwards decremented.
const HOP: RequestEdit<'static> = RequestEdit {
    request_uri: None,
    top_via: None,
    via: b"SIP/2.0/TLS 203.0.113.5:5061;branch=z9hG4bKstg.1a2b3c4d",
    record_route: &[b"<sip:203.0.113.5:5061;transport=tls;lr>"],
    pop_routes: 1,
    append_route: None,
    remove_last_route: false,
    max_forwards: 69,
    drop: &[],
    extra: &[],
};

fn with_body(head: &str, body: &str) -> Bytes {
    Bytes::from(format!(
        "{head}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

struct Messages {
    invite: Bytes,
    register: Bytes,
    ok: Bytes,
}

impl Messages {
    fn new() -> Self {
        let m = Self {
            invite: with_body(INVITE_HEAD, INVITE_SDP),
            register: Bytes::from_static(REGISTER.as_bytes()),
            ok: with_body(OK_HEAD, OK_SDP),
        };
        for raw in [&m.invite, &m.register, &m.ok] {
            // A bench of a parse error would measure nothing useful.
            Message::parse(raw.clone()).expect("bench messages parse");
        }
        m
    }
}

fn forward(raw: Bytes) -> Bytes {
    // Parsed in Messages::new.
    Message::parse(raw).expect("valid").forward_request(&HOP)
}

fn benches(c: &mut Criterion, msgs: &Messages) {
    let mut g = c.benchmark_group("sip-msg");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in [("invite", &msgs.invite), ("register", &msgs.register)] {
        // The clone is a reference-count increment: the transport hands over a `Bytes`.
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| Message::parse(black_box(raw.clone())))
        });
        g.bench_function(format!("parse+forward_request/{name}"), |b| {
            b.iter(|| forward(black_box(raw.clone())))
        });
    }
    let ok = Message::parse(msgs.ok.clone()).expect("valid");
    g.bench_function("forward_response/200-ok", |b| {
        b.iter(|| black_box(&ok).forward_response())
    });
    g.bench_function("parse+forward_response/200-ok", |b| {
        b.iter_batched(
            || msgs.ok.clone(),
            |raw| Message::parse(raw).expect("valid").forward_response(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Allocations (and reallocations) `f` makes, averaged over many calls.
fn allocations(mut f: impl FnMut()) -> (f64, f64) {
    const N: usize = 1000;
    f(); // warm any lazy state outside the region
    let region = Region::new(GLOBAL);
    for _ in 0..N {
        f();
    }
    let stats = region.change();
    (
        stats.allocations as f64 / N as f64,
        stats.reallocations as f64 / N as f64,
    )
}

fn report_allocations(msgs: &Messages) {
    println!("allocations per message (reallocations), input buffer excluded:");
    for (name, raw) in [
        ("invite", &msgs.invite),
        ("register", &msgs.register),
        ("200-ok", &msgs.ok),
    ] {
        let (parse, parse_re) = allocations(|| {
            black_box(Message::parse(raw.clone()).expect("valid"));
        });
        let (fwd, fwd_re) = allocations(|| {
            let m = Message::parse(raw.clone()).expect("valid");
            black_box(if m.is_request() {
                m.forward_request(&HOP)
            } else {
                m.forward_response()
            });
        });
        println!(
            "  {name:<9} {} octets: parse {parse} ({parse_re}), parse+forward {fwd} ({fwd_re})",
            raw.len()
        );
    }
}

fn main() {
    let msgs = Messages::new();
    report_allocations(&msgs);
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &msgs);
    c.final_summary();
}
