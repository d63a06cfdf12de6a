//! SIPVicious (Debian's `sipvicious`: svmap, svwar, svcrack, all UDP) against stg in front
//! of a Kamailio PBX with digest authentication that leaks which extensions exist (404 for
//! the others, as many PBXs do), inside a network namespace of the test's own with stg's
//! nftables table on. The attackers are 127.0.0.9 and up; the PBX is 127.0.0.1.
//!
//! The tools as packaged announce themselves (`User-Agent: friendly-scanner`) and stg drops
//! them unanswered; an attacker's first move is to change that, so each tool also runs under
//! a browser-like name (`peers/sipvicious_as.py`), which is what the guard must stop:
//! - svmap learns no product name (the PBX's `Server` is removed on the way out);
//! - svwar is banned in the kernel long before it has walked 200 extensions, and never learns
//!   the one that exists past its 20th;
//! - svcrack is banned at its 11th wrong password and never finds the password, the 15th of
//!   its list; a UDP failure counts because its nonce was relayed to that very address;
//! - the PBX stays reachable for others, and a user's address is not banned by a UDP scan
//!   under its name (what a spoofer would do).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{wait_log, StgNode};
use crate::kamailio::Kamailio;
use stg_testkit::{free_port, temp_dir, Netns};

/// The one password the PBX accepts (for extensions 150 and 1000).
pub(crate) const SECRET: &str = "tr0ub4dor&3";

/// svcrack's dictionary: the password is the 15th.
fn dictionary(dir: &Path) -> std::path::PathBuf {
    let mut words: Vec<String> = (1..=14).map(|i| format!("guess{i:02}")).collect();
    words.push(SECRET.to_owned());
    words.extend((16..=20).map(|i| format!("guess{i:02}")));
    let p = dir.join("passwords.txt");
    std::fs::write(&p, words.join("\n") + "\n").unwrap();
    p
}

/// A PBX that answers OPTIONS with its product name, 404 to REGISTERs for extensions it
/// does not have, and challenges the two it has.
pub(crate) fn leaky_pbx(port: u16) -> String {
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
tcp_children=1
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=no
server_signature=yes
server_header="Server: kamailio-pbx (leaky test PBX)"
user_agent_header="User-Agent: kamailio-pbx"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("auth", "secret", "sipvicious-nonce-secret-0123456789")
modparam("usrloc", "db_mode", 0)
modparam("registrar", "use_path", 1)
modparam("registrar", "path_mode", 0)

request_route {{
	xlog("L_NOTICE", "pbx: $rm ext=$tU\n");
	if (is_method("OPTIONS")) {{
		sl_send_reply("200", "OK");
		exit;
	}}
	if (!is_method("REGISTER") || ($tU != "150" && $tU != "1000")) {{
		sl_send_reply("404", "Not Found");
		exit;
	}}
	if (!pv_www_authenticate("$td", "{SECRET}", "0")) {{
		# qop=auth: svcrack 0.3.3 always answers with qop=auth, well-formed only when asked.
		www_challenge("$td", "1");
		exit;
	}}
	consume_credentials();
	if (!save("location")) {{
		sl_reply_error();
	}}
	exit;
}}
"#
    )
}

/// Runs a SIPVicious tool from `ip` against `target` (`host:port`); `agent` `None` keeps
/// its own `friendly-scanner`. Its output (stdout and stderr) and how long it ran.
fn sipvicious(
    tool: &str,
    agent: Option<&str>,
    ip: &str,
    target: (&str, u16),
    args: &[&str],
) -> (String, Duration) {
    let local_port = free_port().to_string();
    let port = target.1.to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/sipvicious_as.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script)
        .arg(tool)
        .arg(agent.unwrap_or("friendly-scanner"))
        .arg(ip);
    cmd.args(["-b", ip, "-x", ip, "-P", &local_port, "-p", &port])
        .args(args)
        .arg(target.0);
    let started = Instant::now();
    let out = crate::harness::output_within(cmd, Duration::from_secs(60));
    (out, started.elapsed())
}

