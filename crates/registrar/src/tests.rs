//! Unit tests: codec round-trips against the Flexisip layout, and the REGISTER rules with
//! fake time and a seeded generator.

use std::collections::BTreeMap;

use bytes::Bytes;
use stg_sip_msg::Message;

use crate::*;

const T0: u64 = 1_764_757_800;

/// xorshift64*: deterministic "randomness" for keys and generated cases.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.max(1);
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

// === codec ===

const SEED_KEY: &str = "\"<urn:uuid:5d0d6f52-7a1f-4b25-9d8c-0f7e4c3b2a10>\"";
const SEED_VALUE: &str = concat!(
    "\"JAC\" <sip:40004*01@79.146.86.86:33030;pn-prid=dGVzdF90b2tlbl8x:APA91bH-x_Y;",
    "pn-provider=fcm;pn-param=vivait-12345;pn-silent=1;pn-timeout=0;transport=tls;",
    "fs-conn-id=7f3a2c001b40;callid=Xk3-aB9_QmZ2;expires=36000;cseq=21;",
    "updatedAt=1764757800;alias=no;usedAsRoute=no",
    "?path=%3Csip%3Astg1.mdtel.es%3A5556%3Btransport%3Dtcp%3Bfs-proxy-id%3D9c1e4f%3Blr%3E",
    "%2C%3Csips%3Astg1.mdtel.es%3A5554%3Blr%3E",
    "&accept=application/sdp%2Ctext/plain%2Capplication/vnd.gsma.rcs-ft-http+xml",
    "&user-agent=LinphoneAndroid/5.2.0%20(SM-A525F)%20LinphoneSDK/5.3.0%20(tags/5.3.0)>",
    ";+sip.instance=\"<urn:uuid:5d0d6f52-7a1f-4b25-9d8c-0f7e4c3b2a10>\"",
    ";+org.linphone.specs=\"ephemeral/1.1,groupchat/1.2,lime\"",
    ";pub-gruu=\"sip:40004*01@sips.mdtel.es;gr=urn:uuid:5d0d6f52-7a1f-4b25-9d8c-0f7e4c3b2a10\"",
);

#[test]
fn seed_example_decodes_field_by_field_and_reencodes_byte_identical() {
    let b = Binding::decode(SEED_KEY, SEED_VALUE).unwrap();
    assert_eq!(b.key, SEED_KEY);
    assert_eq!(b.display_name.as_deref(), Some("\"JAC\""));
    assert_eq!(
        b.uri,
        "sip:40004*01@79.146.86.86:33030;pn-prid=dGVzdF90b2tlbl8x:APA91bH-x_Y;\
         pn-provider=fcm;pn-param=vivait-12345;pn-silent=1;pn-timeout=0;transport=tls"
    );
    assert_eq!(b.conn_id.as_deref(), Some("7f3a2c001b40"));
    assert_eq!(b.call_id, "Xk3-aB9_QmZ2");
    assert_eq!(b.expires, 36000);
    assert_eq!(b.cseq, 21);
    assert_eq!(b.updated_at, T0);
    assert_eq!(b.expires_at(), T0 + 36000);
    assert!(b.is_live(T0 + 35999) && !b.is_live(T0 + 36000));
    assert!(!b.alias && !b.used_as_route);
    assert_eq!(
        b.path,
        [
            "sip:stg1.mdtel.es:5556;transport=tcp;fs-proxy-id=9c1e4f;lr",
            "sips:stg1.mdtel.es:5554;lr"
        ]
    );
    assert_eq!(
        b.accept,
        [
            "application/sdp",
            "text/plain",
            "application/vnd.gsma.rcs-ft-http+xml"
        ]
    );
    assert_eq!(
        b.user_agent.as_deref(),
        Some("LinphoneAndroid/5.2.0 (SM-A525F) LinphoneSDK/5.3.0 (tags/5.3.0)")
    );
    assert_eq!(b.instance(), Some(SEED_KEY));
    assert_eq!(b.params.len(), 3);
    assert_eq!(b.params[1].0, "+org.linphone.specs");
    assert_eq!(
        b.push(),
        Some(Push {
            provider: "fcm".into(),
            prid: "dGVzdF90b2tlbl8x:APA91bH-x_Y".into(),
            param: Some("vivait-12345".into()),
        })
    );
    assert_eq!(b.encode(), SEED_VALUE);
}

#[test]
fn empty_headers_are_written_as_flexisip_writes_them() {
    let b = Binding {
        key: "fs-gen-AAAAAAAAAAAAAAAAAAAA".into(),
        display_name: None,
        uri: "sip:bob@10.0.0.2:5060".into(),
        conn_id: None,
        call_id: "c@h".into(),
        cseq: 1,
        expires: 600,
        updated_at: T0,
        alias: false,
        used_as_route: true,
        path: vec![],
        accept: vec![],
        user_agent: None,
        params: vec![("pub-gruu".into(), None)],
    };
    let v = b.encode();
    assert_eq!(
        v,
        "<sip:bob@10.0.0.2:5060;callid=c%40h;expires=600;cseq=1;updatedAt=1764757800;\
         alias=no;usedAsRoute=yes?path=&accept=&user-agent=>;pub-gruu"
    );
    assert_eq!(Binding::decode(&b.key, &v).unwrap(), b);
}

