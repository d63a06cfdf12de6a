//! Return routability for UDP sources, learnt from digest challenges.
//!
//! A UDP datagram's source address can be forged, so a wrong password sent over UDP proves
//! nothing about who sent it, unless the credentials carry a nonce that this proxy relayed
//! to that very address: only a host that receives what is sent to the address can know it
//! (the PBX's nonces are unpredictable). That is the proof [`NonceBook`] keeps: which nonce
//! went to which outside UDP address, for a few minutes, in bounded memory. A spoofer who
//! fetches a nonce at its own address and replays it under a victim's address is not
//! counted: the nonce went elsewhere.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a relayed nonce proves its recipient (a device answers a challenge within
/// seconds; PBX nonces usually expire within a minute or five).
pub(crate) const NONCE_PROOF_TTL: Duration = Duration::from_secs(300);

/// Most nonces remembered: past it the oldest is forgotten (its owner's next failure is
/// then not counted, which errs on the side of never banning a forged source).
pub(crate) const MAX_NONCES: usize = 65_536;

/// Nonces relayed to outside UDP sources, by keyed hash: the one address each went to, or
/// `None` once the PBX gave the same nonce to two addresses (Kamailio's nonces last a
/// second; some PBXs reuse theirs): such a nonce proves no one.
#[derive(Debug, Default)]
pub(crate) struct NonceBook {
    to: crate::FastMap<u64, (Option<IpAddr>, Instant)>,
    /// Each relay, oldest first (a nonce relayed again has a later entry too; an entry whose
    /// time is no longer its nonce's is stale and skipped).
    order: VecDeque<(Instant, u64)>,
}

impl NonceBook {
    /// `nonce` (keyed hash) was relayed to `ip` at `now`.
    pub(crate) fn sent(&mut self, nonce: u64, ip: IpAddr, now: Instant) {
        self.expire(now);
        let ip = ip.to_canonical();
        if !self.to.contains_key(&nonce) {
            while self.to.len() >= MAX_NONCES {
                let Some((at, old)) = self.order.pop_front() else {
                    break;
                };
                if self.to.get(&old).is_some_and(|&(_, t)| t == at) {
                    self.to.remove(&old);
                }
            }
        }
        let owner = match self.to.get(&nonce) {
            Some(&(owner, _)) if owner != Some(ip) => None,
            _ => Some(ip),
        };
        self.to.insert(nonce, (owner, now));
        self.order.push_back((now, nonce));
        if self.order.len() > 2 * MAX_NONCES {
            // Relays of the same nonces again and again: keep only each nonce's latest.
            let to = &self.to;
            self.order
                .retain(|&(at, n)| to.get(&n).is_some_and(|&(_, t)| t == at));
        }
    }

    /// Whether `nonce` (keyed hash) was relayed to `ip` (and to no other address), recently.
    pub(crate) fn went_to(&self, nonce: u64, ip: IpAddr, now: Instant) -> bool {
        self.to.get(&nonce).is_some_and(|&(to, at)| {
            to == Some(ip.to_canonical()) && now.saturating_duration_since(at) < NONCE_PROOF_TTL
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.to.len()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, n)) = self.order.front() {
            if now.saturating_duration_since(at) < NONCE_PROOF_TTL {
                break;
            }
            self.order.pop_front();
            if self.to.get(&n).is_some_and(|&(_, t)| t == at) {
                self.to.remove(&n);
            }
        }
    }
}