fn nft_set() -> String {
    let out = Command::new("nft")
        .args(["list", "set", "inet", "stgsv", "banned4"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// REGISTERs the PBX saw for extensions in `range`.
fn pbx_saw(pbx: &Kamailio, range: std::ops::RangeInclusive<u32>) -> usize {
    pbx.log()
        .lines()
        .filter_map(|l| l.split("pbx: REGISTER ext=").nth(1))
        .filter_map(|e| e.trim().parse::<u32>().ok())
        .filter(|e| range.contains(e))
        .count()
}

const DISGUISE: &str = "Mozilla/5.0 (X11; Linux x86_64) Softphone/2.1";

#[test]
fn sipvicious_learns_nothing_and_is_banned_while_others_are_served() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let dir = temp_dir("sipvicious");
    let pbx_port = free_port();
    let pbx = Kamailio::start_with_config(&dir, pbx_port, &leaky_pbx(pbx_port));
    let port = free_port();
    let cfg = format!(
        "[sip]\nupstream = \"sip:127.0.0.1:{pbx_port};transport=udp\"\n\n\
         [guard]\nfirewall = true\nfirewall_table = \"stgsv\"\n\n\
         [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n\
         [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{}\"\nside = \"inside\"\n",
        free_port()
    );
    let stg = StgNode::start("sipvicious", &cfg);
    let target = ("127.0.0.1", port);

    // svmap: as packaged it gets no answer at all; disguised, it finds a SIP device but no
    // product name (which it does learn from the PBX directly).
    let (out, _) = sipvicious("svmap", None, "127.0.0.12", target, &[]);
    assert!(
        !out.contains("127.0.0.1:"),
        "svmap as packaged found stg:\n{out}"
    );
    let (out, _) = sipvicious("svmap", Some(DISGUISE), "127.0.0.13", target, &[]);
    assert!(
        out.contains(&format!("127.0.0.1:{port}")),
        "svmap found nothing:\n{out}"
    );
    assert!(
        !out.to_lowercase().contains("kamailio"),
        "svmap learnt the product:\n{out}"
    );
    let (direct, _) = sipvicious(
        "svmap",
        Some(DISGUISE),
        "127.0.0.13",
        ("127.0.0.1", pbx_port),
        &[],
    );
    assert!(
        direct.contains("kamailio-pbx"),
        "the PBX names itself:\n{direct}"
    );

    // svwar as packaged: dropped unanswered, it gives up at once; a name alone over UDP
    // bans nobody (it can be forged).
    let (out, _) = sipvicious(
        "svwar",
        None,
        "127.0.0.12",
        target,
        &["-e100-299", "--maximumtime", "2"],
    );
    assert!(!out.contains("150"), "{out}");
    assert!(!nft_set().contains("127.0.0.12"), "{}", nft_set());

    // svwar disguised: banned at the 20th unknown extension, in the kernel too.
    let (out, took) = sipvicious(
        "svwar",
        Some(DISGUISE),
        "127.0.0.9",
        target,
        &["-e100-299", "--maximumtime", "2"],
    );
    wait_log(
        &stg,
        "TRUCO_KO [127.0.0.9] stg sipprobe",
        Duration::from_secs(5),
    );
    let walked = pbx_saw(&pbx, 100..=299);
    eprintln!("svwar: the PBX saw {walked} of its 200 extensions; it ran {took:?}\n{out}");
    assert!(walked < 40, "svwar walked {walked} extensions");
    assert!(!out.contains("150"), "svwar found extension 150:\n{out}");
    assert!(nft_set().contains("127.0.0.9"), "{}", nft_set());

    // svcrack disguised: the 11th wrong password bans; the 15th (right) one is never tried.
    let words = dictionary(&dir);
    let words = words.to_str().unwrap();
    let before = pbx_saw(&pbx, 1000..=1000);
    let (out, took) = sipvicious(
        "svcrack",
        Some(DISGUISE),
        "127.0.0.10",
        target,
        &["-u", "1000", "-d", words, "--maximumtime", "2"],
    );
    wait_log(
        &stg,
        "TRUCO_KO [127.0.0.10] stg sip",
        Duration::from_secs(5),
    );
    let tries = pbx_saw(&pbx, 1000..=1000) - before;
    eprintln!("svcrack: the PBX saw {tries} REGISTERs for 1000; it ran {took:?}\n{out}");
    assert!(!out.contains(SECRET), "svcrack found the password:\n{out}");
    assert!(nft_set().contains("127.0.0.10"), "{}", nft_set());
    let log = stg.log();
    let found = log.matches("[sip] Found 127.0.0.10").count();
    assert_eq!(found, 11, "failures counted before the ban:\n{log}");

    // Others are served: a user with the right password (svcrack with a one-word list).
    let one = dir.join("one.txt");
    std::fs::write(&one, format!("{SECRET}\n")).unwrap();
    let (out, _) = sipvicious(
        "svcrack",
        Some(DISGUISE),
        "127.0.0.11",
        target,
        &[
            "-u",
            "1000",
            "-d",
            one.to_str().unwrap(),
            "--maximumtime",
            "2",
        ],
    );
    assert!(
        out.contains(SECRET),
        "the user could not register:\n{out}\n{}\n{}",
        stg.log(),
        pbx.log()
    );

    // A UDP scan under the name of that user's address (a spoofer's way to lock it out)
    // is counted but not enforced: the address authenticated.
    let (_, _) = sipvicious(
        "svwar",
        Some(DISGUISE),
        "127.0.0.11",
        target,
        &["-e300-340", "--maximumtime", "2"],
    );
    wait_log(&stg, "Withheld ban of 127.0.0.11", Duration::from_secs(5));
    assert!(!nft_set().contains("127.0.0.11"), "{}", nft_set());
    assert!(stg.counter("stg_guard_bans_withheld_total") >= 1.0);
}
