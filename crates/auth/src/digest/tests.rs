use std::time::{Duration, Instant};

use bytes::Bytes;
use stg_sip_msg::Message;

use super::*;
use crate::credentials::test_params;
use crate::ha1;

const REALM: &str = "sip.example.com";
const KEY: [u8; 32] = [7; 32];
const URI: &str = "sip:sip.example.com";

#[allow(clippy::disallowed_methods)] // the one real instant; every other is an offset
fn t0() -> Instant {
    Instant::now()
}

fn digest() -> Digest {
    Digest::new(KEY, DigestConfig::default())
}

/// A client answering `challenge` (one header value): the Authorization value.
fn answer(challenge: &str, user: &str, password: &str, nc: u32) -> String {
    let p = test_params(challenge);
    let get = |n: &str| {
        p.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let (realm, nonce) = (get("realm"), get("nonce"));
    let alg = Algorithm::parse(&get("algorithm")).unwrap();
    answer_nonce(alg, &realm, &nonce, user, password, nc)
}

fn answer_nonce(
    alg: Algorithm,
    realm: &str,
    nonce: &str,
    user: &str,
    password: &str,
    nc: u32,
) -> String {
    let c = Credentials {
        user: user.into(),
        realm: realm.into(),
        algorithm: alg,
        nonce: nonce.into(),
        uri: URI.into(),
        response: String::new(),
        cnonce: "0a4f113b".into(),
        nc: format!("{nc:08x}"),
        nc_value: nc,
        qop: "auth".into(),
        opaque: None,
        problem: None,
    };
    let r = response(alg, &ha1(alg, user, realm, password), &c, b"REGISTER");
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{URI}\", \
         response=\"{r}\", algorithm={}, cnonce=\"0a4f113b\", qop=auth, nc={nc:08x}",
        alg.name()
    )
}

fn register(headers: &[(&str, &str)]) -> Message {
    let mut s = String::from(
        "REGISTER sip:sip.example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n\
         Max-Forwards: 70\r\n\
         To: <sip:alice@sip.example.com>\r\n\
         From: <sip:alice@sip.example.com>;tag=1928301774\r\n\
         Call-ID: a84b4c76e66710\r\n\
         CSeq: 1 REGISTER\r\n",
    );
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    Message::parse(Bytes::from(s)).expect("test message parses")
}

fn creds(value: &str) -> Credentials {
    Credentials::parse(value.as_bytes(), REALM).expect("Digest credentials")
}

/// Checks `value` with alice's stored HA1 (password "secret").
fn check(d: &mut Digest, value: &str, now: Instant) -> Verdict {
    let c = creds(value);
    let stored = ha1(c.algorithm, "alice", REALM, "secret");
    d.verify(&c, b"REGISTER", Some(&stored), now)
}

fn md5_challenge(d: &mut Digest, now: Instant, random: u64) -> String {
    d.challenge(REALM, false, now, random).pop().unwrap()
}

// === test vectors ===

fn vector(alg: Algorithm, realm: &str, nonce: &str, cnonce: &str, password: &str) -> String {
    let c = Credentials {
        user: "Mufasa".into(),
        realm: realm.into(),
        algorithm: alg,
        nonce: nonce.into(),
        uri: "/dir/index.html".into(),
        response: String::new(),
        cnonce: cnonce.into(),
        nc: "00000001".into(),
        nc_value: 1,
        qop: "auth".into(),
        opaque: None,
        problem: None,
    };
    response(alg, &ha1(alg, "Mufasa", realm, password), &c, b"GET")
}

