//! The routing step: registrations (`through` and `local`) and calls located in the
//! registrar's bindings, on fake time. The shell's part (the registrar, the store) is played
//! by hand: each `Output::Register`/`Output::Locate` is answered as the shell would.

use bytes::Bytes;
use stg_sip_msg::{Message, Method, StatusCode};

use super::*;
use crate::proxy::{Located, OpId, RegisterAnswer, RegistrarDomain, RegistrarMode, Registration};

fn with_registrar(mut cfg: ProxyConfig, domain: &str, mode: RegistrarMode) -> ProxyConfig {
    cfg.registrar = vec![RegistrarDomain {
        domain: domain.into(),
        mode,
        authenticate: false,
    }];
    cfg
}

fn through() -> Sim {
    Sim::new(with_registrar(tcp_upstream(), "*", RegistrarMode::Through))
}

/// The device's REGISTER, its Contact carrying RFC 8599 push parameters.
fn register() -> Req {
    req("REGISTER", "sip:example.com")
        .to("<sip:alice@example.com>")
        .header("Contact: <sip:alice@192.168.1.10:5060;pn-provider=fcm;pn-prid=tok;pn-param=proj>;+sip.instance=\"<urn:uuid:1>\";reg-id=1")
        .header("Expires: 3600")
        .header("Supported: outbound, path")
        .header("User-Agent: test-device/1.0 with a long enough name to outweigh our answers")
}

fn registrations(outs: &[Output]) -> Vec<Registration> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Register(r) => Some((**r).clone()),
            _ => None,
        })
        .collect()
}

fn locates(outs: &[Output]) -> Vec<(OpId, String)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Locate { id, aor } => Some((*id, aor.clone())),
            _ => None,
        })
        .collect()
}

impl Sim {
    fn registered(&mut self, id: OpId, answer: RegisterAnswer) -> Vec<Output> {
        self.proxy.handle_register(id, answer, self.now);
        drain(&mut self.proxy)
    }

    fn located(&mut self, id: OpId, result: Result<&[Located], ()>) -> Vec<Output> {
        self.proxy.handle_located(id, result, self.now);
        drain(&mut self.proxy)
    }
}

