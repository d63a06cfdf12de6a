//! Calls to sleeping devices end to end, with SIPp as the devices and as the PBX: the seed's
//! diagram of a call to an app whose connection is gone.
//!
//! stg is the registrar (local mode, digest against its SQL users). The first device
//! registers over TCP with push parameters and a `+sip.instance`, then its process ends
//! (the connection closes: the app is asleep). The PBX calls the AOR on stg's inside
//! listener; stg finds the binding's connection gone, pushes, answers `110 Push sent`, and
//! waits. The "woken" app registers again over a new connection with the same instance; the
//! waiting INVITE goes out on it, the device answers, the call is set up and hung up.
//!
//! Pushes go to the log (the embedded default) or to a local server that speaks FCM HTTP v1
//! (HTTP/2 over TLS, the OAuth2 JWT-bearer grant checked against the service account's key).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stg_testkit::push_servers::{ApnsOptions, FakeApns, FakeFcm, FcmOptions, FcmReply};

use crate::harness::{free_port, http_get, Redis, StgNode};
use crate::registrar_e2e::{
    addr, caller_scenario, count, device_scenario_with, make_users, DOMAIN, PASSWORD,
};
use crate::sipp::{Sipp, Transport};

const INSTANCE: &str = ";+sip.instance=\"<urn:uuid:6f1e7b52-4c1d-4e8e-9d2a-1b2c3d4e5f60>\"";
const TOKEN: &str = "fcm-token-0123456789";

fn push_params() -> String {
    format!(";pn-provider=fcm;pn-prid={TOKEN};pn-param=stg-test")
}

fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool, report: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}:\n{}", report());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node: devices on TCP `port` (outside), the PBX on UDP/TCP `inside`, a local registrar
/// with the users at `users_url`, and `extra` sections.
fn node_config(port: u16, inside: u16, users_url: &str, extra: &str) -> String {
    let mut c = format!(
        "[sip]\nupstream = \"sip:127.0.0.1:{}\"\n\n[sip.timers]\nt1 = \"100ms\"\nt4 = \"1s\"\n\n\
         [registrar]\ndomains = [{{ name = \"{DOMAIN}\", mode = \"local\" }}]\n\
         digest_algorithms = [\"MD5\"]\n\n[store]\nusers_url = \"{users_url}\"\n\n{extra}\n",
        free_port()
    );
    for (p, side, ts) in [
        (port, "outside", &["tcp"][..]),
        (inside, "inside", &["udp", "tcp"]),
    ] {
        for t in ts {
            c.push_str(&format!(
                "\n[[sip.listen]]\ntransport = \"{t}\"\naddress = \"127.0.0.1:{p}\"\nside = \"{side}\"\n"
            ));
        }
    }
    c
}

/// stg with its devices (TCP, outside) and the PBX (UDP/TCP, inside), a local registrar, the
/// app asleep (registered, connection closed), and the PBX's call to it started.
struct Scene {
    stg: StgNode,
    dir: PathBuf,
    port: u16,
    caller: Sipp,
    cid: String,
    started: Instant,
    params: String,
}

impl Scene {
    fn start(name: &str, push: &str) -> Self {
        let (port, inside) = (free_port(), free_port());
        let dir = crate::harness::temp_dir(name);
        let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
        let c = node_config(port, inside, &users_url, push);
        let stg = StgNode::start(name, &c);
        Self::call_asleep(stg, name, port, inside)
    }

    /// On a running node: the app registers and sleeps, then the PBX calls it.
    fn call_asleep(stg: StgNode, name: &str, port: u16, inside: u16) -> Self {
        Self::call_asleep_with(
            stg,
            name,
            port,
            inside,
            &push_params(),
            &caller_scenario(true),
        )
    }

    /// [`Self::call_asleep`] with the device's push parameters and the caller's scenario.
    fn call_asleep_with(
        stg: StgNode,
        name: &str,
        port: u16,
        inside: u16,
        params: &str,
        caller_xml: &str,
    ) -> Self {
        let dir = stg.dir.clone();
        // The app registers with its push parameters, then sleeps: its connection closes.
        let asleep = dir.join("asleep.xml");
        std::fs::write(&asleep, device_scenario_with(true, None, params, INSTANCE)).unwrap();
        let cid = format!("{name}-asleep-{}-%u", std::process::id());
        let mut first = Sipp::start(
            &dir,
            "asleep",
            &asleep,
            Transport::Tcp,
            addr(free_port()),
            Some(addr(port)),
            &[
                "-s", "erin", "-au", "erin", "-ap", PASSWORD, "-cid_str", &cid,
            ],
        );
        first.expect_success(Duration::from_secs(15));

        // The PBX calls the AOR.
        let cid = format!("{name}-call-{}-%u", std::process::id());
        let caller_sf = dir.join("caller.xml");
        std::fs::write(&caller_sf, caller_xml).unwrap();
        let caller = Sipp::start(
            &dir,
            "caller",
            &caller_sf,
            Transport::Udp,
            addr(free_port()),
            Some(addr(inside)),
            &["-s", "erin", "-cid_str", &cid],
        );
        Self {
            stg,
            dir,
            port,
            caller,
            cid,
            started: Instant::now(),
            params: params.to_owned(),
        }
    }

