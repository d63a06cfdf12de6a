//! The registrar end to end, with real peers: Kamailio as the PBX, SIPp as devices and
//! callers. Two layouts:
//!
//! - **through**: Kamailio is the registrar (`use_path`). A device REGISTERs through stg
//!   (outside listener), stg forwards it upstream with its Path (the inside listener, the
//!   device's flow token) and stores the binding when Kamailio answers 2xx. A caller talking
//!   straight to Kamailio INVITEs the device's AOR: Kamailio's `lookup()` sends the INVITE
//!   along the Path to stg's inside listener, and stg puts it on the device's connection.
//! - **local**: stg is the registrar (digest against its SQL users); Kamailio only routes
//!   the domain's calls to stg's inside listener (a static route, the Request-URI stays the
//!   AOR) and stg looks the AOR up.
//!
//! The device and the caller share one Call-ID (`-cid_str`): SIPp maps an incoming request
//! to a call by its Call-ID, so that is how the device's SIPp, a UAC that REGISTERed, takes
//! the INVITE on the connection it opened. Every SIPp run is bounded (`-timeout`, and
//! [`Sipp::wait`]); every process is killed by PID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{free_port, temp_dir, StgNode};
use crate::kamailio::Kamailio;
use crate::sipp::{shared_scenario, Sipp, Transport};

pub(crate) const DOMAIN: &str = "example.test";

/// A scenario's last steps when the other side hangs up: the BYE, answered 200.
const ANSWER_BYE: &str = r#"  <recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"#;
pub(crate) const PASSWORD: &str = "e2e-secret";

pub(crate) fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// What the PBX does with a new request that is not a REGISTER.
#[derive(Clone, Copy)]
enum PbxRole {
    /// Registrar with `use_path` (REGISTERs saved, INVITEs by `lookup()`); `auth`: every
    /// REGISTER must carry digest credentials (any user, password [`PASSWORD`], realm = the
    /// To domain).
    Registrar { auth: bool },
    /// No registrar: every new request goes to stg's inside listener, Request-URI kept.
    Static { stg_inside: u16 },
}

/// The PBX's configuration. Every request is logged (`pbx: in ...`), REGISTERs with their
/// Contact and Path; `kamcmd -s unix:CTL ul.dump` shows the location table.
fn pbx_config(port: u16, ctl: &Path, role: PbxRole, echo_port: u16) -> String {
    let (auth_load, auth_check) = match role {
        PbxRole::Registrar { auth: true } => (
            "loadmodule \"auth.so\"\nmodparam(\"auth\", \"secret\", \"e2e-nonce-secret-0123456789\")\n",
            format!(
                "if (!pv_www_authenticate(\"$td\", \"{PASSWORD}\", \"0\")) {{\n\t\t\twww_challenge(\"$td\", \"0\");\n\t\t\texit;\n\t\t}}\n\t\tconsume_credentials();\n"
            ),
        ),
        _ => ("", String::new()),
    };
    let target = match role {
        PbxRole::Registrar { .. } => "if (!lookup(\"location\")) {\n\t\txlog(\"L_NOTICE\", \"pbx: lookup $ru failed\\n\");\n\t\tsl_send_reply(\"404\", \"Not Found\");\n\t\texit;\n\t}\n\txlog(\"L_NOTICE\", \"pbx: lookup -> $ru via $du\\n\");".to_string(),
        PbxRole::Static { stg_inside } => format!("$du = \"sip:127.0.0.1:{stg_inside}\";"),
    };
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
tcp_children=2
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
auto_aliases=no
dns=no
rev_dns=no
dns_try_ipv6=no
use_dns_cache=no
use_dns_failover=no
server_signature=no
user_agent_header="User-Agent: kamailio-pbx"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "ctl.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
{auth_load}
modparam("ctl", "binrpc", "unix:{ctl}")
modparam("tm", "fr_timer", 3000)
modparam("tm", "fr_inv_timer", 15000)
modparam("usrloc", "db_mode", 0)
modparam("usrloc", "use_domain", 0)
modparam("registrar", "use_path", 1)
modparam("registrar", "path_mode", 0)
modparam("registrar", "default_expires", 600)
modparam("registrar", "max_expires", 3600)
modparam("registrar", "min_expires", 10)

request_route {{
	xlog("L_NOTICE", "pbx: in $rm $ru from $proto:$si:$sp ci=$ci\n");
	if (!mf_process_maxfwd_header("10")) {{
		sl_send_reply("483", "Too Many Hops");
		exit;
	}}
	if (has_totag()) {{
		if (loose_route()) {{
			if (!t_relay()) {{
				sl_reply_error();
			}}
			exit;
		}}
		if (is_method("ACK")) {{
			if (t_check_trans()) {{
				t_relay();
			}}
			exit;
		}}
		xlog("L_ERR", "pbx: in-dialog $rm without our Route: 404\n");
		sl_send_reply("404", "Not here");
		exit;
	}}
	if (is_method("CANCEL")) {{
		if (t_check_trans()) {{
			t_relay();
		}}
		exit;
	}}
	if (!is_method("ACK")) {{
		if (t_precheck_trans()) {{
			t_check_trans();
			exit;
		}}
		t_check_trans();
	}}
	remove_hf("Route");
	if (is_method("REGISTER")) {{
		xlog("L_NOTICE", "pbx: REGISTER contact=[$hdr(Contact)] path=[$hdr(Path)]\n");
		{auth_check}
		if (!save("location")) {{
			sl_reply_error();
		}}
		exit;
	}}
	if (is_method("INVITE")) {{
		record_route();
	}}
	if ($rU == "echo") {{
		$du = "sip:127.0.0.1:{echo_port}";
	}} else {{
		{target}
	}}
	if (!t_relay()) {{
		sl_reply_error();
	}}
	exit;
}}

onreply_route {{
	xlog("L_NOTICE", "pbx: reply $rs $rr for $rm from $proto:$si:$sp\n");
}}
"#,
        ctl = ctl.display()
    )
}

struct Pbx {
    kam: Kamailio,
    ctl: PathBuf,
    port: u16,
}

impl Pbx {
    fn start(dir: &Path, role: PbxRole, echo_port: u16) -> Self {
        let port = free_port();
        let ctl = dir.join("kamailio.ctl");
        let kam = Kamailio::start_with_config(dir, port, &pbx_config(port, &ctl, role, echo_port));
        Self { kam, ctl, port }
    }

    /// `kamcmd ul.dump`: the location table.
    fn ul_dump(&self) -> String {
        let out = Command::new("kamcmd")
            .arg("-s")
            .arg(format!("unix:{}", self.ctl.display()))
            .arg("ul.dump")
            .output()
            .expect("kamcmd");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        self.kam.log()
    }
}