fn header(m: &Message, name: &str) -> Vec<String> {
    m.header_values_by_name(name.as_bytes())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// The device's token as the proxy mints it (the tests' key is `[7; 16]`).
fn device_token() -> String {
    FlowTokens::new([7; 16]).encode(&device().flow)
}

/// Registers the device in `through` mode up to the PBX's 2xx; returns the sim, the
/// REGISTER as the PBX got it and the registration waiting to be stored.
fn through_until_2xx() -> (Sim, Message, Registration) {
    let mut sim = through();
    let outs = sim.input(device(), register().build());
    nothing_sent(&outs);
    let r = registrations(&outs);
    assert_eq!(r.len(), 1, "the REGISTER goes to the registrar first");
    assert_eq!(r[0].mode, RegistrarMode::Through);
    assert!(r[0].response.is_none());
    assert_eq!(r[0].flow, device().flow);
    assert_eq!(r[0].flow_token, device_token());
    let contacts = vec![Bytes::from_static(
        b"<sip:alice@192.168.1.10:5060>;+sip.instance=\"<urn:uuid:1>\";reg-id=1",
    )];
    let outs = sim.registered(r[0].id, RegisterAnswer::Forward { contacts });
    let (flow, fwd) = only(&outs);
    assert_eq!(flow.remote, addr(PBX));
    assert_eq!(fwd.method(), Some(Method::Register));

    let outs = sim.input(
        pbx_tcp(),
        fwd.response(
            StatusCode::OK,
            None,
            Some(b"pbx"),
            None,
            &[("Contact", b"<sip:alice@192.168.1.10:5060>;expires=600")],
        ),
    );
    nothing_sent(&outs);
    let mut r = registrations(&outs);
    assert_eq!(
        r.len(),
        1,
        "the PBX's 2xx is held until the binding is stored"
    );
    let r = r.remove(0);
    assert_eq!(
        r.response.as_ref().and_then(Message::status),
        Some(StatusCode::OK)
    );
    (sim, fwd, r)
}

#[test]
fn through_register_carries_our_path_and_the_registrars_contacts() {
    let (_, fwd, r) = through_until_2xx();
    let path = header(&fwd, "Path");
    assert_eq!(path.len(), 1, "one Path, ours: {path:?}");
    // The inside listener the PBX reaches us on, the device's flow as user part, `ob`.
    assert_eq!(
        path[0],
        format!("<sip:{}@10.0.0.1:5060;transport=tcp;lr;ob>", device_token())
    );
    assert_eq!(
        &r.path[..],
        path[0].as_bytes(),
        "the Path stored is the one sent"
    );
    let contact = header(&fwd, "Contact");
    assert_eq!(
        contact,
        vec!["<sip:alice@192.168.1.10:5060>;+sip.instance=\"<urn:uuid:1>\";reg-id=1"],
        "push parameters are not the PBX's business"
    );
    // Everything else is as the device sent it.
    assert_eq!(header(&fwd, "Expires"), vec!["3600"]);
    assert_eq!(header(&fwd, "User-Agent").len(), 1);
}

#[test]
fn through_register_answers_the_device_once_the_binding_is_stored() {
    let (mut sim, _, r) = through_until_2xx();
    let contact = Bytes::from_static(
        b"<sip:alice@192.168.1.10:5060;pn-provider=fcm;pn-prid=tok;pn-param=proj>;expires=600",
    );
    let outs = sim.registered(
        r.id,
        RegisterAnswer::Respond {
            status: StatusCode::OK,
            headers: vec![("Contact", contact.clone())],
        },
    );
    let (flow, ok) = only(&outs);
    assert_eq!(flow, device().flow);
    assert_eq!(ok.status(), Some(StatusCode::OK));
    // The device sees its own Contact back (with the PBX's expiry), not the PBX's view.
    assert_eq!(
        header(&ok, "Contact"),
        vec![String::from_utf8_lossy(&contact)]
    );
    assert_eq!(ok.via_count(), 1, "our Via is removed");
    sim.settle();
    assert_idle(&sim);
}

#[test]
fn through_register_whose_binding_is_not_stored_gets_503_not_the_pbxs_2xx() {
    let (mut sim, _, r) = through_until_2xx();
    let outs = sim.registered(
        r.id,
        RegisterAnswer::Respond {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: vec![("Retry-After", Bytes::from_static(b"5"))],
        },
    );
    let (_, resp) = only(&outs);
    assert_eq!(resp.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(header(&resp, "Retry-After"), vec!["5"]);
    sim.settle();
    assert_idle(&sim);
}

#[test]
fn through_register_the_pbx_challenges_is_passed_back_and_nothing_is_stored() {
    let mut sim = through();
    let outs = sim.input(device(), register().build());
    let r = registrations(&outs).remove(0);
    let outs = sim.registered(
        r.id,
        RegisterAnswer::Forward {
            contacts: Vec::new(),
        },
    );
    let (_, fwd) = only(&outs);
    let challenge = fwd.response(
        StatusCode(401),
        None,
        Some(b"pbx"),
        None,
        &[(
            "WWW-Authenticate",
            b"Digest realm=\"example.com\", nonce=\"abc\"",
        )],
    );
    let outs = sim.input(pbx_tcp(), challenge);
    assert!(registrations(&outs).is_empty(), "no binding for a 401");
    let (flow, resp) = only(&outs);
    assert_eq!(flow, device().flow);
    assert_eq!(code(&resp), 401);
    assert_eq!(header(&resp, "WWW-Authenticate").len(), 1);
}

#[test]
fn registrar_rejection_is_answered_without_going_upstream() {
    let mut sim = through();
    let outs = sim.input(device(), register().build());
    let r = registrations(&outs).remove(0);
    let outs = sim.registered(
        r.id,
        RegisterAnswer::Respond {
            status: StatusCode(423),
            headers: vec![("Min-Expires", Bytes::from_static(b"60"))],
        },
    );
    let (flow, resp) = only(&outs);
    assert_eq!(flow, device().flow);
    assert_eq!(code(&resp), 423);
    assert_eq!(header(&resp, "Min-Expires"), vec!["60"]);
    sim.settle();
    assert_idle(&sim);
}

#[test]
fn local_register_is_answered_by_the_node() {
    let mut sim = Sim::new(with_registrar(
        tcp_upstream(),
        "example.com",
        RegistrarMode::Local,
    ));
    let outs = sim.input(device(), register().build());
    nothing_sent(&outs);
    let r = registrations(&outs).remove(0);
    assert_eq!(r.mode, RegistrarMode::Local);
    // The node's inside listener names where calls for the device come back to.
    assert_eq!(
        &r.path[..],
        format!("<sip:{}@10.0.0.1:5060;transport=tcp;lr;ob>", device_token()).as_bytes()
    );
    let outs = sim.registered(
        r.id,
        RegisterAnswer::Respond {
            status: StatusCode::OK,
            headers: vec![(
                "Contact",
                Bytes::from_static(b"<sip:alice@192.168.1.10:5060>;expires=3600"),
            )],
        },
    );
    let (flow, ok) = only(&outs);
    assert_eq!(flow, device().flow);
    assert_eq!(code(&ok), 200);
    assert!(ok.to_tag().is_some());
    sim.settle();
    assert_idle(&sim);
}

#[test]
fn register_for_a_domain_the_node_does_not_register_is_just_forwarded() {
    let mut sim = Sim::new(with_registrar(
        tcp_upstream(),
        "other.example",
        RegistrarMode::Local,
    ));
    let outs = sim.input(device(), register().build());
    assert!(registrations(&outs).is_empty());
    let (flow, fwd) = only(&outs);
    assert_eq!(flow.remote, addr(PBX));
    assert!(header(&fwd, "Path").is_empty());
}

#[test]
fn registration_the_shell_never_answers_ends_within_the_clients_patience() {
    let mut sim = through();
    let outs = sim.input(device(), register().build());
    let r = registrations(&outs).remove(0);
    let log = sim.settle();
    let s = sent_log(&log);
    assert_eq!(s.len(), 1, "one final answer");
    assert_eq!(code(&s[0].2), 408);
    // Before the device's timer F (64·T1 = 32 s) gives up.
    assert!(s[0].0 <= 16_000, "answered at {} ms", s[0].0);
    // A late answer finds nothing.
    let outs = sim.registered(
        r.id,
        RegisterAnswer::Forward {
            contacts: Vec::new(),
        },
    );
    nothing_sent(&outs);
    sim.settle();
    assert_idle(&sim);
}

// === calls for registered devices ===

fn located_domain() -> Sim {
    Sim::new(with_registrar(
        tcp_upstream(),
        "example.com",
        RegistrarMode::Through,
    ))
}

/// The PBX calls alice at her AOR (a static route to stg).
fn pbx_invite() -> Req {
    req("INVITE", "sip:alice@example.com")
        .via("SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK-pbx-1")
        .from("<sip:bob@example.com>;tag=pbx")
        .to("<sip:alice@example.com>")
        .header(&format!("Contact: <{PBX_CONTACT}>"))
}

/// Sends the PBX's INVITE: a 100 back and one location question, nothing else.
fn start_located_call(sim: &mut Sim) -> OpId {
    let outs = sim.input(pbx_tcp(), pbx_invite().build());
    let (flow, trying) = only(&outs);
    assert_eq!(flow.remote, addr(PBX));
    assert_eq!(code(&trying), 100);
    let l = locates(&outs);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].1, "alice@example.com");
    l[0].0
}