    fn caller_got(&self, status: u16) -> bool {
        self.caller
            .messages()
            .iter()
            .any(|m| !m.sent && m.status() == Some(status))
    }

    /// The caller heard `110 Push sent`, one push went through `provider` within 5 s
    /// (`push_after`), then the app wakes ([`Self::wake_and_answer`]).
    fn told_pushed_then_woken(self, provider: &str, push_after: Duration) {
        wait_until(
            5,
            "the caller got no 110 Push sent",
            || self.caller_got(110),
            || self.caller.report(),
        );
        let metric = format!("stg_push_sent_total{{provider=\"{provider}\",result=\"sent\"}}");
        assert_eq!(self.stg.counter(&metric), 1.0, "{}", self.stg.metrics());
        assert!(
            push_after < Duration::from_secs(5),
            "pushed after {push_after:?}"
        );
        self.wake_and_answer();
    }

    /// The app wakes and registers again over a new connection; it must get the call,
    /// answer it, and the caller hangs up.
    fn wake_and_answer(self) {
        let port = self.port;
        self.wake_on(port);
    }

    /// [`Self::wake_and_answer`], the device registering on the node listening on `port`.
    fn wake_on(mut self, port: u16) {
        let woken = self.dir.join("woken.xml");
        std::fs::write(
            &woken,
            device_scenario_with(true, false, &self.params, INSTANCE),
        )
        .unwrap();
        let mut device = Sipp::start(
            &self.dir,
            "woken",
            &woken,
            Transport::Tcp,
            addr(free_port()),
            Some(addr(port)),
            &[
                "-s", "erin", "-au", "erin", "-ap", PASSWORD, "-cid_str", &self.cid,
            ],
        );
        let cs = self.caller.wait(Duration::from_secs(20));
        let ds = device.wait(Duration::from_secs(10));
        assert!(
            cs.success() && ds.success(),
            "caller {cs}, device {ds}\n{}\n{}\n--- stg:\n{}",
            self.caller.report(),
            device.report(),
            self.stg.log()
        );
        assert!(self.stg.alive(), "stg died");
    }
}

#[test]
fn android_offline_is_pushed_and_called_on_its_new_connection() {
    let s = Scene::start("push-log", "");
    wait_until(
        10,
        "no push for the sleeping device",
        || count(&s.stg.log(), "push (log only") >= 1,
        || format!("{}\n{}", s.stg.log(), s.caller.report()),
    );
    let push_after = s.started.elapsed();
    let log = s.stg.log();
    let line = log.lines().find(|l| l.contains("push (log only")).unwrap();
    assert!(line.contains("push-log-call-"), "the call is named: {line}");
    assert!(line.contains("kind=\"call\""), "{line}");
    assert!(line.contains("provider=fcm"), "{line}");
    assert!(
        !line.contains(TOKEN),
        "the device's token is not logged whole: {line}"
    );
    s.told_pushed_then_woken("log", push_after);
}

/// The pushes FCM received (not the OAuth2 token requests).
fn sends(fcm: &FakeFcm) -> Vec<stg_testkit::push_servers::Recorded> {
    fcm.requests()
        .into_iter()
        .filter(|r| r.path.ends_with(":send"))
        .collect()
}

fn fcm_config(fcm: &FakeFcm, fork_timeout: &str) -> String {
    format!(
        "[push]\nmode = \"live\"\ncall_fork_timeout = \"{fork_timeout}\"\n\n[push.fcm]\nservice_account = \"{}\"\nurl = \"{}\"\nca_file = \"{}\"\n",
        fcm.service_account_file().display(),
        fcm.url(),
        fcm.ca_file().display()
    )
}

#[test]
fn android_offline_is_woken_through_fcm() {
    let fcm = FakeFcm::start(FcmOptions::default());
    let s = Scene::start("push-fcm", &fcm_config(&fcm, "90s"));
    fcm.wait_for(2, Duration::from_secs(10));
    let got = sends(&fcm);
    assert_eq!(got.len(), 1, "FCM got no push:\n{}", s.stg.log());
    let push_after = s.started.elapsed();
    let p = &got[0];
    assert_eq!(p.status, 200);
    assert_eq!(p.path, "/v1/projects/stg-test/messages:send");
    let body = p.json();
    let m = &body["message"];
    assert_eq!(m["token"], TOKEN);
    assert_eq!(m["android"]["priority"], "high");
    assert_eq!(m["data"]["type"], "call");
    assert!(m["data"]["call-id"]
        .as_str()
        .unwrap()
        .starts_with("push-fcm-call-"));
    assert_eq!(m["data"]["from-uri"], "sip:caller@example.test");
    assert_eq!(fcm.tokens_issued(), 1, "one OAuth2 token");
    s.told_pushed_then_woken("fcm", push_after);
}

