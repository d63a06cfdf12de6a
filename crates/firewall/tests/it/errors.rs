//! Failures name the command and say why; the caller keeps enforcing in-process.

use stg_firewall::{Error, Firewall, FirewallConfig, Refresh};
use stg_testkit::Netns;

use crate::common::{ban, config};

#[test]
fn a_missing_nft_is_a_clear_error() {
    // Nothing runs here, so no namespace is needed.
    let cfg = FirewallConfig {
        nft: "/nonexistent/nft".into(),
        ..FirewallConfig::default()
    };
    let err = Firewall::ensure(&cfg).unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("`/nonexistent/nft -f -`"), "{text}");
    assert!(text.contains("nftables package"), "{text}");
}

#[test]
fn a_failing_nft_names_the_command_and_its_stderr() {
    if !Netns::new().run_test_inside() {
        return;
    }
    // No `ensure`: the table is not there. (With `Refresh::Add` the batch is the first
    // command; with the default, the listing before it fails the same way.)
    let fw = Firewall::new(FirewallConfig {
        refresh: Refresh::Add,
        ..config("stg")
    })
    .unwrap();
    let err = fw.apply(&[ban("127.0.0.2", 60)]).unwrap_err();
    let Error::Nft {
        command, stderr, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(command, "nft -f -");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    let err = fw.list().unwrap_err();
    assert!(
        err.to_string()
            .contains("`nft -j list table inet stg` failed"),
        "{err}"
    );

    // A set of ours with other flags (an old or foreign table): ensure refuses to guess.
    let out = std::process::Command::new("nft")
        .args(["add table inet stg; add set inet stg banned4 { type ipv4_addr; }"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = Firewall::ensure(&config("stg")).unwrap_err();
    assert!(matches!(err, Error::Nft { .. }), "{err:?}");
}

#[test]
fn a_bad_table_name_is_refused_before_anything_runs() {
    let err = Firewall::new(config("stg; flush ruleset")).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}
