//! Kamailio (Debian `kamailio`) as the PBX behind stg: a third-party SIP stack parses and
//! routes everything stg sends it. The layout is the production one: stg has outside
//! listeners for the devices and inside listeners for the PBX (`side = "inside"`), and its
//! upstream is Kamailio; Kamailio, a transaction-stateful proxy with a config written into
//! the temp dir at test time, record-routes and relays every new request to a SIPp UAS (a
//! static forward, like the bench's `WITH_FORWARD` mode) and routes in-dialog requests by
//! their Route set (`loose_route`). SIPp callers call through stg → Kamailio → callee:
//! full calls with the BYE from either side over UDP and TCP, and a CANCELled call.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{free_port, Peer, StgNode};
use crate::sipp::{is_bound, run_call, scenario, shared_scenario, Transport};

/// Kamailio as a minimal PBX: stateful relay of every new request to the UAS, INVITEs
/// record-routed, in-dialog requests by loose routing, CANCEL matched to its INVITE. Every
/// request and reply is logged (`pbx: ...`) for the test to read. No DNS anywhere.
const KAMAILIO_CFG: &str = r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
tcp_children=1
listen=udp:127.0.0.1:@PORT@
listen=tcp:127.0.0.1:@PORT@
auto_aliases=no
dns=no
rev_dns=no
dns_try_ipv6=no
use_dns_cache=no
use_dns_failover=no
server_signature=no
user_agent_header="User-Agent: kamailio-pbx"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"

modparam("tm", "fr_timer", 3000)
modparam("tm", "fr_inv_timer", 10000)

request_route {
	xlog("L_NOTICE", "pbx: in $rm $ru from $proto:$si:$sp ci=$ci\n");
	if (!mf_process_maxfwd_header("10")) {
		sl_send_reply("483", "Too Many Hops");
		exit;
	}
	if (has_totag()) {
		if (loose_route()) {
			if (!t_relay()) {
				sl_reply_error();
			}
			exit;
		}
		if (is_method("ACK")) {
			if (t_check_trans()) {
				t_relay();
			}
			exit;
		}
		xlog("L_ERR", "pbx: in-dialog $rm without our Route: 404\n");
		sl_send_reply("404", "Not here");
		exit;
	}
	if (is_method("CANCEL")) {
		if (t_check_trans()) {
			t_relay();
		}
		exit;
	}
	t_check_trans();
	remove_hf("Route");
	if (is_method("INVITE")) {
		record_route();
	}
	# The callee listens on the caller's transport: the caller's Via is the last one (stg
	# reaches Kamailio over UDP either way, RFC 3263 §4.1).
	if ($(hdr(Via)[-1]) =~ "^SIP/2.0/TCP") {
		$du = "sip:127.0.0.1:@UAS_PORT@;transport=tcp";
	} else {
		$du = "sip:127.0.0.1:@UAS_PORT@";
	}
	if (!t_relay()) {
		sl_reply_error();
	}
	exit;
}

onreply_route {
	xlog("L_NOTICE", "pbx: reply $rs $rr for $rm from $proto:$si:$sp\n");
}
"#;

/// A running Kamailio (`-DD -E`: main process in the foreground, logging to stderr), in a
/// process group of its own. Drop: SIGTERM to the main PID (it stops its children), and
/// only if it is still there after 3 s, SIGKILL to it and to its group.
pub(crate) struct Kamailio {
    peer: Peer,
}

impl Kamailio {
    fn start(dir: &Path, port: u16, uas_port: u16) -> Self {
        Self::start_with_config(
            dir,
            port,
            &KAMAILIO_CFG
                .replace("@PORT@", &port.to_string())
                .replace("@UAS_PORT@", &uas_port.to_string()),
        )
    }