#[test]
fn a_token_fcm_rejects_removes_the_binding_and_the_call_ends() {
    let fcm = FakeFcm::start(FcmOptions::default());
    fcm.script(TOKEN, [FcmReply::Unregistered]);
    let mut s = Scene::start("push-unreg", &fcm_config(&fcm, "90s"));
    wait_until(
        10,
        "the caller got no 480",
        || s.caller_got(480),
        || format!("{}\n{}", s.caller.report(), s.stg.log()),
    );
    // The binding is gone.
    let reg = http_get(s.stg.admin, "/registrar/aor/erin@example.test").unwrap_or_default();
    assert!(reg.contains("200 OK") || reg.contains("{"), "{reg}");
    assert!(!reg.contains(TOKEN), "the binding is still there:\n{reg}");
    assert_eq!(sends(&fcm).len(), 1);
    assert!(s.stg.alive());
}

#[test]
fn a_device_that_never_wakes_ends_the_call_at_the_fork_timeout() {
    let fcm = FakeFcm::start(FcmOptions::default());
    let mut s = Scene::start("push-timeout", &fcm_config(&fcm, "2s"));
    fcm.wait_for(2, Duration::from_secs(10));
    assert_eq!(sends(&fcm).len(), 1);
    wait_until(
        10,
        "the caller got no 408",
        || s.caller_got(408),
        || format!("{}\n{}", s.caller.report(), s.stg.log()),
    );
    let after = s.started.elapsed();
    assert!(
        after >= Duration::from_millis(1_900) && after < Duration::from_secs(5),
        "408 after {after:?}"
    );
    assert!(s.stg.alive());
}

#[test]
fn the_device_wakes_on_another_node_sharing_the_redis() {
    let redis = Redis::start();
    let dir = crate::harness::temp_dir("push-2nodes");
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    let cfg = |port, inside| {
        // The nodes reach each other on loopback, which a route chosen by a stored Path may
        // not reach unless allowed.
        node_config(port, inside, &users_url, "")
            .replace(
                "[store]\n",
                &format!("[store]\nurl = \"redis://127.0.0.1:{}\"\n", redis.port),
            )
            .replace(
                "[sip]\n",
                "[sip]\nallowed_destinations = [\"127.0.0.0/8\"]\n",
            )
    };
    let (port_a, inside_a, port_b, inside_b) = (free_port(), free_port(), free_port(), free_port());
    let node_a = StgNode::start("push-node-a", &cfg(port_a, inside_a));
    let node_b = StgNode::start("push-node-b", &cfg(port_b, inside_b));
    // Asleep on B, called on B; B pushes and waits.
    let s = Scene::call_asleep(node_b, "push-2nodes", port_b, inside_b);
    wait_until(
        10,
        "no push on node B",
        || count(&s.stg.log(), "push (log only") >= 1,
        || s.stg.log(),
    );
    // The app wakes behind HAProxy on node A: B learns it through Redis and sends the call
    // along the new binding's Path, through A, to the device's new connection.
    s.wake_on(port_a);
    assert!(
        count(&node_a.log(), "push (log only") == 0,
        "A pushed nothing:\n{}",
        node_a.log()
    );
}

/// An iOS app's VoIP token (hex) and the APNs parameters naming its VoIP service.
const VOIP_TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn ios_params() -> String {
    format!(";pn-provider=apns.dev;pn-prid={VOIP_TOKEN};pn-param=TEAM123456.org.stg.test.voip")
}

fn apns_config(apns: &FakeApns) -> String {
    format!(
        "[push]\nmode = \"live\"\n\n[push.apns]\nsandbox_url = \"{}\"\nteam_id = \"{}\"\nkey_id = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
        apns.url(),
        apns.team_id(),
        apns.key_id(),
        apns.key_file().display(),
        apns.ca_file().display()
    )
}

