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

/// Nonces relayed to outside UDP sources, by keyed hash.
#[derive(Debug, Default)]
pub(crate) struct NonceBook {
    to: crate::FastMap<u64, (IpAddr, Instant)>,
    order: VecDeque<(Instant, u64)>,
}

impl NonceBook {
    /// `nonce` (keyed hash) was relayed to `ip` at `now`.
    pub(crate) fn sent(&mut self, nonce: u64, ip: IpAddr, now: Instant) {
        self.expire(now);
        while self.to.len() >= MAX_NONCES {
            let Some((_, old)) = self.order.pop_front() else {
                break;
            };
            self.to.remove(&old);
        }
        if self.to.insert(nonce, (ip, now)).is_none() {
            self.order.push_back((now, nonce));
        }
    }

    /// Whether `nonce` (keyed hash) was relayed to `ip`, recently.
    pub(crate) fn went_to(&self, nonce: u64, ip: IpAddr, now: Instant) -> bool {
        self.to.get(&nonce).is_some_and(|&(to, at)| {
            to.to_canonical() == ip.to_canonical()
                && now.saturating_duration_since(at) < NONCE_PROOF_TTL
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
            // Re-sent since (a refreshed entry keeps its first place in the queue).
            if self.to.get(&n).is_some_and(|&(_, t)| t == at) {
                self.to.remove(&n);
            }
        }
    }
}

/// The `nonce` parameter of a digest challenge or credentials value, unquoted.
pub(crate) fn nonce_param(value: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    while i + 6 <= value.len() {
        let boundary = i == 0 || matches!(value[i - 1], b' ' | b'\t' | b',');
        if boundary && value[i..i + 5].eq_ignore_ascii_case(b"nonce") {
            let mut j = i + 5;
            while value.get(j).is_some_and(|c| matches!(c, b' ' | b'\t')) {
                j += 1;
            }
            if value.get(j) == Some(&b'=') {
                j += 1;
                while value.get(j).is_some_and(|c| matches!(c, b' ' | b'\t')) {
                    j += 1;
                }
                let rest = &value[j..];
                return if let Some(q) = rest.strip_prefix(b"\"") {
                    q.iter().position(|&c| c == b'"').map(|end| &q[..end])
                } else {
                    let end = rest
                        .iter()
                        .position(|&c| matches!(c, b',' | b' ' | b'\t'))
                        .unwrap_or(rest.len());
                    Some(&rest[..end])
                }
                .filter(|n| !n.is_empty());
            }
        }
        i += 1;
    }
    None
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
