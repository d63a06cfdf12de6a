use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::text::FromText;
use crate::*;

type Vars = Vec<(String, String)>;

fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn parse(text: &str) -> Config {
    Config::from_toml_str(text, []).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str, env: &[(&str, &str)]) -> ConfigError {
    match Config::from_toml_str(text, vars(env)) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(e) => e,
    }
}

/// The key an `Invalid` error names, and its whole Display, which must start with the key.
fn invalid_key(text: &str, env: &[(&str, &str)]) -> (String, String) {
    let e = error(text, env);
    let shown = e.to_string();
    match e {
        ConfigError::Invalid { key, .. } => {
            assert!(shown.starts_with(&key), "{shown}");
            (key, shown)
        }
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

fn assert_invalid(text: &str, key: &str, fragment: &str) {
    let (got, shown) = invalid_key(text, &[]);
    assert_eq!(got, key, "{shown}");
    assert!(shown.contains(fragment), "{shown:?} lacks {fragment:?}");
}

const ONE_UDP: &str = "[[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:5060\"\n";

// === defaults and the example ===

#[test]
fn example_is_the_default() {
    assert_eq!(parse(EXAMPLE), Config::default());
    assert_eq!(parse(""), Config::default());
    assert_eq!(Config::from_env([]).unwrap(), Config::default());
}

/// The example must list every key: each table's keys are compared with the keys serde
/// expects there, which it lists when it meets an unknown one.
#[test]
fn example_lists_every_key() {
    fn walk(tree: &toml::Table, root: &toml::Table, path: &mut Vec<String>, seen: &mut usize) {
        let mut probe = root.clone();
        let mut table = &mut probe;
        for level in path.iter() {
            table = match table.get_mut(level).unwrap() {
                toml::Value::Table(t) => t,
                toml::Value::Array(a) => a[0].as_table_mut().unwrap(),
                _ => unreachable!(),
            };
        }
        table.insert("zz_probe".into(), 1.into());
        let e = Config::from_toml_str(&toml::to_string(&probe).unwrap(), []).unwrap_err();
        let shown = e.to_string();
        let expected = shown.split_once("expected").unwrap().1;
        let mut expected: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let mut have: Vec<&str> = tree.keys().map(String::as_str).collect();
        expected.sort_unstable();
        have.sort_unstable();
        assert_eq!(have, expected, "keys of [{}]", path.join("."));
        *seen += have.len();
        for (key, value) in tree {
            let sub = match value {
                toml::Value::Table(t) => t,
                toml::Value::Array(a) => match a.first().and_then(toml::Value::as_table) {
                    Some(t) => t,
                    None => continue,
                },
                _ => continue,
            };
            path.push(key.clone());
            walk(sub, root, path, seen);
            path.pop();
        }
    }
    let root: toml::Table = toml::from_str(EXAMPLE).unwrap();
    let mut seen = 0;
    walk(&root, &root, &mut Vec::new(), &mut seen);
    assert!(seen > 30, "only {seen} keys");
}

// === errors name the key ===

#[test]
fn unknown_keys_are_errors() {
    assert_invalid(
        "[sip]\nupstreem = \"sip:pbx\"\n",
        "sip.upstreem",
        "unknown key `upstreem`",
    );
    assert_invalid(
        "[sip.timers]\nt3 = \"1s\"\n",
        "sip.timers.t3",
        "unknown key",
    );
    assert_invalid("[sipp]\n", "sipp", "unknown key");
    assert_invalid(
        &format!("{ONE_UDP}port = 5060\n"),
        "sip.listen[0].port",
        "unknown key",
    );
}

#[test]
fn bad_values_name_their_key() {
    assert_invalid(
        "[sip.timers]\nt1 = \"5 parsecs\"\n",
        "sip.timers.t1",
        "sip.timers.t1: invalid duration \"5 parsecs\": ",
    );
    assert_invalid(
        "[sip.timers]\nt1 = 500\n",
        "sip.timers.t1",
        "invalid duration \"500\"",
    );
    assert_invalid(
        "[sip]\ntrusted_networks = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
        "sip.trusted_networks[1]",
        "invalid network \"10.0.0.0/33\"",
    );
    assert_invalid(
        "[sip]\nload_balancers = [\"lb1\"]\n",
        "sip.load_balancers[0]",
        "invalid network",
    );
    assert_invalid(
        &format!("{ONE_UDP}[[sip.listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:99999\"\n"),
        "sip.listen[1].address",
        "sip.listen[1].address: invalid socket address \"0.0.0.0:99999\"",
    );
    assert_invalid(
        "[[sip.listen]]\ntransport = \"sctp\"\naddress = \"127.0.0.1:5060\"\n",
        "sip.listen[0].transport",
        "invalid transport \"sctp\"",
    );
    assert_invalid(
        "[[sip.listen]]\ntransport = \"udp\"\n",
        "sip.listen[0]",
        "missing field `address`",
    );
    assert_invalid(
        &format!("{ONE_UDP}side = \"dmz\"\n"),
        "sip.listen[0].side",
        "invalid side",
    );
    assert_invalid(
        &format!("{ONE_UDP}advertise = \"2001:db8::1\"\n"),
        "sip.listen[0].advertise",
        "brackets",
    );
    assert_invalid(
        "[sip]\nforce_rport = \"yes\"\n",
        "sip.force_rport",
        "boolean",
    );
    assert_invalid("[sip]\nmax_headers = -1\n", "sip.max_headers", "-1");
    assert_invalid("sip = 5\n", "sip", "the [sip] table");
    assert_invalid(
        "[dns]\nnameservers = [\"ns1\"]\n",
        "dns.nameservers[0]",
        "ns1",
    );
    assert_invalid(
        "[admin]\nlisten = \"9090\"\n",
        "admin.listen",
        "socket address",
    );
    assert_invalid(
        "[log]\nformat = \"xml\"\n",
        "log.format",
        "invalid log format",
    );
    assert_invalid("[log]\nlevel = \" \"\n", "log.level", "must not be empty");
    assert_invalid("[node]\nid = \"edge 1\"\n", "node.id", "' '");
    assert_invalid("[node]\ndata_dir = \"\"\n", "node.data_dir", "empty");
    assert_invalid(
        "[node]\naliases = [\"a..b\"]\n",
        "node.aliases[0]",
        "invalid host",
    );
}

#[test]
fn upstream_parses_or_says_why() {
    for (text, fragment) in [
        ("10.0.0.5", "expected sip:host"),
        ("http://pbx", "expected sip:host"),
        ("sip:alice@pbx", "user part"),
        ("sip:::1", "brackets"),
        ("sip:[::1", "']'"),
        ("sip:pbx:0", "invalid port"),
        ("sip:pbx:70000", "invalid port"),
        ("sip:pbx;transport=sctp", "invalid transport"),
        ("sip:pbx;lr", "only transport"),
        ("sip:pbx;transport=tcp;transport=udp", "twice"),
        ("sips:pbx;transport=udp", "TLS"),
        ("sip:pbx?x=y", "headers"),
        ("sip:10.0.0.999", "neither an IP address nor a host name"),
        ("sip:", "neither"),
    ] {
        assert_invalid(
            &format!("[sip]\nupstream = {text:?}\n"),
            "sip.upstream",
            fragment,
        );
    }
    let cases = [
        (
            "sip:10.0.0.5:5060;transport=tcp",
            Upstream {
                scheme_sips: false,
                host: Host::Ip(Ipv4Addr::new(10, 0, 0, 5).into()),
                port: Some(5060),
                transport: Some(Transport::Tcp),
            },
        ),
        (
            "SIPS:PBX.Example.COM",
            Upstream {
                scheme_sips: true,
                host: Host::Domain("pbx.example.com".into()),
                port: None,
                transport: None,
            },
        ),
        (
            "sip:[2001:db8::5]:5070;TRANSPORT=WSS",
            Upstream {
                scheme_sips: false,
                host: Host::Ip(IpAddr::V6("2001:db8::5".parse().unwrap())),
                port: Some(5070),
                transport: Some(Transport::Wss),
            },
        ),
    ];
    for (text, want) in cases {
        let got = parse(&format!("[sip]\nupstream = {text:?}\n")).sip.upstream;
        assert_eq!(got, want, "{text}");
        // Display writes it back in canonical form, which parses to the same value.
        assert_eq!(Upstream::from_text(&got.to_string()).unwrap(), want);
    }
    assert_eq!(
        Config::default().sip.upstream.to_string(),
        "sip:127.0.0.1:5070"
    );
}

#[test]
fn proxy_protocol_needs_a_stream_and_balancers() {
    assert_invalid(
        &format!("{ONE_UDP}proxy_protocol = true\n"),
        "sip.listen[0].proxy_protocol",
        "not udp",
    );
    let tcp = "[[sip.listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:5554\"\n\
               proxy_protocol = true\n";
    assert_invalid(tcp, "sip.listen[0].proxy_protocol", "sip.load_balancers");
    let config = parse(&format!("[sip]\nload_balancers = [\"10.1.0.0/24\"]\n{tcp}"));
    assert!(config.sip.listen[0].proxy_protocol);
}

#[test]
fn tls_files_come_in_pairs() {
    assert_invalid(
        "[tls]\ncertificate = \"/etc/stg/cert.pem\"\n",
        "tls.private_key",
        "missing",
    );
    assert_invalid(
        "[tls]\ncertificate = \"\"\nprivate_key = \"/etc/stg/key.pem\"\n",
        "tls.certificate",
        "missing",
    );
    let config = parse("[tls]\ncertificate = \"/c.pem\"\nprivate_key = \"/k.pem\"\n");
    assert_eq!(
        config.tls.files,
        Some(TlsFiles {
            certificate: "/c.pem".into(),
            private_key: "/k.pem".into(),
        })
    );
    assert_eq!(
        Config::default().node.tls_dir(),
        PathBuf::from("/var/lib/stg/tls")
    );
}

#[test]
fn listeners_cannot_share_a_socket() {
    let two = |a: &str, b: &str| {
        format!(
            "[[sip.listen]]\ntransport = \"{a}\"\naddress = \"0.0.0.0:5060\"\n\
             [[sip.listen]]\ntransport = \"{b}\"\naddress = \"0.0.0.0:5060\"\n"
        )
    };
    assert_invalid(
        &two("tcp", "tcp"),
        "sip.listen[1].address",
        "already sip.listen[0]",
    );
    assert_invalid(&two("tcp", "ws"), "sip.listen[1].address", "TCP port space");
    assert_eq!(parse(&two("udp", "tcp")).sip.listen.len(), 2);
    assert_invalid("[sip]\nlisten = []\n", "sip.listen", "at least one");
}

#[test]
fn cross_key_limits() {
    assert_invalid(
        "[sip.timers]\nt1 = \"5s\"\n",
        "sip.timers.t2",
        "shorter than sip.timers.t1",
    );
    assert_invalid("[sip.timers]\nt1 = \"0s\"\n", "sip.timers.t1", "zero");
    assert_invalid(
        "[sip.timers]\ntimer_c = \"2m\"\n",
        "sip.timers.timer_c",
        "3 minutes",
    );
    assert_invalid(
        "[sip]\nmax_body_size = 70000\n",
        "sip.max_body_size",
        "sip.max_message_size",
    );
    assert_invalid("[sip]\nmax_headers = 0\n", "sip.max_headers", "at least 1");
    assert_invalid("[sip]\nidle_timeout = \"0s\"\n", "sip.idle_timeout", "zero");
    assert_eq!(
        parse("[sip]\ndrain_timeout = \"0s\"\n").sip.drain_timeout,
        Duration::ZERO
    );
}

#[test]
fn values_parse_to_their_types() {
    let config = parse(
        r#"
        [node]
        id = "edge-1"
        aliases = ["SIP.example.com", "192.0.2.7", "[2001:db8::7]"]
        [sip]
        trusted_networks = ["10.0.0.0/8", "192.168.1.9"]
        [[sip.listen]]
        transport = "TLS"
        address = "[::]:5554"
        side = "inside"
        advertise = "sip.example.com:5554"
        [dns]
        nameservers = ["10.0.0.2", "[2001:db8::53]:5353"]
        [admin]
        listen = ""
        [log]
        format = "json"
        level = "info,stg_edge=debug"
        "#,
    );
    assert_eq!(config.node.id.as_deref(), Some("edge-1"));
    assert_eq!(
        config.node.aliases,
        [
            Host::Domain("sip.example.com".into()),
            Host::Ip(Ipv4Addr::new(192, 0, 2, 7).into()),
            Host::Ip("2001:db8::7".parse().unwrap()),
        ]
    );
    let listener = &config.sip.listen[0];
    assert_eq!(listener.transport, Transport::Tls);
    assert_eq!(listener.address, "[::]:5554".parse().unwrap());
    assert_eq!(listener.side, Side::Inside);
    assert_eq!(
        listener
            .advertise
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("sip.example.com:5554")
    );
    assert_eq!(config.sip.trusted_networks[1].to_string(), "192.168.1.9/32");
    assert_eq!(
        config.dns.nameservers,
        [
            "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::53]:5353".parse().unwrap(),
        ]
    );
    assert_eq!(config.admin.listen, None);
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(parse("[node]\nid = \"\"\n").node.id, None);
}

#[test]
fn trust_checks() {
    let config = parse("[sip]\ntrusted_networks = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n");
    let sip = &config.sip;
    assert!(sip.is_trusted(Ipv4Addr::new(10, 1, 2, 3).into()));
    // An IPv4 peer as a dual-stack socket reports it.
    assert!(sip.is_trusted(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().into()));
    assert!(sip.is_trusted("2001:db8::1".parse().unwrap()));
    assert!(!sip.is_trusted(Ipv4Addr::LOCALHOST.into()));
    assert!(!sip.is_trusted(Ipv6Addr::LOCALHOST.into()));
    assert!(!sip.is_load_balancer(Ipv4Addr::new(10, 1, 2, 3).into()));
    assert!(!Config::default().sip.is_trusted(Ipv4Addr::LOCALHOST.into()));
}

#[test]
fn transport_names() {
    let all = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ];
    let names: Vec<_> = all.iter().map(|t| (t.as_str(), t.via_token())).collect();
    assert_eq!(
        names,
        [
            ("udp", "UDP"),
            ("tcp", "TCP"),
            ("tls", "TLS"),
            ("ws", "WS"),
            ("wss", "WSS")
        ]
    );
    let reliable: Vec<_> = all.iter().map(|t| t.is_reliable()).collect();
    assert_eq!(reliable, [false, true, true, true, true]);
    let secure: Vec<_> = all.iter().map(|t| t.is_secure()).collect();
    assert_eq!(secure, [false, false, true, false, true]);
}

// === environment overrides ===

#[test]
fn env_overrides_scalars() {
    let env = vars(&[
        ("STG_SIP__UPSTREAM", "sip:10.0.0.5:5060;transport=tcp"),
        ("STG_SIP__TIMERS__T1", "250ms"),
        ("STG_LOG__LEVEL", "debug"),
        ("STG_SIP__MAX_HEADERS", "100"),
        ("STG_SIP__FORCE_RPORT", "false"),
        ("STG_NODE__ID", "007"),
        ("STG_ADMIN__LISTEN", ""),
    ]);
    let config = Config::from_toml_str(EXAMPLE, env).unwrap();
    assert_eq!(
        config.sip.upstream.to_string(),
        "sip:10.0.0.5:5060;transport=tcp"
    );
    assert_eq!(config.sip.timers.t1, Duration::from_millis(250));
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.sip.max_headers, 100);
    assert!(!config.sip.force_rport);
    assert_eq!(config.node.id.as_deref(), Some("007"));
    assert_eq!(config.admin.listen, None);

    // An integer-looking value still reaches a string key as written.
    let config = Config::from_env(vars(&[("STG_NODE__ID", "42")])).unwrap();
    assert_eq!(config.node.id.as_deref(), Some("42"));
    let config = Config::from_env(vars(&[("STG_LOG__LEVEL", "\"warn\"")])).unwrap();
    assert_eq!(config.log.level, "warn");
}