/// stg between the devices (outside: UDP and TCP on `port`, plus TLS on `tls` when given)
/// and Kamailio (inside: UDP and TCP on `inside`).
fn stg_config(port: u16, inside: u16, pbx: u16, extra: &str) -> String {
    let mut c = format!(
        "[sip]\nupstream = \"sip:127.0.0.1:{pbx}\"\n\n[sip.timers]\nt1 = \"100ms\"\nt4 = \"1s\"\n\n{extra}\n"
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

/// The device: REGISTERs `sip:[service]@DOMAIN` (digest when `auth`: `-au/-ap`), then takes
/// the INVITE that comes back over its connection, answers 180/200, gets the ACK, and
/// either hangs up itself (`device_bye`) or answers the caller's BYE.
fn device_scenario(auth: bool, device_bye: bool) -> String {
    device_scenario_with(auth, device_bye, "", "")
}

/// [`device_scenario`] with `uri_params` in the Contact URI (push parameters) and
/// `header_params` after it (`+sip.instance`); with `device_bye` `None`, the device only
/// registers and ends (its connection closes).
pub(crate) fn device_scenario_with(
    auth: bool,
    device_bye: impl Into<Option<bool>>,
    uri_params: &str,
    header_params: &str,
) -> String {
    let device_bye = device_bye.into();
    let register = |cseq: u32, creds: &str| {
        format!(
            r#"  <send retrans="500">
    <![CDATA[

      REGISTER sip:{DOMAIN} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:[service]@{DOMAIN}>;tag=[pid]R
      To: <sip:[service]@{DOMAIN}>
      Call-ID: [call_id]
      CSeq: {cseq} REGISTER
      Contact: <sip:[service]@[local_ip]:[local_port];transport=[transport]{uri_params}>{header_params}{creds}
      Expires: 600
      Supported: path
      Content-Length: 0

    ]]>
  </send>
"#
        )
    };
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<!DOCTYPE scenario SYSTEM \"sipp.dtd\">\n<scenario name=\"device\">\n",
    );
    if auth {
        s.push_str(&register(1, ""));
        s.push_str("  <recv response=\"401\" auth=\"true\"/>\n");
        s.push_str(&register(2, "\n      [authentication]"));
    } else {
        s.push_str(&register(1, ""));
    }
    s.push_str("  <recv response=\"200\"/>\n");
    let Some(device_bye) = device_bye else {
        s.push_str("</scenario>\n");
        return s;
    };
    // SIPp refuses a variable set and never used: capture From/To only when the BYE is ours.
    s.push_str(if device_bye {
        r#"  <recv request="INVITE" rrs="true">
    <action>
      <ereg regexp="[^ ].*" search_in="hdr" header="From:" check_it="true" assign_to="caller"/>
      <ereg regexp="[^ ].*" search_in="hdr" header="To:" check_it="true" assign_to="callee"/>
    </action>
  </recv>
"#
    } else {
        "  <recv request=\"INVITE\" rrs=\"true\"/>\n"
    });
    s.push_str(
        r#"  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:];tag=[pid]D
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[service]@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:];tag=[pid]D
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[service]@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=device 2 2 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv request="ACK"/>
"#,
    );
    if device_bye {
        s.push_str(
            r#"  <pause milliseconds="200"/>
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      Max-Forwards: 70
      From: [$callee];tag=[pid]D
      To: [$caller]
      Call-ID: [call_id]
      CSeq: 1 BYE
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"#,
        );
    } else {
        s.push_str(ANSWER_BYE);
    }
    s.push_str("</scenario>\n");
    s
}

/// The caller, straight to Kamailio: INVITE `sip:[service]@DOMAIN`, 200, ACK along the
/// Record-Route, then its own BYE (`caller_bye`) or the device's.
pub(crate) fn caller_scenario(caller_bye: bool) -> String {
    let mut s = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="caller">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@{DOMAIN} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:caller@{DOMAIN}>;tag=[pid]C
      To: <sip:[service]@{DOMAIN}>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="110" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      Max-Forwards: 70
      From: <sip:caller@{DOMAIN}>;tag=[pid]C
      To: <sip:[service]@{DOMAIN}>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Content-Length: 0

    ]]>
  </send>
"#
    );
    if caller_bye {
        s.push_str(&format!(
            r#"  <pause milliseconds="200"/>
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      Max-Forwards: 70
      From: <sip:caller@{DOMAIN}>;tag=[pid]C
      To: <sip:[service]@{DOMAIN}>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"#
        ));
    } else {
        s.push_str(ANSWER_BYE);
        s.push_str("  <timewait milliseconds=\"500\"/>\n");
    }
    s.push_str("</scenario>\n");
    s
}