#[test]
fn escaping_of_path_and_user_agent() {
    let mut b = Binding::decode(SEED_KEY, SEED_VALUE).unwrap();
    b.path = vec!["sip:a,b@p1;lr".into(), "sip:p2?x".into()];
    b.user_agent = Some("UA <x>, 1.0 ?a&b=c; \"q\" é".into());
    b.call_id = "a b;c?d&e=f@g".into();
    let v = b.encode();
    assert!(v.contains("path=%3Csip%3Aa%2Cb@p1%3Blr%3E%2C%3Csip%3Ap2%3Fx%3E&accept="));
    assert!(v.contains("&user-agent=UA%20%3Cx%3E%2C%201.0%20%3Fa%26b%3Dc%3B%20%22q%22%20%C3%A9>"));
    assert!(v.contains(";callid=a%20b%3Bc%3Fd%26e%3Df%40g;"));
    assert_eq!(Binding::decode(SEED_KEY, &v).unwrap(), b);
}

const POOL: &[&str] = &[
    "a", "Z", "0", " ", ",", ";", "<", ">", "?", "&", "=", "%", "\"", ":", "@", "/", "(", "é",
    "\t", "+", "#", "%41", "[", "]", "\\",
];

fn random_text(r: &mut impl FnMut() -> u64, max: u64) -> String {
    (0..r() % max)
        .map(|_| POOL[(r() % POOL.len() as u64) as usize])
        .collect()
}

#[test]
fn random_bindings_round_trip() {
    let mut r = rng(7);
    for i in 0..3000 {
        let token = |r: &mut dyn FnMut() -> u64| format!("t{}", r() % 1000);
        let b = Binding {
            key: if i % 2 == 0 {
                generate_key(&mut r)
            } else {
                format!("\"<urn:uuid:{}>\"", r())
            },
            display_name: match r() % 3 {
                0 => None,
                1 => Some(format!("\"D {}\"", token(&mut r))),
                _ => Some(token(&mut r)),
            },
            uri: format!(
                "sip{}:{}@h{}.example:{};transport=tls;pn-prid={}",
                if r().is_multiple_of(2) { "" } else { "s" },
                token(&mut r),
                r() % 9,
                r() % 65536,
                token(&mut r)
            ),
            conn_id: r().is_multiple_of(2).then(|| format!("{:x}", r())),
            call_id: random_text(&mut r, 12),
            cseq: r() as u32,
            expires: r() as u32,
            updated_at: r() % 4_000_000_000,
            alias: r().is_multiple_of(2),
            used_as_route: r().is_multiple_of(2),
            path: (0..r() % 3)
                .map(|_| {
                    format!(
                        "sip:p{};lr{}",
                        r() % 9,
                        random_text(&mut r, 4).replace(['<', '>'], "")
                    )
                })
                .map(|p| p.trim().to_owned())
                .collect(),
            accept: (0..r() % 3)
                .map(|_| format!("a/{}", token(&mut r)))
                .collect(),
            user_agent: Some(random_text(&mut r, 20)).filter(|u| !u.is_empty()),
            params: vec![
                (
                    "+sip.instance".into(),
                    Some(format!("\"<urn:uuid:{}>\"", r())),
                ),
                ("reg-id".into(), Some((r() % 3).to_string())),
                ("pub-gruu".into(), None),
            ],
        };
        let v = b.encode();
        assert_eq!(Binding::decode(&b.key, &v).as_ref(), Ok(&b), "{v}");
        fuzz_decode(format!("{}\n{v}", b.key).as_bytes());
    }
}

