use std::time::Duration;

use stg_push::{Outcome, PushKind, Pusher};
use stg_testkit::push_servers::{FakeFcm, FcmOptions, FcmReply};

use crate::{live, request, tuning, TestClock, WAIT};

const TOKEN: &str = "fcm-token-1:APA91bHun4MxP5egoKMwt2KZFBaFUH";

fn pusher(fake: &FakeFcm) -> (Pusher, TestClock) {
    let mut config = live();
    config.fcm.url = fake.url();
    config.fcm.ca_file = Some(fake.ca_file());
    config.fcm.service_account = Some(fake.service_account_file());
    let (tuning, clock) = tuning(&config);
    (Pusher::with_tuning(&config, tuning).unwrap(), clock)
}

fn sends(fake: &FakeFcm) -> Vec<stg_testkit::push_servers::Recorded> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path != "/token")
        .collect()
}

#[tokio::test]
async fn token_fetched_once_cached_and_reused() {
    let fake = FakeFcm::start(FcmOptions::default());
    let (pusher, clock) = pusher(&fake);
    let call = request(PushKind::Call, "fcm", TOKEN, None);
    for _ in 0..2 {
        let r = pusher.send(&call).await;
        assert!(
            matches!(&r.outcome, Outcome::Sent { id } if id.starts_with("projects/stg-test/messages/")),
            "{r:?}"
        );
    }
    assert_eq!(fake.tokens_issued(), 1);
    assert_eq!(pusher.stats().fcm_token_refreshes, 1);

    let all = fake.wait_for(3, WAIT);
    let token_req = &all[0];
    assert_eq!(token_req.path, "/token");
    assert_eq!(
        token_req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let s = &sends(&fake)[0];
    assert_eq!(s.path, "/v1/projects/stg-test/messages:send");
    assert_eq!(s.header("authorization"), Some("Bearer ya29.fake-1"));
    let body = s.json();
    assert_eq!(body["message"]["token"], TOKEN);
    assert_eq!(body["message"]["android"]["priority"], "high");
    assert_eq!(body["message"]["android"]["ttl"], "60s");
    assert_eq!(body["message"]["data"]["type"], "call");
    assert_eq!(body["message"]["data"]["from-uri"], "sip:alice@example.com");

    // A minute before expires_in (3600 s) runs out, a new token is fetched.
    clock.advance(Duration::from_secs(3600 - 61));
    assert!(matches!(
        pusher.send(&call).await.outcome,
        Outcome::Sent { .. }
    ));
    assert_eq!(fake.tokens_issued(), 1);
    clock.advance(Duration::from_secs(2));
    assert!(matches!(
        pusher.send(&call).await.outcome,
        Outcome::Sent { .. }
    ));
    assert_eq!(fake.tokens_issued(), 2);
    // All sends on one HTTP/2 connection (token fetches have their own).
    let conns: std::collections::HashSet<_> = sends(&fake).iter().map(|r| r.connection).collect();
    assert_eq!(conns.len(), 1);
}

#[tokio::test]
async fn refreshed_on_401_then_retried() {
    let fake = FakeFcm::start(FcmOptions::default());
    let (pusher, _) = pusher(&fake);
    fake.script(TOKEN, [FcmReply::Unauthorized]);
    let r = pusher
        .send(&request(PushKind::Call, "fcm", TOKEN, None))
        .await;
    assert!(matches!(&r.outcome, Outcome::Sent { .. }), "{r:?}");
    assert_eq!(r.attempts, 2);
    assert_eq!(fake.tokens_issued(), 2);
    let s = sends(&fake);
    assert_eq!(s[0].header("authorization"), Some("Bearer ya29.fake-1"));
    assert_eq!(s[1].header("authorization"), Some("Bearer ya29.fake-2"));
}

#[tokio::test]
async fn dead_tokens_and_busy_service() {
    let fake = FakeFcm::start(FcmOptions::default());
    let (pusher, _) = pusher(&fake);
    fake.script(TOKEN, [FcmReply::Unregistered]);
    let r = pusher
        .send(&request(PushKind::Call, "fcm", TOKEN, None))
        .await;
    assert_eq!(
        r.outcome,
        Outcome::RemoveBinding {
            reason: "UNREGISTERED".into()
        }
    );
    fake.script(TOKEN, [FcmReply::InvalidArgument]);
    let r = pusher
        .send(&request(PushKind::Message, "fcm", TOKEN, None))
        .await;
    assert!(matches!(r.outcome, Outcome::RemoveBinding { .. }), "{r:?}");

    fake.script(
        TOKEN,
        [
            FcmReply::TooManyRequests { retry_after: 0 },
            FcmReply::Unavailable,
        ],
    );
    let r = pusher
        .send(&request(PushKind::Call, "fcm", TOKEN, None))
        .await;
    assert!(matches!(r.outcome, Outcome::Sent { .. }), "{r:?}");
    assert_eq!(r.attempts, 3);

    // A Retry-After longer than the backoff cap is honoured by not retrying.
    fake.script(TOKEN, [FcmReply::TooManyRequests { retry_after: 60 }]);
    let r = pusher
        .send(&request(PushKind::Call, "fcm", TOKEN, None))
        .await;
    assert!(
        matches!(
            r.outcome,
            Outcome::Failed {
                status: Some(429),
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(r.attempts, 1);
}

#[tokio::test]
async fn project_from_pn_param() {
    let fake = FakeFcm::start(FcmOptions::default());
    let (pusher, _) = pusher(&fake);
    let r = pusher
        .send(&request(
            PushKind::Call,
            "fcm",
            TOKEN,
            Some("other-project"),
        ))
        .await;
    // The fake serves only its own project: Google answers 403 SENDER_ID_MISMATCH.
    assert!(
        matches!(
            r.outcome,
            Outcome::Failed {
                status: Some(403),
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(
        sends(&fake)[0].path,
        "/v1/projects/other-project/messages:send"
    );
}