/// One registration and one call back: the device (SIPp over TCP) registers through stg
/// (`auth`: with digest, `-au user -ap PASSWORD`), then the caller (SIPp over UDP, straight
/// to Kamailio) calls its AOR; BYE from the device (`device_bye`) or from the caller. Both
/// SIPps must succeed; returns the device for inspection.
fn register_and_call_back(
    dir: &Path,
    label: &str,
    stg_port: u16,
    pbx: &Pbx,
    user: &str,
    auth: bool,
    device_bye: bool,
) -> Sipp {
    let dev_sf = dir.join(format!("{label}-device.xml"));
    std::fs::write(&dev_sf, device_scenario(auth, device_bye)).unwrap();
    let caller_sf = dir.join(format!("{label}-caller.xml"));
    std::fs::write(&caller_sf, caller_scenario(!device_bye)).unwrap();
    let cid = format!("e2e-{label}-{}-%u", std::process::id());
    let mut dev_args = vec!["-s", user, "-cid_str", &cid];
    if auth {
        dev_args.extend_from_slice(&["-au", user, "-ap", PASSWORD]);
    }
    let mut device = Sipp::start(
        dir,
        &format!("{label}-device"),
        &dev_sf,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(stg_port)),
        &dev_args,
    );
    // The device is registered once its 200 is traced.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !device
        .messages()
        .iter()
        .any(|m| !m.sent && m.status() == Some(200))
    {
        assert!(
            Instant::now() < deadline,
            "{label}: the device got no 200 to its REGISTER:\n{}\n--- kamailio:\n{}",
            device.report(),
            pbx.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut caller = Sipp::start(
        dir,
        &format!("{label}-caller"),
        &caller_sf,
        Transport::Udp,
        addr(free_port()),
        Some(addr(pbx.port)),
        &["-s", user, "-cid_str", &cid],
    );
    let cs = caller.wait(Duration::from_secs(25));
    let ds = device.wait(Duration::from_secs(10));
    assert!(
        cs.success() && ds.success(),
        "{label}: caller {cs}, device {ds}\n{}\n{}\n--- kamailio:\n{}",
        caller.report(),
        device.report(),
        pbx.log()
    );
    device
}

pub(crate) fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Through mode: Kamailio is the registrar and stores stg's Path; the caller's INVITE finds
/// the device through that Path (Route = stg's Path entry → stg's inside listener → the
/// device's TCP connection). ACK and BYE both ways (device hangs up, then caller hangs up).
#[test]
fn through_mode_device_is_called_back_via_path() {
    let (port, inside) = (free_port(), free_port());
    let dir = temp_dir("e2e-through-pbx");
    let mut pbx = Pbx::start(&dir, PbxRole::Registrar { auth: false }, free_port());
    let mut stg = StgNode::start("e2e-through", &stg_config(port, inside, pbx.port, ""));
    let dir = stg.dir.clone();

    let device = register_and_call_back(&dir, "thr-devbye", port, &pbx, "alice", false, true);
    // The INVITE reached the device through stg: stg's Via on top of Kamailio's.
    let msgs = device.messages();
    let invite = msgs.iter().find(|m| !m.sent && m.is("INVITE")).unwrap();
    let vias: Vec<&str> = invite.headers("Via").collect();
    assert!(
        vias.len() == 3
            && vias[0].contains(&format!("127.0.0.1:{port}"))
            && vias[1].contains(&format!("127.0.0.1:{}", pbx.port)),
        "INVITE at the device:\n{}",
        invite.text
    );
    assert!(
        invite.headers("Route").next().is_none(),
        "stg must consume its Path entry:\n{}",
        invite.text
    );
    // Kamailio stored stg's Path (inside listener, a flow token as user part).
    let ul = pbx.ul_dump();
    assert!(
        ul.contains(&format!("@127.0.0.1:{inside};transport=udp;lr;ob")),
        "Kamailio's location table has no Path to stg's inside listener:\n{ul}"
    );

    register_and_call_back(&dir, "thr-callerbye", port, &pbx, "bob", false, false);

    let log = pbx.log();
    for (what, n) in [
        ("pbx: in REGISTER ", 2),
        ("pbx: in INVITE ", 2),
        ("pbx: in ACK ", 2),
        ("pbx: in BYE ", 2),
        ("pbx: lookup -> ", 2),
    ] {
        assert_eq!(count(&log, what), n, "{what}:\n{log}");
    }
    // Kamailio sent every INVITE to stg's inside listener (the Path), over UDP.
    let via_path = log
        .lines()
        .filter(|l| {
            l.contains("pbx: lookup -> ")
                && l.contains(&format!("@127.0.0.1:{inside};transport=udp"))
        })
        .count();
    assert_eq!(via_path, 2, "{log}");
    assert_eq!(
        stg.counter("stg_registrar_registers_total{mode=\"through\",result=\"ok\"}"),
        2.0,
        "{}",
        stg.metrics()
    );
    assert!(stg.alive(), "stg died");
    assert!(pbx.kam.alive(), "kamailio died");
}

/// SQL users for local mode, in an SQLite file the test creates: `(user, password)` in
/// `realm`, MD5 and SHA-256. Returns the `users_url`.
pub(crate) fn make_users(dir: &Path, realm: &str, users: &[(String, String)]) -> String {
    let url = format!("sqlite://{}?mode=rwc", dir.join("users.sqlite").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = stg_store::Users::open(&url, dir).await.unwrap();
        for (u, p) in users {
            let ha1s = [
                ("MD5", stg_auth::ha1(stg_auth::Algorithm::Md5, u, realm, p)),
                (
                    "SHA-256",
                    stg_auth::ha1(stg_auth::Algorithm::Sha256, u, realm, p),
                ),
            ];
            db.set(u, realm, &ha1s).await.unwrap();
        }
    });
    url
}

/// A REGISTER whose digest answer is wrong: 401, REGISTER with credentials, 401 again.
const REGISTER_WRONG_PASSWORD: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="register, wrong password">
  <send retrans="500">
    <![CDATA[

      REGISTER sip:@DOMAIN@ SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:[service]@@DOMAIN@>;tag=[pid]W
      To: <sip:[service]@@DOMAIN@>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[service]@[local_ip]:[local_port];transport=[transport]>
      Expires: 600
      Content-Length: 0

    ]]>
  </send>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[

      REGISTER sip:@DOMAIN@ SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:[service]@@DOMAIN@>;tag=[pid]W
      To: <sip:[service]@@DOMAIN@>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[service]@[local_ip]:[local_port];transport=[transport]>
      [authentication]
      Expires: 600
      Content-Length: 0

    ]]>
  </send>
  <recv response="401"/>
</scenario>
"#;