#[test]
fn env_overrides_arrays_and_tables() {
    let env = vars(&[
        ("STG_SIP__TRUSTED_NETWORKS", "[\"10.0.0.0/8\"]"),
        (
            "STG_SIP__LISTEN",
            "[{transport=\"udp\", address=\"0.0.0.0:5060\"}]",
        ),
    ]);
    let config = Config::from_env(env).unwrap();
    assert_eq!(config.sip.trusted_networks, ["10.0.0.0/8".parse().unwrap()]);
    assert_eq!(
        config.sip.listen,
        [ListenerConfig {
            transport: Transport::Udp,
            address: "0.0.0.0:5060".parse().unwrap(),
            side: Side::Outside,
            proxy_protocol: false,
            advertise: None,
        }]
    );

    // A deeper variable refines a table one, whichever the environment lists first.
    let env = vars(&[
        ("STG_SIP__TIMERS__T2", "9s"),
        ("STG_SIP__TIMERS", "{t1 = \"1s\", t2 = \"8s\"}"),
    ]);
    let timers = Config::from_toml_str(EXAMPLE, env).unwrap().sip.timers;
    assert_eq!(timers.t1, Duration::from_secs(1));
    assert_eq!(timers.t2, Duration::from_secs(9));
}

#[test]
fn env_ignores_what_is_not_an_override() {
    let env = vars(&[
        ("STG_CONFORMANCE_DIR", "/work/shared/conformance"),
        ("STG_SHARED_DIR", "/work/shared"),
        ("STG_FOO", "bar"),
        ("PATH", "/usr/bin"),
        ("stg_sip__upstream", "nonsense"),
    ]);
    assert_eq!(Config::from_env(env).unwrap(), Config::default());
}

