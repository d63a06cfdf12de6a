//! `stg user add|passwd|rm|list` and `stg reg list|show|rm`: credentials in SQLite, bindings
//! in a Redis written the way Flexisip writes it, and the embedded store through a running
//! node (a digest REGISTER from SIPp in local mode).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use stg_testkit::sip::{header_values, status_code};

use crate::harness::{free_port, listeners, read_sip, temp_dir, Redis, StgNode};

fn stg(config: &Path, args: &[&str]) -> Output {
    stg_stdin(config, args, None)
}

fn stg_stdin(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stg"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok_json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn shell(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// === stg user ===

/// add/passwd/rm/list against SQLite in a temp data_dir: both HA1s are stored (MD5 and
/// SHA-256 of `user:realm:password`), the realm defaults to the first named registrar
/// domain, the password is never echoed, and the wrong subcommand for the state fails.
#[test]
fn user_add_passwd_rm_list_in_sqlite() {
    let dir = temp_dir("cli-users");
    let cfg = dir.join("stg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\n\n[registrar]\ndomains = [{{ name = \"*\", mode = \"through\" }}, \
             {{ name = \"sip.example.com\", mode = \"local\" }}]\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let db = dir.join("data/users.sqlite");
    let ha1s = |user: &str| {
        shell(&format!(
            "sqlite3 '{}' \"SELECT realm, algorithm, ha1 FROM stg_users WHERE username = '{user}' ORDER BY realm, algorithm\"",
            db.display()
        ))
    };
    let expect = |user: &str, realm: &str, pw: &str| {
        let md5 = shell(&format!(
            "printf '%s' '{user}:{realm}:{pw}' | md5sum | cut -d' ' -f1"
        ));
        let sha = shell(&format!(
            "printf '%s' '{user}:{realm}:{pw}' | sha256sum | cut -d' ' -f1"
        ));
        format!("{realm}|MD5|{md5}\n{realm}|SHA-256|{sha}")
    };

    let o = stg_stdin(
        &cfg,
        &["user", "add", "alice", "--password-stdin"],
        Some("s3cret-pw\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !text(&o).contains("s3cret-pw"),
        "password echoed: {}",
        text(&o)
    );
    assert_eq!(
        ha1s("alice"),
        expect("alice", "sip.example.com", "s3cret-pw")
    );

    // A second realm by flag; --password also works.
    let o = stg(
        &cfg,
        &[
            "user",
            "add",
            "alice",
            "--realm",
            "other.org",
            "--password",
            "pw2",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("pw2"));

    // add of an existing user fails; passwd of an unknown one too.
    let o = stg_stdin(
        &cfg,
        &["user", "add", "alice", "--password-stdin"],
        Some("x\n"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    let o = stg_stdin(
        &cfg,
        &["user", "passwd", "bob", "--password-stdin"],
        Some("x\n"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // No password source at all is a usage error; an empty one too.
    let o = stg(&cfg, &["user", "add", "carol"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = stg_stdin(
        &cfg,
        &["user", "add", "carol", "--password-stdin"],
        Some("\n"),
    );
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));

    let o = stg_stdin(
        &cfg,
        &["user", "passwd", "alice", "--password-stdin"],
        Some("n3w-pw\r\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let both = format!(
        "{}\n{}",
        expect("alice", "other.org", "pw2"),
        expect("alice", "sip.example.com", "n3w-pw")
    );
    assert_eq!(ha1s("alice"), both, "passwd changes only its realm");
    // The portal's argon2id hash of the same password, per realm, on each of its rows.
    let phcs = shell(&format!(
        "sqlite3 '{}' \"SELECT DISTINCT realm, password_hash FROM stg_users WHERE username = 'alice' ORDER BY realm\"",
        db.display()
    ));
    let phcs: Vec<&str> = phcs.lines().collect();
    assert_eq!(phcs.len(), 2, "{phcs:?}");
    for (line, realm) in phcs.iter().zip(["other.org", "sip.example.com"]) {
        let hash = line.strip_prefix(&format!("{realm}|")).unwrap_or_default();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{line}"
        );
    }

    let list = ok_json(&stg(&cfg, &["user", "list", "--json"]));
    assert_eq!(
        list,
        serde_json::json!([
            { "user": "alice", "realm": "other.org" },
            { "user": "alice", "realm": "sip.example.com" },
        ])
    );
    let o = stg(&cfg, &["user", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "alice\tother.org\nalice\tsip.example.com\n"
    );

    let o = stg(&cfg, &["user", "rm", "alice", "--realm", "other.org"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(ha1s("alice"), expect("alice", "sip.example.com", "n3w-pw"));
    let o = stg(&cfg, &["user", "rm", "alice"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(ha1s("alice"), "");
    let o = stg(&cfg, &["user", "rm", "alice"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        ok_json(&stg(&cfg, &["user", "list", "--json"])),
        serde_json::json!([])
    );

    // With only the `*` domain there is no default realm.
    let cfg2 = dir.join("star.toml");
    std::fs::write(
        &cfg2,
        format!("[node]\ndata_dir = \"{}\"\n", dir.join("data2").display()),
    )
    .unwrap();
    let o = stg_stdin(
        &cfg2,
        &["user", "add", "dave", "--password-stdin"],
        Some("x\n"),
    );
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("--realm"), "{}", text(&o));
    assert!(
        !dir.join("data2/users.sqlite").exists(),
        "a refused command creates no database"
    );
}

// === stg reg, Redis ===

const SEED_KEY: &str = "\"<urn:uuid:5d0d6f52-7a1f-4b25-9d8c-0f7e4c3b2a10>\"";

/// The seed's §5 record as Flexisip 2.3 stores it (path, accept and user agent %-escaped),
/// updated at `updated_at`.
fn seed_value(updated_at: u64) -> String {
    format!(
        "\"JAC\" <sip:40004*01@79.146.86.86:33030;pn-prid=dGVzdF90b2tlbl8x:APA91bH-x_Y;\
         pn-provider=fcm;pn-param=vivait-12345;pn-silent=1;pn-timeout=0;transport=tls;\
         fs-conn-id=7f3a2c001b40;callid=Xk3-aB9_QmZ2;expires=36000;cseq=21;\
         updatedAt={updated_at};alias=no;usedAsRoute=no\
         ?path=%3Csip%3Astg1.mdtel.es%3A5556%3Btransport%3Dtcp%3Bfs-proxy-id%3D9c1e4f%3Blr%3E\
         %2C%3Csips%3Astg1.mdtel.es%3A5554%3Blr%3E\
         &accept=application/sdp%2Ctext/plain%2Capplication/vnd.gsma.rcs-ft-http+xml\
         &user-agent=LinphoneAndroid/5.2.0%20(SM-A525F)%20LinphoneSDK/5.3.0%20(tags/5.3.0)>\
         ;+sip.instance=\"<urn:uuid:5d0d6f52-7a1f-4b25-9d8c-0f7e4c3b2a10>\"\
         ;+org.linphone.specs=\"ephemeral/1.1,groupchat/1.2,lime\"\
         ;pub-gruu=\"sip:40004*01@sips.mdtel.es;gr=urn:uuid:5d0d6f52-7a1f-4b25-9d8c-0f7e4c3b2a10\""
    )
}

/// A flow token as stg writes it (`hex(payload || mac)`): TCP (01), listener 2 (0002),
/// connection 7, from 127.0.0.1:5555 (7f000001 15b3); the MAC is zeros (`stg reg show`
/// does not check it).
const FLOW_TOKEN: &str = concat!(
    "01",
    "0002",
    "0000000000000007",
    "7f000001",
    "15b3",
    "0000000000000000"
);

/// The seed record written with `redis-cli HSET` (plus a second device with one of stg's
/// flow tokens, a value nobody can decode, and a look-alike AOR): list (glob, `\*`,
/// `--exact`), show (every field decoded, raw values kept, no crash on garbage) and rm (one
/// instance, then the AOR), all with `--json`.
#[test]
fn reg_list_show_rm_on_redis_with_a_flexisip_record() {
    let redis = Redis::start();
    let dir = temp_dir("cli-reg-redis");
    let cfg = dir.join("stg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\n\n[store]\nurl = \"redis://127.0.0.1:{}\"\n",
            dir.join("data").display(),
            redis.port
        ),
    )
    .unwrap();
    let now = unix_now();
    let updated = now - 100;
    let aor = "40004*01@sips.mdtel.es";
    let key = format!("fs:{aor}");
    let token = FLOW_TOKEN;
    let second = format!(
        "<sip:40004*01@192.0.2.7:40001;transport=tcp;fs-conn-id={token};callid=c2%40h;\
         expires=600;cseq=3;updatedAt={updated};alias=no;usedAsRoute=no\
         ?path=%3Csip%3A{token}%40127.0.0.1%3A5070%3Btransport%3Dtcp%3Blr%3Bob%3E&accept=&user-agent=>\
         ;+sip.instance=\"<urn:uuid:0000-second>\";reg-id=1"
    );
    assert_eq!(
        redis
            .cli(&[
                "HSET",
                &key,
                SEED_KEY,
                &seed_value(updated),
                "\"<urn:uuid:0000-second>\"",
                &second,
                "fs-gen-broken",
                "not a contact at all",
            ])
            .trim(),
        "3"
    );
    redis.cli(&["HSET", "fs:40004x01@sips.mdtel.es", "k", "v"]);
    redis.cli(&["HSET", "fs:conference-factory@192.168.0.29", "k", "v"]);
    redis.cli(&["SET", "unrelated", "x"]);

    // list
    let all = ok_json(&stg(&cfg, &["reg", "list", "--json"]));
    assert_eq!(
        all,
        serde_json::json!({
            "aors": [aor, "40004x01@sips.mdtel.es", "conference-factory@192.168.0.29"],
            "truncated": false
        })
    );
    let glob = ok_json(&stg(&cfg, &["reg", "list", "40004*01@*", "--json"]));
    assert_eq!(glob["aors"].as_array().unwrap().len(), 2, "{glob}");
    let escaped = ok_json(&stg(&cfg, &["reg", "list", "40004\\*01@*", "--json"]));
    assert_eq!(escaped["aors"], serde_json::json!([aor]));
    let exact = ok_json(&stg(&cfg, &["reg", "list", "--exact", aor, "--json"]));
    assert_eq!(exact["aors"], serde_json::json!([aor]));
    let limited = ok_json(&stg(&cfg, &["reg", "list", "--limit", "1", "--json"]));
    assert_eq!(limited["aors"].as_array().unwrap().len(), 1);
    assert_eq!(limited["truncated"], true);
    let plain = stg(&cfg, &["reg", "list", "--exact", aor]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout), format!("{aor}\n"));

    // show --json: every field of the seed record
    let shown = ok_json(&stg(
        &cfg,
        &["reg", "show", &format!("sip:{aor}"), "--json"],
    ));
    assert_eq!(shown["aor"], aor);
    let bindings = shown["bindings"].as_array().unwrap();
    assert_eq!(bindings.len(), 3, "{shown:#}");
    let by_field = |f: &str| {
        bindings
            .iter()
            .find(|b| b["field"] == f)
            .unwrap_or_else(|| panic!("no {f} in {shown:#}"))
    };
    let b = by_field(SEED_KEY);
    assert_eq!(b["raw"], seed_value(updated));
    assert_eq!(b["display_name"], "\"JAC\"");
    assert_eq!(
        b["uri"],
        "sip:40004*01@79.146.86.86:33030;pn-prid=dGVzdF90b2tlbl8x:APA91bH-x_Y;\
         pn-provider=fcm;pn-param=vivait-12345;pn-silent=1;pn-timeout=0;transport=tls"
    );
    assert_eq!(b["instance"], SEED_KEY);
    assert_eq!(b["reg_id"], Value::Null);
    assert_eq!(
        b["push"],
        serde_json::json!({ "provider": "fcm", "prid": "dGVzdF90b2tlbl8x:APA91bH-x_Y", "param": "vivait-12345" })
    );
    assert_eq!(b["conn_id"], "7f3a2c001b40");
    assert_eq!(
        b["flow"],
        Value::Null,
        "a Flexisip conn id is not a flow token"
    );
    assert_eq!(
        b["node"],
        "sip:stg1.mdtel.es:5556;transport=tcp;fs-proxy-id=9c1e4f;lr"
    );
    assert_eq!(
        b["path"],
        serde_json::json!([
            "sip:stg1.mdtel.es:5556;transport=tcp;fs-proxy-id=9c1e4f;lr",
            "sips:stg1.mdtel.es:5554;lr"
        ])
    );
    assert_eq!(
        b["user_agent"],
        "LinphoneAndroid/5.2.0 (SM-A525F) LinphoneSDK/5.3.0 (tags/5.3.0)"
    );
    assert_eq!(
        b["accept"],
        serde_json::json!([
            "application/sdp",
            "text/plain",
            "application/vnd.gsma.rcs-ft-http+xml"
        ])
    );
    assert_eq!(b["call_id"], "Xk3-aB9_QmZ2");
    assert_eq!(b["cseq"], 21);
    assert_eq!(b["expires"], 36000);
    assert_eq!(b["updated_at"], updated);
    let left = b["expires_in"].as_i64().unwrap();
    let shown_now = shown["now"].as_u64().unwrap();
    assert_eq!(left, (updated + 36000 - shown_now) as i64);
    assert!((35_890..=35_900).contains(&left), "expires_in {left}");
    assert_eq!(b["alias"], false);
    assert_eq!(b["used_as_route"], false);
    assert_eq!(
        b["params"],
        serde_json::json!([
            ["+sip.instance", SEED_KEY],
            [
                "+org.linphone.specs",
                "\"ephemeral/1.1,groupchat/1.2,lime\""
            ],
            [
                "pub-gruu",
                "\"sip:40004*01@sips.mdtel.es;gr=urn:uuid:5d0d6f52-7a1f-4b25-9d8c-0f7e4c3b2a10\""
            ]
        ])
    );
    // The second device: a flow token is decoded (MAC unchecked), the node is stg's Path.
    let b2 = by_field("\"<urn:uuid:0000-second>\"");
    assert_eq!(
        b2["flow"],
        serde_json::json!({ "transport": "tcp", "remote": "127.0.0.1:5555", "conn": 7, "listener": 2 })
    );
    assert_eq!(b2["conn_id"], token);
    assert_eq!(
        b2["node"],
        format!("sip:{token}@127.0.0.1:5070;transport=tcp;lr;ob")
    );
    assert_eq!(b2["call_id"], "c2@h");
    assert_eq!(b2["reg_id"], 1);
    assert_eq!(b2["push"], Value::Null);
    assert_eq!(b2["user_agent"], Value::Null);
    // The broken value: raw and the error, no crash.
    let bad = by_field("fs-gen-broken");
    assert_eq!(bad["raw"], "not a contact at all");
    assert!(
        bad["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{bad}"
    );

    // The human form says the same things.
    let o = stg(&cfg, &["reg", "show", aor]);
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", text(&o));
    for want in [
        "3 binding(s)",
        "provider=fcm prid=dGVzdF90b2tlbl8x:APA91bH-x_Y param=vivait-12345",
        "7f3a2c001b40 (not a stg flow token)",
        "stg flow: tcp from 127.0.0.1:5555, connection 7, listener 2",
        "LinphoneAndroid/5.2.0 (SM-A525F) LinphoneSDK/5.3.0 (tags/5.3.0)",
        "UNDECODABLE",
        "not a contact at all",
        "36000 s (expires in",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }

    // rm one instance (given without quotes and brackets), then the whole AOR.
    let o = stg(
        &cfg,
        &[
            "reg",
            "rm",
            aor,
            "urn:uuid:5d0d6f52-7a1f-4b25-9d8c-0f7e4c3b2a10",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(redis.cli(&["HLEN", &key]).trim(), "2");
    assert_eq!(redis.cli(&["HEXISTS", &key, SEED_KEY]).trim(), "0");
    let o = stg(&cfg, &["reg", "rm", aor, "urn:uuid:nope"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = stg(&cfg, &["reg", "rm", aor]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(redis.cli(&["EXISTS", &key]).trim(), "0");
    assert_eq!(redis.get("unrelated"), "x", "nothing else touched");
    let o = stg(&cfg, &["reg", "show", aor, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["bindings"],
        serde_json::json!([])
    );
}

// === stg reg, embedded store through the node ===

/// One device over its own TCP connection: REGISTER, the 401, and the REGISTER answering
/// the challenge of `alg` (`SHA-256` or `MD5`) with `user`/`password`; returns the open
/// connection (the binding names it) and the final status.
fn register_with_digest(
    stg: SocketAddr,
    aor: &str,
    contact: &str,
    call_id: &str,
    (user, password, alg): (&str, &str, &str),
) -> (TcpStream, u16) {
    let mut s = TcpStream::connect(stg).unwrap();
    let local = s.local_addr().unwrap();
    let uri = format!("sip:{}", stg);
    let request = |cseq: u32, auth: &str| {
        format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-{call_id}-{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{aor}>;tag={call_id}\r\nTo: <sip:{aor}>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n{auth}\
             Expires: 600\r\nUser-Agent: cli-test/1.0 (digest {alg})\r\nContent-Length: 0\r\n\r\n"
        )
    };
    s.write_all(request(1, "").as_bytes()).unwrap();
    let r = read_sip(&mut s, Duration::from_secs(5))
        .unwrap()
        .expect("no 401");
    assert_eq!(
        status_code(&r),
        Some(401),
        "{}",
        String::from_utf8_lossy(&r)
    );
    let challenge = header_values(&r, "WWW-Authenticate")
        .into_iter()
        .find(|v| v.contains(&format!("algorithm={alg}")))
        .unwrap_or_else(|| panic!("no {alg} challenge: {}", String::from_utf8_lossy(&r)));
    let param = |name: &str| {
        let at = challenge.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        challenge[at..].split('"').next().unwrap().to_owned()
    };
    let (realm, nonce) = (param("realm"), param("nonce"));
    let a = stg_auth::Algorithm::parse(alg).unwrap();
    // H(a:b:c) is all `ha1` computes, so it also gives HA2 = H(REGISTER:uri) and the
    // response H(HA1:nonce:nc:cnonce:qop:HA2) (RFC 7616 §3.4.1).
    let ha1 = stg_auth::ha1(a, user, &realm, password);
    let (scheme, rest) = uri.split_once(':').unwrap();
    let ha2 = stg_auth::ha1(a, "REGISTER", scheme, rest);
    let response = stg_auth::ha1(a, &ha1, &nonce, &format!("00000001:0a4f113b:auth:{ha2}"));
    let auth = format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{response}\", algorithm={alg}, qop=auth, nc=00000001, \
         cnonce=\"0a4f113b\"\r\n"
    );
    s.write_all(request(2, &auth).as_bytes()).unwrap();
    let r = read_sip(&mut s, Duration::from_secs(5))
        .unwrap()
        .expect("no answer");
    (s, status_code(&r).unwrap_or(0))
}

/// A node in local mode (domain `*`) with a user added by `stg user add`: two devices of
/// `40004*01` register with digest over TCP, one answering the SHA-256 challenge, one the
/// MD5 one (both HA1s stored by the CLI work); `stg reg` then reads the embedded store
/// through the node's admin endpoint (list, show with each flow token decoded to the
/// device's connection, rm of one instance, rm of the AOR), and the gauge
/// `stg_registrar_bindings` follows. With the node stopped, `stg reg` says the store is
/// held by the node.
#[test]
fn reg_through_the_running_node_after_digest_registers() {
    let port = free_port();
    let stg_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut node = StgNode::start(
        "cli-reg-node",
        &format!(
            "[sip]\nupstream = \"sip:127.0.0.1:9\"\n{}\n[registrar]\ndomains = [{{ name = \"*\", mode = \"local\" }}]\n",
            listeners(&[("udp", stg_addr), ("tcp", stg_addr)])
        ),
    );
    let cfg = node.path("stg.toml");
    let user = "40004*01";
    let o = stg_stdin(
        &cfg,
        &[
            "user",
            "add",
            user,
            "--realm",
            "127.0.0.1",
            "--password-stdin",
        ],
        Some("devpw\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let aor = "40004*01@127.0.0.1";

    // Wrong password first: 401 again, nothing stored.
    let (_c0, st) = register_with_digest(
        stg_addr,
        aor,
        "<sip:40004*01@127.0.0.1:1>",
        "cli-bad",
        (user, "wrong", "MD5"),
    );
    assert_eq!(st, 401);
    let started = Instant::now();
    let instance = "\"<urn:uuid:11111111-2222-3333-4444-555555555555>\"";
    let (c1, st1) = register_with_digest(
        stg_addr,
        aor,
        &format!(
            "<sip:40004*01@127.0.0.1:40001;transport=tcp;pn-provider=fcm;pn-prid=tok-1;pn-param=proj-9>\
             ;+sip.instance={instance};reg-id=1"
        ),
        "cli-dev-sha",
        (user, "devpw", "SHA-256"),
    );
    let (c2, st2) = register_with_digest(
        stg_addr,
        aor,
        "<sip:40004*01@127.0.0.1:40002;transport=tcp>",
        "cli-dev-md5",
        (user, "devpw", "MD5"),
    );
    let register_ms = started.elapsed().as_millis();
    assert_eq!((st1, st2), (200, 200), "{}", node.log());
    assert_eq!(
        node.counter("stg_registrar_registers_total{mode=\"local\",result=\"ok\"}"),
        2.0,
        "{}",
        node.metrics()
    );

    let list = ok_json(&stg(&cfg, &["reg", "list", "--exact", aor, "--json"]));
    assert_eq!(list["aors"], serde_json::json!([aor]), "{}", node.log());
    let all = ok_json(&stg(&cfg, &["reg", "list", "40004\\*01@*", "--json"]));
    assert_eq!(all["aors"], serde_json::json!([aor]));
    let none = ok_json(&stg(&cfg, &["reg", "list", "40004x*", "--json"]));
    assert_eq!(none["aors"], serde_json::json!([]));

    let shown = ok_json(&stg(&cfg, &["reg", "show", aor, "--json"]));
    let bindings = shown["bindings"].as_array().unwrap();
    assert_eq!(bindings.len(), 2, "{shown:#}");
    let by_port = |p: u16| {
        bindings
            .iter()
            .find(|b| {
                b["uri"]
                    .as_str()
                    .is_some_and(|u| u.contains(&format!(":{p};")))
            })
            .unwrap_or_else(|| panic!("no binding on port {p}: {shown:#}"))
    };
    for (b, conn, alg) in [
        (by_port(40001), &c1, "SHA-256"),
        (by_port(40002), &c2, "MD5"),
    ] {
        assert!(b["error"].is_null(), "{b:#}");
        let conn_id = b["conn_id"].as_str().unwrap();
        assert_eq!(b["flow"]["transport"], "tcp", "{b:#}");
        assert_eq!(
            b["flow"]["remote"],
            conn.local_addr().unwrap().to_string(),
            "the flow token names the device's connection: {b:#}"
        );
        assert!(b["flow"]["conn"].as_u64().is_some_and(|c| c > 0), "{b:#}");
        assert!(
            b["node"]
                .as_str()
                .unwrap()
                .starts_with(&format!("sip:{conn_id}@127.0.0.1:{port};transport=")),
            "the node's own Path entry first: {b:#}"
        );
        assert_eq!(b["user_agent"], format!("cli-test/1.0 (digest {alg})"));
        assert_eq!(b["cseq"], 2);
        assert_eq!(b["expires"], 600);
        let left = b["expires_in"].as_i64().unwrap();
        assert!((590..=600).contains(&left), "expires_in {left}");
    }
    let sha = by_port(40001);
    assert_eq!(sha["field"], instance);
    assert_eq!(sha["instance"], instance);
    assert_eq!(sha["reg_id"], 1);
    assert_eq!(sha["call_id"], "cli-dev-sha");
    assert_eq!(
        sha["push"],
        serde_json::json!({ "provider": "fcm", "prid": "tok-1", "param": "proj-9" })
    );
    let md5 = by_port(40002);
    assert!(
        md5["field"].as_str().unwrap().starts_with("fs-gen-"),
        "{md5:#}"
    );
    assert_eq!(md5["instance"], Value::Null);
    assert_eq!(md5["push"], Value::Null);
    assert_eq!(node.metric("stg_registrar_bindings "), Some(1.0));

    // rm one instance (unquoted), then the AOR.
    let o = stg(
        &cfg,
        &[
            "reg",
            "rm",
            aor,
            "urn:uuid:11111111-2222-3333-4444-555555555555",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let shown = ok_json(&stg(&cfg, &["reg", "show", aor, "--json"]));
    assert_eq!(shown["bindings"].as_array().unwrap().len(), 1, "{shown:#}");
    assert_eq!(shown["bindings"][0]["field"], md5["field"]);
    let o = stg(&cfg, &["reg", "rm", aor]);
    assert!(o.status.success(), "{}", text(&o));
    let o = stg(&cfg, &["reg", "show", aor, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(node.metric("stg_registrar_bindings "), Some(0.0));
    let o = stg(&cfg, &["reg", "rm", aor]);
    assert_eq!(o.status.code(), Some(1), "nothing left: {}", text(&o));

    // The admin endpoint refuses what it does not serve.
    let admin = |req: &[u8]| {
        let mut s = TcpStream::connect(node.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split("\r\n").next().unwrap_or_default().to_owned()
    };
    assert_eq!(
        admin(b"POST /registrar/aors HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        admin(b"DELETE /registrar/aors HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        admin(b"GET /registrar/aor/%zz HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        admin(b"GET /registrar/aors?limit=0 HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    let mut huge = b"GET /registrar/aors?pattern=".to_vec();
    huge.resize(8192, b'a');
    assert_eq!(admin(&huge), "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(admin(b"GET /health HTTP/1.1\r\n\r\n"), "HTTP/1.1 200 OK");

    // The node stopped: the embedded store cannot be read from outside it.
    drop((c1, c2));
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(10)).is_some());
    let o = stg(&cfg, &["reg", "list"]);
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    assert!(
        text(&o).contains("held by the running node"),
        "{}",
        text(&o)
    );
    eprintln!("two digest registrations through stg (4 transactions): {register_ms} ms");
}
