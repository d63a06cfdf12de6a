//! What the kernel does with our table: drops, expiry, restarts, refreshed timeouts, batches
//! with refused elements.

use std::time::Duration;

use stg_firewall::{BatchConfig, Batcher, Change, Firewall, Hook, IpNet, Refresh};
use stg_testkit::Netns;

use crate::common::{ban, config, drop_counters, list_set, net, Listener};

/// Addresses on `lo` in the IPv6 tests: the listener, two in one /64, one outside it.
const V6: [&str; 4] = ["fd00:1::1", "fd00:2::5", "fd00:2::7", "fd00:3::1"];

#[test]
fn a_banned_ipv4_source_is_dropped_and_others_get_through() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let fw = Firewall::ensure(&config("stg")).unwrap();
    let mut rx = Listener::bind("127.0.0.1");
    assert!(rx.reaches("127.0.0.2"), "nothing is banned yet");

    let done = fw.apply(&[ban("127.0.0.2", 600)]).unwrap();
    assert_eq!((done.applied, done.runs), (1, 1));
    assert!(done.rejected.is_empty());

    let listed = list_set(&fw, "banned4");
    assert!(
        listed.contains("127.0.0.2 timeout 10m expires"),
        "nft list set shows the element with its timeout:\n{listed}"
    );
    assert!(!rx.reaches("127.0.0.2"), "the banned source got through");
    assert!(rx.reaches("127.0.0.3"), "an unbanned source was dropped");
    assert_eq!(
        drop_counters(&fw),
        [1, 0, 0, 0],
        "the IPv4 rule counted the drop"
    );

    let done = fw
        .apply(&[Change::Unban {
            net: net("127.0.0.2"),
        }])
        .unwrap();
    assert_eq!(done.applied, 1);
    assert!(rx.reaches("127.0.0.2"), "still dropped after the unban");
    // Unbanning what is not there is no error.
    let done = fw
        .apply(&[Change::Unban {
            net: net("127.0.0.2"),
        }])
        .unwrap();
    assert_eq!((done.applied, done.rejected.len()), (1, 0));
}

#[test]
fn an_ipv6_ban_of_a_64_drops_every_address_in_it() {
    if !Netns::new().addrs(&V6).run_test_inside() {
        return;
    }
    let fw = Firewall::ensure(&config("stg")).unwrap();
    let mut rx = Listener::bind(V6[0]);
    assert!(rx.reaches(V6[1]) && rx.reaches(V6[2]));

    // The guard bans the /64 of the offender fd00:2::5; any host bits are ignored.
    fw.apply(&[ban("fd00:2::5/64", 600)]).unwrap();
    let listed = list_set(&fw, "banned6");
    assert!(listed.contains("fd00:2:: timeout 10m"), "{listed}");

    assert!(!rx.reaches(V6[1]), "the offender got through");
    assert!(!rx.reaches(V6[2]), "another address of its /64 got through");
    assert!(rx.reaches(V6[3]), "an address of another /64 was dropped");
    assert!(rx.reaches("::1"));
    assert_eq!(drop_counters(&fw), [0, 2, 0, 0]);

    // A single IPv6 address (an operator's choice) goes to the interval set.
    fw.apply(&[ban("fd00:3::1/128", 600)]).unwrap();
    assert!(!rx.reaches(V6[3]));
    assert!(rx.reaches("::1"));
    assert_eq!(drop_counters(&fw), [0, 2, 0, 1]);
    let mut elems: Vec<_> = fw.list().unwrap().into_iter().map(|e| e.net).collect();
    elems.sort();
    assert_eq!(elems, vec![net("fd00:2::/64"), net("fd00:3::1/128")]);
}

#[test]
fn a_burst_of_a_thousand_bans_through_the_batcher_is_one_nft_run() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let fw = Firewall::ensure(&config("stg")).unwrap();
    let mut b = Batcher::new(BatchConfig::default());
    #[allow(clippy::disallowed_methods)]
    let t0 = std::time::Instant::now();
    for i in 0..1000u32 {
        let addr = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        // Some bans twice: coalesced, the last one wins.
        for secs in [60, 600] {
            let net = IpNet::from(std::net::IpAddr::V4(addr));
            let timeout = Duration::from_secs(if i % 10 == 0 { secs } else { 600 });
            assert!(b.handle_change(Change::Ban { net, timeout }, t0));
        }
    }
    let mut runs = 0;
    let mut applied = 0;
    while let Some(batch) = b.poll_batch(t0) {
        let done = fw.apply(&batch).unwrap();
        runs += done.runs;
        applied += done.applied;
    }
    assert_eq!((runs, applied), (1, 1000));
    let listed = fw.list().unwrap();
    assert_eq!(listed.len(), 1000);
    assert!(listed
        .iter()
        .all(|e| e.timeout == Some(Duration::from_secs(600))));
}