/// Local mode: stg challenges (realm = the domain) and answers itself; a wrong password is
/// challenged again and logged as `TRUCO_KO`; then Kamailio, which only routes the domain
/// to stg (static, Request-URI kept), relays a call for the AOR, and stg finds the device.
#[test]
fn local_mode_digest_register_and_call_via_lookup() {
    let (port, inside) = (free_port(), free_port());
    let dir = temp_dir("e2e-local-pbx");
    let users_url = make_users(
        &dir,
        DOMAIN,
        &[
            ("carol".to_string(), PASSWORD.to_string()),
            ("dave".to_string(), PASSWORD.to_string()),
        ],
    );
    let pbx = Pbx::start(&dir, PbxRole::Static { stg_inside: inside }, free_port());
    let extra = format!(
        "[registrar]\ndomains = [{{ name = \"{DOMAIN}\", mode = \"local\" }}]\ndigest_algorithms = [\"MD5\"]\n\n[store]\nusers_url = \"{users_url}\"\n"
    );
    let mut stg = StgNode::start("e2e-local", &stg_config(port, inside, pbx.port, &extra));
    let dir = stg.dir.clone();

    // A wrong password: 401 again, and the operators' line.
    let sf = dir.join("register_wrong.xml");
    std::fs::write(&sf, REGISTER_WRONG_PASSWORD.replace("@DOMAIN@", DOMAIN)).unwrap();
    let mut wrong = Sipp::start(
        &dir,
        "local-wrong",
        &sf,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &["-s", "carol", "-au", "carol", "-ap", "not-the-password"],
    );
    wrong.expect_success(Duration::from_secs(25));
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&stg.log(), "TRUCO_KO 127.0.0.1 sip wrong_response carol") == 0 {
        assert!(
            Instant::now() < deadline,
            "no TRUCO_KO line for the wrong password:\n{}",
            stg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Digest REGISTER (401, then 200), then the call from behind the PBX: BYE from the
    // device, then from the caller.
    let device = register_and_call_back(&dir, "loc-devbye", port, &pbx, "carol", true, true);
    let msgs = device.messages();
    let statuses: Vec<u16> = msgs
        .iter()
        .filter(|m| !m.sent)
        .filter_map(|m| m.status())
        .collect();
    assert_eq!(
        statuses.get(..2),
        Some(&[401, 200][..]),
        "{}",
        device.report()
    );
    register_and_call_back(&dir, "loc-callerbye", port, &pbx, "dave", true, false);

    // stg answered the REGISTERs itself: Kamailio never saw one.
    let log = pbx.log();
    assert_eq!(count(&log, "pbx: in REGISTER "), 0, "{log}");
    assert_eq!(count(&log, "pbx: in INVITE "), 2, "{log}");
    assert_eq!(
        stg.counter("stg_registrar_registers_total{mode=\"local\",result=\"ok\"}"),
        2.0,
        "{}",
        stg.metrics()
    );
    assert_eq!(
        stg.counter("stg_registrar_lookups_total{result=\"found\"}"),
        2.0,
        "{}",
        stg.metrics()
    );
    assert!(
        stg.counter_sum("stg_auth_failures_total") >= 1.0,
        "{}",
        stg.metrics()
    );
    assert!(stg.alive(), "stg died");
}

/// `n` REGISTERs of distinct AORs (`[user_prefix]1..n`) with SIPp over UDP against stg at
/// `port`, `scenario` from the shared bench, at up to `rate` per second: every one must
/// succeed. Returns the rate achieved (REGISTER transactions per second, SIPp's wall time).
fn register_run(
    dir: &Path,
    label: &str,
    port: u16,
    scenario: &Path,
    inf_lines: &str,
    n: usize,
    extra: &[&str],
) -> f64 {
    let inf = dir.join(format!("{label}.csv"));
    std::fs::write(&inf, format!("SEQUENTIAL\n{inf_lines}")).unwrap();
    let n_s = n.to_string();
    let mut args = vec![
        "-inf",
        inf.to_str().unwrap(),
        "-key",
        "user_prefix",
        label,
        "-key",
        "expires",
        "600",
        "-m",
        &n_s,
        "-r",
        "400",
        "-l",
        "100",
    ];
    args.extend_from_slice(extra);
    let mut sipp = Sipp::start(
        dir,
        label,
        scenario,
        Transport::Udp,
        addr(free_port()),
        Some(addr(port)),
        &args,
    );
    let st = sipp.wait(Duration::from_secs(60));
    let secs = sipp.elapsed().as_secs_f64();
    assert!(st.success(), "{label}: {st}\n{}", sipp.report());
    let ok = sipp
        .messages()
        .iter()
        .filter(|m| !m.sent && m.status() == Some(200))
        .count();
    assert_eq!(ok, n, "{label}: {ok} 200s for {n} REGISTERs");
    let rate = n as f64 / secs;
    eprintln!("{label}: {n} REGISTERs in {secs:.2} s = {rate:.0}/s (SIPp wall time)");
    rate
}

const N_REGISTERS: usize = 200;

/// 200 REGISTERs of distinct AORs through stg in through mode, plain and with Kamailio
/// challenging (WITH_AUTH-like: any user, one password): no failures.
#[test]
fn register_runs_through() {
    let inf_lines: String = (1..=N_REGISTERS).map(|i| format!("{i};\n")).collect();

    // through, plain
    let (port, inside) = (free_port(), free_port());
    let dir = temp_dir("e2e-reg-pbx");
    let pbx = Pbx::start(&dir, PbxRole::Registrar { auth: false }, free_port());
    let stg = StgNode::start_with(
        "e2e-reg-through",
        &stg_config(port, inside, pbx.port, ""),
        crate::harness::StgOpts {
            log_level: "info",
            ..Default::default()
        },
    );
    let plain = register_run(
        &stg.dir,
        "thr_plain_",
        port,
        &shared_scenario("register.xml"),
        &inf_lines,
        N_REGISTERS,
        &[],
    );
    assert_eq!(
        stg.counter("stg_registrar_registers_total{mode=\"through\",result=\"ok\"}"),
        N_REGISTERS as f64
    );
    drop(stg);
    drop(pbx);

    // through, Kamailio challenges
    let (port, inside) = (free_port(), free_port());
    let dir = temp_dir("e2e-reg-pbx-auth");
    let pbx = Pbx::start(&dir, PbxRole::Registrar { auth: true }, free_port());
    let stg = StgNode::start_with(
        "e2e-reg-through-auth",
        &stg_config(port, inside, pbx.port, ""),
        crate::harness::StgOpts {
            log_level: "info",
            ..Default::default()
        },
    );
    let with_auth = register_run(
        &stg.dir,
        "thr_auth_",
        port,
        &shared_scenario("register_auth.xml"),
        &inf_lines,
        N_REGISTERS,
        &["-au", "e2e", "-ap", PASSWORD],
    );
    assert_eq!(
        stg.counter("stg_registrar_registers_total{mode=\"through\",result=\"ok\"}"),
        N_REGISTERS as f64
    );
    drop(stg);
    drop(pbx);
    eprintln!(
        "REGISTER rates (SIPp, {N_REGISTERS} each): through {plain:.0}/s, through + Kamailio digest {with_auth:.0}/s"
    );
}

/// 200 digest REGISTERs of distinct AORs in local mode (200 users in stg's SQL table).
#[test]
fn register_run_local_digest() {
    // local, digest: user `loc_<i>` with password `pw<i>`, realm = the Request-URI host of
    // the bench scenario (the node's address).
    let (port, inside) = (free_port(), free_port());
    let dir = temp_dir("e2e-reg-users");
    let users: Vec<(String, String)> = (1..=N_REGISTERS)
        .map(|i| (format!("loc_{i}"), format!("pw{i}")))
        .collect();
    let users_url = make_users(&dir, "127.0.0.1", &users);
    let extra = format!(
        "[registrar]\ndomains = [{{ name = \"127.0.0.1\", mode = \"local\" }}]\ndigest_algorithms = [\"MD5\"]\n\n[store]\nusers_url = \"{users_url}\"\n"
    );
    let stg = StgNode::start_with(
        "e2e-reg-local",
        &stg_config(port, inside, free_port(), &extra),
        crate::harness::StgOpts {
            log_level: "info",
            ..Default::default()
        },
    );
    let inf_auth: String = (1..=N_REGISTERS)
        .map(|i| format!("{i};[authentication username=loc_{i} password=pw{i}];\n"))
        .collect();
    let sf = stg.dir.join("register_auth_fields.xml");
    std::fs::write(
        &sf,
        std::fs::read_to_string(shared_scenario("register_auth.xml"))
            .unwrap()
            .replace("[authentication]", "[field1]"),
    )
    .unwrap();
    let local = register_run(&stg.dir, "loc_", port, &sf, &inf_auth, N_REGISTERS, &[]);
    assert_eq!(
        stg.counter("stg_registrar_registers_total{mode=\"local\",result=\"ok\"}"),
        N_REGISTERS as f64,
        "{}",
        stg.metrics()
    );
    eprintln!("REGISTER rate (SIPp, {N_REGISTERS}): local digest {local:.0}/s");
}

// === linphonec over TLS ===

/// A self-signed certificate for `127.0.0.1` as linphonec checks it (a dNSName SAN, see
/// PEERS.md): `(cert, key)`.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=DNS:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    (cert, key)
}