#[test]
fn env_errors_name_the_variable() {
    let check = |env: &[(&str, &str)], key: &str, var: &str, fragment: &str| {
        let e = error("", env);
        let shown = e.to_string();
        assert!(shown.contains(var) && shown.contains(fragment), "{shown}");
        match e {
            ConfigError::Invalid {
                key: got, env_var, ..
            } => {
                assert_eq!(got, key, "{shown}");
                assert_eq!(env_var.as_deref(), Some(var), "{shown}");
            }
            other => panic!("{other:?}"),
        }
    };
    check(
        &[("STG_SIP__UPSTREEM", "sip:pbx")],
        "sip.upstreem",
        "STG_SIP__UPSTREEM",
        "unknown key",
    );
    check(
        &[("STG_FOO__BAR", "1")],
        "foo",
        "STG_FOO__BAR",
        "unknown key",
    );
    check(
        &[("STG_SIP__TIMERZ__T1", "1s")],
        "sip.timerz",
        "STG_SIP__TIMERZ__T1",
        "unknown key",
    );
    check(
        &[("STG_SIP__TIMERS__T1", "fast")],
        "sip.timers.t1",
        "STG_SIP__TIMERS__T1",
        "invalid duration \"fast\"",
    );
    check(
        &[(
            "STG_SIP__LISTEN",
            "[{transport=\"udp\", address=\"0.0.0.0:1\", proxy_protocol=true}]",
        )],
        "sip.listen[0].proxy_protocol",
        "STG_SIP__LISTEN",
        "udp",
    );

    for (var, value, fragment) in [
        ("STG_SIP__UPSTREAM__HOST", "pbx", "is a string, not a table"),
        (
            "STG_SIP__LISTEN__0__ADDRESS",
            "0.0.0.0:5060",
            "overridden whole",
        ),
        (
            "STG_SIP__TRUSTED_NETWORKS",
            "[\"10.0.0.0/8\"",
            "invalid TOML",
        ),
        (
            "STG_SIP__LISTEN",
            "[{transport=\"udp\"}]\nx = 1",
            "invalid TOML",
        ),
        ("STG_SIP____T1", "1s", "empty level"),
    ] {
        let e = Config::from_toml_str(EXAMPLE, vars(&[(var, value)])).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with(var) && shown.contains(fragment),
            "{shown}"
        );
        assert!(matches!(e, ConfigError::Env { .. }), "{e:?}");
    }
}