/// The PBX calls, hears `110 Push sent`, and hangs up before anyone answers.
fn cancelling_caller() -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="cancelling caller">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@{DOMAIN} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-inv-[pid]-[call_number];rport
      Max-Forwards: 70
      From: <sip:caller@{DOMAIN}>;tag=[pid]C
      To: <sip:[service]@{DOMAIN}>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="110"/>
  <send>
    <![CDATA[

      CANCEL sip:[service]@{DOMAIN} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-inv-[pid]-[call_number];rport
      Max-Forwards: 70
      From: <sip:caller@{DOMAIN}>;tag=[pid]C
      To: <sip:[service]@{DOMAIN}>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>
  <send>
    <![CDATA[

      ACK sip:[service]@{DOMAIN} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-inv-[pid]-[call_number];rport
      Max-Forwards: 70
      From: <sip:caller@{DOMAIN}>;tag=[pid]C
      To: <sip:[service]@{DOMAIN}>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#
    )
}

/// The woken iOS app: registers, gets the call it must show, rings, and is told the call
/// was cancelled.
fn woken_then_cancelled(params: &str) -> String {
    rings_then_cancelled(params, INSTANCE)
}

/// A device that registers (`instance`), rings when called, and is told the call is over
/// (CANCEL, 200, 487, ACK). The 487 answers the INVITE, so it carries the INVITE's Vias (all
/// of them, captured when it arrived), not the CANCEL's.
fn rings_then_cancelled(params: &str, instance: &str) -> String {
    let register = device_scenario_with(true, None, params, instance);
    let head = register.trim_end().trim_end_matches("</scenario>");
    format!(
        r#"{head}
  <recv request="INVITE">
    <action>
      <ereg regexp="Via:[^[:cntrl:]]*([[:cntrl:]]+Via:[^[:cntrl:]]*)*" search_in="msg" check_it="true" assign_to="vias"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]D
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv request="CANCEL"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]D
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[

      SIP/2.0 487 Request Terminated
      [$vias]
      [last_From:]
      [last_To:];tag=[pid]D
      [last_Call-ID:]
      CSeq: 1 INVITE
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"#
    )
}

#[test]
fn an_ios_call_cancelled_before_the_wake_is_still_delivered_as_invite_then_cancel() {
    let apns = FakeApns::start(ApnsOptions::default());
    let (port, inside) = (free_port(), free_port());
    let dir = crate::harness::temp_dir("push-ios");
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    let stg = StgNode::start(
        "push-ios",
        &node_config(port, inside, &users_url, &apns_config(&apns)),
    );
    let mut s = Scene::call_asleep_with(
        stg,
        "push-ios",
        port,
        inside,
        &ios_params(),
        &cancelling_caller(),
    );
    let got = apns.wait_for(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "APNs got no push:\n{}", s.stg.log());
    let p = &got[0];
    assert_eq!(p.status, 200);
    assert_eq!(p.path, format!("/3/device/{VOIP_TOKEN}"));
    assert_eq!(p.header("apns-push-type"), Some("voip"));
    assert_eq!(p.header("apns-topic"), Some("org.stg.test.voip"));
    assert!(p
        .header("authorization")
        .is_some_and(|a| a.starts_with("bearer ")));
    // The caller hangs up at the 110: it gets 487 at once.
    let cs = s.caller.wait(Duration::from_secs(10));
    assert!(
        cs.success(),
        "caller {cs}\n{}\n{}",
        s.caller.report(),
        s.stg.log()
    );
    // The app wakes: it must still be shown the call, then told it was cancelled.
    let sf = s.dir.join("woken-ios.xml");
    std::fs::write(&sf, woken_then_cancelled(&ios_params())).unwrap();
    let mut device = Sipp::start(
        &s.dir,
        "woken-ios",
        &sf,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(s.port)),
        &[
            "-s", "erin", "-au", "erin", "-ap", PASSWORD, "-cid_str", &s.cid,
        ],
    );
    let ds = device.wait(Duration::from_secs(10));
    assert!(
        ds.success(),
        "device {ds}\n{}\n{}",
        device.report(),
        s.stg.log()
    );
    assert!(s.stg.alive());
}

#[test]
fn stg_push_test_wakes_every_device_of_an_aor_and_prints_the_answers() {
    let fcm = FakeFcm::start(FcmOptions::default());
    let (port, inside) = (free_port(), free_port());
    let dir = crate::harness::temp_dir("push-cli");
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    let stg = StgNode::start(
        "push-cli",
        &node_config(port, inside, &users_url, &fcm_config(&fcm, "90s")),
    );
    let sf = stg.dir.join("register.xml");
    std::fs::write(
        &sf,
        device_scenario_with(true, None, &push_params(), INSTANCE),
    )
    .unwrap();
    let cid = format!("push-cli-{}-%u", std::process::id());
    Sipp::start(
        &stg.dir,
        "register",
        &sf,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &[
            "-s", "erin", "-au", "erin", "-ap", PASSWORD, "-cid_str", &cid,
        ],
    )
    .expect_success(Duration::from_secs(15));
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_stg"))
            .args(["--config", stg.dir.join("stg.toml").to_str().unwrap()])
            .args(["push", "test", "sip:erin@example.test"])
            .output()
            .unwrap()
    };
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("fcm sent"), "{text}");
    let s = sends(&fcm);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].json()["message"]["data"]["type"], "test");
    // A dead token: said so, exit 1, and the binding is left alone (a test removes nothing).
    fcm.script(TOKEN, [FcmReply::Unregistered]);
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("token rejected"), "{text}");
    let reg = http_get(stg.admin, "/registrar/aor/erin@example.test").unwrap_or_default();
    assert!(reg.contains(TOKEN), "the binding is still there:\n{reg}");
}

