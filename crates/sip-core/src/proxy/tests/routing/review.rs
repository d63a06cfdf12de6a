//! An attacker's review of "Evidence over UDP" (363c2e6): what a spoofer or a cracker can
//! make of the nonce proof, the known-good signal and the probe events. Each test states
//! what should hold; those that do not hold yet are ignored with the finding's number (see
//! the review report).

use super::*;
use crate::proxy::nonces::{nonce_param, NonceBook, MAX_NONCES, NONCE_PROOF_TTL};

/// The attacker's own address, where it reads what the PBX sends.
const ATTACKER: &str = "198.51.100.9:5060";
/// A user's address the attacker writes as the source of its datagrams.
const VICTIM: &str = "192.0.2.77:5060";

/// Digest credentials for alice with `nonce` and a wrong response.
fn guess(nonce: &str) -> String {
    format!(
        "Digest username=\"alice\", realm=\"x\", nonce=\"{nonce}\", uri=\"sip:x\", \
         response=\"00000000000000000000000000000000\""
    )
}

/// `req` from `from`, forwarded, answered by the PBX with `code` and `headers`: the events.
fn answered(
    sim: &mut Sim,
    from: Inbound,
    req: &Req,
    code: u16,
    headers: &[(&str, &[u8])],
) -> Vec<Event> {
    let s = sent(&sim.input(from, req.build()));
    let (_, fwd) = s
        .iter()
        .find(|(f, _)| f.remote == addr(PBX))
        .expect("forwarded")
        .clone();
    let resp = fwd.response(StatusCode(code), None, Some(b"pbx"), None, headers);
    events(&sim.input(pbx_tcp(), resp))
}

fn accepted(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::AuthAccepted { .. }))
        .count()
}

/// Finding 1. Kamailio's auth module (nonce_count and one_time_nonce off, its defaults, as
/// in stg's own sipvicious test PBX) gives every challenge of one second the same nonce;
/// other PBXs use static nonces. The attacker asks for a challenge at its own address,
/// then, within that second, sends REGISTERs under the victim's address: their 401s carry
/// the same nonce to the victim, and the book now says that nonce "went to" the victim.
/// Every spoofed guess with it is then a proven failure of the victim: banned in the `sip`
/// jail, which the known-good rule never withholds.
#[test]
fn a_nonce_the_pbx_gave_two_addresses_proves_neither() {
    let mut sim = Sim::new(tcp_upstream());
    let challenge = b"Digest realm=\"x\", nonce=\"same-second\", qop=\"auth\"";
    let www = [("WWW-Authenticate", &challenge[..])];
    // The attacker learns the nonce at its own address.
    let first = register().call_id("a0").branch("z9hG4bK-a0");
    answered(&mut sim, outside(ATTACKER), &first, 401, &www);
    // The same second, under the victim's name: the PBX's 401 carries the same nonce.
    let spoofed = register().call_id("v0").branch("z9hG4bK-v0");
    answered(&mut sim, outside(VICTIM), &spoofed, 401, &www);
    // Now eleven wrong guesses "from" the victim, blind.
    let mut counted = 0;
    for i in 1..=11 {
        let r = register()
            .call_id(&format!("v{i}"))
            .branch(&format!("z9hG4bK-v{i}"))
            .header(&format!("Authorization: {}", guess("same-second")));
        counted += proven_rejected(&answered(&mut sim, outside(VICTIM), &r, 401, &www));
    }
    assert_eq!(
        counted, 0,
        "a spoofer made {counted} proven failures of the victim's"
    );
}

/// Finding 2 (evasion). A cracker fetches its nonce over TCP (no proof is recorded for a
/// connection) or at a second address of its own, and guesses over UDP: the PBX checks
/// every guess, stg counts none. Such a failure should count at least as unproven (banned
/// unless the address is a user's), as UDP probes do.
#[test]
fn a_udp_guess_with_a_nonce_fetched_elsewhere_is_still_counted() {
    let mut sim = Sim::new(tcp_upstream());
    let www = [(
        "WWW-Authenticate",
        &b"Digest realm=\"x\", nonce=\"t1\", algorithm=MD5"[..],
    )];
    let fetch = register().call_id("t0").branch("z9hG4bK-t0");
    answered(&mut sim, device_tcp(), &fetch, 401, &www);
    let r = register()
        .call_id("t1")
        .branch("z9hG4bK-t1")
        .header(&format!("Authorization: {}", guess("t1")));
    assert_eq!(rejected(&answered(&mut sim, device(), &r, 401, &www)), 1);
}

/// Finding 3 (evasion). The nonce reader is not quote-aware: a `nonce=` inside the value of
/// another parameter (`cnonce`, which the client chooses freely and the PBX hashes as
/// given) is read first. The cracker's guess carries the right nonce for the PBX and a
/// decoy for stg: not counted.
#[test]
fn a_decoy_nonce_inside_a_quoted_parameter_hides_nothing() {
    assert_eq!(
        nonce_param(b"Digest cnonce=\"c nonce=decoy\", nonce=\"n1\""),
        Some(&b"n1"[..])
    );
    assert_eq!(
        nonce_param(b"Digest realm=\"x,nonce=evil\", nonce=\"n1\""),
        Some(&b"n1"[..])
    );
    let mut sim = Sim::new(tcp_upstream());
    let www = [(
        "WWW-Authenticate",
        &b"Digest realm=\"x\", nonce=\"n1\", qop=\"auth\""[..],
    )];
    let fetch = register().call_id("d0").branch("z9hG4bK-d0");
    answered(&mut sim, device(), &fetch, 401, &www);
    let creds = "Authorization: Digest cnonce=\"c nonce=decoy\", username=\"alice\", \
                 realm=\"x\", nonce=\"n1\", uri=\"sip:x\", qop=auth, nc=00000001, \
                 response=\"00000000000000000000000000000000\"";
    let r = register().call_id("d1").branch("z9hG4bK-d1").header(creds);
    assert_eq!(
        proven_rejected(&answered(&mut sim, device(), &r, 401, &www)),
        1
    );
}