// === syntax and files ===

#[test]
fn syntax_errors_give_line_and_column() {
    let e = error("[sip]\nupstream = \"sip:pbx\"\nforce_rport = = true\n", &[]);
    let shown = e.to_string();
    match e {
        ConfigError::Syntax { line, column, .. } => {
            assert_eq!((line, column), (3, 15), "{shown}");
        }
        other => panic!("{other:?}"),
    }
    assert!(shown.starts_with("line 3, column 15: "), "{shown}");
    assert!(!shown.contains('\n'), "{shown}");

    let e = error("[sip.timers]\nt1 = \"1s\"\nt1 = \"2s\"\n", &[]);
    assert!(
        matches!(e, ConfigError::Syntax { line: 3, .. }),
        "duplicate key: {e}"
    );
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("stg-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "[log]\nlevel = \"warn\"\n").unwrap();
    let env = vars(&[("STG_LOG__FORMAT", "json")]);
    let config = Config::load(&good, env).unwrap();
    assert_eq!(
        (config.log.level.as_str(), config.log.format),
        ("warn", LogFormat::Json)
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[log\n").unwrap();
    let shown = Config::load(&bad, []).unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("{}: line 1", bad.display())),
        "{shown}"
    );

    let missing = dir.join("missing.toml");
    let e = Config::load(&missing, []).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&missing.display().to_string()));
    std::fs::remove_dir_all(&dir).unwrap();
}