/// Two devices of one AOR, both online: the call rings on both; the phone answers, the
/// tablet gets a CANCEL saying the call was completed elsewhere.
#[test]
fn two_devices_ring_one_answers_the_other_is_cancelled() {
    let (port, inside) = (free_port(), free_port());
    let dir = crate::harness::temp_dir("fork-two");
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    let stg = StgNode::start("fork-two", &node_config(port, inside, &users_url, ""));
    let dir = stg.dir.clone();
    let cid = format!("fork-two-{}-%u", std::process::id());
    let args = [
        "-s", "erin", "-au", "erin", "-ap", PASSWORD, "-cid_str", &cid,
    ];
    let phone_sf = dir.join("phone.xml");
    std::fs::write(&phone_sf, device_scenario_with(true, false, "", INSTANCE)).unwrap();
    let tablet_sf = dir.join("tablet.xml");
    let tablet_instance = ";+sip.instance=\"<urn:uuid:7a7a7a7a-0000-4e8e-9d2a-1b2c3d4e5f60>\"";
    std::fs::write(&tablet_sf, rings_then_cancelled("", tablet_instance)).unwrap();
    let mut phone = Sipp::start(
        &dir,
        "phone",
        &phone_sf,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &args,
    );
    let mut tablet = Sipp::start(
        &dir,
        "tablet",
        &tablet_sf,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &args,
    );
    for d in [&phone, &tablet] {
        wait_until(
            10,
            "a device did not register",
            || {
                d.messages()
                    .iter()
                    .any(|m| !m.sent && m.status() == Some(200))
            },
            || d.report(),
        );
    }
    let caller_sf = dir.join("caller.xml");
    std::fs::write(&caller_sf, caller_scenario(true)).unwrap();
    let mut caller = Sipp::start(
        &dir,
        "caller",
        &caller_sf,
        Transport::Udp,
        addr(free_port()),
        Some(addr(inside)),
        &["-s", "erin", "-cid_str", &cid],
    );
    let cs = caller.wait(Duration::from_secs(20));
    let ps = phone.wait(Duration::from_secs(10));
    let ts = tablet.wait(Duration::from_secs(10));
    assert!(
        cs.success() && ps.success() && ts.success(),
        "caller {cs}, phone {ps}, tablet {ts}\n{}\n{}\n{}",
        caller.report(),
        phone.report(),
        tablet.report()
    );
    let cancel = tablet
        .messages()
        .into_iter()
        .find(|m| !m.sent && m.text.starts_with("CANCEL"))
        .expect("the tablet got a CANCEL");
    assert!(
        cancel
            .text
            .contains("Reason: SIP;cause=200;text=\"Call completed elsewhere\""),
        "{}",
        cancel.text
    );
}