/// The `nonce` parameter of a digest challenge or credentials value (`Digest a=b, c="d"`),
/// unquoted. Quote-aware (a `nonce=` inside another parameter's quoted value is not it), and
/// `None` when it appears twice: a value the PBX and stg could read differently proves
/// nothing.
pub(crate) fn nonce_param(value: &[u8]) -> Option<&[u8]> {
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let mut i = 0;
    // The scheme (`Digest`).
    while i < value.len() && !ws(value[i]) {
        i += 1;
    }
    let mut found = None;
    while i < value.len() {
        while i < value.len() && (ws(value[i]) || value[i] == b',') {
            i += 1;
        }
        let name_start = i;
        while i < value.len() && !ws(value[i]) && !matches!(value[i], b'=' | b',') {
            i += 1;
        }
        let name = &value[name_start..i];
        while i < value.len() && ws(value[i]) {
            i += 1;
        }
        if value.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while i < value.len() && ws(value[i]) {
            i += 1;
        }
        let v = if value.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            let mut escaped = false;
            loop {
                let &c = value.get(i)?; // unterminated: unreadable
                i += 1;
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    break &value[start..i - 1];
                }
            }
        } else {
            let start = i;
            while i < value.len() && !ws(value[i]) && value[i] != b',' {
                i += 1;
            }
            &value[start..i]
        };
        if name.eq_ignore_ascii_case(b"nonce") {
            if found.is_some() {
                return None;
            }
            found = Some(v);
        }
    }
    found.filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One real instant as the origin; every later time is computed from it.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn the_nonce_parameter_is_found_quoted_or_not_and_not_inside_cnonce() {
        let v = b"Digest username=\"a\", cnonce=\"zz\", nonce=\"abc=\", uri=\"sip:x\"";
        assert_eq!(nonce_param(v), Some(&b"abc="[..]));
        assert_eq!(
            nonce_param(b"Digest realm=x,NONCE = tok ,qop=auth"),
            Some(&b"tok"[..])
        );
        assert_eq!(nonce_param(b"Digest cnonce=\"zz\""), None);
        assert_eq!(nonce_param(b"Digest nonce=\"\""), None);
        assert_eq!(nonce_param(b"Digest nonce=\"unterminated"), None);
        assert_eq!(
            nonce_param(b"Digest cnonce=\"c nonce=decoy\", nonce=\"n1\""),
            Some(&b"n1"[..])
        );
        assert_eq!(
            nonce_param(b"Digest realm=\"a\\\"b,nonce=evil\", nonce=n1"),
            Some(&b"n1"[..])
        );
        assert_eq!(nonce_param(b"Digest nonce=a, nonce=b"), None, "twice");
    }

    #[test]
    fn a_nonce_relayed_to_two_addresses_proves_neither() {
        let t = t0();
        let mut book = NonceBook::default();
        book.sent(7, ip("192.0.2.1"), t);
        book.sent(7, ip("192.0.2.1"), t + Duration::from_millis(1));
        assert!(
            book.went_to(7, ip("192.0.2.1"), t),
            "the same address again"
        );
        book.sent(7, ip("192.0.2.2"), t + Duration::from_millis(2));
        assert!(!book.went_to(7, ip("192.0.2.1"), t));
        assert!(!book.went_to(7, ip("192.0.2.2"), t));
        book.sent(7, ip("192.0.2.1"), t + Duration::from_millis(3));
        assert!(!book.went_to(7, ip("192.0.2.1"), t), "shared stays shared");
    }

    #[test]
    fn a_nonce_proves_only_its_recipient_and_only_for_a_while() {
        let t = t0();
        let mut book = NonceBook::default();
        book.sent(7, ip("192.0.2.1"), t);
        assert!(book.went_to(7, ip("192.0.2.1"), t + Duration::from_secs(10)));
        assert!(book.went_to(7, ip("::ffff:192.0.2.1"), t), "canonical");
        assert!(!book.went_to(7, ip("192.0.2.2"), t), "another address");
        assert!(!book.went_to(8, ip("192.0.2.1"), t), "another nonce");
        assert!(!book.went_to(7, ip("192.0.2.1"), t + NONCE_PROOF_TTL));
        book.sent(9, ip("192.0.2.1"), t + NONCE_PROOF_TTL);
        assert_eq!(book.len(), 1, "the old one expired");
    }

    #[test]
    fn the_book_is_bounded_and_forgets_the_oldest() {
        let t = t0();
        let mut book = NonceBook::default();
        for n in 0..(MAX_NONCES as u64 + 10) {
            book.sent(n, ip("192.0.2.1"), t);
        }
        assert_eq!(book.len(), MAX_NONCES);
        assert!(!book.went_to(0, ip("192.0.2.1"), t));
        assert!(book.went_to(MAX_NONCES as u64 + 9, ip("192.0.2.1"), t));
    }
}