/// A 16-bit mono 8 kHz WAV of a 440 Hz tone, `secs` long: linphonec's play file.
fn make_wav(path: &Path, secs: u32) {
    let n = 8000 * secs;
    let mut w = Vec::with_capacity(44 + 2 * n as usize);
    let data_len = 2 * n;
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&16000u32.to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..n {
        let v = (f64::from(i) * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 8000.0;
        w.extend_from_slice(&(v as i16).to_le_bytes());
    }
    std::fs::write(path, w).unwrap();
}

/// linphonec with its stdin a pipe the test writes commands to (the core iterates while it
/// waits on stdin); killed by PID on drop.
struct Linphonec {
    child: crate::harness::KillOnDrop,
    log: PathBuf,
}

impl Linphonec {
    fn start(dir: &Path, rc: &str) -> Self {
        let home = dir.join("lin-home");
        std::fs::create_dir_all(home.join(".local/share/linphone")).unwrap();
        // It rewrites its configuration on exit: it runs on a copy.
        let cfg = dir.join("linphonerc.run");
        std::fs::write(dir.join("linphonerc"), rc).unwrap();
        std::fs::write(&cfg, rc).unwrap();
        let log = dir.join("linphonec.log");
        let out = std::fs::File::create(dir.join("linphonec.out")).unwrap();
        let child = Command::new("linphonec")
            .arg("-c")
            .arg(&cfg)
            .args(["-a", "-d", "6", "-l"])
            .arg(&log)
            .env("HOME", &home)
            .stdin(std::process::Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("linphonec (Debian package linphone-cli) is needed");
        Self {
            child: crate::harness::KillOnDrop(child),
            log,
        }
    }

    fn cmd(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Polls `cond` every 50 ms until it holds or `secs` pass.
fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The media port of the first `m=audio` line in an SDP body.
fn sdp_audio_port(text: &str) -> Option<u16> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
}

/// The caller's media, played by the test: counts RTP from linphonec on `rtp`, sends PCMU
/// packets (SSRC `0x5170_e2e0`) to `peer` every 20 ms while running, and reads linphonec's
/// RTCP on `rtp`'s port + 1: the highest sequence number its reports say it received from
/// us. Returns (RTP packets received, highest sequence number reported).
fn media_loop(
    rtp: std::net::UdpSocket,
    rtcp: std::net::UdpSocket,
    peer: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, u32)> {
    const SSRC: u32 = 0x5170_e2e0;
    std::thread::spawn(move || {
        rtp.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        rtcp.set_nonblocking(true).unwrap();
        let (mut got, mut reported, mut seq) = (0usize, 0u32, 0u16);
        let mut buf = [0u8; 2048];
        let mut next_send = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, _)) = rtp.recv_from(&mut buf) {
                if n >= 12 && buf[0] >> 6 == 2 {
                    got += 1;
                }
            }
            while let Ok((n, _)) = rtcp.recv_from(&mut buf) {
                reported = reported.max(rtcp_highest_seq(&buf[..n], SSRC));
            }
            let to = *peer.lock().unwrap();
            if let Some(to) = to {
                if Instant::now() >= next_send {
                    let mut p = vec![0x80u8, 0];
                    p.extend_from_slice(&seq.to_be_bytes());
                    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                    p.extend_from_slice(&SSRC.to_be_bytes());
                    p.extend_from_slice(&[0xffu8; 160]);
                    let _ = rtp.send_to(&p, to);
                    seq = seq.wrapping_add(1);
                    next_send += Duration::from_millis(20);
                }
            }
        }
        (got, reported)
    })
}

/// In a compound RTCP packet, the extended highest sequence number of the report block
/// about `ssrc` (0 if none).
fn rtcp_highest_seq(mut p: &[u8], ssrc: u32) -> u32 {
    let mut best = 0;
    while p.len() >= 8 {
        let count = usize::from(p[0] & 0x1f);
        let pt = p[1];
        let len = (usize::from(u16::from_be_bytes([p[2], p[3]])) + 1) * 4;
        if len > p.len() {
            break;
        }
        let blocks_at = match pt {
            200 => 28,
            201 => 8,
            _ => len,
        };
        for i in 0..count {
            let b = blocks_at + i * 24;
            if b + 24 > len {
                break;
            }
            let who = u32::from_be_bytes([p[b], p[b + 1], p[b + 2], p[b + 3]]);
            if who == ssrc {
                best = best.max(u32::from_be_bytes([
                    p[b + 8],
                    p[b + 9],
                    p[b + 10],
                    p[b + 11],
                ]));
            }
        }
        p = &p[len..];
    }
    best
}

/// linphonec's user (the AOR `lin@DOMAIN`).
const LIN_USER: &str = "lin";

/// stg's `[tls]` section and an outside TLS listener on `tls_port`, for linphonec.
fn tls_listener(cert: &Path, key: &Path, tls_port: u16) -> String {
    format!(
        "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\n[[sip.listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:{tls_port}\"\nside = \"outside\"\n",
        cert.display(),
        key.display()
    )
}

/// linphonec registering `sip:lin@DOMAIN` over TLS through stg at `tls_port` (certificate
/// checked against `cert`), its Contact carrying RFC 8599 push parameters; `password`: its
/// digest credentials (realm = the domain).
fn linphonerc(cert: &Path, tls_port: u16, password: Option<&str>) -> String {
    let (lin_sip, lin_rtp) = (free_port(), free_port());
    let mut rc = format!(
        "[sip]\nsip_port=0\nsip_tcp_port=0\nsip_tls_port={lin_sip}\nbind_address=127.0.0.1\nuse_ipv6=0\nroot_ca={cert}\nverify_server_certs=1\nverify_server_cn=1\ndefault_proxy=0\n\n[rtp]\naudio_rtp_port={lin_rtp}\nbind_address=127.0.0.1\n\n[proxy_0]\nreg_proxy=<sip:127.0.0.1:{tls_port};transport=tls>\nreg_route=<sip:127.0.0.1:{tls_port};transport=tls>\nreg_identity=sip:{LIN_USER}@{DOMAIN}\nreg_expires=600\nreg_sendregister=1\npublish=0\ncontact_uri_parameters=pn-provider=fcm;pn-prid=tok123;pn-param=proj\n",
        cert = cert.display()
    );
    if let Some(p) = password {
        rc.push_str(&format!(
            "\n[auth_info_0]\nusername={LIN_USER}\npasswd={p}\nrealm={DOMAIN}\ndomain={DOMAIN}\n"
        ));
    }
    rc
}