/// The wake-up path's latency, measured on one clock (this process's): 1,000 devices
/// register through stg (a fake PBX answers 200) with push parameters and go to sleep;
/// the PBX calls each in turn; the time from the INVITE sent to the push arriving at the
/// local FCM server. Then each device registers again on a new connection: the time from
/// its REGISTER sent (and from its 200 received) to the waiting INVITE on the connection.
/// Printed for the notes; bounded (two minutes), asserts only that every call woke.
#[test]
fn wake_up_latency_over_1000_calls() {
    use std::io::{Read, Write};
    const N: usize = 1000;
    let fcm = FakeFcm::start(FcmOptions::default());
    let pbx = crate::registrar_store::Pbx::start(3600);
    let (port, inside) = (free_port(), free_port());
    let cfg = format!(
        "[sip]\nupstream = \"sip:{}\"\nmax_connections_per_source = 2000\n\n\
         [registrar]\ndomains = [{{ name = \"example.com\", mode = \"through\" }}]\n\n{}\n\
         [[sip.listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n\
         [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{inside}\"\nside = \"inside\"\n",
        pbx.addr,
        fcm_config(&fcm, "90s")
    );
    let mut stg = StgNode::start("push-latency", &cfg);
    let stg_tcp = addr(port);
    let register = |i: usize, local: std::net::SocketAddr, cseq: u32| {
        format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-r{i}-{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:u{i}@example.com>;tag=r{i}\r\nTo: <sip:u{i}@example.com>\r\n\
             Call-ID: lat-reg-{i}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:u{i}@{local};transport=tcp;pn-provider=fcm;pn-prid=tok{i};pn-param=stg-test>;+sip.instance=\"<urn:uuid:00000000-0000-4000-8000-{i:012}>\"\r\n\
             Expires: 3600\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let read_until = |s: &mut std::net::TcpStream, what: &[u8]| -> bool {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(5);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while Instant::now() < deadline {
            if buf.windows(what.len()).any(|w| w == what) {
                return true;
            }
            if let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    return false;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        false
    };
    let started = Instant::now();
    for i in 0..N {
        let mut s = std::net::TcpStream::connect(stg_tcp).unwrap();
        let local = s.local_addr().unwrap();
        s.write_all(register(i, local, 1).as_bytes()).unwrap();
        assert!(
            read_until(&mut s, b"SIP/2.0 200"),
            "device {i} not registered"
        );
        // Asleep: the connection is gone.
    }
    let pbx_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_addr = pbx_sock.local_addr().unwrap();
    let mut to_push = Vec::with_capacity(N);
    for i in 0..N {
        let inv = format!(
            "INVITE sip:u{i}@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {pbx_addr};branch=z9hG4bK-lat{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@example.com>;tag=c{i}\r\nTo: <sip:u{i}@example.com>\r\n\
             Call-ID: lat-call-{i}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{pbx_addr}>\r\nContent-Length: 0\r\n\r\n"
        );
        let sent = Instant::now();
        pbx_sock.send_to(inv.as_bytes(), addr(inside)).unwrap();
        let got = fcm.wait_for(i + 2, Duration::from_secs(5)); // + the OAuth2 token request
        let push = got
            .iter()
            .find(|r| {
                r.path.ends_with(":send") && r.json()["message"]["token"] == format!("tok{i}")
            })
            .unwrap_or_else(|| panic!("no push for device {i}"));
        to_push.push(push.at.saturating_duration_since(sent));
        assert!(started.elapsed() < Duration::from_secs(120), "too slow");
    }
    let mut to_invite = Vec::with_capacity(N);
    let mut after_200 = Vec::with_capacity(N);
    let mut keep = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = std::net::TcpStream::connect(stg_tcp).unwrap();
        let local = s.local_addr().unwrap();
        let t0 = Instant::now();
        s.write_all(register(i, local, 2).as_bytes()).unwrap();
        // The 200 and the INVITE may come in one read: one buffer, each stamped when seen.
        let (mut buf, mut chunk) = (Vec::new(), [0u8; 8192]);
        let (mut t200, mut tinv) = (None, None);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while tinv.is_none() && t0.elapsed() < Duration::from_secs(5) {
            if let Ok(n) = s.read(&mut chunk) {
                assert!(n > 0, "device {i}: connection closed");
                buf.extend_from_slice(&chunk[..n]);
                let now = Instant::now();
                if t200.is_none() && buf.windows(11).any(|w| w == b"SIP/2.0 200") {
                    t200 = Some(now);
                }
                if buf.windows(11).any(|w| w == b"INVITE sip:") {
                    tinv = Some(now);
                }
            }
        }
        let (Some(t200), Some(tinv)) = (t200, tinv) else {
            panic!(
                "device {i}: 200 {t200:?}, INVITE {tinv:?}\n{}",
                String::from_utf8_lossy(&buf)
            );
        };
        to_invite.push(tinv - t0);
        after_200.push(tinv.saturating_duration_since(t200));
        keep.push(s);
        assert!(started.elapsed() < Duration::from_secs(120), "too slow");
    }
    let show = |name: &str, v: &mut Vec<Duration>| {
        v.sort();
        eprintln!(
            "{name}: p50 {:?}, p99 {:?}, max {:?} over {}",
            v[v.len() / 2],
            v[v.len() * 99 / 100],
            v[v.len() - 1],
            v.len()
        );
    };
    show("INVITE sent -> push at FCM", &mut to_push);
    show(
        "re-REGISTER sent -> INVITE on the new connection",
        &mut to_invite,
    );
    show("REGISTER's 200 received -> INVITE", &mut after_200);
    assert!(stg.alive());
}

/// The PBX's side of a text conversation: `n` MESSAGEs to erin in one Call-ID (CSeq 1..n),
/// one after the other, each answered 202 (she is asleep).
fn pbx_messages(n: u32) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<!DOCTYPE scenario SYSTEM \"sipp.dtd\">\n<scenario name=\"pbx-messages\">\n",
    );
    for i in 1..=n {
        s.push_str(&format!(
            r#"  <send retrans="500">
    <![CDATA[

      MESSAGE sip:[service]@{DOMAIN} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:pbx@{DOMAIN}>;tag=[pid]M
      To: <sip:[service]@{DOMAIN}>
      Call-ID: [call_id]
      CSeq: {i} MESSAGE
      Content-Type: text/plain
      Content-Length: [len]

      hello number {i}
    ]]>
  </send>
  <recv response="202"/>
"#
        ));
    }
    s.push_str("</scenario>\n");
    s
}

/// The app woken: it registers over a new connection, then takes `n` MESSAGEs (200 each).
fn device_taking_messages(params: &str, n: u32) -> String {
    let mut s = device_scenario_with(true, None, params, INSTANCE);
    s.truncate(s.rfind("</scenario>").unwrap());
    for _ in 0..n {
        s.push_str(
            r#"  <recv request="MESSAGE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]D
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"#,
        );
    }
    s.push_str("</scenario>\n");
    s
}