#[test]
fn call_to_an_aor_goes_over_the_flow_its_binding_recorded() {
    let mut sim = located_domain();
    let op = start_located_call(&mut sim);
    let target = Located {
        uri: Bytes::from_static(DEVICE_CONTACT.as_bytes()),
        conn: Some(device_token()),
        path: Vec::new(),
        key: Bytes::from_static(b"k1"),
        wake: None,
    };
    let outs = sim.located(op, Ok(&[target]));
    let (flow, fwd) = only(&outs);
    assert_eq!(flow, device().flow, "exactly the device's flow");
    assert_eq!(fwd.request_uri_bytes(), DEVICE_CONTACT.as_bytes());
    assert_eq!(fwd.method(), Some(Method::Invite));
    // The dialog is record-routed as any call is.
    assert!(!record_routes(&fwd).is_empty());
}

#[test]
fn several_bindings_fork_one_branch_each() {
    let mut sim = located_domain();
    let op = start_located_call(&mut sim);
    let other = FlowTokens::new([7; 16]).encode(&outside(OTHER).flow);
    let targets = [
        Located {
            uri: Bytes::from_static(DEVICE_CONTACT.as_bytes()),
            conn: Some(device_token()),
            path: Vec::new(),
            key: Bytes::from_static(b"k1"),
            wake: None,
        },
        Located {
            uri: Bytes::from_static(b"sip:alice@10.9.9.9:5060"),
            conn: Some(other),
            path: Vec::new(),
            key: Bytes::from_static(b"k1"),
            wake: None,
        },
    ];
    let s = sent(&sim.located(op, Ok(&targets)));
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].0, device().flow);
    assert_eq!(s[1].0, outside(OTHER).flow);
    assert_eq!(s[1].1.request_uri_bytes(), b"sip:alice@10.9.9.9:5060");
}

#[test]
fn nobody_registered_is_404_and_a_dead_binding_is_480() {
    for (targets, want) in [
        (Vec::new(), 404),
        (
            vec![Located {
                uri: Bytes::from_static(DEVICE_CONTACT.as_bytes()),
                // Minted by another process (another key): it names nothing here.
                conn: Some(FlowTokens::new([8; 16]).encode(&device().flow)),
                path: Vec::new(),
                key: Bytes::from_static(b"k1"),
                wake: None,
            }],
            480,
        ),
        (
            vec![Located {
                uri: Bytes::from_static(DEVICE_CONTACT.as_bytes()),
                conn: None,
                path: Vec::new(),
                key: Bytes::from_static(b"k1"),
                wake: None,
            }],
            480,
        ),
    ] {
        let mut sim = located_domain();
        let op = start_located_call(&mut sim);
        let (flow, resp) = only(&sim.located(op, Ok(&targets)));
        assert_eq!(flow.remote, addr(PBX));
        assert_eq!(code(&resp), want);
        sim.settle();
        assert_idle(&sim);
    }
}