// === edge hardening limits ===

#[test]
fn hardening_limits_parse_and_check() {
    let config = parse(
        r#"
        [sip]
        max_connections = 5000
        max_connections_per_source = 8
        source_prefix_v6 = 56
        max_pending_connects = 32
        write_timeout = "3s"
        ws_allowed_origins = ["HTTPS://WebCall.Example.com", "http://192.0.2.7:8080"]
        max_transactions = 100
        max_transactions_per_source = 10
        allowed_destinations = ["10.0.0.0/8", "2001:db8::/32"]
        "#,
    );
    let sip = &config.sip;
    assert_eq!(sip.max_connections, 5000);
    assert_eq!(sip.max_connections_per_source, 8);
    assert_eq!(sip.source_prefix_v6, 56);
    assert_eq!(sip.max_pending_connects, 32);
    assert_eq!(sip.write_timeout, Duration::from_secs(3));
    assert_eq!(
        sip.ws_allowed_origins,
        ["https://webcall.example.com", "http://192.0.2.7:8080"]
    );
    assert!(sip.is_allowed_origin("https://webcall.example.com"));
    assert!(sip.is_allowed_origin("https://WEBCALL.example.com"));
    assert!(!sip.is_allowed_origin("https://evil.example"));
    assert!(!sip.is_allowed_origin("null"));
    assert_eq!(sip.max_transactions, 100);
    assert_eq!(sip.max_transactions_per_source, 10);
    assert_eq!(sip.allowed_destinations.len(), 2);

    for key in [
        "max_connections",
        "max_pending_connects",
        "max_transactions",
        "max_transactions_per_source",
        "max_transaction_bytes",
    ] {
        assert_invalid(
            &format!("[sip]\n{key} = 0\n"),
            &format!("sip.{key}"),
            "at least 1",
        );
    }
    assert_invalid(
        "[sip]\nsource_prefix_v6 = 0\n",
        "sip.source_prefix_v6",
        "1 to 128",
    );
    assert_invalid(
        "[sip]\nsource_prefix_v6 = 129\n",
        "sip.source_prefix_v6",
        "1 to 128",
    );
    assert_invalid(
        "[sip]\nwrite_timeout = \"0s\"\n",
        "sip.write_timeout",
        "zero",
    );
    for bad in [
        "webcall.example.com",
        "https://webcall.example.com/",
        "https://webcall.example.com/path",
        "ftp://x.example",
        "https://",
        "https://bad host",
    ] {
        assert_invalid(
            &format!("[sip]\nws_allowed_origins = [\"https://ok.example\", \"{bad}\"]\n"),
            "sip.ws_allowed_origins[1]",
            "origin",
        );
    }
    assert_invalid(
        "[sip]\nallowed_destinations = [\"10.0.0.0/33\"]\n",
        "sip.allowed_destinations[0]",
        "invalid network",
    );
}