#[test]
fn garbage_is_an_error_never_a_panic() {
    for v in [
        "",
        "<",
        ">",
        "\"unterminated <sip:a@b>",
        "<sip:a@b;expires=10>",
        "<sip:a@b;updatedAt=5>",
        "<sip:a@b;expires=x;updatedAt=5>",
        "<sip:a@b;expires=99999999999;updatedAt=5>",
        "<tel:123;expires=1;updatedAt=5>",
        "<sip:;expires=1;updatedAt=5>",
        "<sip:a@b;expires=1;updatedAt=5>;x=\"open",
        "<sip:a@b;expires=1;updatedAt=5>junk",
        "<sip:a@b;expires=1;updatedAt=5?user-agent=%FF%FE>",
        "\"\\",
        "a\"b <sip:a@b;expires=1;updatedAt=5>",
        "<siéé;expires=1;updatedAt=5>",
        "<sé>",
    ] {
        assert!(Binding::decode("k", v).is_err(), "{v:?}");
        fuzz_decode(v.as_bytes());
    }
    assert_eq!(Binding::decode("", SEED_VALUE), Err(CodecError::EmptyKey));
    // Random bytes and random mutations of a good value.
    let mut r = rng(99);
    for _ in 0..20_000 {
        let mut bytes = SEED_VALUE.as_bytes().to_vec();
        for _ in 0..1 + r() % 6 {
            let at = (r() % bytes.len() as u64) as usize;
            match r() % 3 {
                0 => bytes[at] = r() as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, b";<>?&=\"%,\\ "[(r() % 11) as usize]),
            }
        }
        fuzz_decode(&bytes);
        let noise: Vec<u8> = (0..r() % 64).map(|_| r() as u8).collect();
        fuzz_decode(&noise);
        // Valid UTF-8 made of the characters the parser cares about.
        let text = format!(
            "{}<{}sip{}:{};expires=1;updatedAt=5{}>{}",
            random_text(&mut r, 4),
            random_text(&mut r, 2),
            random_text(&mut r, 2),
            random_text(&mut r, 12),
            random_text(&mut r, 12),
            random_text(&mut r, 8)
        );
        fuzz_decode(text.as_bytes());
    }
}