/// Finding 4. A 2xx proves only that the PBX accepted the request, not that it checked the
/// credentials in it: many PBXs answer OPTIONS (stg's own sipvicious test PBX does), calls
/// to an IVR or in-dialog requests without asking. Junk credentials on such a request make
/// the sender's address "a user's" for 24 h, and its UDP scans are then never banned (and,
/// through the engine's unenforced ban, neither are its TCP scans: finding 6).
#[test]
fn credentials_nobody_checked_do_not_make_a_user() {
    let junk = "Authorization: Digest username=\"nobody\", realm=\"x\", nonce=\"zz\", \
                uri=\"sip:x\", response=\"00\"";
    // Over TCP: any credentials at all.
    let mut sim = Sim::new(tcp_upstream());
    let opt = req("OPTIONS", "sip:bob@example.com")
        .call_id("o1")
        .branch("z9hG4bK-o1")
        .header(junk);
    assert_eq!(
        accepted(&answered(&mut sim, device_tcp(), &opt, 200, &[])),
        0
    );
    // Over UDP: a real nonce, fetched at the attacker's own address, and a junk response.
    let www = [(
        "WWW-Authenticate",
        &b"Digest realm=\"x\", nonce=\"k1\", algorithm=MD5"[..],
    )];
    let fetch = register().call_id("o2").branch("z9hG4bK-o2");
    answered(&mut sim, outside(ATTACKER), &fetch, 401, &www);
    let opt = req("OPTIONS", "sip:bob@example.com")
        .call_id("o3")
        .branch("z9hG4bK-o3")
        .header(&format!("Authorization: {}", guess("k1")));
    assert_eq!(
        accepted(&answered(&mut sim, outside(ATTACKER), &opt, 200, &[])),
        0
    );
}

/// Finding 5 (evasion). Asterisk's chan_sip and others answer a wrong password with 403,
/// not a new challenge. Over UDP, with a nonce proven to be the cracker's, that guess is no
/// authentication failure; it is only an unverified probe (20 of them, and withheld from a
/// "known-good" address).
#[test]
fn a_403_to_proven_credentials_is_an_authentication_failure() {
    let mut sim = Sim::new(tcp_upstream());
    let www = [(
        "WWW-Authenticate",
        &b"Digest realm=\"x\", nonce=\"f1\", algorithm=MD5"[..],
    )];
    let fetch = register().call_id("f0").branch("z9hG4bK-f0");
    answered(&mut sim, device(), &fetch, 401, &www);
    let r = register()
        .call_id("f1")
        .branch("z9hG4bK-f1")
        .header(&format!("Authorization: {}", guess("f1")));
    let evs = answered(&mut sim, device(), &r, 403, &[]);
    assert_eq!(proven_rejected(&evs), 1, "{evs:?}");
}

/// One real instant as the origin; every later time is computed from it.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("an address")
}

/// Finding 7. A nonce relayed twice (Kamailio's one-per-second nonces, any two challenges in
/// the same second) keeps its first place in the queue; when that place expires the entry
/// is not removed (its time changed) and nothing refers to it any more: it stays forever.
#[test]
fn a_nonce_relayed_twice_is_forgotten_too() {
    let t = t0();
    let mut book = NonceBook::default();
    book.sent(7, ip("192.0.2.1"), t);
    book.sent(7, ip("192.0.2.2"), t + Duration::from_millis(300));
    book.sent(
        8,
        ip("192.0.2.3"),
        t + NONCE_PROOF_TTL + Duration::from_secs(1),
    );
    assert_eq!(book.len(), 1, "the twice-relayed nonce leaked");
}

/// Finding 7, its consequence. After MAX_NONCES such seconds (18.2 h of Kamailio with two
/// UDP challenges a second, which anyone can send) the book is full of dead entries that
/// the cap cannot evict: each new proof evicts the live one before it, so a cracker's
/// guesses stop counting as soon as anyone else is challenged in between.
#[test]
fn a_book_full_of_repeated_nonces_stays_bounded_and_keeps_new_proofs() {
    let t = t0();
    let mut book = NonceBook::default();
    for n in 0..MAX_NONCES as u64 {
        book.sent(n, ip("192.0.2.1"), t);
        book.sent(n, ip("192.0.2.1"), t + Duration::from_millis(1));
    }
    let later = t + NONCE_PROOF_TTL + Duration::from_secs(1);
    let cracker = ip("198.51.100.9");
    book.sent(1 << 40, cracker, later);
    book.sent(1 << 41, ip("192.0.2.9"), later + Duration::from_millis(1));
    assert!(book.len() <= MAX_NONCES, "{} entries", book.len());
    assert!(
        book.went_to(1 << 40, cracker, later + Duration::from_secs(1)),
        "the cracker's proof was evicted by the next challenge"
    );
}