/// erin's app registers over TCP to `port` with its push parameters, then its connection
/// closes (the app sleeps).
fn registers_and_sleeps(dir: &std::path::Path, label: &str, port: u16) {
    let sf = dir.join(format!("{label}.xml"));
    std::fs::write(
        &sf,
        device_scenario_with(true, None, &push_params(), INSTANCE),
    )
    .unwrap();
    let mut device = Sipp::start(
        dir,
        label,
        &sf,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &["-s", "erin", "-au", "erin", "-ap", PASSWORD],
    );
    device.expect_success(Duration::from_secs(15));
}

#[test]
fn messages_for_a_sleeping_device_are_kept_across_a_restart_and_delivered_in_order() {
    let (port, inside) = (free_port(), free_port());
    let dir = crate::harness::temp_dir("messages-kept");
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    // Pushes go to a local server that speaks FCM HTTP v1 (HTTP/2, TLS, OAuth2).
    let fcm = FakeFcm::start(FcmOptions::default());
    let push =
        fcm_config(&fcm, "90s").replace("[push]\n", "[push]\nmessage_accept_timeout = \"1s\"\n");
    let c = node_config(port, inside, &users_url, &push);
    let mut stg = StgNode::start("messages-kept", &c);
    let dir = stg.dir.clone();

    // The app registers with its push parameters and sleeps (its connection closes).
    registers_and_sleeps(&dir, "asleep", port);

    // Three messages from the PBX: each pushed, answered 202 after a second, kept.
    let cid = format!("messages-kept-{}-%u", std::process::id());
    let pbx_sf = dir.join("pbx.xml");
    std::fs::write(&pbx_sf, pbx_messages(3)).unwrap();
    let mut pbx = Sipp::start(
        &dir,
        "pbx",
        &pbx_sf,
        Transport::Udp,
        addr(free_port()),
        Some(addr(inside)),
        &["-s", "erin", "-cid_str", &cid],
    );
    let ps = pbx.wait(Duration::from_secs(20));
    assert!(
        ps.success(),
        "pbx {ps}\n{}\n--- stg:\n{}",
        pbx.report(),
        stg.log()
    );
    let kept = stg.wait_counter(
        "stg_messages_total{result=\"kept\"}",
        3.0,
        Duration::from_secs(5),
    );
    assert_eq!(kept, 3.0, "{}", stg.log());
    let pushed = sends(&fcm);
    assert_eq!(pushed.len(), 3, "one FCM push per message:\n{}", stg.log());
    for p in &pushed {
        assert_eq!(p.status, 200);
        assert_eq!(p.json()["message"]["data"]["type"], "message");
    }

    // stg restarts (drained by SIGTERM): the messages are in its store.
    stg.restart();
    assert!(stg.metric("stg_messages_total{result=\"kept\"}").is_none());

    // The app wakes and registers on a new connection: it gets the three, in order.
    let woken = dir.join("woken.xml");
    std::fs::write(&woken, device_taking_messages(&push_params(), 3)).unwrap();
    let mut device = Sipp::start(
        &dir,
        "woken",
        &woken,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &[
            "-s", "erin", "-au", "erin", "-ap", PASSWORD, "-cid_str", &cid,
        ],
    );
    let ds = device.wait(Duration::from_secs(20));
    assert!(
        ds.success(),
        "device {ds}\n{}\n--- stg:\n{}",
        device.report(),
        stg.log()
    );
    let bodies: Vec<String> = device
        .messages()
        .iter()
        .filter(|m| !m.sent && m.is("MESSAGE"))
        .map(|m| m.text.lines().last().unwrap_or("").trim().to_owned())
        .collect();
    assert_eq!(
        bodies,
        ["hello number 1", "hello number 2", "hello number 3"],
        "in the order they were sent"
    );
    let delivered = stg.wait_counter(
        "stg_messages_total{result=\"delivered\"}",
        3.0,
        Duration::from_secs(5),
    );
    assert_eq!(delivered, 3.0, "{}", stg.log());
    // Delivered means forgotten: a further registration on yet another connection gets none.
    registers_and_sleeps(&dir, "again", port);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stg.counter("stg_messages_total{result=\"delivered\"}"),
        3.0,
        "nothing delivered twice"
    );
    assert!(stg.alive(), "stg died");
}

/// A node for one live device: TCP outside on `port`, the PBX inside, local registrar,
/// push to the log, and `extra` (in `[push]`).
fn live_device_node(name: &str, push: &str) -> (StgNode, u16, u16) {
    let (port, inside) = (free_port(), free_port());
    let dir = crate::harness::temp_dir(name);
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    let c = node_config(port, inside, &users_url, &format!("[push]\n{push}"));
    (StgNode::start(name, &c), port, inside)
}

