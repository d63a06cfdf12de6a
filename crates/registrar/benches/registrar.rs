//! The registrar's share of one REGISTER: check it, apply it to the AOR's record (decode
//! every stored contact, merge, encode what changes) and build the 200's headers; and a
//! location lookup's share of a call (decode a record, keep the live bindings).
//! `cargo bench -p stg-registrar`; figures go in notes, not in tests.

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use stg_registrar::{apply, live_bindings, ok_headers, parse_register, Origin, Settings};
use stg_sip_msg::Message;

const NOW: u64 = 1_764_757_800;

fn register(instance: u32, cseq: u32) -> Message {
    let text = format!(
        "REGISTER sip:sips.mdtel.es SIP/2.0\r\n\
         Via: SIP/2.0/TLS 10.1.2.3:33030;branch=z9hG4bK-{cseq};alias;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:40004*01@sips.mdtel.es>;tag=abc\r\n\
         To: <sip:40004*01@sips.mdtel.es>\r\n\
         Call-ID: call-{instance}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: \"JAC\" <sip:40004*01@79.146.86.86:33030;pn-prid=dGVzdF90b2tlbl8x:APA91bH-x_Y;pn-provider=fcm;pn-param=vivait-12345;pn-silent=1;pn-timeout=0;transport=tls>;+sip.instance=\"<urn:uuid:5d0d6f52-7a1f-4b25-9d8c-0f7e4c3b{instance:04}>\";+org.linphone.specs=\"ephemeral/1.1,groupchat/1.2,lime\"\r\n\
         Expires: 3600\r\n\
         Supported: replaces, outbound, gruu, path\r\n\
         Accept: application/sdp, text/plain, application/vnd.gsma.rcs-ft-http+xml\r\n\
         User-Agent: LinphoneAndroid/5.2.0 (SM-A525F) LinphoneSDK/5.3.0 (tags/5.3.0)\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(text)).expect("a valid REGISTER")
}

/// The record of an AOR with `n` devices, as the registrar wrote it.
fn record(n: u32, s: &Settings) -> BTreeMap<String, String> {
    let path = ["<sip:0123456789abcdef@10.0.0.1:5060;transport=tcp;lr;ob>".to_owned()];
    let mut rec = BTreeMap::new();
    let mut k = 0u64;
    let mut rng = || {
        k += 1;
        k
    };
    for i in 0..n {
        let reg = parse_register(&register(i, 1), s).expect("checked");
        let origin = Origin {
            conn_id: "0123456789abcdef",
            path: &path,
            now: NOW,
        };
        let a = apply(&rec, &reg, &origin, None, s, &mut rng).expect("applied");
        for d in a.del {
            rec.remove(&d);
        }
        rec.extend(a.set);
    }
    rec
}

fn bench(c: &mut Criterion) {
    let s = Settings::default();
    let rec = record(3, &s);
    let refresh = register(1, 2);
    let path = ["<sip:0123456789abcdef@10.0.0.1:5060;transport=tcp;lr;ob>".to_owned()];
    c.bench_function("register_refresh_3_bindings", |b| {
        let mut k = 0u64;
        let mut rng = || {
            k += 1;
            k
        };
        b.iter(|| {
            let reg = parse_register(black_box(&refresh), &s).expect("checked");
            let origin = Origin {
                conn_id: "0123456789abcdef",
                path: &path,
                now: NOW + 60,
            };
            let a = apply(black_box(&rec), &reg, &origin, None, &s, &mut rng).expect("applied");
            black_box(ok_headers(&reg, &a, NOW + 60))
        });
    });
    c.bench_function("locate_3_bindings", |b| {
        b.iter(|| black_box(live_bindings(black_box(&rec), NOW + 60)));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