/// linphonec with `rc` in `dir`, playing a 440 Hz tone as its microphone.
fn start_linphonec(dir: &Path, rc: &str) -> Linphonec {
    let wav = dir.join("tone.wav");
    make_wav(&wav, 20);
    let mut lin = Linphonec::start(dir, rc);
    lin.cmd("soundcard use files");
    lin.cmd(&format!("play {}", wav.display()));
    lin
}

/// linphonec calls `sip:echo@DOMAIN` (stg -> Kamailio -> a SIPp callee on `echo_port`), and
/// hangs up itself once the callee has its ACK.
fn linphonec_calls_out(lin: &mut Linphonec, dir: &Path, pbx: &Pbx, echo_port: u16) {
    let mut uas = Sipp::uas(
        dir,
        "lin-out-uas",
        &shared_scenario("uas_call.xml"),
        Transport::Udp,
        addr(echo_port),
        &["-rtp_echo", "-mp", &free_port().to_string()],
    );
    lin.cmd(&format!("call sip:echo@{DOMAIN}"));
    assert!(
        wait_for(15, || uas.messages().iter().any(|m| !m.sent && m.is("ACK"))),
        "the callee got no ACK from linphonec:\n{}\n--- kamailio:\n{}\n--- linphonec:\n{}",
        uas.report(),
        pbx.log(),
        tail(&lin.log(), 8000)
    );
    std::thread::sleep(Duration::from_millis(500));
    lin.cmd("terminate");
    let st = uas.wait(Duration::from_secs(15));
    assert!(
        st.success(),
        "callee {st}:\n{}\n--- linphonec:\n{}",
        uas.report(),
        tail(&lin.log(), 8000)
    );
}

/// A SIPp caller behind Kamailio calls `sip:lin@DOMAIN`; Kamailio sends the INVITE to stg's
/// inside listener, stg puts it on linphonec's TLS connection, linphonec auto-answers; the
/// test plays the caller's media for 7 s, then the caller hangs up. Asserts RTP both ways.
fn linphonec_is_called_back(lin: &Linphonec, dir: &Path, pbx: &Pbx, stg: &StgNode) {
    called_back(dir, pbx, stg, || (), || lin.log());
}

/// [`linphonec_is_called_back`], with `meanwhile` run once the caller has sent its INVITE
/// (e.g. waking linphonec up), and `lin_log` for the failure report.
fn called_back(
    dir: &Path,
    pbx: &Pbx,
    stg: &StgNode,
    meanwhile: impl FnOnce(),
    lin_log: impl Fn() -> String,
) {
    let media = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mport = media.local_addr().unwrap().port();
    let rtcp = std::net::UdpSocket::bind(("127.0.0.1", mport + 1))
        .expect("the RTCP port next to the media port is taken: rerun");
    let peer = std::sync::Arc::new(std::sync::Mutex::new(None));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let media_thread = media_loop(media, rtcp, peer.clone(), stop.clone());
    let caller_sf = dir.join("lin-caller.xml");
    std::fs::write(
        &caller_sf,
        caller_scenario(true)
            .replace("m=audio [media_port]", &format!("m=audio {mport}"))
            .replace(
                "<pause milliseconds=\"200\"/>",
                "<pause milliseconds=\"7000\"/>",
            ),
    )
    .unwrap();
    let mut caller = Sipp::start(
        dir,
        "lin-in-caller",
        &caller_sf,
        Transport::Udp,
        addr(free_port()),
        Some(addr(pbx.port)),
        &["-s", LIN_USER],
    );
    meanwhile();
    // The media peer: linphonec's port from its 200's SDP.
    let got_200 = wait_for(15, || {
        let msgs = caller.messages();
        let Some(ok) = msgs.iter().find(|m| !m.sent && m.status() == Some(200)) else {
            return false;
        };
        if let Some(p) = sdp_audio_port(&ok.text) {
            *peer.lock().unwrap() = Some(addr(p));
        }
        true
    });
    let st = caller.wait(Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rtp_in, reported) = media_thread.join().unwrap();
    assert!(
        got_200 && st.success(),
        "call back to linphonec: caller {st}\n{}\n--- kamailio:\n{}\n--- stg:\n{}\n--- linphonec:\n{}",
        caller.report(),
        pbx.log(),
        tail(&stg.log(), 8000),
        tail(&lin_log(), 8000)
    );
    eprintln!(
        "audio: {rtp_in} RTP packets from linphonec; linphonec's RTCP reports our stream up to sequence {reported}"
    );
    assert!(rtp_in >= 100, "linphonec -> caller: {rtp_in} RTP packets");
    assert!(
        reported >= 50,
        "caller -> linphonec: linphonec's RTCP reports our stream up to sequence {reported}"
    );
}

/// Stops stg and asserts that its embedded store's binding for `lin@DOMAIN` kept the push
/// parameters of linphonec's Contact.
fn assert_binding_has_push_params(stg: &mut StgNode) {
    stg.signal("TERM");
    assert!(stg.wait_exit(Duration::from_secs(10)).is_some());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let record = rt.block_on(async {
        let b = stg_store::Bindings::open("", &stg.dir.join("data"))
            .await
            .unwrap();
        b.get(&format!("{LIN_USER}@{DOMAIN}")).await.unwrap()
    });
    let all: String = record
        .fields
        .values()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        all.contains("pn-provider=fcm")
            && all.contains("pn-prid=tok123")
            && all.contains("pn-param=proj"),
        "stg's binding lost the push parameters: {record:#?}"
    );
}