#[test]
fn generated_keys_look_like_flexisip_ones() {
    let mut r = rng(1);
    let k = generate_key(&mut r);
    assert!(k.starts_with("fs-gen-") && k.len() == 27, "{k}");
    assert!(k[7..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_ne!(generate_key(&mut r), k);
}

#[test]
fn legacy_push_parameters_are_mapped() {
    type Want<'a> = Option<(&'a str, &'a str, Option<&'a str>)>;
    let cases: &[(&str, Want<'_>)] = &[
        (
            "sip:a@h;pn-provider=apns;pn-prid=tok;pn-param=TEAM.org.app.voip",
            Some(("apns", "tok", Some("TEAM.org.app.voip"))),
        ),
        (
            "sip:a@h;pn-provider=fcm;pn-prid=tok",
            Some(("fcm", "tok", None)),
        ),
        (
            "sip:a@h;pn-type=firebase;pn-tok=tok;app-id=proj",
            Some(("fcm", "tok", Some("proj"))),
        ),
        (
            "sip:a@h;pn-type=google;pn-tok=tok;app-id=proj",
            Some(("fcm", "tok", Some("proj"))),
        ),
        (
            "sip:a@h;pn-type=apple;pn-tok=tok;app-id=org.app.prod",
            Some(("apns", "tok", Some("ABCD1234.org.app"))),
        ),
        (
            "sip:a@h;pn-type=apple;pn-tok=tok;app-id=org.app.dev",
            Some(("apns.dev", "tok", Some("ABCD1234.org.app"))),
        ),
        ("sip:a@h;pn-type=apple;pn-tok=tok", None),
        ("sip:a@h;pn-provider=fcm", None),
        ("sip:a@h;transport=tls", None),
    ];
    for (uri, want) in cases {
        let got = push_of_uri(uri);
        let want = want.map(|(p, t, a)| Push {
            provider: p.into(),
            prid: t.into(),
            param: a.map(Into::into),
        });
        assert_eq!(got, want, "{uri}");
    }
}

// === REGISTER ===

struct Req {
    call_id: &'static str,
    cseq: u32,
    from: &'static str,
    expires: Option<&'static str>,
    contacts: Vec<String>,
    extra: Vec<&'static str>,
}

impl Req {
    fn new(contacts: &[&str]) -> Self {
        Self {
            call_id: "cid-1",
            cseq: 1,
            from: "sip:40004*01@sips.mdtel.es",
            expires: Some("3600"),
            contacts: contacts.iter().map(|c| (*c).to_owned()).collect(),
            extra: vec![],
        }
    }
    fn message(&self) -> Message {
        let mut s = format!(
            "REGISTER sip:sips.mdtel.es SIP/2.0\r\n\
             Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK-{}\r\n\
             Max-Forwards: 70\r\n\
             From: <{}>;tag=a\r\nTo: <{}>\r\n\
             Call-ID: {}\r\nCSeq: {} REGISTER\r\n",
            self.cseq, self.from, self.from, self.call_id, self.cseq
        );
        if let Some(e) = self.expires {
            s += &format!("Expires: {e}\r\n");
        }
        for c in &self.contacts {
            s += &format!("Contact: {c}\r\n");
        }
        for e in &self.extra {
            s += &format!("{e}\r\n");
        }
        s += "Content-Length: 0\r\n\r\n";
        Message::parse(Bytes::from(s)).unwrap()
    }
    fn reg(&self) -> Register {
        parse_register(&self.message(), &Settings::default()).unwrap()
    }
}

const DEV: &str = "<sip:40004*01@79.146.86.86:33030;transport=tls>;\
                   +sip.instance=\"<urn:uuid:aaaa>\";reg-id=1";
const DEV_KEY: &str = "\"<urn:uuid:aaaa>\"";

fn ok_response(extra: &str) -> Message {
    let s = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK-1\r\n\
         From: <sip:40004*01@sips.mdtel.es>;tag=a\r\nTo: <sip:40004*01@sips.mdtel.es>;tag=b\r\n\
         Call-ID: cid-1\r\nCSeq: 1 REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(s)).unwrap()
}

struct Store {
    hash: BTreeMap<String, String>,
    rng: Box<dyn FnMut() -> u64>,
    path: Vec<String>,
}

impl Store {
    fn new() -> Self {
        Self {
            hash: BTreeMap::new(),
            rng: Box::new(rng(42)),
            path: vec!["<sip:stg1.mdtel.es:5554;transport=tls;lr>".into()],
        }
    }
    fn run(
        &mut self,
        req: &Req,
        now: u64,
        granted: Option<&Message>,
        s: &Settings,
    ) -> Result<Applied, Reject> {
        let reg = parse_register(&req.message(), s)?;
        let origin = Origin {
            conn_id: "7f3a",
            path: &self.path,
            now,
        };
        let a = apply(&self.hash, &reg, &origin, granted, s, &mut self.rng)?;
        // Write as the store adapter does.
        if a.delete_all {
            self.hash.clear();
        }
        for k in &a.del {
            self.hash.remove(k);
        }
        for (k, v) in &a.set {
            self.hash.insert(k.clone(), v.clone());
        }
        Ok(a)
    }
    fn local(&mut self, req: &Req, now: u64) -> Result<Applied, Reject> {
        self.run(req, now, None, &Settings::default())
    }
    fn binding(&self, key: &str) -> Binding {
        Binding::decode(key, &self.hash[key]).unwrap()
    }
}

#[test]
fn aor_is_user_at_host_of_from_as_received() {
    let mut r = Req::new(&[DEV]);
    r.from = "sip:Alice@Example.COM:5070;transport=tls";
    assert_eq!(aor_of(&r.message()).as_deref(), Some("Alice@Example.COM"));
    r.from = "sip:example.com";
    assert_eq!(aor_of(&r.message()).as_deref(), Some("example.com"));
}

#[test]
fn star_and_expires_checks() {
    let cases: &[(&[&str], Option<&str>, Option<u16>)] = &[
        (&["*"], Some("0"), None),
        (&["*"], Some("3600"), Some(400)),
        (&["*"], None, Some(400)),
        (&["*", DEV], Some("0"), Some(400)),
        (&[DEV], Some("soon"), Some(400)),
        (&["<sip:a@b>;expires=x"], Some("60"), Some(400)),
        (&["<tel:+3491>"], Some("60"), Some(400)),
        (&[], Some("60"), None),
    ];
    for (contacts, expires, want) in cases {
        let mut r = Req::new(contacts);
        r.expires = *expires;
        let got = parse_register(&r.message(), &Settings::default())
            .err()
            .map(|e| e.status);
        assert_eq!(got, *want, "{contacts:?} {expires:?}");
    }
}

#[test]
fn add_stores_the_flexisip_value() {
    let mut st = Store::new();
    let mut r = Req::new(&[DEV]);
    r.extra = vec![
        "User-Agent: LinphoneAndroid/5.2.0 (SM-A525F) LinphoneSDK/5.3.0",
        "Accept: application/sdp, text/plain;q=0.5",
        "Path: <sip:lb.mdtel.es;lr>",
    ];
    st.path.push("<sip:lb.mdtel.es;lr>".into());
    let a = st.local(&r, T0).unwrap();
    assert_eq!(a.set.len(), 1);
    assert!(a.del.is_empty() && !a.delete_all);
    assert_eq!(a.expire_at, Some(T0 + 3600));
    assert_eq!(a.publish, ("40004*01@sips.mdtel.es".into(), DEV_KEY.into()));
    let (k, v) = &a.set[0];
    assert_eq!(k, DEV_KEY);
    assert_eq!(
        v,
        "<sip:40004*01@79.146.86.86:33030;transport=tls;fs-conn-id=7f3a;callid=cid-1;\
         expires=3600;cseq=1;updatedAt=1764757800;alias=no;usedAsRoute=no\
         ?path=%3Csip%3Astg1.mdtel.es%3A5554%3Btransport%3Dtls%3Blr%3E%2C%3Csip%3Alb.mdtel.es%3Blr%3E\
         &accept=application/sdp%2Ctext/plain\
         &user-agent=LinphoneAndroid/5.2.0%20(SM-A525F)%20LinphoneSDK/5.3.0>\
         ;+sip.instance=\"<urn:uuid:aaaa>\";reg-id=1;pub-gruu"
    );
    let b = st.binding(DEV_KEY);
    assert_eq!(
        b.path,
        [
            "sip:stg1.mdtel.es:5554;transport=tls;lr",
            "sip:lb.mdtel.es;lr"
        ]
    );
    assert_eq!(b.accept, ["application/sdp", "text/plain"]);
    assert_eq!(a.bindings, vec![b]);
}

#[test]
fn refresh_replaces_under_the_same_field() {
    let mut st = Store::new();
    st.local(&Req::new(&[DEV]), T0).unwrap();
    let mut r = Req::new(&[DEV]);
    r.cseq = 2;
    r.call_id = "cid-2";
    r.expires = Some("600");
    let a = st.local(&r, T0 + 100).unwrap();
    assert_eq!(a.set.len(), 1);
    assert!(a.del.is_empty());
    assert_eq!(st.hash.len(), 1);
    let b = st.binding(DEV_KEY);
    assert_eq!(
        (b.cseq, b.call_id.as_str(), b.expires, b.updated_at),
        (2, "cid-2", 600, T0 + 100)
    );
}

#[test]
fn refresh_without_instance_keeps_the_generated_field() {
    let mut st = Store::new();
    let c = "<sip:bob@10.1.1.1:5060;transport=udp;x=1>";
    st.local(&Req::new(&[c]), T0).unwrap();
    let key = st.hash.keys().next().unwrap().clone();
    assert!(key.starts_with("fs-gen-"));
    let mut r = Req::new(&["<sip:bob@10.1.1.1:5060;transport=UDP;x=2>"]);
    r.cseq = 2;
    let a = st.local(&r, T0 + 10).unwrap();
    assert_eq!(a.set[0].0, key);
    assert_eq!(st.hash.len(), 1);
    // Another URI is another binding.
    let mut r = Req::new(&["<sip:bob@10.1.1.2:5060;transport=udp>"]);
    r.cseq = 3;
    st.local(&r, T0 + 20).unwrap();
    assert_eq!(st.hash.len(), 2);
}

#[test]
fn remove_with_expires_zero_and_star() {
    let mut st = Store::new();
    let other = "<sip:bob@10.1.1.1>";
    st.local(&Req::new(&[DEV, other]), T0).unwrap();
    assert_eq!(st.hash.len(), 2);
    let mut r = Req::new(&[DEV]);
    r.cseq = 2;
    r.expires = Some("0");
    let a = st.local(&r, T0 + 1).unwrap();
    assert_eq!(a.del, [DEV_KEY]);
    assert!(a.set.is_empty() && !a.delete_all);
    assert_eq!(st.hash.len(), 1);
    // Removing the last one deletes the hash.
    let mut r = Req::new(&["<sip:bob@10.1.1.1>;expires=0"]);
    r.cseq = 3;
    let a = st.local(&r, T0 + 2).unwrap();
    assert!(a.delete_all && a.expire_at.is_none() && a.bindings.is_empty());
    // Contact: * with Expires: 0.
    let mut r = Req::new(&[DEV]);
    r.cseq = 4;
    st.local(&r, T0 + 3).unwrap();
    let mut r = Req::new(&["*"]);
    r.cseq = 5;
    r.expires = Some("0");
    let a = st.local(&r, T0 + 4).unwrap();
    assert!(a.delete_all && a.set.is_empty());
    assert!(st.hash.is_empty());
}

#[test]
fn cseq_ordering_per_call_id() {
    let mut st = Store::new();
    let mut r = Req::new(&[DEV]);
    r.cseq = 5;
    st.local(&r, T0).unwrap();
    for (call_id, cseq, ok) in [
        ("cid-1", 5, false),
        ("cid-1", 4, false),
        ("cid-9", 1, true),
        ("cid-9", 2, true),
    ] {
        let mut r = Req::new(&[DEV]);
        r.call_id = call_id;
        r.cseq = cseq;
        let got = st.local(&r, T0 + 1);
        assert_eq!(got.is_ok(), ok, "{call_id} {cseq}");
        if let Err(e) = got {
            assert_eq!(e.status, 500);
        }
    }
    // Through mode: the PBX said yes, the stale contact is just not stored.
    let before = st.hash.clone();
    let mut r = Req::new(&[DEV]);
    r.call_id = "cid-9";
    r.cseq = 1;
    let a = st
        .run(&r, T0 + 2, Some(&ok_response("")), &Settings::default())
        .unwrap();
    assert!(a.set.is_empty());
    assert_eq!(st.hash, before);
}

#[test]
fn expiry_rules() {
    // (Expires header, contact param, granted or status)
    type Case<'a> = (Option<&'a str>, Option<&'a str>, Result<u32, u16>);
    let cases: &[Case<'_>] = &[
        (Some("3600"), None, Ok(3600)),
        (Some("3600"), Some("120"), Ok(120)),
        (None, None, Ok(3600)),
        (Some("999999"), None, Ok(86400)),
        (None, Some("4294967296"), Ok(86400)),
        (Some("30"), None, Err(423)),
        (Some("3600"), Some("59"), Err(423)),
        (Some("60"), None, Ok(60)),
    ];
    for (header, param, want) in cases {
        let c = match param {
            Some(p) => format!("{DEV};expires={p}"),
            None => DEV.to_owned(),
        };
        let mut r = Req::new(&[&c]);
        r.expires = *header;
        let got = Store::new().local(&r, T0);
        match (got, want) {
            (Ok(a), Ok(e)) => assert_eq!(a.bindings[0].expires, *e, "{header:?} {param:?}"),
            (Err(rej), Err(st)) => {
                assert_eq!(rej.status, *st);
                assert_eq!(rej.headers, vec![("Min-Expires", "60".to_owned())]);
            }
            (got, _) => panic!("{header:?} {param:?}: {got:?}"),
        }
    }
}

#[test]
fn max_contacts_evicts_the_oldest() {
    let s = Settings {
        max_contacts: 3,
        ..Settings::default()
    };
    let mut st = Store::new();
    for i in 0..5u64 {
        let c = format!("<sip:dev{i}@10.0.0.{i}>");
        let mut r = Req::new(&[]);
        r.contacts = vec![c];
        r.call_id = "x";
        r.cseq = 1 + i as u32;
        let a = st.run(&r, T0 + i, None, &s).unwrap();
        if i >= 3 {
            assert_eq!(a.del.len(), 1, "{i}");
        }
    }
    assert_eq!(st.hash.len(), 3);
    let mut users: Vec<_> = st
        .hash
        .iter()
        .map(|(k, v)| Binding::decode(k, v).unwrap().uri)
        .collect();
    users.sort();
    assert_eq!(
        users,
        [
            "sip:dev2@10.0.0.2",
            "sip:dev3@10.0.0.3",
            "sip:dev4@10.0.0.4"
        ]
    );
}

#[test]
fn same_push_token_evicts_the_older_binding() {
    let mut st = Store::new();
    let a = "<sip:u@1.1.1.1;pn-provider=fcm;pn-prid=TOK;pn-param=p>;+sip.instance=\"<urn:uuid:1>\"";
    let b = "<sip:u@2.2.2.2;pn-provider=fcm;pn-prid=TOK;pn-param=p>;+sip.instance=\"<urn:uuid:2>\"";
    let c =
        "<sip:u@3.3.3.3;pn-provider=fcm;pn-prid=OTHER;pn-param=p>;+sip.instance=\"<urn:uuid:3>\"";
    st.local(&Req::new(&[a]), T0).unwrap();
    let mut r = Req::new(&[c]);
    r.cseq = 2;
    st.local(&r, T0 + 1).unwrap();
    let mut r = Req::new(&[b]);
    r.cseq = 3;
    let applied = st.local(&r, T0 + 2).unwrap();
    assert_eq!(applied.del, ["\"<urn:uuid:1>\""]);
    let keys: Vec<_> = st.hash.keys().cloned().collect();
    assert_eq!(keys, ["\"<urn:uuid:2>\"", "\"<urn:uuid:3>\""]);
    // The legacy form of the same token is the same device.
    let legacy = "<sip:u@4.4.4.4;pn-type=firebase;pn-tok=TOK;app-id=p>";
    let mut r = Req::new(&[legacy]);
    r.cseq = 4;
    let applied = st.local(&r, T0 + 3).unwrap();
    assert_eq!(applied.del, ["\"<urn:uuid:2>\""]);
    // No instance: pn-tok is the field, as in Flexisip.
    assert!(st.hash.contains_key("TOK"));
}

#[test]
fn same_instance_other_reg_id_replaces() {
    let mut st = Store::new();
    st.local(&Req::new(&[DEV]), T0).unwrap();
    let flow2 = "<sip:40004*01@79.146.86.86:40000;transport=tls>;+sip.instance=\"<urn:uuid:aaaa>\";reg-id=2";
    let mut r = Req::new(&[flow2]);
    r.cseq = 2;
    let a = st.local(&r, T0 + 1).unwrap();
    assert_eq!(a.bindings.len(), 1);
    assert_eq!(a.bindings[0].reg_id(), Some(2));
    assert_eq!(st.hash.len(), 1);
    // Listed twice, the expires=0 duplicate of an instance is ignored.
    let mut r = Req::new(&[DEV, &format!("{flow2};expires=0")]);
    r.cseq = 3;
    let a = st.local(&r, T0 + 2).unwrap();
    assert_eq!(a.bindings.len(), 1);
    assert_eq!(a.bindings[0].reg_id(), Some(1));
}

#[test]
fn pub_gruu_and_outbound_in_the_answer() {
    let mut st = Store::new();
    let mut r = Req::new(&[DEV]);
    r.extra = vec!["Supported: path, gruu, outbound"];
    let reg = r.reg();
    let a = st.local(&r, T0).unwrap();
    let b = st.binding(DEV_KEY);
    assert_eq!(
        b.params.last().unwrap(),
        &(
            "pub-gruu".to_owned(),
            Some("\"sip:40004*01@sips.mdtel.es;gr=urn:uuid:aaaa\"".to_owned())
        )
    );
    let h = ok_headers(&reg, &a, T0 + 100);
    assert_eq!(
        h,
        vec![
            (
                "Contact",
                "<sip:40004*01@79.146.86.86:33030;transport=tls>;expires=3500;\
                 +sip.instance=\"<urn:uuid:aaaa>\";reg-id=1;\
                 pub-gruu=\"sip:40004*01@sips.mdtel.es;gr=urn:uuid:aaaa\""
                    .to_owned()
            ),
            ("Require", "outbound".to_owned()),
        ]
    );
    // Without Supported: an empty pub-gruu is stored and none is announced.
    let mut st = Store::new();
    let r = Req::new(&[DEV]);
    let a = st.local(&r, T0).unwrap();
    assert_eq!(
        st.binding(DEV_KEY).params.last().unwrap(),
        &("pub-gruu".to_owned(), None)
    );
    assert_eq!(
        ok_headers(&r.reg(), &a, T0),
        vec![(
            "Contact",
            "<sip:40004*01@79.146.86.86:33030;transport=tls>;expires=3600;\
             +sip.instance=\"<urn:uuid:aaaa>\";reg-id=1"
                .to_owned()
        )]
    );
}

#[test]
fn expired_bindings_are_purged_on_write_and_bad_values_kept() {
    let mut st = Store::new();
    let mut r = Req::new(&["<sip:old@1.1.1.1>"]);
    r.expires = Some("60");
    st.local(&r, T0).unwrap();
    st.hash.insert("junk".into(), "not a contact".into());
    let mut r = Req::new(&[DEV]);
    r.cseq = 2;
    let a = st.local(&r, T0 + 60).unwrap();
    assert_eq!(a.del.len(), 1);
    assert!(a.del[0].starts_with("fs-gen-"));
    assert!(st.hash.contains_key("junk"));
    let (live, bad) = live_bindings(&st.hash, T0 + 60);
    assert_eq!((live.len(), bad), (1, 1));
    // A fetch (no Contact) writes nothing but the purge.
    let (live, _) = live_bindings(&st.hash, T0 + 5000);
    assert!(live.is_empty());
}

#[test]
fn forged_bookkeeping_params_are_not_stored() {
    let mut st = Store::new();
    let c = "<sip:evil@1.1.1.1;expires=99999999;updatedAt=9999999999;fs-conn-id=1?x=y>";
    st.local(&Req::new(&[c]), T0).unwrap();
    let (k, v) = st.hash.iter().next().unwrap();
    let b = Binding::decode(k, v).unwrap();
    assert_eq!(
        (b.uri.as_str(), b.expires, b.updated_at),
        ("sip:evil@1.1.1.1", 3600, T0)
    );
}

#[test]
fn through_mode_stores_what_the_pbx_granted() {
    let s = Settings::default();
    let pushy = "<sip:u@1.1.1.1;transport=tls;pn-provider=fcm;pn-prid=T;pn-param=p;pn-silent=1>;\
                 +sip.instance=\"<urn:uuid:1>\"";
    let mut r = Req::new(&[pushy, "\"Bob\" <sip:bob@2.2.2.2>;q=0.5"]);
    r.expires = Some("30"); // below min: only local mode refuses it
    let reg = r.reg();
    assert_eq!(
        upstream_contacts(&reg, &s),
        [
            "<sip:u@1.1.1.1;transport=tls>;+sip.instance=\"<urn:uuid:1>\"",
            "\"Bob\" <sip:bob@2.2.2.2>;q=0.5"
        ]
    );
    let keep = Settings {
        strip_push_params: false,
        ..Settings::default()
    };
    assert_eq!(upstream_contacts(&reg, &keep)[0], pushy);

    let resp = ok_response(
        "Contact: <sip:u@1.1.1.1;transport=tls>;expires=120\r\n\
         Contact: <sip:someone@9.9.9.9>;expires=50\r\nExpires: 300\r\n",
    );
    let mut st = Store::new();
    let a = st.run(&r, T0, Some(&resp), &s).unwrap();
    let mut got: Vec<_> = a
        .bindings
        .iter()
        .map(|b| (b.uri.clone(), b.expires))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("sip:bob@2.2.2.2".to_owned(), 300),
            (
                "sip:u@1.1.1.1;transport=tls;pn-provider=fcm;pn-prid=T;pn-param=p;pn-silent=1"
                    .to_owned(),
                120
            )
        ]
    );
    // A granted 0 removes.
    let mut r2 = Req::new(&[pushy]);
    r2.cseq = 2;
    let resp = ok_response("Contact: <sip:u@1.1.1.1;transport=tls>;expires=0\r\n");
    let a = st.run(&r2, T0 + 1, Some(&resp), &s).unwrap();
    assert_eq!(a.del, ["\"<urn:uuid:1>\""]);
    // Not a 2xx: nothing to store.
    let bad = Message::parse(Bytes::from_static(
        b"SIP/2.0 403 Forbidden\r\nVia: SIP/2.0/TLS 10.0.0.1;branch=z9hG4bK-1\r\n\
          From: <sip:a@b>;tag=a\r\nTo: <sip:a@b>;tag=b\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\
          Content-Length: 0\r\n\r\n",
    ))
    .unwrap();
    assert!(st.run(&r2, T0 + 2, Some(&bad), &s).is_err());
    assert_eq!(
        upstream_contacts(
            &Req {
                expires: Some("0"),
                ..Req::new(&["*"])
            }
            .reg(),
            &s
        ),
        ["*"]
    );
}