// === [push] ===

#[test]
fn push_defaults_and_live_settings() {
    let p = Config::default().push;
    assert_eq!(p.mode, PushMode::Log);
    assert_eq!(p.timeout, Duration::from_secs(5));
    assert_eq!(p.message_delivery_timeout, Duration::from_secs(7 * 86_400));
    assert_eq!(p.apns.url, "https://api.push.apple.com");
    assert_eq!(p.apns.auth, None);

    let p = parse(
        "[push]\nmode = \"live\"\nttl = \"30s\"\n\
         [push.apns]\nurl = \"https://127.0.0.1:8443/\"\nteam_id = \"TEAM123456\"\n\
         key_id = \"KEY1234567\"\nkey_file = \"/etc/stg/apns.p8\"\n\
         [push.fcm]\nservice_account = \"/etc/stg/sa.json\"\n\
         [push.webhook]\nurl = \"http://127.0.0.1:8080/push\"\n",
    )
    .push;
    assert_eq!(p.mode, PushMode::Live);
    assert_eq!(p.ttl, Duration::from_secs(30));
    assert_eq!(p.apns.url, "https://127.0.0.1:8443");
    assert_eq!(
        p.apns.auth,
        Some(ApnsAuth::Token {
            team_id: "TEAM123456".into(),
            key_id: "KEY1234567".into(),
            key_file: "/etc/stg/apns.p8".into(),
        })
    );
    assert_eq!(
        p.fcm.service_account,
        Some(PathBuf::from("/etc/stg/sa.json"))
    );
    assert_eq!(p.webhook.url.as_deref(), Some("http://127.0.0.1:8080/push"));

    let p = parse("[push.apns]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n").push;
    assert!(matches!(p.apns.auth, Some(ApnsAuth::Certificate { .. })));

    let env = vars(&[("STG_PUSH__APNS__SANDBOX_URL", "https://localhost:9443")]);
    let p = Config::from_toml_str(EXAMPLE, env).unwrap().push;
    assert_eq!(p.apns.sandbox_url, "https://localhost:9443");
}

