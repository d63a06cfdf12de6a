use std::time::Duration;

use stg_config::ApnsAuth;
use stg_push::{Outcome, PushKind, Pusher};
use stg_testkit::push_servers::{ApnsAuthMode, ApnsOptions, ApnsReply, FakeApns};

use crate::{live, request, tuning, TestClock, WAIT};

const VOIP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const REMOTE: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn combined_prid() -> String {
    format!("{VOIP}:voip&{REMOTE}:remote")
}

const PARAM: &str = "TEAM123456.org.stg.test.voip&remote";

fn pusher(fake: &FakeApns, certificate: bool) -> (Pusher, TestClock) {
    let mut config = live();
    config.apns.url = fake.url();
    config.apns.sandbox_url = fake.url();
    config.apns.ca_file = Some(fake.ca_file());
    config.apns.auth = Some(if certificate {
        let (certificate, private_key) = fake.client_certificate();
        ApnsAuth::Certificate {
            certificate,
            private_key,
        }
    } else {
        ApnsAuth::Token {
            team_id: fake.team_id().into(),
            key_id: fake.key_id().into(),
            key_file: fake.key_file(),
        }
    });
    let (tuning, clock) = tuning(&config);
    (Pusher::with_tuning(&config, tuning).unwrap(), clock)
}

fn sent(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Sent { id } if !id.is_empty())
}

