//! Figures: restore and restart with 10,000 bans, bans/s through `apply`, the cost of one
//! ban next to a full set, and a 100,000-ban restore. Printed (run with `--nocapture`), not
//! asserted beyond the number of nft runs: the machine is shared.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use stg_firewall::{Change, Firewall, FirewallConfig, IpNet, Refresh};
use stg_testkit::Netns;

use crate::common::config;

/// The `i`th IPv4 address from 10.0.0.0 (i < 2^24).
fn v4(i: u32) -> IpNet {
    IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
}

/// The `i`th /64 under fd00:ab::/32.
fn v6_64(i: u32) -> IpNet {
    let base = u128::from(Ipv6Addr::new(0xfd00, 0xab, 0, 0, 0, 0, 0, 0));
    IpNet::new(IpAddr::V6(Ipv6Addr::from(base + (u128::from(i) << 64))), 64).unwrap()
}

/// 80 % IPv4 addresses, 20 % IPv6 /64s, as an attack mix might be.
fn bans(n: u32, offset: u32) -> Vec<(IpNet, Duration)> {
    (offset..offset + n)
        .map(|i| {
            let net = if i % 5 == 4 { v6_64(i) } else { v4(i) };
            (net, Duration::from_secs(3600 + u64::from(i % 600)))
        })
        .collect()
}

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn ten_thousand_bans_restore_and_restart_under_a_second() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let ten_k = bans(10_000, 0);

    let t = now();
    let fw = Firewall::ensure(&config("stg")).unwrap();
    let ensure_empty = t.elapsed();
    let t = now();
    let done = fw.restore(&ten_k).unwrap();
    let restore_empty = t.elapsed();
    assert_eq!(
        (done.applied, done.runs),
        (10_000, 1),
        "{:?}",
        done.rejected
    );

    // Stop: nothing to do. Start: ensure on the full table, then the store's bans again
    // (they are already there), once each way of refreshing.
    let t = now();
    drop(fw);
    let stop = t.elapsed();
    let mut starts = Vec::new();
    for refresh in [Refresh::Auto, Refresh::Replace] {
        let cfg = FirewallConfig {
            refresh,
            ..config("stg")
        };
        let t = now();
        let fw = Firewall::ensure(&cfg).unwrap();
        let ensure_full = t.elapsed();
        let t = now();
        let done = fw.restore(&ten_k).unwrap();
        let restore_full = t.elapsed();
        assert_eq!(done.applied, 10_000, "{:?}", done.rejected);
        assert!(done.runs <= 1, "{done:?}");
        starts.push((fw.refresh(), ensure_full, restore_full));
    }
    let fw = Firewall::ensure(&config("stg")).unwrap();
    let t = now();
    let listed = fw.list().unwrap();
    let list = t.elapsed();
    assert_eq!(listed.len(), 10_000);

    // Bans/s through apply, batches of 100, next to the 10,000 already there.
    let more = bans(10_000, 10_000);
    let batch_of = |chunk: &[(IpNet, Duration)]| -> Vec<Change> {
        chunk
            .iter()
            .map(|&(net, timeout)| Change::Ban { net, timeout })
            .collect()
    };
    let t = now();
    let mut runs = 0;
    for chunk in more.chunks(100) {
        let done = fw.apply(&batch_of(chunk)).unwrap();
        assert_eq!(done.applied, 100);
        runs += done.runs;
    }
    let batches = t.elapsed();
    assert_eq!(runs, 100);

    // One ban at a time next to 20,000: what a lone ban costs (the latency floor).
    let lone = |fw: &Firewall, from: u32| {
        let mut took: Vec<Duration> = (from..from + 20)
            .map(|i| {
                let t = now();
                fw.apply(&[Change::Ban {
                    net: v4(i),
                    timeout: Duration::from_secs(60),
                }])
                .unwrap();
                t.elapsed()
            })
            .collect();
        took.sort();
        (took[10], took[19])
    };
    let single = lone(&fw, 100_000);

    // The same with Replace (each run lists the sets first): ten batches of 100 and lone bans.
    let replace = Firewall::ensure(&FirewallConfig {
        refresh: Refresh::Replace,
        ..config("stg")
    })
    .unwrap();
    let extra = bans(1000, 30_000);
    let t = now();
    for chunk in extra.chunks(100) {
        assert_eq!(replace.apply(&batch_of(chunk)).unwrap().applied, 100);
    }
    let replace_batches = t.elapsed();
    let replace_single = lone(&replace, 200_000);

    println!(
        "FIGURES firewall: 10,000 bans (8,000 IPv4, 2,000 IPv6 /64): ensure on an empty table \
         {:.1} ms, restore into it {:.1} ms (1 nft run); stop {:.3} ms (nothing to do); list \
         {:.1} ms",
        ms(ensure_empty),
        ms(restore_empty),
        ms(stop),
        ms(list),
    );
    for (refresh, ensure, restore) in starts {
        println!(
            "FIGURES firewall: start on the full table ({refresh:?}): ensure {:.1} ms + restore \
             of the same 10,000 {:.1} ms = {:.1} ms",
            ms(ensure),
            ms(restore),
            ms(ensure + restore),
        );
    }
    println!(
        "FIGURES firewall: {:?}: 10,000 more bans in batches of 100: {:.0} ms, {:.0} bans/s; \
         one ban alone next to 20,000: p50 {:.1} ms, max {:.1} ms (20 runs)",
        fw.refresh(),
        ms(batches),
        10_000.0 / batches.as_secs_f64(),
        ms(single.0),
        ms(single.1),
    );
    println!(
        "FIGURES firewall: Replace: 1,000 bans in batches of 100 next to 20,000: {:.0} ms, \
         {:.0} bans/s; one ban alone: p50 {:.1} ms, max {:.1} ms",
        ms(replace_batches),
        1000.0 / replace_batches.as_secs_f64(),
        ms(replace_single.0),
        ms(replace_single.1),
    );
}

#[test]
fn a_hundred_thousand_bans_restore_in_a_few_runs() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let fw = Firewall::ensure(&config("stg")).unwrap();
    let all = bans(100_000, 0);
    let t = now();
    let done = fw.restore(&all).unwrap();
    let took = t.elapsed();
    assert_eq!(done.applied, 100_000, "{:?}", done.rejected.first());
    assert_eq!(done.runs, 5);
    let t = now();
    let n = fw.list().unwrap().len();
    let list = t.elapsed();
    assert_eq!(n, 100_000);
    println!(
        "FIGURES firewall: restore of 100,000 bans: {:.0} ms in {} nft runs; list {:.0} ms",
        ms(took),
        done.runs,
        ms(list)
    );
}