#[test]
fn push_errors_name_their_key() {
    assert_invalid("[push]\nmode = \"on\"\n", "push.mode", "neither");
    assert_invalid("[push]\nmode = \"live\"\n", "push.mode", "needs push.apns");
    assert_invalid("[push]\nttl = \"500ms\"\n", "push.ttl", "at least 1 s");
    assert_invalid(
        "[push]\nmax_in_flight = 0\n",
        "push.max_in_flight",
        "at least 1",
    );
    assert_invalid(
        "[push]\ntimeout = \"0s\"\n",
        "push.timeout",
        "longer than zero",
    );
    assert_invalid(
        "[push.apns]\nurl = \"http://x\"\n",
        "push.apns.url",
        "https://host",
    );
    assert_invalid(
        "[push.fcm]\nurl = \"https://x/v1\"\n",
        "push.fcm.url",
        "nothing after",
    );
    assert_invalid(
        "[push.apns]\nkey_file = \"k.p8\"\nteam_id = \"T\"\n",
        "push.apns.key_id",
        "10-character id",
    );
    assert_invalid(
        "[push.apns]\nkey_file = \"k.p8\"\ncertificate = \"c.pem\"\n",
        "push.apns.certificate",
        "choose token",
    );
    assert_invalid(
        "[push.apns]\ncertificate = \"c.pem\"\n",
        "push.apns.private_key",
        "missing",
    );
    assert_invalid(
        "[push.webhook]\nurl = \"ftp://x\"\n",
        "push.webhook.url",
        "expected",
    );
    assert_invalid(
        "[push.apns]\nteam = \"T\"\n",
        "push.apns.team",
        "unknown key",
    );
}

// === guard inputs ===

#[test]
fn guard_logs_and_syslog_intake() {
    let c = parse(
        "[guard]\nsyslog_listen = \"127.0.0.1:5514\"\nsyslog_allowed = [\"10.0.0.0/8\"]\n\
         [[guard.logs]]\npath = \"/var/log/auth.log\"\nfilter = \"sshd[mode=aggressive]\"\n\
         jail = \"ssh\"\nmaxretry = 5\nfindtime = \"1m\"\n\
         [[guard.logs]]\npath = \"/var/log/auth.log.other\"\nfilter = \"sshd\"\njail = \"ssh\"\n\
         maxretry = 5\nfindtime = \"1m\"\n",
    );
    let g = &c.guard;
    assert_eq!(g.syslog_listen, Some("127.0.0.1:5514".parse().unwrap()));
    assert_eq!(
        g.syslog_allowed,
        vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
    );
    assert_eq!(g.logs.len(), 2);
    assert_eq!(g.logs[0].filter, "sshd[mode=aggressive]");
    assert_eq!(
        (
            g.logs[0].maxretry,
            g.logs[0].findtime,
            g.logs[0].bantime,
            g.logs[0].from_start
        ),
        (5, Some(Duration::from_secs(60)), None, false)
    );
    assert_eq!(
        parse("[[guard.logs]]\npath = \"/x\"\nfilter = \"truco-ko\"\njail = \"x\"\n")
            .guard
            .logs[0]
            .maxretry,
        11
    );
    let log =
        |extra: &str| format!("[[guard.logs]]\npath = \"/x\"\nfilter = \"truco-ko\"\n{extra}");
    assert_invalid(&log("jail = \"sip\"\n"), "guard.logs[0].jail", "not one of");
    assert_invalid(&log("jail = \"a b\"\n"), "guard.logs[0].jail", "letters");
    assert_invalid(
        &log("jail = \"x\"\nmaxretry = 0\n"),
        "guard.logs[0].maxretry",
        "at least 1",
    );
    assert_invalid(
        &format!("{}{}", log("jail = \"x\"\n"), log("jail = \"y\"\n")),
        "guard.logs[1].path",
        "already followed",
    );
    assert_invalid(
        &format!(
            "{}[[guard.logs]]\npath = \"/y\"\nfilter = \"truco-ko\"\njail = \"x\"\nmaxretry = 3\n",
            log("jail = \"x\"\n")
        ),
        "guard.logs[1].jail",
        "other values",
    );
    assert_invalid(
        &log("jail = \"x\"\nfilte = 1\n"),
        "guard.logs[0].filte",
        "unknown key",
    );
    assert_invalid(
        "[guard]\nsyslog_jail = \"probe\"\n",
        "guard.syslog_jail",
        "not one of",
    );
    assert_invalid(
        "[guard]\ntail_poll = \"1ms\"\n",
        "guard.tail_poll",
        "10ms to 60s",
    );
}