#[test]
fn an_element_expires_in_the_kernel_without_stg() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let fw = Firewall::ensure(&config("stg")).unwrap();
    let mut rx = Listener::bind("127.0.0.1");
    fw.apply(&[Change::Ban {
        net: net("127.0.0.2"),
        timeout: Duration::from_millis(1500),
    }])
    .unwrap();
    drop(fw);
    assert!(!rx.reaches("127.0.0.2"));
    // The one test that waits for real time: the kernel's own expiry.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rx.reaches("127.0.0.2"), "the ban outlived its timeout");
    let fw = Firewall::ensure(&config("stg")).unwrap();
    assert_eq!(
        fw.list().unwrap(),
        vec![],
        "an expired element is still listed"
    );
}

#[test]
fn bans_survive_a_restart_with_their_remaining_time() {
    if !Netns::new().addrs(&V6).run_test_inside() {
        return;
    }
    let fw = Firewall::ensure(&config("stg")).unwrap();
    let restored = fw
        .restore(&[
            (net("127.0.0.2"), Duration::from_secs(600)),
            (net("fd00:2::/64"), Duration::from_secs(300)),
        ])
        .unwrap();
    assert_eq!((restored.applied, restored.runs), (2, 1));
    drop(fw);

    // stg stops (nothing is done) and starts again, with another chain priority this time.
    let again = Firewall::ensure(&stg_firewall::FirewallConfig {
        hook: Hook::Input,
        priority: -150,
        ..config("stg")
    })
    .unwrap();
    let mut elems = again.list().unwrap();
    elems.sort_by_key(|e| e.net);
    assert_eq!(elems.len(), 2, "{elems:?}");
    assert_eq!(elems[0].net, net("127.0.0.2"));
    assert_eq!(elems[0].timeout, Some(Duration::from_secs(600)));
    let left = elems[0].expires.unwrap();
    assert!(left <= Duration::from_secs(600) && left >= Duration::from_secs(590));
    assert_eq!(elems[1].net, net("fd00:2::/64"));
    assert!(elems[1].expires.unwrap() <= Duration::from_secs(300));

    let chain = std::process::Command::new("nft")
        .args(["list", "chain", "inet", "stg", "drop_banned"])
        .output()
        .unwrap();
    let chain = String::from_utf8_lossy(&chain.stdout);
    assert!(chain.contains("hook input priority mangle;"), "{chain}");
    assert_eq!(
        chain.matches("drop").count(),
        5,
        "rules duplicated:\n{chain}"
    );

    let mut rx = Listener::bind("127.0.0.1");
    assert!(
        !rx.reaches("127.0.0.2"),
        "the ban did not hold over the restart"
    );
    let mut rx6 = Listener::bind(V6[0]);
    assert!(!rx6.reaches(V6[2]));
    assert!(rx6.reaches(V6[3]));
}

#[test]
fn a_reban_takes_the_new_timeout_even_a_shorter_one() {
    if !Netns::new().run_test_inside() {
        return;
    }
    // What the probe found on this kernel, then each way forced.
    let auto = Firewall::ensure(&config("stg")).unwrap();
    println!("refresh on this kernel: {:?}", auto.refresh());
    for refresh in [Refresh::Add, Refresh::Replace] {
        let fw = Firewall::ensure(&stg_firewall::FirewallConfig {
            refresh,
            ..config("stg")
        })
        .unwrap();
        assert_eq!(fw.refresh(), refresh);
        fw.apply(&[ban("127.0.0.2", 3600)]).unwrap();
        let done = fw.apply(&[ban("127.0.0.2", 60)]).unwrap();
        assert_eq!((done.applied, done.runs), (1, 1), "{refresh:?}");
        let e = fw.list().unwrap();
        assert_eq!(e.len(), 1);
        if refresh == Refresh::Add && auto.refresh() == Refresh::Replace {
            // This kernel keeps the old timeout on `add`: what Auto avoids.
            continue;
        }
        assert_eq!(e[0].timeout, Some(Duration::from_secs(60)), "{refresh:?}");
        fw.apply(&[ban("127.0.0.2", 7200)]).unwrap();
        let e = fw.list().unwrap();
        assert_eq!(e[0].timeout, Some(Duration::from_secs(7200)), "{refresh:?}");
        assert!(e[0].expires.unwrap() > Duration::from_secs(7100));
        // Unbans, of what is there and of what is not, in both ways.
        let done = fw
            .apply(&[
                Change::Unban {
                    net: net("127.0.0.2"),
                },
                Change::Unban {
                    net: net("127.0.0.3"),
                },
            ])
            .unwrap();
        assert_eq!((done.applied, done.rejected.len()), (2, 0), "{refresh:?}");
        assert_eq!(fw.list().unwrap(), vec![]);
    }
}