/// linphonec over TLS through stg, Kamailio as registrar with `use_path`; its Contact
/// carries RFC 8599 push parameters. It registers (Kamailio gets the Contact without any
/// `pn-*`, stg's stored binding keeps them), calls out to a SIPp callee behind Kamailio and
/// hangs up itself (its ACK and BYE go out through stg), then is called back through stg by
/// a SIPp caller behind Kamailio (auto-answer), with RTP both ways, and the caller hangs up.
#[test]
fn through_mode_linphonec_over_tls_with_push_params() {
    let (port, inside, tls_port) = (free_port(), free_port(), free_port());
    let echo_port = free_port();
    let dir = temp_dir("e2e-linphonec-pbx");
    let (cert, key) = make_cert(&dir);
    let pbx = Pbx::start(&dir, PbxRole::Registrar { auth: false }, echo_port);
    let extra = tls_listener(&cert, &key, tls_port);
    let mut stg = StgNode::start("e2e-linphonec", &stg_config(port, inside, pbx.port, &extra));
    let sdir = stg.dir.clone();
    let mut lin = start_linphonec(&sdir, &linphonerc(&cert, tls_port, None));

    let through_ok = "stg_registrar_registers_total{mode=\"through\",result=\"ok\"}";
    assert!(
        wait_for(20, || stg.counter(through_ok) >= 1.0),
        "linphonec did not register through stg\n--- linphonec:\n{}\n--- stg:\n{}\n--- kamailio:\n{}",
        tail(&lin.log(), 6000),
        tail(&stg.log(), 6000),
        pbx.log()
    );
    // Kamailio got the Contact without the push parameters, and stg's Path.
    let klog = pbx.log();
    let reg_lines: Vec<&str> = klog
        .lines()
        .filter(|l| l.contains("pbx: REGISTER contact="))
        .collect();
    assert!(!reg_lines.is_empty(), "{klog}");
    assert!(
        reg_lines.iter().all(|l| !l.contains("pn-")),
        "push parameters reached the PBX: {reg_lines:#?}"
    );
    let ul = pbx.ul_dump();
    assert!(
        ul.contains("lin@") || ul.contains("AoR: lin"),
        "not in Kamailio's table:\n{ul}"
    );
    assert!(
        !ul.contains("pn-"),
        "push parameters in Kamailio's table:\n{ul}"
    );
    assert!(
        ul.contains(&format!("@127.0.0.1:{inside};transport=udp;lr;ob")),
        "{ul}"
    );

    // Call out: linphonec -> stg (TLS) -> Kamailio -> SIPp callee; linphonec hangs up.
    linphonec_calls_out(&mut lin, &sdir, &pbx, echo_port);
    // Called back: SIPp caller -> Kamailio (lookup: the Path) -> stg inside -> TLS.
    linphonec_is_called_back(&lin, &sdir, &pbx, &stg);

    // stg's binding keeps the push parameters: read the embedded store once stg is gone.
    drop(lin);
    assert_binding_has_push_params(&mut stg);
}