#[test]
fn a_store_failure_is_503() {
    let mut sim = located_domain();
    let op = start_located_call(&mut sim);
    let (_, resp) = only(&sim.located(op, Err(())));
    assert_eq!(code(&resp), 503);
}

#[test]
fn a_binding_whose_connection_is_gone_is_480() {
    let mut sim = located_domain();
    let op = start_located_call(&mut sim);
    let target = Located {
        uri: Bytes::from_static(DEVICE_CONTACT.as_bytes()),
        conn: Some(device_token()),
        path: Vec::new(),
        key: Bytes::from_static(b"k1"),
        wake: None,
    };
    let outs = sim.located(op, Ok(&[target]));
    let (_, _, r) = tracked_send(&outs);
    let (_, resp) = only(&sim.send_failed(r));
    assert_eq!(code(&resp), 480);
}

#[test]
fn a_lookup_answered_after_the_cancel_makes_no_branch() {
    let mut sim = located_domain();
    let op = start_located_call(&mut sim);
    let cancel = pbx_invite().cancel();
    let s = sent(&sim.input(pbx_tcp(), cancel.build()));
    let codes: Vec<u16> = s.iter().map(|(_, m)| code(m)).collect();
    assert_eq!(
        codes,
        vec![200, 487],
        "200 for the CANCEL, 487 for the INVITE"
    );
    let target = Located {
        uri: Bytes::from_static(DEVICE_CONTACT.as_bytes()),
        conn: Some(device_token()),
        path: Vec::new(),
        key: Bytes::from_static(b"k1"),
        wake: None,
    };
    nothing_sent(&sim.located(op, Ok(&[target])));
    sim.settle();
    assert_idle(&sim);
}

#[test]
fn a_lookup_that_never_answers_ends_with_timer_c() {
    let mut sim = located_domain();
    let op = start_located_call(&mut sim);
    let log = sim.settle();
    let s = sent_log(&log);
    let finals: Vec<_> = s.iter().filter(|(_, _, m)| code(m) >= 200).collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(code(&finals[0].2), 408);
    assert_eq!(finals[0].0, 180_000, "timer C");
    let target = Located {
        uri: Bytes::from_static(DEVICE_CONTACT.as_bytes()),
        conn: Some(device_token()),
        path: Vec::new(),
        key: Bytes::from_static(b"k1"),
        wake: None,
    };
    nothing_sent(&sim.located(op, Ok(&[target])));
    assert_idle(&sim);
}

#[test]
fn a_call_along_our_path_is_looked_up_then_takes_the_devices_flow() {
    let (mut sim, fwd, _) = through_until_2xx();
    let path = header(&fwd, "Path").remove(0);
    let inv = req("INVITE", DEVICE_CONTACT)
        .via("SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK-pbx-2")
        .from("<sip:bob@example.com>;tag=pbx")
        .to("<sip:alice@example.com>")
        .call_id("pbx-call-2")
        .header(&format!("Route: {path}"));
    let outs = sim.input(pbx_tcp(), inv.build());
    // The binding is read for its push parameters (the device may be asleep).
    let l = locates(&outs);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].1, "alice@example.com");
    assert!(sent(&outs).iter().all(|(f, _)| *f != device().flow));
    // A store with nothing (or failing) still gets the call to the Path's flow.
    let outs = sim.located(l[0].0, Ok(&[]));
    let s = sent(&outs);
    let to_device: Vec<_> = s.iter().filter(|(f, _)| *f == device().flow).collect();
    assert_eq!(to_device.len(), 1);
    assert_eq!(
        to_device[0].1.request_uri_bytes(),
        DEVICE_CONTACT.as_bytes(),
        "the PBX's Request-URI"
    );
    assert!(
        to_device[0].1.routes().next().is_none(),
        "our Path entry is consumed"
    );
}