    /// Writes `config` (listening on UDP and TCP `127.0.0.1:port`) into `dir` and starts
    /// Kamailio with it; returns once both sockets are bound.
    pub(crate) fn start_with_config(dir: &Path, port: u16, config: &str) -> Self {
        let cfg = dir.join("kamailio.cfg");
        std::fs::write(&cfg, config).unwrap();
        let run_dir = dir.join("kamailio-run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let mut cmd = Command::new("kamailio");
        cmd.arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "32", "-M", "4"])
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .arg("-Y")
            .arg(&run_dir)
            .arg("-w")
            .arg(dir)
            .process_group(0);
        let mut k = Self {
            peer: Peer::spawn("kamailio", "kamailio", cmd, &dir.join("kamailio.log")),
        };
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = k.peer.try_wait() {
                panic!("kamailio exited at startup ({st}):\n{}", k.log());
            }
            if is_bound(Transport::Udp, addr) && is_bound(Transport::Tcp, addr) {
                return k;
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not bind {addr}:\n{}",
                k.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log(&self) -> String {
        self.peer.output()
    }

    pub(crate) fn alive(&mut self) -> bool {
        self.peer.alive()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let pid = self.peer.pid().to_string();
        if self.alive() {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.alive() {
                self.peer.kill();
                // Its children, if the main process could not stop them: our group.
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
        }
    }
}

fn stg_config(port: u16, inside: u16, upstream: u16) -> String {
    let mut c = format!(
        "[sip]\nupstream = \"sip:127.0.0.1:{upstream}\"\n\n[sip.timers]\nt1 = \"100ms\"\nt4 = \"1s\"\n"
    );
    for (p, side) in [(port, "outside"), (inside, "inside")] {
        for t in ["udp", "tcp"] {
            c.push_str(&format!(
                "\n[[sip.listen]]\ntransport = \"{t}\"\naddress = \"127.0.0.1:{p}\"\nside = \"{side}\"\n"
            ));
        }
    }
    c
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn call_through_stg_to_kamailio_as_pbx() {
    let (port, inside, kam_port, uas_port) = (free_port(), free_port(), free_port(), free_port());
    let mut stg = StgNode::start("kamailio-pbx", &stg_config(port, inside, kam_port));
    let dir: PathBuf = stg.dir.clone();
    let mut kam = Kamailio::start(&dir, kam_port, uas_port);
    let proxy = format!("127.0.0.1:{port}").parse().unwrap();
    let uas_addr = format!("127.0.0.1:{uas_port}").parse().unwrap();
    let fail =
        |what: String, kam: &Kamailio| -> ! { panic!("{what}\n--- kamailio log:\n{}", kam.log()) };

    for t in [Transport::Udp, Transport::Tcp] {
        let tn = t.name();
        // The caller hangs up (the bench's scenarios).
        let (_uac, uas) = run_call(
            &dir,
            "kam-caller-bye",
            t,
            (
                &shared_scenario("uac_call.xml"),
                &shared_scenario("uas_call.xml"),
            ),
            uas_addr,
            proxy,
            &["-d", "200"],
        );
        // What the callee got went stg (inside listener) -> Kamailio: Kamailio's Via on top,
        // then stg's inside one, then the caller's; Kamailio's Record-Route first, then
        // stg's two (inside listener, then the outside one with the caller's flow token).
        let msgs = uas.messages();
        let invite = msgs
            .iter()
            .find(|m| !m.sent && m.is("INVITE"))
            .expect("the callee got the INVITE");
        let vias: Vec<&str> = invite.headers("Via").collect();
        let rr: Vec<&str> = invite.headers("Record-Route").collect();
        // Kamailio writes two entries when its legs differ (UDP from stg, TCP to a TCP
        // callee), one otherwise.
        let n = rr.len();
        let ok = vias.len() == 3
            && vias[0].contains(&format!("127.0.0.1:{kam_port}"))
            && vias[1].contains(&format!("127.0.0.1:{inside}"))
            && (3..=4).contains(&n)
            && rr[..n - 2]
                .iter()
                .all(|r| r.contains(&format!("127.0.0.1:{kam_port}")))
            && rr[n - 2].contains(&format!("127.0.0.1:{inside}"))
            && rr[n - 1].contains(&format!("@127.0.0.1:{port}"));
        if !ok {
            fail(
                format!("INVITE at the callee over {tn}:\n{}", invite.text),
                &kam,
            );
        }
        assert!(msgs.iter().any(|m| !m.sent && m.is("BYE")));

        // The callee hangs up: its BYE goes callee -> Kamailio -> stg's inside listener ->
        // the caller's flow (the caller's Contact names a dead port).
        let dead_port = free_port().to_string();
        let (uac, _uas) = run_call(
            &dir,
            "kam-callee-bye",
            t,
            (
                &scenario("uac_callee_bye.xml"),
                &scenario("uas_callee_bye.xml"),
            ),
            uas_addr,
            proxy,
            &["-key", "contact_port", &dead_port],
        );
        let msgs = uac.messages();
        let bye = msgs
            .iter()
            .find(|m| !m.sent && m.is("BYE"))
            .expect("the caller got the BYE");
        let vias: Vec<&str> = bye.headers("Via").collect();
        if vias.len() != 3 || !vias[1].contains(&format!("127.0.0.1:{kam_port}")) {
            fail(format!("BYE at the caller over {tn}:\n{}", bye.text), &kam);
        }
    }

    // A CANCELled call over UDP: stg answers the CANCEL and cancels its branch to
    // Kamailio, which cancels its own towards the callee; the 487 comes back through both.
    let (uac, uas) = run_call(
        &dir,
        "kam-cancel",
        Transport::Udp,
        (&scenario("uac_cancel.xml"), &scenario("uas_cancel.xml")),
        uas_addr,
        proxy,
        &[],
    );
    assert!(uas.messages().iter().any(|m| !m.sent && m.is("CANCEL")));
    assert!(uac
        .messages()
        .iter()
        .any(|m| !m.sent && m.status() == Some(487)));

    // Everything went through Kamailio, and it had nothing to complain about.
    let log = kam.log();
    let seen = |method: &str| count(&log, &format!("pbx: in {method} "));
    let want = [("INVITE", 5), ("ACK", 5), ("BYE", 4), ("CANCEL", 1)];
    for (method, n) in want {
        if seen(method) != n {
            fail(
                format!(
                    "Kamailio saw {} {method} requests, expected {n}",
                    seen(method)
                ),
                &kam,
            );
        }
    }
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR:") || l.contains("CRITICAL:") || l.contains("BUG:"))
        .collect();
    if !complaints.is_empty() {
        fail(format!("Kamailio logged errors: {complaints:#?}"), &kam);
    }
    // stg reached Kamailio over UDP (RFC 3263 §4.1: a numeric upstream with no transport),
    // from its inside listener (the side facing the PBX), whatever the caller used.
    let via_inside = log
        .lines()
        .filter(|l| {
            l.contains("pbx: in INVITE ") && l.contains(&format!("from udp:127.0.0.1:{inside} "))
        })
        .count();
    if via_inside != 5 {
        fail(
            format!("{via_inside} of the 5 INVITEs came over UDP from stg's inside listener"),
            &kam,
        );
    }
    assert!(kam.alive(), "kamailio died:\n{}", kam.log());
    assert!(stg.alive(), "stg died");
}
