//! The proxy core's hot path: one whole call (INVITE, 100, 180, 200, ACK, BYE, 200) from a
//! UDP device to a UDP upstream, on fake time, as the shell drives it (every input followed
//! by a drain). `cargo bench -p stg-sip-core --bench proxy`. Figures go in notes.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use stg_sip_core::net::{Flow, IpNetwork, Listener, ListenerId, Side, Transport};
use stg_sip_core::proxy::{
    Inbound, Located, Output, Proxy, ProxyConfig, ProxyLimits, PushOutcome, RegistrarDomain,
    RegistrarMode, ResolveTarget, Wake,
};
use stg_sip_core::transaction::TransactionConfig;
use stg_sip_msg::{Message, StatusCode};

const DEVICE: &str = "203.0.113.7:40000";
const PBX: &str = "10.0.0.5:5060";

fn config() -> ProxyConfig {
    ProxyConfig {
        listeners: vec![Listener {
            id: ListenerId(0),
            transport: Transport::Udp,
            side: Side::Outside,
            local: "192.0.2.1:5060".parse().unwrap(),
            host: "192.0.2.1".into(),
            port: 5060,
        }],
        upstream: ResolveTarget {
            host: "10.0.0.5".into(),
            port: Some(5060),
            transport: None,
            sips: false,
        },
        inside_networks: vec![IpNetwork {
            addr: "10.0.0.0".parse().unwrap(),
            prefix_len: 8,
        }],
        aliases: Vec::new(),
        force_rport: true,
        timer_c: Duration::from_secs(180),
        transactions: TransactionConfig::default(),
        flow_key: [7; 16],
        seed: 1,
        limits: ProxyLimits {
            max_transactions: 1 << 20,
            max_transactions_per_source: 1 << 20,
            source_prefix_v6: 64,
            max_transaction_bytes: usize::MAX,
        },
        allowed_destinations: Vec::new(),
        registrar: Vec::new(),
        node_id: String::new(),
        push: Default::default(),
        hide_products: true,
        drop_scanners: true,
    }
}

fn inbound(remote: &str, side: Side) -> Inbound {
    Inbound {
        flow: Flow {
            listener: ListenerId(0),
            transport: Transport::Udp,
            remote: remote.parse::<SocketAddr>().unwrap(),
            conn: None,
        },
        side,
    }
}