/// Starts SIPp as erin's device (TCP to `port`) with scenario `xml`, and waits until stg
/// has its binding.
fn device_registered(stg: &StgNode, port: u16, label: &str, xml: &str, cid: &str) -> Sipp {
    let before = stg.counter("stg_registrar_registers_total{mode=\"local\",result=\"ok\"}");
    let sf = stg.dir.join(format!("{label}.xml"));
    std::fs::write(&sf, xml).unwrap();
    let device = Sipp::start(
        &stg.dir,
        label,
        &sf,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &[
            "-s", "erin", "-au", "erin", "-ap", PASSWORD, "-cid_str", cid,
        ],
    );
    let now = stg.wait_counter(
        "stg_registrar_registers_total{mode=\"local\",result=\"ok\"}",
        before + 1.0,
        Duration::from_secs(10),
    );
    assert!(
        now > before,
        "{label} did not register:\n{}",
        device.report()
    );
    device
}

/// The PBX calling erin on the inside listener with scenario `xml`.
fn pbx_calls(stg: &StgNode, inside: u16, xml: &str, cid: &str) -> Sipp {
    let sf = stg.dir.join("caller.xml");
    std::fs::write(&sf, xml).unwrap();
    Sipp::start(
        &stg.dir,
        "caller",
        &sf,
        Transport::Udp,
        addr(free_port()),
        Some(addr(inside)),
        &["-s", "erin", "-cid_str", cid],
    )
}

#[test]
fn a_device_that_rings_then_vanishes_is_pushed_and_answers_on_its_new_connection() {
    let (stg, port, inside) = live_device_node("rang-vanished", "");
    let cid = format!("rang-vanished-{}-%u", std::process::id());
    // The device rings, then its app is killed (the scenario ends: the connection closes).
    let register = device_scenario_with(true, None, &push_params(), INSTANCE);
    let ringer_xml = format!(
        r#"{}
  <recv request="INVITE"/>
  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]D
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#,
        register.trim_end().trim_end_matches("</scenario>")
    );
    let mut ringer = device_registered(&stg, port, "ringer", &ringer_xml, &cid);
    let caller_xml = caller_scenario(true).replace(
        "  <recv response=\"110\" optional=\"true\"/>\n  <recv response=\"180\" optional=\"true\"/>\n",
        "  <recv response=\"180\"/>\n  <recv response=\"110\"/>\n  <recv response=\"180\" optional=\"true\"/>\n",
    );
    assert!(
        caller_xml.contains("<recv response=\"110\"/>"),
        "scenario edited"
    );
    let mut caller = pbx_calls(&stg, inside, &caller_xml, &cid);
    ringer.expect_success(Duration::from_secs(10));
    wait_until(
        10,
        "no push after the connection closed under the ringing call",
        || count(&stg.log(), "push (log only") >= 1,
        || format!("{}\n{}", stg.log(), caller.report()),
    );
    // The woken app registers on a new connection and takes the call there.
    // Its REGISTERs share the call's Call-ID (SIPp maps the INVITE by it): CSeq goes on from
    // the first run's, or the registrar refuses them as out of order (RFC 3261 §10.3).
    let woken_xml = device_scenario_with(true, false, &push_params(), INSTANCE)
        .replace("CSeq: 1 REGISTER", "CSeq: 11 REGISTER")
        .replace("CSeq: 2 REGISTER", "CSeq: 12 REGISTER");
    let mut woken = device_registered(&stg, port, "woken", &woken_xml, &cid);
    let cs = caller.wait(Duration::from_secs(20));
    let ws = woken.wait(Duration::from_secs(10));
    assert!(
        cs.success() && ws.success(),
        "caller {cs}, woken {ws}\n{}\n{}\n--- stg:\n{}",
        caller.report(),
        woken.report(),
        stg.log()
    );
    assert_eq!(count(&stg.log(), "push (log only"), 1, "pushed once");
}

#[test]
fn the_callers_cancel_stops_a_pending_push() {
    let (stg, port, inside) = live_device_node("cancel-no-push", "timeout = \"1s\"\n");
    let cid = format!("cancel-no-push-{}-%u", std::process::id());
    // The device is connected and rings, but nobody answers; the PBX gives up at once.
    let mut device = device_registered(
        &stg,
        port,
        "ringing",
        &rings_then_cancelled(&push_params(), INSTANCE),
        &cid,
    );
    let caller_xml = cancelling_caller().replace(
        "  <recv response=\"110\"/>\n",
        "  <recv response=\"180\"/>\n",
    );
    let mut caller = pbx_calls(&stg, inside, &caller_xml, &cid);
    let cs = caller.wait(Duration::from_secs(10));
    let ds = device.wait(Duration::from_secs(10));
    assert!(
        cs.success() && ds.success(),
        "caller {cs}, device {ds}\n{}\n{}\n--- stg:\n{}",
        caller.report(),
        device.report(),
        stg.log()
    );
    // The push timer (1 s) would have fired by now: the CANCEL stopped it.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        count(&stg.log(), "push (log only"),
        0,
        "no push after the caller's CANCEL:\n{}",
        stg.log()
    );
    assert!(
        !caller.messages().iter().any(|m| m.status() == Some(110)),
        "no 110 Push sent"
    );
}