// === [portal] ===

#[test]
fn portal_section() {
    let c = parse(
        "[node]\ndata_dir = \"/srv/stg\"\n[portal]\nlanding_page = \"/app/\"\n\
         token_lifetime = \"30m\"\ncookie_name = \"sid\"\nargon2_memory_kib = 65536\n\
         max_hashing = 2\nmax_waiting = 0\n",
    );
    assert_eq!(c.portal.landing_page, "/app/");
    assert_eq!(c.portal.token_lifetime, Duration::from_secs(1800));
    assert_eq!(c.portal.cookie_name, "sid");
    assert_eq!(c.portal.argon2_memory_kib, 65536);
    assert_eq!((c.portal.max_hashing, c.portal.max_waiting), (2, 0));
    assert_eq!(c.portal_key_file(), Path::new("/srv/stg/portal.key"));
    let c = parse("[portal]\nkey_file = \"/etc/stg/portal.key\"\n");
    assert_eq!(c.portal_key_file(), Path::new("/etc/stg/portal.key"));

    // The realm: explicit, else the registrar's, else the first named domain, else any.
    assert_eq!(parse("").portal_realm(), None);
    let named = "[registrar]\ndomains = [{ name = \"*\", mode = \"through\" }, \
                 { name = \"example.org\", mode = \"local\" }]\n";
    assert_eq!(parse(named).portal_realm().as_deref(), Some("example.org"));
    let c = parse(&format!("{named}realm = \"r\"\n"));
    assert_eq!(c.portal_realm().as_deref(), Some("r"));
    let c = parse(&format!("{named}realm = \"r\"\n[portal]\nrealm = \"p\"\n"));
    assert_eq!(c.portal_realm().as_deref(), Some("p"));
}

#[test]
fn portal_bad_values_name_their_key() {
    for (text, key, fragment) in [
        (
            "landing_page = \"https://evil.example/\"",
            "portal.landing_page",
            "not a path",
        ),
        (
            "landing_page = \"//evil.example/\"",
            "portal.landing_page",
            "not a path",
        ),
        (
            "landing_page = \"/\\\\evil.example/\"",
            "portal.landing_page",
            "not a path",
        ),
        (
            "token_lifetime = \"5s\"",
            "portal.token_lifetime",
            "at least",
        ),
        ("cookie_name = \"a b\"", "portal.cookie_name", "RFC 6265"),
        ("cookie_name = \"\"", "portal.cookie_name", "RFC 6265"),
        (
            "argon2_memory_kib = 4",
            "portal.argon2_memory_kib",
            "from 8",
        ),
        (
            "argon2_memory_kib = 1000000",
            "portal.argon2_memory_kib",
            "262144",
        ),
        (
            "argon2_iterations = 0",
            "portal.argon2_iterations",
            "from 1",
        ),
        (
            "argon2_parallelism = 9",
            "portal.argon2_parallelism",
            "from 1",
        ),
        ("max_hashing = 0", "portal.max_hashing", "at least 1"),
        ("cookie = \"x\"", "portal.cookie", "unknown key"),
    ] {
        assert_invalid(&format!("[portal]\n{text}\n"), key, fragment);
    }
}