#[test]
fn a_call_along_our_path_to_a_device_whose_connection_is_gone_pushes_it() {
    let (mut sim, fwd, _) = through_until_2xx();
    let path = header(&fwd, "Path").remove(0);
    let inv = req("INVITE", DEVICE_CONTACT)
        .via("SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK-pbx-3")
        .from("<sip:bob@example.com>;tag=pbx")
        .to("<sip:alice@example.com>")
        .call_id("pbx-call-3")
        .header(&format!("Route: {path}"));
    let outs = sim.input(pbx_tcp(), inv.build());
    let l = locates(&outs);
    let stored = Located {
        uri: Bytes::from_static(
            b"sip:alice@192.168.1.10:5060;pn-provider=fcm;pn-prid=tok;pn-param=proj",
        ),
        conn: Some(device_token()),
        path: vec![Bytes::from(path.clone())],
        key: Bytes::from_static(b"\"<urn:uuid:1>\""),
        wake: Some(crate::proxy::Wake::default()),
    };
    // Another binding of the AOR (another device) is not this Path's: not called.
    let other = Located {
        uri: Bytes::from_static(b"sip:alice@10.9.9.9:5060"),
        conn: Some(FlowTokens::new([7; 16]).encode(&outside(OTHER).flow)),
        path: Vec::new(),
        key: Bytes::from_static(b"k2"),
        wake: None,
    };
    let outs = sim.located(l[0].0, Ok(&[other, stored]));
    assert!(sent(&outs).iter().all(|(f, _)| f.remote != addr(OTHER)));
    let (_, _, r) = tracked_send(&outs);
    let outs = sim.send_failed(r);
    let pushes: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Push(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(pushes.len(), 1, "the device is pushed, not answered 480");
    assert!(pushes[0]
        .contact
        .starts_with(b"sip:alice@192.168.1.10:5060;pn-provider=fcm"));
}

#[test]
fn an_ack_for_an_aor_is_not_looked_up() {
    let mut sim = located_domain();
    let ack = req("ACK", "sip:alice@example.com")
        .via("SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK-pbx-ack")
        .in_dialog("x");
    let outs = sim.input(pbx_tcp(), ack.build());
    assert!(locates(&outs).is_empty());
    nothing_sent(&outs);
}

#[test]
fn a_binding_held_by_another_node_is_reached_through_its_path() {
    let mut cfg = with_registrar(tcp_upstream(), "example.com", RegistrarMode::Through);
    cfg.allowed_destinations = vec![crate::net::IpNetwork {
        addr: "10.0.0.0".parse().unwrap(),
        prefix_len: 8,
    }];
    let mut sim = Sim::new(cfg);
    let op = start_located_call(&mut sim);
    // A Flexisip node's binding: its own connection id, its own Path.
    let target = Located {
        uri: Bytes::from_static(b"sip:alice@79.146.86.86:33030;transport=tls"),
        conn: Some("169505b8df5e2d3".into()),
        path: vec![
            Bytes::from_static(b"<sip:10.0.0.9:5556;transport=tcp;fs-proxy-id=ab;lr>"),
            Bytes::from_static(b"<sips:10.0.0.9:5554;lr>"),
        ],
        key: Bytes::from_static(b"k1"),
        wake: None,
    };
    let (flow, fwd) = only(&sim.located(op, Ok(&[target])));
    assert_eq!(flow.remote, addr("10.0.0.9:5556"));
    assert_eq!(flow.transport, Transport::Tcp);
    assert_eq!(
        fwd.request_uri_bytes(),
        b"sip:alice@79.146.86.86:33030;transport=tls"
    );
    let routes: Vec<String> = fwd
        .routes()
        .map(|r| String::from_utf8_lossy(r.raw).into_owned())
        .collect();
    assert_eq!(
        routes,
        vec![
            "<sip:10.0.0.9:5556;transport=tcp;fs-proxy-id=ab;lr>",
            "<sips:10.0.0.9:5554;lr>"
        ]
    );
}

#[test]
fn a_path_to_loopback_is_refused_by_the_destination_filter() {
    let mut sim = located_domain();
    let op = start_located_call(&mut sim);
    let target = Located {
        uri: Bytes::from_static(DEVICE_CONTACT.as_bytes()),
        conn: None,
        path: vec![Bytes::from_static(b"<sip:127.0.0.1:6379;lr>")],
        key: Bytes::from_static(b"k1"),
        wake: None,
    };
    let (_, resp) = only(&sim.located(op, Ok(&[target])));
    assert_eq!(code(&resp), 403);
}

#[test]
fn a_path_of_this_node_with_a_dead_token_is_480() {
    let mut sim = located_domain();
    let op = start_located_call(&mut sim);
    let stale = FlowTokens::new([8; 16]).encode(&device().flow);
    let target = Located {
        uri: Bytes::from_static(DEVICE_CONTACT.as_bytes()),
        conn: Some(stale.clone()),
        path: vec![Bytes::from(format!(
            "<sip:{stale}@10.0.0.1:5060;transport=tcp;lr;ob>"
        ))],
        key: Bytes::from_static(b"k1"),
        wake: None,
    };
    let (_, resp) = only(&sim.located(op, Ok(&[target])));
    assert_eq!(code(&resp), 480);
}

#[test]
fn a_path_the_device_wrote_never_reaches_the_pbx() {
    let mut sim = through();
    let reg = register().header("Path: <sip:evil.example.net;lr>");
    let r = registrations(&sim.input(device(), reg.build())).remove(0);
    let (_, fwd) = only(&sim.registered(
        r.id,
        RegisterAnswer::Forward {
            contacts: Vec::new(),
        },
    ));
    let path = header(&fwd, "Path");
    assert_eq!(path.len(), 1, "{path:?}");
    assert!(path[0].contains("10.0.0.1:5060"));
}

/// The device over TCP (a connection it opened: its address is not spoofed).
fn device_tcp() -> Inbound {
    Inbound {
        flow: Flow {
            listener: ListenerId(1),
            transport: Transport::Tcp,
            remote: addr(DEVICE),
            conn: Some(ConnId(3)),
        },
        side: Side::Outside,
    }
}

#[test]
fn credentials_the_pbx_refuses_are_an_authentication_failure() {
    let mut sim = Sim::new(tcp_upstream());
    let cases = [
        ("without", device_tcp(), false, "", 0),
        ("with", device_tcp(), true, "", 1),
        // A stale challenge: right credentials, an expired nonce.
        ("stale", device_tcp(), true, ", stale=true", 0),
        // Over UDP the source may be a spoofed victim: it never got nonce "n".
        ("udp", device(), true, "", 0),
    ];
    for (id, from, creds, stale, want) in cases {
        let mut inv = invite().call_id(id).branch(&format!("z9hG4bK-{id}"));
        if creds {
            inv = inv.header("Proxy-Authorization: Digest username=\"alice\", realm=\"x\"");
        }
        let s = sent(&sim.input(from, inv.build()));
        let fwd = s
            .iter()
            .find(|(f, _)| f.remote == addr(PBX))
            .expect("forwarded")
            .1
            .clone();
        let challenge = format!("Digest realm=\"x\", nonce=\"n\"{stale}");
        let resp = fwd.response(
            StatusCode(407),
            None,
            Some(b"callee"),
            None,
            &[("Proxy-Authenticate", challenge.as_bytes())],
        );
        let outs = sim.input(pbx_tcp(), resp);
        let failures: Vec<_> = events(&outs)
            .into_iter()
            .filter(|e| matches!(e, Event::AuthRejected { proven: true, .. }))
            .collect();
        assert_eq!(failures.len(), want, "{id}");
        if let Some(Event::AuthRejected {
            remote,
            status,
            credentials,
            ..
        }) = failures.first()
        {
            assert_eq!(*remote, addr(DEVICE));
            assert_eq!(status.0, 407);
            assert!(credentials.starts_with(b"Digest username=\"alice\""));
        }
    }
}

#[test]
fn identities_a_device_asserts_are_removed() {
    let mut sim = Sim::new(tcp_upstream());
    let inv = invite()
        .header("P-Asserted-Identity: <sip:ceo@example.com>")
        .header("Remote-Party-ID: <sip:ceo@example.com>;party=calling");
    let s = sent(&sim.input(device(), inv.build()));
    let fwd = &s[1].1;
    assert!(header(fwd, "P-Asserted-Identity").is_empty());
    assert!(header(fwd, "Remote-Party-ID").is_empty());
    // A REGISTER's own Path is never passed on, registrar or not.
    let reg = register()
        .branch("z9hG4bK-plain-reg")
        .header("Path: <sip:10.0.0.7;lr>");
    let s = sent(&sim.input(device(), reg.build()));
    let (_, fwd) = s
        .iter()
        .find(|(f, _)| f.remote == addr(PBX))
        .expect("forwarded");
    assert!(header(fwd, "Path").is_empty());
}

#[test]
fn a_domain_that_asks_for_digest_gets_its_calls_checked_before_they_go_upstream() {
    let mut cfg = with_registrar(tcp_upstream(), "example.com", RegistrarMode::Local);
    cfg.registrar[0].authenticate = true;
    let mut sim = Sim::new(cfg);
    // No credentials: the shell answers 407.
    let outs = sim.input(device(), invite().realistic().build());
    let (_, trying) = only(&outs);
    assert_eq!(code(&trying), 100);
    let op = authorizations(&outs)[0];
    sim.proxy.handle_authorized(
        op,
        crate::proxy::Authorization::Deny {
            status: StatusCode(407),
            headers: vec![(
                "Proxy-Authenticate",
                Bytes::from_static(b"Digest realm=\"example.com\", nonce=\"n\", qop=\"auth\""),
            )],
        },
        sim.now,
    );
    let (flow, resp) = only(&drain(&mut sim.proxy));
    assert_eq!(flow, device().flow);
    assert_eq!(code(&resp), 407);
    assert_eq!(header(&resp, "Proxy-Authenticate").len(), 1);

    // With credentials that check: upstream, without them.
    let inv = invite()
        .branch("z9hG4bK-dev-2")
        .cseq(2)
        .header("Proxy-Authorization: Digest username=\"alice\", realm=\"example.com\"");
    let outs = sim.input(device(), inv.build());
    let op = authorizations(&outs)[0];
    sim.proxy
        .handle_authorized(op, crate::proxy::Authorization::Allow, sim.now);
    let (flow, fwd) = only(&drain(&mut sim.proxy));
    assert_eq!(flow.remote, addr(PBX));
    assert!(header(&fwd, "Proxy-Authorization").is_empty());
    assert_eq!(header(&fwd, "Contact").len(), 1, "the rest is untouched");
}

#[test]
fn a_domain_that_does_not_ask_for_digest_is_not_checked() {
    let mut sim = Sim::new(with_registrar(
        tcp_upstream(),
        "example.com",
        RegistrarMode::Local,
    ));
    let outs = sim.input(device(), invite().build());
    assert!(authorizations(&outs).is_empty());
    assert_eq!(sent(&outs).len(), 2, "100 and the INVITE upstream");
}

#[test]
fn a_challenge_larger_than_a_udp_request_is_not_sent() {
    let mut sim = Sim::new(with_registrar(
        tcp_upstream(),
        "example.com",
        RegistrarMode::Local,
    ));
    // A bare REGISTER from a possibly spoofed UDP source: more than three times its size.
    let tiny = req("REGISTER", "sip:example.com").to("<sip:alice@example.com>");
    let outs = sim.input(device(), tiny.build());
    let r = registrations(&outs).remove(0);
    let big = |n: usize| {
        Bytes::from(format!(
            "Digest realm=\"example.com\", nonce=\"{}\"",
            "n".repeat(n)
        ))
    };
    let outs = sim.registered(
        r.id,
        RegisterAnswer::Respond {
            status: StatusCode(401),
            headers: vec![
                ("WWW-Authenticate", big(900)),
                ("WWW-Authenticate", big(900)),
            ],
        },
    );
    nothing_sent(&outs);
    sim.settle();
    assert_idle(&sim);

    // A real device's REGISTER is larger: it gets its challenge, as many as fit.
    let outs = sim.input(device(), register().branch("z9hG4bK-real").build());
    let r = registrations(&outs).remove(0);
    let outs = sim.registered(
        r.id,
        RegisterAnswer::Respond {
            status: StatusCode(401),
            headers: vec![
                ("WWW-Authenticate", big(40)),
                ("WWW-Authenticate", big(3000)),
            ],
        },
    );
    let (_, resp) = only(&outs);
    assert_eq!(code(&resp), 401);
    assert_eq!(header(&resp, "WWW-Authenticate").len(), 1);
}

#[test]
fn the_path_names_the_node_when_it_has_an_id() {
    let mut cfg = with_registrar(tcp_upstream(), "*", RegistrarMode::Through);
    cfg.node_id = "edge-1".into();
    let mut sim = Sim::new(cfg);
    let r = registrations(&sim.input(device(), register().build())).remove(0);
    let (_, fwd) = only(&sim.registered(
        r.id,
        RegisterAnswer::Forward {
            contacts: Vec::new(),
        },
    ));
    let path = header(&fwd, "Path").remove(0);
    assert!(
        path.ends_with(";transport=tcp;stg-node=edge-1;lr;ob>"),
        "{path}"
    );
}

#[test]
fn once_a_domain_asks_for_digest_no_from_header_gets_around_it() {
    let mut cfg = tcp_upstream();
    cfg.registrar = vec![
        RegistrarDomain {
            domain: "example.com".into(),
            mode: RegistrarMode::Local,
            authenticate: true,
        },
        RegistrarDomain {
            domain: "partner.example".into(),
            mode: RegistrarMode::Through,
            authenticate: false,
        },
    ];
    let mut sim = Sim::new(cfg);
    let cases = [
        ("<sip:alice@example.com>;tag=1", None, true),
        ("<sip:1000@evil.example>;tag=2", None, true),
        ("<sip:1000@192.0.2.1>;tag=3", None, true),
        // Made up "in dialog": a To-tag, but not along stg's Record-Route.
        ("<sip:alice@example.com>;tag=4", Some("x"), true),
        // The through domain's PBX checks its callers itself.
        ("<sip:bob@partner.example>;tag=5", None, false),
    ];
    for (i, (from, to_tag, want)) in cases.into_iter().enumerate() {
        let mut inv = invite()
            .realistic()
            .from(from)
            .call_id(&format!("c{i}"))
            .branch(&format!("z9hG4bK-m2-{i}"));
        if let Some(t) = to_tag {
            inv = inv.in_dialog(t);
        }
        let outs = sim.input(device(), inv.build());
        assert_eq!(!authorizations(&outs).is_empty(), want, "{from} {to_tag:?}");
    }
    // Other methods too.
    let outs = sim.input(
        device(),
        req("SUBSCRIBE", "sip:bob@example.com")
            .realistic()
            .branch("z9hG4bK-m2-sub")
            .build(),
    );
    assert_eq!(authorizations(&outs).len(), 1);
}

fn authorizations(outs: &[Output]) -> Vec<OpId> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Authorize { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

mod fork;

/// One REGISTER from `from` (UDP unless said) with `auth` (credentials value, if any),
/// answered by the PBX with `code` and a challenge carrying `nonce`: the events.
fn register_answered(
    sim: &mut Sim,
    from: Inbound,
    id: &str,
    auth: Option<&str>,
    code: u16,
    nonce: &str,
) -> Vec<Event> {
    let mut reg = register().call_id(id).branch(&format!("z9hG4bK-{id}"));
    if let Some(a) = auth {
        reg = reg.header(&format!("Authorization: {a}"));
    }
    let s = sent(&sim.input(from, reg.build()));
    let (_, fwd) = s
        .iter()
        .find(|(f, _)| f.remote == addr(PBX))
        .expect("forwarded")
        .clone();
    let challenge = format!("Digest realm=\"x\", nonce=\"{nonce}\", algorithm=MD5");
    let headers: &[(&str, &[u8])] = if code == 401 {
        &[("WWW-Authenticate", challenge.as_bytes())]
    } else {
        &[]
    };
    let resp = fwd.response(StatusCode(code), None, Some(b"pbx"), None, headers);
    events(&sim.input(pbx_tcp(), resp))
}

fn rejected(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::AuthRejected { .. }))
        .count()
}