#[test]
fn a_refused_element_does_not_lose_the_rest_of_its_batch() {
    if !Netns::new().run_test_inside() {
        return;
    }
    for refresh in [Refresh::Add, Refresh::Replace] {
        let fw = Firewall::ensure(&stg_firewall::FirewallConfig {
            refresh,
            ..config("stg")
        })
        .unwrap();
        fw.apply(&[ban("10.8.0.0/24", 600), ban("10.7.0.1", 600)])
            .unwrap();
        let batch = [
            ban("10.1.0.1", 600),
            // Already in the set: refreshed, not an error.
            ban("10.7.0.1", 900),
            // Overlaps a prefix in the set: the interval set refuses it.
            ban("10.8.0.128/25", 600),
            // An address inside a banned prefix: the hash set holds it beside the prefix.
            ban("10.8.0.5", 600),
            // Twice in one batch: the last wins.
            ban("10.1.0.3", 60),
            ban("10.1.0.3", 120),
            // Two nested prefixes in one batch: the wider is kept.
            ban("10.1.0.0/31", 600),
            ban("10.1.0.0/30", 600),
            ban("10.1.0.9", 600),
        ];
        let done = fw.apply(&batch).unwrap();
        assert_eq!((done.applied, done.runs), (6, 2), "{refresh:?} {done:?}");
        let mut refused: Vec<_> = done
            .rejected
            .iter()
            .map(|r| (r.change.net(), r.reason.as_str()))
            .collect();
        refused.sort();
        assert_eq!(
            refused,
            vec![
                (net("10.1.0.0/31"), "inside 10.1.0.0/30, also in this batch"),
                (
                    net("10.8.0.128/25"),
                    "interval overlaps with an existing one"
                ),
            ],
            "{refresh:?} {done:?}"
        );
        let mut listed: Vec<_> = fw
            .list()
            .unwrap()
            .into_iter()
            .map(|e| (e.net, e.timeout.unwrap().as_secs()))
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                (net("10.1.0.0/30"), 600),
                (net("10.1.0.1"), 600),
                (net("10.1.0.3"), 120),
                (net("10.1.0.9"), 600),
                (net("10.7.0.1"), 900),
                (net("10.8.0.0/24"), 600),
                (net("10.8.0.5"), 600),
            ],
            "{refresh:?}"
        );
        fw.remove_all().unwrap();
    }
}

#[test]
fn remove_all_deletes_the_table_and_is_idempotent() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let fw = Firewall::ensure(&config("stg_x")).unwrap();
    fw.apply(&[ban("127.0.0.2", 600)]).unwrap();
    fw.remove_all().unwrap();
    fw.remove_all().unwrap();
    let out = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
    let mut rx = Listener::bind("127.0.0.1");
    assert!(rx.reaches("127.0.0.2"));
}

#[test]
fn the_example_ruleset_is_what_ensure_makes() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nftables/stg.nft");
    let nft = |args: &[&str]| {
        let out = std::process::Command::new("nft")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    nft(&["-f", file]);
    nft(&["add element inet stg banned4 { 127.0.0.2 timeout 1h }"]);
    // Loaded twice: no rule twice, no ban lost.
    nft(&["-f", file]);
    let from_file = nft(&["list", "table", "inet", "stg"]);
    let fw = Firewall::ensure(&config("stg")).unwrap();
    assert_eq!(fw.list().unwrap().len(), 1);
    let from_ensure = nft(&["list", "table", "inet", "stg"]);
    // The same table but for the remaining time of the element.
    let shape = |t: &str| -> String {
        t.lines()
            .filter(|l| !l.contains("expires"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(shape(&from_file), shape(&from_ensure));
    assert_eq!(from_file.matches("counter").count(), 4, "{from_file}");
}