#[test]
fn rfc_7616_example() {
    // RFC 7616 §3.9.1, both responses.
    let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    let realm = "http-auth@example.org";
    assert_eq!(
        vector(Algorithm::Sha256, realm, nonce, cnonce, "Circle of Life"),
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
    assert_eq!(
        vector(Algorithm::Md5, realm, nonce, cnonce, "Circle of Life"),
        "8ca523f5e9506fed4657c9700eebdbec"
    );
}

#[test]
fn rfc_2617_example() {
    // RFC 2617 §3.5.
    assert_eq!(
        vector(
            Algorithm::Md5,
            "testrealm@host.com",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "0a4f113b",
            "Circle Of Life"
        ),
        "6629fae49393a05397450978507c4ef1"
    );
}

// === challenge ===

#[test]
fn challenge_lists_sha256_first_with_qop_auth() {
    let mut d = Digest::new(
        KEY,
        DigestConfig {
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            ..Default::default()
        },
    );
    let ch = d.challenge(REALM, false, t0(), 1);
    assert_eq!(ch.len(), 2);
    let algs: Vec<String> = ch
        .iter()
        .map(|c| {
            test_params(c)
                .into_iter()
                .find(|(k, _)| k == "algorithm")
                .unwrap()
                .1
        })
        .collect();
    assert_eq!(algs, ["SHA-256", "MD5"]);
    for c in &ch {
        let p = test_params(c);
        assert!(p.contains(&("qop".into(), "auth".into())), "{c}");
        assert!(p.contains(&("realm".into(), REALM.into())), "{c}");
        assert!(!c.contains("stale"), "{c}");
        assert_eq!(p.iter().find(|(k, _)| k == "nonce").unwrap().1.len(), 80);
    }
    let ch = d.challenge(REALM, true, t0(), 2);
    assert!(ch.iter().all(|c| c.ends_with(", stale=true")));

    let mut d = Digest::new(
        KEY,
        DigestConfig {
            algorithms: vec![Algorithm::Md5],
            ..Default::default()
        },
    );
    let ch = d.challenge(REALM, false, t0(), 1);
    assert_eq!(ch.len(), 1);
    assert!(ch[0].contains("algorithm=MD5"));
}

#[test]
fn challenge_quotes_the_realm() {
    let mut d = digest();
    let realm = r#"we "quote" \ this"#;
    let ch = d.challenge(realm, false, t0(), 1);
    let p = test_params(&ch[0]);
    assert!(p.contains(&("realm".into(), realm.into())), "{}", ch[0]);
}

#[test]
fn nonces_differ_per_random_and_per_time() {
    let mut d = digest();
    let t = t0();
    let a = d.challenge(REALM, false, t, 1);
    let b = d.challenge(REALM, false, t, 2);
    let c = d.challenge(REALM, false, t + Duration::from_millis(1), 1);
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_eq!(d.remembered_nonces(), 0, "issuing stores nothing");
}

// === verify ===

#[test]
fn round_trip_through_a_message_md5_and_sha256() {
    let t = t0();
    let mut d = digest();
    for (i, ch) in d.challenge(REALM, false, t, 42).into_iter().enumerate() {
        // Both challenges carry the same nonce, so its count goes on from one to the other.
        let value = answer(&ch, "alice", "secret", i as u32 + 1);
        let m = register(&[("Authorization", &value)]);
        let c = Digest::credentials(&m, false, REALM).expect("credentials");
        assert_eq!(c.user, "alice");
        assert_eq!(c.algorithm, [Algorithm::Sha256, Algorithm::Md5][i]);
        assert_eq!(
            Digest::credentials(&m, true, REALM),
            None,
            "not Proxy-Authorization"
        );
        let stored = ha1(c.algorithm, "alice", REALM, "secret");
        assert_eq!(
            d.verify(
                &c,
                m.method_bytes(),
                Some(&stored),
                t + Duration::from_secs(1)
            ),
            Verdict::Ok
        );
    }
}

#[test]
fn proxy_authorization_for_407() {
    let t = t0();
    let mut d = digest();
    let ch = md5_challenge(&mut d, t, 42);
    let value = answer(&ch, "alice", "secret", 1);
    let m = register(&[("Proxy-Authorization", &value)]);
    assert_eq!(Digest::credentials(&m, false, REALM), None);
    let c = Digest::credentials(&m, true, REALM).unwrap();
    assert_eq!(
        d.verify(
            &c,
            b"REGISTER",
            Some(&ha1(Algorithm::Md5, "alice", REALM, "secret")),
            t
        ),
        Verdict::Ok
    );
}

#[test]
fn credentials_pick_the_challenged_realm() {
    let other = r#"Digest username="bob", realm="pbx.example.net", nonce="n", uri="sip:x", response="r", qop=auth, nc=00000001, cnonce="c""#;
    let ours = other
        .replace("pbx.example.net", REALM)
        .replace("bob", "alice");
    let m = register(&[
        ("Authorization", "Basic Zm9vOmJhcg=="),
        ("Authorization", other),
        ("authorization", &ours),
    ]);
    let c = Digest::credentials(&m, false, REALM).unwrap();
    assert_eq!((c.user.as_str(), c.problem()), ("alice", None));
    // Only another realm's: that one, refused.
    let m = register(&[("Authorization", other)]);
    let c = Digest::credentials(&m, false, REALM).unwrap();
    assert_eq!(c.problem(), Some(FailReason::WrongRealm));
    assert_eq!(
        digest().verify(&c, b"REGISTER", None, t0()),
        Verdict::Fail(FailReason::WrongRealm)
    );
    // No credentials: the first challenge, not a failure.
    assert_eq!(Digest::credentials(&register(&[]), false, REALM), None);
    assert_eq!(
        Digest::credentials(&register(&[("Authorization", "Basic x")]), false, REALM),
        None
    );
}

#[test]
fn wrong_password_fails() {
    let t = t0();
    let mut d = digest();
    for ch in d.challenge(REALM, false, t, 42) {
        let value = answer(&ch, "alice", "guess", 1);
        assert_eq!(
            check(&mut d, &value, t),
            Verdict::Fail(FailReason::WrongResponse)
        );
    }
}

#[test]
fn unknown_user_fails_after_the_same_computation() {
    let t = t0();
    let mut d = digest();
    for ch in d.challenge(REALM, false, t, 42) {
        let c = creds(&answer(&ch, "mallory", "secret", 1));
        assert_eq!(
            d.verify(&c, b"REGISTER", None, t),
            Verdict::Fail(FailReason::UnknownUser)
        );
        // The stand-in is a well-formed HA1 of the right length, stable per user...
        let dummy = d.dummy_ha1(&c);
        assert_eq!(dummy.len(), 2 * c.algorithm.len());
        assert_eq!(dummy, d.dummy_ha1(&c));
        // ...and even a response computed from it is refused: the user is still unknown.
        let mut forged = c.clone();
        forged.response = response(c.algorithm, &dummy, &c, b"REGISTER");
        assert_eq!(
            d.verify(&forged, b"REGISTER", None, t),
            Verdict::Fail(FailReason::UnknownUser)
        );
        // Refusals of unknown users remember nothing.
        assert_eq!(d.remembered_nonces(), 0);
    }
}

#[test]
fn response_and_stored_ha1_compare_case_insensitively() {
    let t = t0();
    let mut d = digest();
    let ch = md5_challenge(&mut d, t, 42);
    let value = answer(&ch, "alice", "secret", 1);
    let c = creds(&value);
    let mut upper = c.clone();
    upper.response = c.response.to_ascii_uppercase();
    let stored = ha1(Algorithm::Md5, "alice", REALM, "secret").to_ascii_uppercase();
    assert_eq!(d.verify(&upper, b"REGISTER", Some(&stored), t), Verdict::Ok);
}

#[test]
fn method_is_part_of_the_response() {
    let t = t0();
    let mut d = digest();
    let ch = md5_challenge(&mut d, t, 42);
    let c = creds(&answer(&ch, "alice", "secret", 1));
    let stored = ha1(Algorithm::Md5, "alice", REALM, "secret");
    assert_eq!(
        d.verify(&c, b"INVITE", Some(&stored), t),
        Verdict::Fail(FailReason::WrongResponse)
    );
}

#[test]
fn tampered_or_foreign_nonces_are_bad_not_stale() {
    let t = t0();
    let mut d = digest();
    let ch = md5_challenge(&mut d, t, 42);
    let nonce = test_params(&ch)
        .into_iter()
        .find(|(k, _)| k == "nonce")
        .unwrap()
        .1;
    let mut bad = Vec::new();
    // Each half flipped: the generation, the time, the random part, the MAC.
    for i in [0, 17, 33, 50, 79] {
        let mut n = nonce.clone().into_bytes();
        n[i] = if n[i] == b'0' { b'1' } else { b'0' };
        bad.push(String::from_utf8(n).unwrap());
    }
    bad.push(nonce[..78].to_string());
    bad.push(format!("{nonce}00"));
    bad.push(nonce.replace(|c: char| c.is_ascii_digit(), "z"));
    bad.push("7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into());
    bad.push(String::new());
    // Another key's nonce.
    let mut other = Digest::new([8; 32], DigestConfig::default());
    let foreign = md5_challenge(&mut other, t, 42);
    bad.push(
        test_params(&foreign)
            .into_iter()
            .find(|(k, _)| k == "nonce")
            .unwrap()
            .1,
    );
    // Our nonce, but issued for another realm.
    let ch_other = d
        .challenge("other.example.com", false, t, 43)
        .pop()
        .unwrap();
    bad.push(
        test_params(&ch_other)
            .into_iter()
            .find(|(k, _)| k == "nonce")
            .unwrap()
            .1,
    );
    for n in bad {
        let value = answer_nonce(Algorithm::Md5, REALM, &n, "alice", "secret", 1);
        assert_eq!(
            check(&mut d, &value, t),
            Verdict::Fail(FailReason::BadNonce),
            "{n}"
        );
    }
    // The genuine one still works.
    assert_eq!(
        check(&mut d, &answer(&ch, "alice", "secret", 1), t),
        Verdict::Ok
    );
}

#[test]
fn expired_nonce_is_stale_only_with_a_right_response() {
    let t = t0();
    let mut d = digest();
    let ch = md5_challenge(&mut d, t + Duration::from_secs(10), 42);
    let ttl = DigestConfig::default().nonce_ttl;
    let value = answer(&ch, "alice", "secret", 1);
    let late = t + Duration::from_secs(10) + ttl + Duration::from_millis(1);
    assert_eq!(check(&mut d, &value, late), Verdict::Stale);
    // A wrong password on an expired nonce is still a failure, not a free retry.
    let wrong = answer(&ch, "alice", "guess", 1);
    assert_eq!(
        check(&mut d, &wrong, late),
        Verdict::Fail(FailReason::WrongResponse)
    );
    let c = creds(&value);
    assert_eq!(
        d.verify(&c, b"REGISTER", None, late),
        Verdict::Fail(FailReason::UnknownUser)
    );
    // At exactly the TTL it is still good.
    assert_eq!(
        check(&mut d, &value, t + Duration::from_secs(10) + ttl),
        Verdict::Ok
    );
}

#[test]
fn nonce_count_must_strictly_increase() {
    let t = t0();
    let mut d = digest();
    let ch = md5_challenge(&mut d, t, 42);
    assert_eq!(
        check(&mut d, &answer(&ch, "alice", "secret", 1), t),
        Verdict::Ok
    );
    assert_eq!(
        check(&mut d, &answer(&ch, "alice", "secret", 1), t),
        Verdict::Fail(FailReason::ReplayedNonce)
    );
    assert_eq!(
        check(&mut d, &answer(&ch, "alice", "secret", 5), t),
        Verdict::Ok
    );
    assert_eq!(
        check(&mut d, &answer(&ch, "alice", "secret", 3), t),
        Verdict::Fail(FailReason::ReplayedNonce)
    );
    assert_eq!(
        check(&mut d, &answer(&ch, "alice", "secret", 5), t),
        Verdict::Fail(FailReason::ReplayedNonce)
    );
    assert_eq!(
        check(&mut d, &answer(&ch, "alice", "secret", 6), t),
        Verdict::Ok
    );
    assert_eq!(d.remembered_nonces(), 1);
}

#[test]
fn a_wrong_response_does_not_burn_the_nonce() {
    let t = t0();
    let mut d = digest();
    let ch = md5_challenge(&mut d, t, 42);
    // Anyone who saw the challenge can send a high nc; it must not block the real client.
    let wrong = answer(&ch, "alice", "guess", 0xffff_ffff);
    assert_eq!(
        check(&mut d, &wrong, t),
        Verdict::Fail(FailReason::WrongResponse)
    );
    assert_eq!(
        check(&mut d, &answer(&ch, "alice", "secret", 1), t),
        Verdict::Ok
    );
}

#[test]
fn refused_params() {
    let t = t0();
    let mut d = digest();
    let ch = md5_challenge(&mut d, t, 42);
    let good = answer(&ch, "alice", "secret", 1);
    let cases = [
        (good.replace(", qop=auth", ""), FailReason::BadQop),
        (
            good.replace(&format!(", uri=\"{URI}\""), ""),
            FailReason::Malformed,
        ),
        (
            good.replace(&format!("realm=\"{REALM}\""), "realm=\"evil.example.com\""),
            FailReason::WrongRealm,
        ),
        (
            good.replace("algorithm=MD5", "algorithm=MD5-sess"),
            FailReason::BadAlgorithm,
        ),
    ];
    for (value, want) in cases {
        assert_eq!(check(&mut d, &value, t), Verdict::Fail(want), "{value}");
    }
    assert_eq!(d.remembered_nonces(), 0);

    // An algorithm the config does not offer is refused even with a right response.
    let mut sha_only = Digest::new(
        KEY,
        DigestConfig {
            algorithms: vec![Algorithm::Sha256],
            ..Default::default()
        },
    );
    let ch = sha_only.challenge(REALM, false, t, 42).pop().unwrap();
    let nonce = test_params(&ch)
        .into_iter()
        .find(|(k, _)| k == "nonce")
        .unwrap()
        .1;
    let md5 = answer_nonce(Algorithm::Md5, REALM, &nonce, "alice", "secret", 1);
    assert_eq!(
        check(&mut sha_only, &md5, t),
        Verdict::Fail(FailReason::BadAlgorithm)
    );
    assert_eq!(
        check(&mut sha_only, &answer(&ch, "alice", "secret", 1), t),
        Verdict::Ok
    );
}

#[test]
fn nonce_table_is_bounded_and_forgotten_nonces_are_stale() {
    let t = t0();
    let max = 100;
    let mut d = Digest::new(
        KEY,
        DigestConfig {
            max_nonces: max,
            ..Default::default()
        },
    );
    let mut used = Vec::new();
    for i in 0..2_000u64 {
        let now = t + Duration::from_millis(i);
        let ch = md5_challenge(&mut d, now, i);
        assert_eq!(
            check(&mut d, &answer(&ch, "alice", "secret", 1), now),
            Verdict::Ok
        );
        assert!(d.remembered_nonces() <= max);
        used.push(ch);
    }
    assert_eq!(d.remembered_nonces(), max);
    let now = t + Duration::from_secs(3);
    // The oldest were forgotten: a replay of one is stale (a new challenge), never accepted,
    // however high its nc.
    for ch in &used[..used.len() - max] {
        for nc in [1, 2, 0xffff_ffff] {
            assert_eq!(
                check(&mut d, &answer(ch, "alice", "secret", nc), now),
                Verdict::Stale
            );
        }
    }
    // The newest are still remembered.
    let last = used.last().unwrap();
    assert_eq!(
        check(&mut d, &answer(last, "alice", "secret", 1), now),
        Verdict::Fail(FailReason::ReplayedNonce)
    );
    assert_eq!(
        check(&mut d, &answer(last, "alice", "secret", 2), now),
        Verdict::Ok
    );
    // A nonce issued after the eviction is accepted once.
    let fresh = md5_challenge(&mut d, now, 9_999);
    assert_eq!(
        check(&mut d, &answer(&fresh, "alice", "secret", 1), now),
        Verdict::Ok
    );
    assert_eq!(
        check(&mut d, &answer(&fresh, "alice", "secret", 1), now),
        Verdict::Fail(FailReason::ReplayedNonce)
    );
    assert_eq!(d.remembered_nonces(), max);
}

#[test]
fn expired_entries_are_dropped_first() {
    let t = t0();
    let mut d = digest();
    for i in 0..50u64 {
        let ch = md5_challenge(&mut d, t, i);
        assert_eq!(
            check(&mut d, &answer(&ch, "alice", "secret", 1), t),
            Verdict::Ok
        );
    }
    assert_eq!(d.remembered_nonces(), 50);
    let later = t + DigestConfig::default().nonce_ttl + Duration::from_secs(1);
    let ch = md5_challenge(&mut d, later, 1_000);
    assert_eq!(
        check(&mut d, &answer(&ch, "alice", "secret", 1), later),
        Verdict::Ok
    );
    assert_eq!(d.remembered_nonces(), 1);
}

#[test]
fn nonces_of_an_earlier_run_are_stale() {
    let t = t0();
    let mut before = digest();
    let ch = md5_challenge(&mut before, t, 42);
    let value = answer(&ch, "alice", "secret", 1);
    assert_eq!(check(&mut before, &value, t), Verdict::Ok);
    // Restart with the same key: nothing issued yet, then a new generation.
    let mut after = digest();
    assert_eq!(check(&mut after, &value, t), Verdict::Stale);
    let _ = after.challenge(REALM, false, t, 7);
    assert_eq!(check(&mut after, &value, t), Verdict::Stale);
    assert_eq!(
        check(&mut after, &answer(&ch, "alice", "secret", 9), t),
        Verdict::Stale
    );
    // With another key the nonce is not ours at all.
    let mut rekeyed = Digest::new([9; 32], DigestConfig::default());
    assert_eq!(
        check(&mut rekeyed, &value, t),
        Verdict::Fail(FailReason::BadNonce)
    );
}

#[test]
fn debug_does_not_show_the_key() {
    let s = format!("{:?}", digest());
    assert!(!s.contains("7, 7"), "{s}");
}

#[test]
fn credentials_user_for_through_mode() {
    let value =
        r#"Digest username="bob", realm="pbx.example.net", nonce="n", uri="sip:x", response="r""#;
    assert_eq!(
        crate::credentials_user(&register(&[("Authorization", value)])),
        Some("bob".into())
    );
    assert_eq!(
        crate::credentials_user(&register(&[("Proxy-Authorization", value)])),
        Some("bob".into())
    );
    // Unreadable credentials still count as carried: the user is just unknown.
    assert_eq!(
        crate::credentials_user(&register(&[("Authorization", "Digest ,,")])),
        Some(String::new())
    );
    assert_eq!(crate::credentials_user(&register(&[])), None);
    assert_eq!(
        crate::credentials_user(&register(&[("Authorization", "Basic eA==")])),
        None
    );
}

#[test]
fn a_nonce_bound_to_a_client_works_only_for_that_client() {
    let mut d = digest();
    let now = t0();
    let ch = d
        .challenge_for(REALM, b"192.0.2.1", false, now, 7)
        .pop()
        .unwrap();
    let c = creds(&answer(&ch, "alice", "secret", 1));
    let stored = ha1(c.algorithm, "alice", REALM, "secret");
    // Another source (a spoofer who fetched the nonce elsewhere, or the same nonce unbound).
    assert_eq!(
        d.verify_for(&c, b"198.51.100.9", b"REGISTER", Some(&stored), now),
        Verdict::Fail(FailReason::BadNonce)
    );
    assert_eq!(
        d.verify(&c, b"REGISTER", Some(&stored), now),
        Verdict::Fail(FailReason::BadNonce)
    );
    assert_eq!(
        d.verify_for(&c, b"192.0.2.1", b"REGISTER", Some(&stored), now),
        Verdict::Ok
    );
}
