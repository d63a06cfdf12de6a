//! Calls to sleeping devices end to end, with SIPp as the devices and as the PBX: the seed's
//! diagram of a call to an app whose connection is gone.
//!
//! stg is the registrar (local mode, digest against its SQL users). The first device
//! registers over TCP with push parameters and a `+sip.instance`, then its process ends
//! (the connection closes: the app is asleep). The PBX calls the AOR on stg's inside
//! listener; stg finds the binding's connection gone, pushes (log-only, the embedded
//! default: the log line is the push), answers `110 Push sent`, and waits. The "woken" app
//! registers again over a new connection with the same instance; the waiting INVITE goes out
//! on it, the device answers, the call is set up and hung up.

use std::time::{Duration, Instant};

use crate::harness::{free_port, StgNode};
use crate::registrar_e2e::{
    addr, caller_scenario, count, device_scenario_with, make_users, DOMAIN, PASSWORD,
};
use crate::sipp::{Sipp, Transport};

const INSTANCE: &str = ";+sip.instance=\"<urn:uuid:6f1e7b52-4c1d-4e8e-9d2a-1b2c3d4e5f60>\"";
const PUSH_PARAMS: &str = ";pn-provider=fcm;pn-prid=fcm-token-0123456789;pn-param=stg-test";

/// stg: devices on TCP `port` (outside), the PBX on UDP/TCP `inside`, local registrar.
fn config(port: u16, inside: u16, users_url: &str) -> String {
    let mut c = format!(
        "[sip]\nupstream = \"sip:127.0.0.1:{}\"\n\n[sip.timers]\nt1 = \"100ms\"\nt4 = \"1s\"\n\n\
         [registrar]\ndomains = [{{ name = \"{DOMAIN}\", mode = \"local\" }}]\n\
         digest_algorithms = [\"MD5\"]\n\n[store]\nusers_url = \"{users_url}\"\n",
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

fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool, report: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}:\n{}", report());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn android_offline_is_pushed_and_called_on_its_new_connection() {
    let (port, inside) = (free_port(), free_port());
    let dir = crate::harness::temp_dir("push-e2e");
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    let mut stg = StgNode::start("push-e2e", &config(port, inside, &users_url));
    let dir = stg.dir.clone();
    let creds = ["-s", "erin", "-au", "erin", "-ap", PASSWORD];

    // The app registers with its push parameters, then sleeps: its connection closes.
    let asleep = dir.join("asleep.xml");
    std::fs::write(
        &asleep,
        device_scenario_with(true, None, PUSH_PARAMS, INSTANCE),
    )
    .unwrap();
    let cid = format!("push-asleep-{}-%u", std::process::id());
    let mut args = creds.to_vec();
    args.extend_from_slice(&["-cid_str", &cid]);
    let mut first = Sipp::start(
        &dir,
        "asleep",
        &asleep,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &args,
    );
    first.expect_success(Duration::from_secs(15));

    // The PBX calls the AOR. The call waits for the device: a push, 110 to the caller.
    let cid = format!("push-call-{}-%u", std::process::id());
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
    let started = Instant::now();
    wait_until(
        10,
        "no push for the sleeping device",
        || count(&stg.log(), "push (log only)") >= 1,
        || format!("{}\n{}", stg.log(), caller.report()),
    );
    let push_after = started.elapsed();
    let log = stg.log();
    let line = log.lines().find(|l| l.contains("push (log only)")).unwrap();
    assert!(line.contains("erin@example.test"), "{line}");
    assert!(line.contains("provider=fcm"), "{line}");
    assert!(
        !line.contains("fcm-token-0123456789"),
        "the device's token is not logged whole: {line}"
    );
    wait_until(
        5,
        "the caller got no 110 Push sent",
        || {
            caller
                .messages()
                .iter()
                .any(|m| !m.sent && m.status() == Some(110))
        },
        || caller.report(),
    );

    // The app wakes and registers again over a new connection: the INVITE goes there.
    let woken = dir.join("woken.xml");
    std::fs::write(
        &woken,
        device_scenario_with(true, false, PUSH_PARAMS, INSTANCE),
    )
    .unwrap();
    let mut args = creds.to_vec();
    args.extend_from_slice(&["-cid_str", &cid]);
    let mut device = Sipp::start(
        &dir,
        "woken",
        &woken,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &args,
    );
    let cs = caller.wait(Duration::from_secs(20));
    let ds = device.wait(Duration::from_secs(10));
    assert!(
        cs.success() && ds.success(),
        "caller {cs}, device {ds}\n{}\n{}\n--- stg:\n{}",
        caller.report(),
        device.report(),
        stg.log()
    );
    assert_eq!(
        stg.counter("stg_push_sent_total{provider=\"fcm\",result=\"logged\"}"),
        1.0,
        "{}",
        stg.metrics()
    );
    assert!(
        push_after < Duration::from_secs(5),
        "pushed after {push_after:?}"
    );
    assert!(stg.alive(), "stg died");
}
