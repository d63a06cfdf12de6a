use std::time::{Duration, Instant};

use stg_config::{ApnsAuth, PushConfig};
use stg_push::{Outcome, PushKind, Pusher};
use stg_testkit::push_servers::{ApnsOptions, FakeApns, FakeWebhook};

use crate::{live, request, tuning, WAIT};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn log_mode_sends_nothing() {
    let pusher = Pusher::new(&PushConfig::default()).unwrap();
    let r = pusher
        .send(&request(PushKind::Call, "apns", TOKEN, Some("T.b.voip")))
        .await;
    assert_eq!((r.provider, r.attempts), ("log", 0));
    assert_eq!(r.outcome, Outcome::Sent { id: "log".into() });
}

#[tokio::test]
async fn webhook_takes_what_no_native_client_takes() {
    let hook = FakeWebhook::start(204);
    let mut config = live();
    config.webhook.url = Some(hook.url());
    let pusher = Pusher::with_tuning(&config, tuning(&config).0).unwrap();
    let r = pusher
        .send(&request(PushKind::Message, "fcm", "tok-1", Some("proj")))
        .await;
    assert_eq!(r.provider, "webhook");
    assert!(matches!(r.outcome, Outcome::Sent { .. }), "{r:?}");
    let reqs = hook.wait_for(1, WAIT);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/push");
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    let body = reqs[0].json();
    assert_eq!(body["type"], "message");
    assert_eq!(body["pn-provider"], "fcm");
    assert_eq!(body["pn-prid"], "tok-1");

    let failing = FakeWebhook::start(500);
    config.webhook.url = Some(failing.url());
    let pusher = Pusher::with_tuning(&config, tuning(&config).0).unwrap();
    let r = pusher.send(&request(PushKind::Call, "x", "t", None)).await;
    assert!(
        matches!(
            r.outcome,
            Outcome::Failed {
                status: Some(500),
                ..
            }
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn unconfigured_provider_fails_without_a_webhook() {
    let fake = FakeApns::start(ApnsOptions::default());
    let mut config = live();
    config.apns.url = fake.url();
    config.apns.ca_file = Some(fake.ca_file());
    config.apns.auth = Some(ApnsAuth::Token {
        team_id: fake.team_id().into(),
        key_id: fake.key_id().into(),
        key_file: fake.key_file(),
    });
    let pusher = Pusher::with_tuning(&config, tuning(&config).0).unwrap();
    let r = pusher
        .send(&request(PushKind::Call, "fcm", "t", None))
        .await;
    assert!(
        matches!(&r.outcome, Outcome::Failed { status: None, reason } if reason.contains("no client")),
        "{r:?}"
    );
    assert_eq!(r.provider, "fcm");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn in_flight_cap_refuses_and_counts() {
    let fake = FakeApns::start(ApnsOptions {
        delay: Duration::from_millis(300),
        ..ApnsOptions::default()
    });
    let mut config = live();
    config.max_in_flight = 2;
    config.apns.url = fake.url();
    config.apns.ca_file = Some(fake.ca_file());
    config.apns.auth = Some(ApnsAuth::Token {
        team_id: fake.team_id().into(),
        key_id: fake.key_id().into(),
        key_file: fake.key_file(),
    });
    let pusher = Pusher::with_tuning(&config, tuning(&config).0).unwrap();
    let call = request(
        PushKind::Call,
        "apns",
        TOKEN,
        Some("TEAM123456.org.stg.test.voip"),
    );
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (p, r) = (pusher.clone(), call.clone());
        set.spawn(async move { p.send(&r).await });
    }
    let mut refused = 0;
    let mut sent = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap().outcome {
            Outcome::Refused => refused += 1,
            Outcome::Sent { .. } => sent += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((sent, refused), (2, 3));
    assert_eq!(pusher.stats().refused, 3);
    // The slots come back.
    assert!(matches!(
        pusher.send(&call).await.outcome,
        Outcome::Sent { .. }
    ));
}

/// Latency of one push over an established connection, p50/p99 over 1,000 pushes to the
/// local APNs (printed; run with `--nocapture`, in release for meaningful figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_over_an_established_connection() {
    let fake = FakeApns::start(ApnsOptions::default());
    let mut config = live();
    config.apns.url = fake.url();
    config.apns.ca_file = Some(fake.ca_file());
    config.apns.auth = Some(ApnsAuth::Token {
        team_id: fake.team_id().into(),
        key_id: fake.key_id().into(),
        key_file: fake.key_file(),
    });
    let pusher = Pusher::with_tuning(&config, tuning(&config).0).unwrap();
    let call = request(
        PushKind::Call,
        "apns",
        TOKEN,
        Some("TEAM123456.org.stg.test.voip"),
    );
    assert!(matches!(
        pusher.send(&call).await.outcome,
        Outcome::Sent { .. }
    ));
    let n = 1000;
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let r = pusher.send(&call).await;
        assert!(matches!(r.outcome, Outcome::Sent { .. }), "{r:?}");
        lat.push(r.latency);
    }
    let total = start.elapsed();
    lat.sort();
    let p = |q: f64| lat[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "push latency over one connection, {n} sequential pushes: p50 {:?}, p99 {:?}, max {:?}, {:.0} pushes/s",
        p(0.50),
        p(0.99),
        lat[n - 1],
        n as f64 / total.as_secs_f64()
    );
    assert!(p(0.99) < Duration::from_secs(1));

    // The same with 32 pushes in flight at once, multiplexed on the one connection.
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..32 {
        let (p, r) = (pusher.clone(), call.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            for _ in (w..n).step_by(32) {
                let res = p.send(&r).await;
                assert!(matches!(res.outcome, Outcome::Sent { .. }), "{res:?}");
                lat.push(res.latency);
            }
            lat
        });
    }
    let mut lat = Vec::with_capacity(n);
    while let Some(l) = set.join_next().await {
        lat.extend(l.unwrap());
    }
    let total = start.elapsed();
    lat.sort();
    let p = |q: f64| lat[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "push latency over one connection, {n} pushes 32 at a time: p50 {:?}, p99 {:?}, {:.0} pushes/s",
        p(0.50),
        p(0.99),
        n as f64 / total.as_secs_f64()
    );
    assert_eq!(fake.connections(), 1);
}

/// The metric names and labels the dashboards read.
#[tokio::test(flavor = "current_thread")]
async fn metrics_are_counted() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // The test runs on this one thread (current-thread runtime), so a thread-local recorder
    // sees everything the pusher records.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let fake = FakeApns::start(ApnsOptions::default());
    let mut config = live();
    config.max_in_flight = 1;
    config.apns.url = fake.url();
    config.apns.ca_file = Some(fake.ca_file());
    config.apns.auth = Some(ApnsAuth::Token {
        team_id: fake.team_id().into(),
        key_id: fake.key_id().into(),
        key_file: fake.key_file(),
    });
    let pusher = Pusher::with_tuning(&config, tuning(&config).0).unwrap();
    let call = request(
        PushKind::Call,
        "apns",
        TOKEN,
        Some("TEAM123456.org.stg.test.voip"),
    );
    fake.script(
        TOKEN,
        [stg_testkit::push_servers::ApnsReply::ServiceUnavailable],
    );
    assert!(matches!(
        pusher.send(&call).await.outcome,
        Outcome::Sent { .. }
    ));
    fake.script(TOKEN, [stg_testkit::push_servers::ApnsReply::Unregistered]);
    assert!(matches!(
        pusher.send(&call).await.outcome,
        Outcome::RemoveBinding { .. }
    ));
    let (a, b) = tokio::join!(pusher.send(&call), pusher.send(&call));
    assert!([a.outcome, b.outcome].contains(&Outcome::Refused));

    let text = handle.render();
    for line in [
        r#"stg_push_sent_total{provider="apns",result="sent"} 2"#,
        r#"stg_push_sent_total{provider="apns",result="remove_binding"} 1"#,
        r#"stg_push_sent_total{provider="apns",result="refused"} 1"#,
        r#"stg_push_refused_total{provider="apns"} 1"#,
        r#"stg_push_retries_total{provider="apns"} 1"#,
        r#"stg_push_token_refresh_total{provider="apns"} 1"#,
        r#"stg_push_latency_seconds_count{provider="apns"} 3"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}