#[test]
fn domain_registration_is_used_as_route() {
    let mut st = Store::new();
    let mut r = Req::new(&["<sip:pbx.example:5060>"]);
    r.from = "sip:example.com";
    let a = st.local(&r, T0).unwrap();
    assert_eq!(a.publish.0, "example.com");
    assert!(a.bindings[0].used_as_route);
}

// === what a hostile device may send ===

fn status_of(m: &Message) -> Option<u16> {
    parse_register(m, &Settings::default())
        .err()
        .map(|e| e.status)
}

#[test]
fn third_party_registration_is_refused() {
    // Keyed by From, bound by To at the PBX: the two must name the same AOR.
    let r = Req::new(&[DEV]);
    let text = String::from_utf8(r.message().raw().to_vec())
        .unwrap()
        .replace(
            "To: <sip:40004*01@sips.mdtel.es>",
            "To: <sip:mallory@sips.mdtel.es>",
        );
    assert_eq!(
        status_of(&Message::parse(Bytes::from(text)).unwrap()),
        Some(403)
    );
    let text = String::from_utf8(r.message().raw().to_vec())
        .unwrap()
        .replace(
            "To: <sip:40004*01@sips.mdtel.es>",
            "To: <sip:40004*01@other.example>",
        );
    assert_eq!(
        status_of(&Message::parse(Bytes::from(text)).unwrap()),
        Some(403)
    );
    // Host case does not matter (RFC 3261 §19.1.4).
    let text = String::from_utf8(r.message().raw().to_vec())
        .unwrap()
        .replace(
            "To: <sip:40004*01@sips.mdtel.es>",
            "To: <sip:40004*01@SIPS.mdtel.es>",
        );
    assert_eq!(status_of(&Message::parse(Bytes::from(text)).unwrap()), None);
}