fn invite(i: u64) -> Bytes {
    Bytes::from(format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK-i{i};rport\r\n\
Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=a{i}\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: call-{i}@192.168.1.10\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:alice@192.168.1.10:5060>;+sip.instance=\"<urn:uuid:5b6f6a7e-5d1c-4c3e-9a5b-0e6f1d2c3b4a>\"\r\n\
User-Agent: LinphoneAndroid/5.2.5 (Pixel 7) LinphoneSDK/5.3.47\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, PRACK, UPDATE\r\n\
Content-Type: application/sdp\r\nContent-Length: 129\r\n\r\n\
v=0\r\no=alice 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\nm=audio 7078 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    ))
}

/// What the proxy transmitted last (drains everything).
fn last_sent(p: &mut Proxy) -> Option<Message> {
    let mut last = None;
    while let Some(o) = p.poll_output() {
        if let Output::Transmit { bytes, .. } = o {
            last = Some(bytes);
        }
    }
    last.map(|b| Message::parse(b).unwrap())
}

fn call(p: &mut Proxy, i: u64, now: Instant) {
    let dev = inbound(DEVICE, Side::Outside);
    let pbx = inbound(PBX, Side::Inside);
    p.handle_input(dev, invite(i), now);
    let fwd = last_sent(p).unwrap();
    let rr: Vec<&[u8]> = fwd.header_values_by_name(b"Record-Route").collect();
    let extra: Vec<(&str, &[u8])> = rr.iter().map(|v| ("Record-Route", *v)).collect();
    p.handle_input(
        pbx,
        fwd.response(StatusCode(180), None, Some(b"cal"), None, &extra),
        now,
    );
    last_sent(p);
    let mut extra = extra;
    extra.push(("Contact", b"<sip:bob@10.0.0.5:5060>"));
    p.handle_input(
        pbx,
        fwd.response(StatusCode::OK, None, Some(b"cal"), None, &extra),
        now,
    );
    let ok = last_sent(p).unwrap();
    let route = ok.header_values_by_name(b"Record-Route").next().unwrap();
    let route = String::from_utf8_lossy(route);
    let in_dialog = |method: &str, cseq: u32| {
        Bytes::from(format!(
            "{method} sip:bob@10.0.0.5:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK-{method}{i};rport\r\n\
Max-Forwards: 70\r\nRoute: {route}\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=a{i}\r\nTo: <sip:bob@example.com>;tag=cal\r\n\
Call-ID: call-{i}@192.168.1.10\r\nCSeq: {cseq} {method}\r\nUser-Agent: LinphoneAndroid/5.2.5\r\nContent-Length: 0\r\n\r\n"
        ))
    };
    p.handle_input(dev, in_dialog("ACK", 1), now);
    last_sent(p);
    p.handle_input(dev, in_dialog("BYE", 2), now);
    let bye = last_sent(p).unwrap();
    p.handle_input(
        pbx,
        bye.response(StatusCode::OK, None, None, None, &[]),
        now,
    );
    last_sent(p);
}

/// A call from the PBX to a sleeping device: the lookup finds a binding with push parameters
/// and no connection here (pushed at once), the push is sent, the device binds again behind
/// another node (a Path), the INVITE goes there, the device answers 486. Every core decision
/// of the wake-up path, in one iteration.
fn sleeping_call(p: &mut Proxy, i: u64, now: Instant) {
    let pbx = inbound(PBX, Side::Inside);
    let aor = format!("u{i}@example.com");
    let inv = Bytes::from(format!(
        "INVITE sip:{aor} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-s{i}\r\n\
Max-Forwards: 70\r\nFrom: \"Bob\" <sip:bob@example.com>;tag=b{i}\r\nTo: <sip:{aor}>\r\n\
Call-ID: sleep-{i}@10.0.0.5\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@10.0.0.5:5060>\r\nContent-Length: 0\r\n\r\n"
    ));
    p.handle_input(pbx, inv, now);
    let mut op = None;
    while let Some(o) = p.poll_output() {
        if let Output::Locate { id, .. } = o {
            op = Some(id);
        }
    }
    let key = Bytes::from_static(b"\"<urn:uuid:5b6f6a7e-5d1c-4c3e-9a5b-0e6f1d2c3b4a>\"");
    let asleep = Located {
        uri: Bytes::from_static(
            b"sip:u@192.0.2.7:5061;transport=tls;pn-provider=fcm;pn-prid=t;pn-param=p",
        ),
        conn: None,
        path: Vec::new(),
        key: key.clone(),
        wake: Some(Wake::default()),
    };
    p.handle_located(op.unwrap(), Ok(&[asleep]), now);
    let mut push = None;
    while let Some(o) = p.poll_output() {
        if let Output::Push(r) = o {
            push = Some(r.id);
        }
    }
    p.handle_pushed(push.unwrap(), PushOutcome::Sent, now);
    last_sent(p);
    let back = Located {
        uri: Bytes::from_static(
            b"sip:u@192.0.2.7:5062;transport=tls;pn-provider=fcm;pn-prid=t;pn-param=p",
        ),
        conn: None,
        path: vec![Bytes::from_static(b"<sip:10.0.0.9:5060;lr>")],
        key,
        wake: Some(Wake::default()),
    };
    p.handle_bound(&aor, &back, now);
    let fwd = last_sent(p).unwrap();
    p.handle_input(
        inbound("10.0.0.9:5060", Side::Inside),
        fwd.response(StatusCode(486), None, Some(b"dev"), None, &[]),
        now,
    );
    last_sent(p);
}

fn main() {
    // `proxy N` (no criterion): exactly N calls, for instruction counts under
    // `valgrind --tool=callgrind`, which load on the machine does not disturb.
    if let Some(n) = std::env::var("STG_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        #[allow(clippy::disallowed_methods)] // the one real instant
        let now = Instant::now();
        let mut p = Proxy::new(config());
        for i in 0..n {
            call(&mut p, i, now);
        }
        black_box(&p);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("proxy");
    g.throughput(Throughput::Elements(1));
    #[allow(clippy::disallowed_methods)] // the one real instant; time does not move here
    let mut now = Instant::now();
    let mut p = Proxy::new(config());
    let mut i = 0u64;
    g.bench_function("udp call (7 messages in, 7 out)", |b| {
        b.iter(|| {
            i += 1;
            call(&mut p, i, now);
            // Let the lingering transactions go now and then, as timers would.
            if i.is_multiple_of(4096) {
                now += Duration::from_secs(64);
                p.handle_timeout(now);
                while p.poll_output().is_some() {}
            }
            black_box(&p);
        });
    });
    let mut cfg = config();
    cfg.registrar = vec![RegistrarDomain {
        domain: "example.com".into(),
        mode: RegistrarMode::Through,
        authenticate: false,
    }];
    let mut p = Proxy::new(cfg);
    let mut i = 0u64;
    g.bench_function(
        "call to a sleeping device (lookup, push, bound, INVITE, 486)",
        |b| {
            b.iter(|| {
                i += 1;
                sleeping_call(&mut p, i, now);
                if i.is_multiple_of(4096) {
                    now += Duration::from_secs(64);
                    p.handle_timeout(now);
                    while p.poll_output().is_some() {}
                }
                black_box(&p);
            });
        },
    );
    g.finish();
    c.final_summary();
}