#[tokio::test]
async fn token_auth_call_and_message_pushes() {
    let fake = FakeApns::start(ApnsOptions::default());
    let (pusher, _) = pusher(&fake, false);

    let call = request(PushKind::Call, "apns", &combined_prid(), Some(PARAM));
    let r = pusher.send(&call).await;
    assert_eq!(
        r.outcome,
        Outcome::Sent {
            id: call.uuid.clone()
        },
        "the apns-id sent comes back"
    );
    assert_eq!((r.provider, r.attempts), ("apns", 1));

    let msg = request(PushKind::Message, "apns.dev", &combined_prid(), Some(PARAM));
    let r = pusher.send(&msg).await;
    assert!(sent(&r.outcome), "{r:?}");
    assert_eq!(r.provider, "apns.dev");

    let reqs = fake.wait_for(2, WAIT);
    let c = &reqs[0];
    assert_eq!(c.path, format!("/3/device/{VOIP}"));
    assert_eq!(c.header("apns-push-type"), Some("voip"));
    assert_eq!(c.header("apns-topic"), Some("org.stg.test.voip"));
    assert_eq!(c.header("apns-priority"), Some("10"));
    assert!(c.header("authorization").unwrap().starts_with("bearer ey"));
    let expiration: u64 = c.header("apns-expiration").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 55..=now + 65).contains(&expiration), "ttl 60 s");
    let body = c.json();
    assert_eq!(body["aps"], serde_json::json!({}));
    assert_eq!(body["type"], "call");
    assert_eq!(body["call-id"], "call-1@stg");
    assert_eq!(body["uuid"], call.uuid.as_str());

    let m = &reqs[1];
    assert_eq!(m.path, format!("/3/device/{REMOTE}"));
    assert_eq!(m.header("apns-push-type"), Some("alert"));
    assert_eq!(m.header("apns-topic"), Some("org.stg.test"));
    assert_eq!(m.json()["aps"]["sound"], "default");
    assert!(reqs.iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn one_connection_for_many_pushes_and_a_new_one_after_goaway() {
    let fake = FakeApns::start(ApnsOptions::default());
    let (pusher, _) = pusher(&fake, false);
    let call = request(PushKind::Call, "apns", &combined_prid(), Some(PARAM));
    // Concurrent first pushes must share the one connection too.
    let firsts = futures_join(&pusher, &call, 8).await;
    assert!(firsts.iter().all(|r| sent(&r.outcome)), "{firsts:?}");
    for _ in 0..20 {
        assert!(sent(&pusher.send(&call).await.outcome));
    }
    assert_eq!(fake.connections(), 1);
    assert_eq!(pusher.stats().connections_opened, 1);
    // One JWT for all of them.
    let reqs = fake.wait_for(28, WAIT);
    let jwts: std::collections::HashSet<_> = reqs
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(jwts.len(), 1);
    assert_eq!(pusher.stats().apns_token_refreshes, 1);

    fake.close_connections();
    // The GOAWAY reaches the client asynchronously; the next pushes reconnect.
    let mut ok = 0;
    for _ in 0..5 {
        let r = pusher.send(&call).await;
        ok += u32::from(sent(&r.outcome));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A push that meets the closing connection is retried on a new one.
    assert_eq!(ok, 5);
    assert_eq!(fake.connections(), 2);
}

async fn futures_join(
    pusher: &Pusher,
    req: &stg_push::PushRequest,
    n: usize,
) -> Vec<stg_push::PushResult> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (p, r) = (pusher.clone(), req.clone());
        set.spawn(async move { p.send(&r).await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test]
async fn jwt_renewed_after_the_renewal_age() {
    let fake = FakeApns::start(ApnsOptions::default());
    let (pusher, clock) = pusher(&fake, false);
    let call = request(PushKind::Call, "apns", &combined_prid(), Some(PARAM));
    assert!(sent(&pusher.send(&call).await.outcome));
    clock.advance(Duration::from_secs(49 * 60));
    assert!(sent(&pusher.send(&call).await.outcome));
    assert_eq!(
        pusher.stats().apns_token_refreshes,
        1,
        "49 min: still the first JWT"
    );
    clock.advance(Duration::from_secs(2 * 60));
    assert!(sent(&pusher.send(&call).await.outcome));
    assert_eq!(pusher.stats().apns_token_refreshes, 2, "51 min: renewed");
    let reqs = fake.wait_for(3, WAIT);
    let auth: Vec<_> = reqs
        .iter()
        .map(|r| r.header("authorization").unwrap())
        .collect();
    assert_eq!(auth[0], auth[1]);
    assert_ne!(auth[1], auth[2]);
}

#[tokio::test]
async fn certificate_auth() {
    let fake = FakeApns::start(ApnsOptions {
        auth: ApnsAuthMode::Certificate,
        ..ApnsOptions::default()
    });
    let (pusher, _) = pusher(&fake, true);
    let r = pusher
        .send(&request(
            PushKind::Test,
            "apns",
            REMOTE,
            Some("TEAM123456.org.stg.test"),
        ))
        .await;
    assert!(sent(&r.outcome), "{r:?}");
    let reqs = fake.wait_for(1, WAIT);
    assert_eq!(reqs[0].header("authorization"), None);
    assert_eq!(reqs[0].header("apns-push-type"), Some("background"));
    assert_eq!(reqs[0].header("apns-priority"), Some("5"));
    assert_eq!(reqs[0].json()["aps"]["content-available"], 1);

    // Without the certificate the fake answers as APNs does.
    let fake2 = FakeApns::start(ApnsOptions {
        auth: ApnsAuthMode::Certificate,
        ..ApnsOptions::default()
    });
    let mut config = live();
    config.apns.url = fake2.url();
    config.apns.ca_file = Some(fake2.ca_file());
    config.apns.auth = Some(ApnsAuth::Token {
        team_id: "TEAM123456".into(),
        key_id: "KEY1234567".into(),
        key_file: fake.key_file(),
    });
    let p2 = Pusher::with_tuning(&config, tuning(&config).0).unwrap();
    let r = p2
        .send(&request(
            PushKind::Call,
            "apns",
            VOIP,
            Some("TEAM123456.org.stg.test.voip"),
        ))
        .await;
    assert!(
        matches!(
            &r.outcome,
            Outcome::Failed {
                status: Some(403),
                ..
            }
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn dead_tokens_remove_the_binding() {
    let fake = FakeApns::start(ApnsOptions::default());
    let (pusher, _) = pusher(&fake, false);
    fake.script(VOIP, [ApnsReply::Unregistered]);
    let r = pusher
        .send(&request(
            PushKind::Call,
            "apns",
            &combined_prid(),
            Some(PARAM),
        ))
        .await;
    assert_eq!(
        r.outcome,
        Outcome::RemoveBinding {
            reason: "Unregistered".into()
        }
    );
    fake.script(REMOTE, [ApnsReply::BadDeviceToken]);
    let r = pusher
        .send(&request(
            PushKind::Message,
            "apns",
            &combined_prid(),
            Some(PARAM),
        ))
        .await;
    assert_eq!(
        r.outcome,
        Outcome::RemoveBinding {
            reason: "BadDeviceToken".into()
        }
    );
    assert_eq!(r.attempts, 1);
    assert_eq!(pusher.stats().removed, 2);
}

#[tokio::test]
async fn expired_provider_token_is_renewed_and_retried_once() {
    let fake = FakeApns::start(ApnsOptions::default());
    let (pusher, _) = pusher(&fake, false);
    fake.script(VOIP, [ApnsReply::ExpiredProviderToken]);
    let call = request(PushKind::Call, "apns", &combined_prid(), Some(PARAM));
    let r = pusher.send(&call).await;
    assert!(sent(&r.outcome), "{r:?}");
    assert_eq!(r.attempts, 2);
    assert_eq!(pusher.stats().apns_token_refreshes, 2);
    let reqs = fake.wait_for(2, WAIT);
    assert_ne!(
        reqs[0].header("authorization"),
        reqs[1].header("authorization")
    );

    // Refused twice in a row: renewed once only, then failed.
    fake.script(
        VOIP,
        [
            ApnsReply::ExpiredProviderToken,
            ApnsReply::ExpiredProviderToken,
        ],
    );
    let r = pusher.send(&call).await;
    assert!(
        matches!(&r.outcome, Outcome::Failed { status: Some(403), reason } if reason == "ExpiredProviderToken"),
        "{r:?}"
    );
    assert_eq!(r.attempts, 2);
}

#[tokio::test]
async fn busy_provider_is_retried_with_backoff() {
    let fake = FakeApns::start(ApnsOptions::default());
    let (pusher, _) = pusher(&fake, false);
    fake.script(
        VOIP,
        [ApnsReply::TooManyRequests, ApnsReply::ServiceUnavailable],
    );
    let r = pusher
        .send(&request(
            PushKind::Call,
            "apns",
            &combined_prid(),
            Some(PARAM),
        ))
        .await;
    assert!(sent(&r.outcome), "{r:?}");
    assert_eq!(r.attempts, 3);
    let reqs = fake.wait_for(3, WAIT);
    // Backoff 20 ms then 40 ms (the test tuning).
    let gap1 = reqs[1].at - reqs[0].at;
    let gap2 = reqs[2].at - reqs[1].at;
    assert!(gap1 >= Duration::from_millis(20), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(40), "{gap2:?}");
    assert_eq!(pusher.stats().retries, 2);

    // Always busy: gives up after max_retries (3) retries.
    fake.script(VOIP, [ApnsReply::ServiceUnavailable; 10]);
    let r = pusher
        .send(&request(
            PushKind::Call,
            "apns",
            &combined_prid(),
            Some(PARAM),
        ))
        .await;
    assert!(
        matches!(
            &r.outcome,
            Outcome::Failed {
                status: Some(503),
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(r.attempts, 4);
}

#[tokio::test]
async fn bad_device_parameters_never_reach_the_network() {
    let fake = FakeApns::start(ApnsOptions::default());
    let (pusher, _) = pusher(&fake, false);
    let r = pusher
        .send(&request(
            PushKind::Call,
            "apns",
            "not-hex/../x",
            Some(PARAM),
        ))
        .await;
    assert!(
        matches!(&r.outcome, Outcome::Failed { status: None, .. }),
        "{r:?}"
    );
    assert_eq!(r.attempts, 0);
    let r = pusher
        .send(&request(PushKind::Call, "apns", VOIP, None))
        .await;
    assert!(matches!(&r.outcome, Outcome::Failed { .. }), "{r:?}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn unreachable_or_untrusted_provider_fails_fast() {
    // Nothing listens there: connection refused, retried on the schedule, then failed.
    let mut config = live();
    let fake = FakeApns::start(ApnsOptions::default());
    config.apns.url = format!("https://127.0.0.1:{}", stg_testkit::free_port());
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
        VOIP,
        Some("TEAM123456.org.stg.test.voip"),
    );
    let start = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (p, r) = (pusher.clone(), call.clone());
        set.spawn(async move { p.send(&r).await });
    }
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        assert!(
            matches!(&r.outcome, Outcome::Failed { status: None, .. }),
            "{r:?}"
        );
        assert_eq!(r.attempts, 4);
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // A server whose certificate is not trusted: failed at once, no retry.
    config.apns.url = fake.url();
    config.apns.ca_file = None;
    let pusher = Pusher::with_tuning(&config, tuning(&config).0).unwrap();
    let r = pusher.send(&call).await;
    assert!(
        matches!(&r.outcome, Outcome::Failed { status: None, reason } if reason.contains("TLS")),
        "{r:?}"
    );
    assert_eq!(r.attempts, 1);
    assert!(fake.requests().is_empty());
}