#[test]
fn oversized_registrations_are_refused_before_any_merge() {
    let many: Vec<String> = (0..11).map(|i| format!("<sip:a{i}@h>")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(status_of(&Req::new(&refs).message()), Some(403));
    let long = format!("<sip:a@h;x={}>", "A".repeat(2000));
    assert_eq!(status_of(&Req::new(&[&long]).message()), Some(400));
    // An instance that would break the quoted pub-gruu built from it.
    for bad in [
        "<sip:a@h>;+sip.instance=\"<i1\\>\"",
        "<sip:a@h>;+sip.instance=\"<>\"",
    ] {
        assert_eq!(status_of(&Req::new(&[bad]).message()), Some(400), "{bad}");
    }
    let mut r = Req::new(&[DEV]);
    let ua = format!("User-Agent: {}", "U".repeat(5000));
    r.extra = vec![Box::leak(ua.into_boxed_str())];
    let reg = r.reg();
    assert_eq!(reg.user_agent.map(|u| u.len()), Some(256));
}

#[test]
fn through_mode_bounds_the_devices_own_expiry() {
    // The PBX said nothing about expiry: the device's wish is capped like in local mode.
    let mut r = Req::new(&[DEV]);
    r.expires = Some("4294967295");
    let mut st = Store::new();
    let reg = r.reg();
    let path = st.path.clone();
    let origin = Origin {
        conn_id: "tok",
        path: &path,
        now: T0,
    };
    let ok = ok_response("");
    let a = apply(
        &st.hash,
        &reg,
        &origin,
        Some(&ok),
        &Settings::default(),
        &mut st.rng,
    )
    .unwrap();
    assert_eq!(a.bindings[0].expires, 86_400);
}

#[test]
fn accept_values_that_would_not_read_back_are_not_stored() {
    // Found by the `registrar` fuzz target: a vertical tab after a media type survived the
    // REGISTER's trim, was stored escaped, and decoded trimmed.
    let mut r = Req::new(&[DEV]);
    r.extra = vec!["Accept: application/sdp, text/plain\u{b}\u{b}, x y/z"];
    let reg = r.reg();
    assert_eq!(reg.accept, vec!["application/sdp"]);
}