/// The digest algorithms in linphonec's `Authorization`/`Proxy-Authorization` headers, as
/// its log shows the requests it sent (`algorithm=...` values, in order).
fn lin_digest_algorithms(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let l = l.trim_start().to_ascii_lowercase();
            l.starts_with("authorization:") || l.starts_with("proxy-authorization:")
        })
        .filter_map(|l| {
            let i = l.to_ascii_lowercase().find("algorithm=")?;
            let v = &l[i + "algorithm=".len()..];
            Some(
                v.trim_start_matches('"')
                    .split(|c: char| c == '"' || c == ',' || c.is_whitespace())
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// linphonec over TLS with stg in local mode: stg challenges its REGISTER (401, both digest
/// algorithms offered) and stores the binding with the push parameters itself; Kamailio is
/// only the PBX, routing the domain's calls statically to stg's inside listener. linphonec
/// calls out to a SIPp callee behind Kamailio (the domain has `authenticate = true`: stg
/// answers its INVITE 407 first) and hangs up; then a SIPp caller behind Kamailio calls its AOR, stg looks it up and delivers
/// the INVITE over linphonec's TLS connection, linphonec auto-answers, RTP flows both ways,
/// and the caller hangs up.
#[test]
fn local_mode_linphonec_over_tls() {
    let (port, inside, tls_port) = (free_port(), free_port(), free_port());
    let echo_port = free_port();
    let dir = temp_dir("e2e-linlocal-pbx");
    let (cert, key) = make_cert(&dir);
    let users_url = make_users(
        &dir,
        DOMAIN,
        &[(LIN_USER.to_string(), PASSWORD.to_string())],
    );
    let mut pbx = Pbx::start(&dir, PbxRole::Static { stg_inside: inside }, echo_port);
    let extra = format!(
        "[registrar]\ndomains = [{{ name = \"{DOMAIN}\", mode = \"local\", authenticate = true }}]\n\n[store]\nusers_url = \"{users_url}\"\n\n{}",
        tls_listener(&cert, &key, tls_port)
    );
    let mut stg = StgNode::start("e2e-linlocal", &stg_config(port, inside, pbx.port, &extra));
    let sdir = stg.dir.clone();
    let mut lin = start_linphonec(&sdir, &linphonerc(&cert, tls_port, Some(PASSWORD)));

    // 401, then 200: stg answered the REGISTER itself.
    let local_ok = "stg_registrar_registers_total{mode=\"local\",result=\"ok\"}";
    assert!(
        wait_for(20, || stg.counter(local_ok) >= 1.0),
        "linphonec did not register with stg\n--- linphonec:\n{}\n--- stg:\n{}\n--- metrics:\n{}",
        tail(&lin.log(), 8000),
        tail(&stg.log(), 6000),
        stg.metrics()
    );
    assert!(
        stg.counter("stg_registrar_registers_total{mode=\"local\",result=\"challenged\"}") >= 1.0,
        "{}",
        stg.metrics()
    );
    let llog = lin.log();
    assert!(
        llog.contains("SIP/2.0 401") && llog.contains("SIP/2.0 200"),
        "linphonec's log shows no 401 and 200:\n{}",
        tail(&llog, 8000)
    );
    let reg_algs = lin_digest_algorithms(&llog);
    assert!(
        !reg_algs.is_empty()
            && reg_algs
                .iter()
                .all(|a| a.eq_ignore_ascii_case("SHA-256") || a.eq_ignore_ascii_case("MD5")),
        "linphonec's digest answers: {reg_algs:?}"
    );
    eprintln!("linphonec answered the REGISTER challenge with {reg_algs:?}");

    // Call out: linphonec -> stg (TLS; 407, then with credentials) -> Kamailio -> callee.
    linphonec_calls_out(&mut lin, &sdir, &pbx, echo_port);
    let llog = lin.log();
    let algs = lin_digest_algorithms(&llog);
    assert!(
        llog.contains("SIP/2.0 407") && algs.len() > reg_algs.len(),
        "stg did not challenge linphonec's INVITE, or linphonec did not answer: {algs:?}\n{}",
        tail(&llog, 8000)
    );
    eprintln!("linphonec's digest answers (REGISTER, INVITE, ACK, BYE): {algs:?}");
    // Called back: SIPp caller -> Kamailio (static) -> stg inside (lookup) -> TLS.
    linphonec_is_called_back(&lin, &sdir, &pbx, &stg);

    let log = pbx.log();
    assert_eq!(count(&log, "pbx: in REGISTER "), 0, "{log}");
    assert_eq!(count(&log, "pbx: in INVITE "), 2, "{log}");
    assert_eq!(count(&log, "pbx: in ACK "), 2, "{log}");
    assert_eq!(count(&log, "pbx: in BYE "), 2, "{log}");
    assert!(
        stg.counter("stg_registrar_lookups_total{result=\"found\"}") >= 1.0,
        "{}",
        stg.metrics()
    );
    assert_eq!(
        stg.counter_sum("stg_auth_failures_total"),
        0.0,
        "{}",
        stg.metrics()
    );
    assert!(stg.alive(), "stg died");
    assert!(pbx.kam.alive(), "kamailio died");

    drop(lin);
    assert_binding_has_push_params(&mut stg);
}

/// The last `n` bytes of `s` (on a char boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Through mode, the seed's main case: the app registers through stg to the PBX (Kamailio,
/// `use_path`) with push parameters, then sleeps. The PBX calls it along stg's Path; stg
/// reads the binding, finds the connection gone, pushes (log-only) and waits; the woken app
/// registers again through stg (the PBX learns its new Path too) and the waiting INVITE goes
/// out on the new connection.
#[test]
fn through_mode_device_asleep_is_pushed_and_called_on_its_new_connection() {
    let (port, inside) = (free_port(), free_port());
    let dir = temp_dir("e2e-through-push");
    let pbx = Pbx::start(&dir, PbxRole::Registrar { auth: false }, free_port());
    let mut stg = StgNode::start("e2e-through-push", &stg_config(port, inside, pbx.port, ""));
    let dir = stg.dir.clone();
    let params = ";pn-provider=fcm;pn-prid=through-token-42;pn-param=stg-test";
    let instance = ";+sip.instance=\"<urn:uuid:0e8d1c52-1111-4e8e-9d2a-1b2c3d4e5f60>\"";
    let asleep = dir.join("asleep.xml");
    std::fs::write(&asleep, device_scenario_with(false, None, params, instance)).unwrap();
    let cid0 = format!("through-asleep-{}-%u", std::process::id());
    Sipp::start(
        &dir,
        "asleep",
        &asleep,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &["-s", "frank", "-cid_str", &cid0],
    )
    .expect_success(Duration::from_secs(15));

    let cid = format!("through-call-{}-%u", std::process::id());
    let caller_sf = dir.join("caller.xml");
    std::fs::write(&caller_sf, caller_scenario(true)).unwrap();
    let mut caller = Sipp::start(
        &dir,
        "caller",
        &caller_sf,
        Transport::Udp,
        addr(free_port()),
        Some(addr(pbx.port)),
        &["-s", "frank", "-cid_str", &cid],
    );
    assert!(
        wait_for(10, || count(&stg.log(), "push (log only") >= 1),
        "no push:\n{}\n--- kamailio:\n{}\n{}",
        stg.log(),
        pbx.log(),
        caller.report()
    );
    let woken = dir.join("woken.xml");
    std::fs::write(&woken, device_scenario_with(false, false, params, instance)).unwrap();
    let mut device = Sipp::start(
        &dir,
        "woken",
        &woken,
        Transport::Tcp,
        addr(free_port()),
        Some(addr(port)),
        &["-s", "frank", "-cid_str", &cid],
    );
    let cs = caller.wait(Duration::from_secs(25));
    let ds = device.wait(Duration::from_secs(10));
    assert!(
        cs.success() && ds.success(),
        "caller {cs}, device {ds}\n{}\n{}\n--- kamailio:\n{}\n--- stg:\n{}",
        caller.report(),
        device.report(),
        pbx.log(),
        tail(&stg.log(), 8000)
    );
    assert!(stg.alive());
}

/// The seed's diagram with a real app: linphonec registers over TLS through stg (push
/// parameters in its Contact) to Kamailio, and is stopped (asleep). A SIPp caller calls it
/// behind Kamailio; stg finds the connection gone and pushes through a local FCM HTTP v1
/// server; on that push the test starts linphonec again (auto-answer, playing a tone): it
/// registers over a new TLS connection, stg sends the waiting INVITE there, the call
/// connects and audio flows both ways.
#[test]
fn linphonec_asleep_is_woken_through_fcm_and_the_call_connects() {
    use stg_testkit::push_servers::{FakeFcm, FcmOptions};
    let fcm = FakeFcm::start(FcmOptions {
        project_id: "proj".into(),
        ..FcmOptions::default()
    });
    let (port, inside, tls_port) = (free_port(), free_port(), free_port());
    let echo_port = free_port();
    let dir = temp_dir("e2e-linphonec-push");
    let (cert, key) = make_cert(&dir);
    let pbx = Pbx::start(&dir, PbxRole::Registrar { auth: false }, echo_port);
    let extra = format!(
        "{}\n[push]\nmode = \"live\"\n\n[push.fcm]\nservice_account = \"{}\"\nurl = \"{}\"\nca_file = \"{}\"\n",
        tls_listener(&cert, &key, tls_port),
        fcm.service_account_file().display(),
        fcm.url(),
        fcm.ca_file().display()
    );
    let stg = StgNode::start("e2e-lin-push", &stg_config(port, inside, pbx.port, &extra));
    let sdir = stg.dir.clone();
    let rc = linphonerc(&cert, tls_port, None);
    let lin = start_linphonec(&sdir, &rc);
    let through_ok = "stg_registrar_registers_total{mode=\"through\",result=\"ok\"}";
    assert!(
        wait_for(20, || stg.counter(through_ok) >= 1.0),
        "linphonec did not register through stg\n--- linphonec:\n{}\n--- stg:\n{}",
        tail(&lin.log(), 6000),
        tail(&stg.log(), 6000)
    );
    // Asleep: the process is gone, and so is its TLS connection.
    drop(lin);
    let woken: std::cell::RefCell<Option<Linphonec>> = std::cell::RefCell::new(None);
    called_back(
        &sdir,
        &pbx,
        &stg,
        || {
            let sends = || {
                fcm.requests()
                    .into_iter()
                    .filter(|r| r.path.ends_with(":send"))
                    .count()
            };
            assert!(
                wait_for(10, || sends() >= 1),
                "FCM got no push\n--- stg:\n{}",
                tail(&stg.log(), 6000)
            );
            let lin_dir = sdir.join("woken");
            std::fs::create_dir_all(&lin_dir).unwrap();
            *woken.borrow_mut() = Some(start_linphonec(&lin_dir, &rc));
        },
        || {
            woken
                .borrow()
                .as_ref()
                .map(Linphonec::log)
                .unwrap_or_default()
        },
    );
    let sends: Vec<_> = fcm
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(":send"))
        .collect();
    assert_eq!(sends.len(), 1, "one push");
    let body = sends[0].json();
    assert_eq!(body["message"]["token"], "tok123");
    assert_eq!(body["message"]["data"]["type"], "call");
}