/// The failures whose source is proven (a spoofer can write only unproven ones).
fn proven_rejected(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::AuthRejected { proven: true, .. }))
        .count()
}

/// svcrack over UDP: each guess carries the nonce of the challenge the PBX sent to the
/// cracker's own address, which proves the address (only its owner could read the nonce).
/// A spoofer replaying a nonce fetched at its own address, under a victim's, proves nothing.
#[test]
fn a_udp_failure_counts_only_with_a_nonce_relayed_to_that_address() {
    let mut sim = Sim::new(tcp_upstream());
    let creds = |nonce: &str| {
        format!("Digest username=\"alice\", realm=\"x\", nonce=\"{nonce}\", uri=\"sip:x\", response=\"00\"")
    };
    // First challenge: no credentials, not a failure; nonce n1 now proves DEVICE.
    assert_eq!(
        proven_rejected(&register_answered(
            &mut sim,
            device(),
            "c1",
            None,
            401,
            "n1"
        )),
        0
    );
    // A wrong guess with n1: counted (and n2 proves DEVICE in turn).
    assert_eq!(
        proven_rejected(&register_answered(
            &mut sim,
            device(),
            "c2",
            Some(&creds("n1")),
            401,
            "n2"
        )),
        1
    );
    assert_eq!(
        proven_rejected(&register_answered(
            &mut sim,
            device(),
            "c3",
            Some(&creds("n2")),
            401,
            "n3"
        )),
        1
    );
    // A nonce no one was sent, or one sent to another address: not proven (reported
    // unproven: the guard counts it apart and never holds it against a user's address).
    assert_eq!(
        proven_rejected(&register_answered(
            &mut sim,
            device(),
            "c4",
            Some(&creds("forged")),
            401,
            "n4"
        )),
        0
    );
    let victim = outside("192.0.2.77:5060");
    assert_eq!(
        proven_rejected(&register_answered(
            &mut sim,
            victim,
            "c5",
            Some(&creds("n3")),
            401,
            "n5"
        )),
        0
    );
    // The right password, proven: the address is a user's.
    let ok = register_answered(&mut sim, device(), "c6", Some(&creds("n4")), 200, "");
    assert!(
        ok.iter()
            .any(|e| matches!(e, Event::AuthAccepted { remote } if *remote == addr(DEVICE))),
        "{ok:?}"
    );
    // Unproven over UDP: no such claim for the victim's address.
    let ok = register_answered(&mut sim, victim, "c7", Some(&creds("n1")), 200, "");
    assert!(
        !ok.iter().any(|e| matches!(e, Event::AuthAccepted { .. })),
        "{ok:?}"
    );
    // Over TCP, a connection proves its address.
    let ok = register_answered(&mut sim, device_tcp(), "c8", Some(&creds("zz")), 200, "");
    assert!(
        ok.iter().any(|e| matches!(e, Event::AuthAccepted { .. })),
        "{ok:?}"
    );
    // No credentials, no claim.
    let ok = register_answered(&mut sim, device_tcp(), "c9", None, 200, "");
    assert!(
        !ok.iter().any(|e| matches!(e, Event::AuthAccepted { .. })),
        "{ok:?}"
    );
}

mod review;
