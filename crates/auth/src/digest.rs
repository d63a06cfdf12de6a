//! The digest server: stateless nonces, the nonce-count table, and the check of a response.
//!
//! A nonce is 40 bytes written as 80 hex digits:
//! `generation (8) | issued, ms since the epoch (8) | random (8) | MAC (16)`, where the MAC is
//! HMAC-SHA-256 under the key over the first 24 bytes and the realm, truncated to 16 bytes.
//! The epoch is the `now` of the first challenge and the generation its `random`; both are
//! per process, so a nonce of an earlier run (same key) is recognised and answered stale
//! rather than trusted with a time that means nothing any more.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use stg_sip_msg::Message;
use subtle::ConstantTimeEq;

use crate::{to_hex, Algorithm, Credentials, FailReason};

/// Settings of a [`Digest`], defaults in [`DigestConfig::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestConfig {
    /// How long a nonce is accepted after it was issued; older ones get `stale=true`.
    /// Default 300 s: long enough for a REGISTER refresh to reuse it with `nc` + 1, short
    /// enough that a captured nonce is soon worthless.
    pub nonce_ttl: Duration,
    /// Algorithms offered and accepted. Default `[Sha256, Md5]`: SHA-256 for the clients that
    /// have it, MD5 for the many SIP phones that have nothing else. The challenge lists them
    /// strongest first whatever the order here (RFC 8760 §2.4).
    pub algorithms: Vec<Algorithm>,
    /// Most nonces whose count is remembered (about 50 bytes each). Default 100 000. When
    /// full, the oldest issued is forgotten and answers stale from then on.
    pub max_nonces: usize,
}

impl Default for DigestConfig {
    fn default() -> Self {
        Self {
            nonce_ttl: Duration::from_secs(300),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            max_nonces: 100_000,
        }
    }
}

/// The outcome of [`Digest::verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated.
    Ok,
    /// The response was right but the nonce is expired, forgotten or from an earlier run:
    /// answer a new challenge with `stale=true` (RFC 7616 §3.3). Not a failure.
    Stale,
    /// Refused: an [`AuthFailure`](crate::AuthFailure) to log and count. The SIP answer must
    /// not depend on the reason (an unknown user looks like a wrong password).
    Fail(FailReason),
}

/// Issues and checks nonces, remembers nonce-counts. One per process: a nonce's counts live
/// in the instance that accepted it, so verifications of one nonce must reach the same
/// instance or a replay to another one would pass.
pub struct Digest {
    /// HMAC state keyed once; cloned per use.
    mac: Hmac<Sha256>,
    config: DigestConfig,
    epoch: Option<Epoch>,
    /// Last accepted `nc` per nonce, keyed by (issued ms, MAC) so that the first entry is the
    /// oldest issued.
    counts: BTreeMap<(u64, [u8; 16]), u32>,
    /// Issue time (ms) of the newest nonce evicted for room: a nonce issued at or before it
    /// that is not in `counts` may have been used already, so it is answered stale.
    forgotten_upto: Option<u64>,
}

#[derive(Clone, Copy)]
struct Epoch {
    at: Instant,
    generation: u64,
}

/// What a nonce says once its MAC checked out.
struct Nonce {
    generation: u64,
    issued_ms: u64,
    mac: [u8; 16],
}

const NONCE_LEN: usize = 40;

impl Digest {
    /// `key` must be secret and random (from the OS at startup). Share it between the nodes
    /// of a cluster: a nonce from another node then reads as stale (a new challenge) rather
    /// than forged (a logged failure).
    pub fn new(key: [u8; 32], config: DigestConfig) -> Self {
        Self {
            // HMAC is defined for keys of any length (RFC 2104 §2), so this cannot fail.
            mac: Hmac::new_from_slice(&key).expect("HMAC takes a key of any length"),
            config,
            epoch: None,
            counts: BTreeMap::new(),
            forgotten_upto: None,
        }
    }

    /// The challenge header values for a 401 (`WWW-Authenticate`) or a 407
    /// (`Proxy-Authenticate`), one per algorithm, SHA-256 first (RFC 8760 §2.4), each
    /// `qop="auth"`, with `stale=true` when `stale` (after a [`Verdict::Stale`]).
    ///
    /// All share one fresh nonce: issuing it stores nothing. `random` must be unpredictable.
    pub fn challenge(
        &mut self,
        realm: &str,
        stale: bool,
        now: Instant,
        random: u64,
    ) -> Vec<String> {
        self.challenge_for(realm, b"", stale, now, random)
    }

    /// [`Self::challenge`] with a nonce bound to `client` (the source address): only a request
    /// from that client can use it ([`Self::verify_for`]). A wrong response with a bound nonce
    /// then proves the source received the challenge, so a spoofed UDP source cannot make a
    /// victim's address look like a password guesser.
    pub fn challenge_for(
        &mut self,
        realm: &str,
        client: &[u8],
        stale: bool,
        now: Instant,
        random: u64,
    ) -> Vec<String> {
        let epoch = *self.epoch.get_or_insert(Epoch {
            at: now,
            generation: random,
        });
        let issued_ms = millis(now.saturating_duration_since(epoch.at));
        let mut raw = [0u8; NONCE_LEN];
        raw[..8].copy_from_slice(&epoch.generation.to_be_bytes());
        raw[8..16].copy_from_slice(&issued_ms.to_be_bytes());
        raw[16..24].copy_from_slice(&random.to_be_bytes());
        let mac = self.nonce_mac(&raw[..24], realm, client);
        raw[24..].copy_from_slice(&mac);
        let nonce = to_hex(&raw);
        let realm = quote(realm);
        let stale = if stale { ", stale=true" } else { "" };
        [Algorithm::Sha256, Algorithm::Md5]
            .into_iter()
            .filter(|a| self.config.algorithms.contains(a))
            .map(|a| {
                format!(
                    "Digest realm={realm}, nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}",
                    a.name()
                )
            })
            .collect()
    }

    /// The Digest credentials of `m` for `realm`: from `Proxy-Authorization` when `proxy`
    /// (407 challenges), else `Authorization`. With several, the one for `realm`; else the
    /// first, which then fails with [`FailReason::WrongRealm`]. `None` when there are none:
    /// challenge, it is not a failure. Parsing only; nothing is checked against a nonce.
    pub fn credentials(m: &Message, proxy: bool, realm: &str) -> Option<Credentials> {
        let name: &[u8] = if proxy {
            b"Proxy-Authorization"
        } else {
            b"Authorization"
        };
        let mut first = None;
        for value in m.header_values_by_name(name) {
            let Some(c) = Credentials::parse(value, realm) else {
                continue;
            };
            if c.realm == realm {
                return Some(c);
            }
            first.get_or_insert(c);
        }
        first
    }

    /// Checks `c` for a request of `method`, given the HA1 stored for
    /// `(c.user, c.realm, c.algorithm)` or `None` when there is none.
    ///
    /// The response is checked before the nonce's age and count, so that only a right
    /// response can be told `Stale` (RFC 7616 §3.3) and a wrong one is always a failure. An
    /// `nc` is remembered only once its response is right, so nobody can burn a nonce that
    /// they merely saw in a challenge.
    pub fn verify(
        &mut self,
        c: &Credentials,
        method: &[u8],
        ha1: Option<&str>,
        now: Instant,
    ) -> Verdict {
        self.verify_for(c, b"", method, ha1, now)
    }

    /// [`Self::verify`] for a nonce issued by [`Self::challenge_for`] to `client`; a nonce of
    /// another client is [`FailReason::BadNonce`].
    pub fn verify_for(
        &mut self,
        c: &Credentials,
        client: &[u8],
        method: &[u8],
        ha1: Option<&str>,
        now: Instant,
    ) -> Verdict {
        if let Some(p) = c.problem {
            return Verdict::Fail(p);
        }
        if !self.config.algorithms.contains(&c.algorithm) {
            return Verdict::Fail(FailReason::BadAlgorithm);
        }
        let Some(nonce) = self.open_nonce(&c.nonce, &c.realm, client) else {
            return Verdict::Fail(FailReason::BadNonce);
        };

        // Same work for a known and an unknown user: the stand-in HA1 is computed either way
        // and the comparison runs whatever the HA1 was.
        let dummy = std::hint::black_box(self.dummy_ha1(c));
        let known = ha1.is_some();
        let ha1 = ha1.map_or(dummy, str::to_ascii_lowercase);
        let expected = response(c.algorithm, &ha1, c, method);
        let matches = bool::from(
            expected
                .as_bytes()
                .ct_eq(c.response.to_ascii_lowercase().as_bytes()),
        );
        if !known {
            return Verdict::Fail(FailReason::UnknownUser);
        }
        if !matches {
            return Verdict::Fail(FailReason::WrongResponse);
        }

        let Some(epoch) = self.epoch.filter(|e| e.generation == nonce.generation) else {
            return Verdict::Stale;
        };
        let age = match epoch.at.checked_add(Duration::from_millis(nonce.issued_ms)) {
            Some(issued) => now.saturating_duration_since(issued),
            None => return Verdict::Stale,
        };
        if age > self.config.nonce_ttl {
            return Verdict::Stale;
        }
        let key = (nonce.issued_ms, nonce.mac);
        match self.counts.get_mut(&key) {
            Some(last) if c.nc_value <= *last => Verdict::Fail(FailReason::ReplayedNonce),
            Some(last) => {
                *last = c.nc_value;
                Verdict::Ok
            }
            None if self.forgotten_upto.is_some_and(|t| nonce.issued_ms <= t) => Verdict::Stale,
            None => {
                self.remember(
                    key,
                    c.nc_value,
                    millis(now.saturating_duration_since(epoch.at)),
                );
                Verdict::Ok
            }
        }
    }

    /// How many nonces have their count remembered (bounded by `max_nonces`).
    pub fn remembered_nonces(&self) -> usize {
        self.counts.len()
    }

    fn remember(&mut self, key: (u64, [u8; 16]), nc: u32, now_ms: u64) {
        // Expired nonces answer stale on their age alone: dropping them loses nothing.
        let ttl_ms = millis(self.config.nonce_ttl);
        while let Some(entry) = self.counts.first_entry() {
            if entry.key().0.saturating_add(ttl_ms) >= now_ms {
                break;
            }
            entry.remove();
        }
        while self.counts.len() >= self.config.max_nonces.max(1) {
            let Some(((issued, _), _)) = self.counts.pop_first() else {
                break;
            };
            self.forgotten_upto = Some(self.forgotten_upto.map_or(issued, |t| t.max(issued)));
        }
        // A nonce issued at or before the newest forgotten one is refused above; this one is
        // newer, so it stays until something newer needs the room.
        self.counts.insert(key, nc);
    }

    /// Decodes a nonce and checks its MAC (in constant time); `None` unless it is ours.
    fn open_nonce(&self, text: &str, realm: &str, client: &[u8]) -> Option<Nonce> {
        let raw = from_hex::<NONCE_LEN>(text)?;
        let want = self.nonce_mac(&raw[..24], realm, client);
        if !bool::from(want.ct_eq(&raw[24..])) {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Some(Nonce {
            generation: word(0),
            issued_ms: word(8),
            mac: want,
        })
    }

    fn nonce_mac(&self, head: &[u8], realm: &str, client: &[u8]) -> [u8; 16] {
        let mut m = self.mac.clone();
        m.update(b"stg-auth nonce v1\0");
        m.update(head);
        m.update(realm.as_bytes());
        if !client.is_empty() {
            // Length-prefixed so that realm and client cannot trade bytes.
            m.update(b"\0client\0");
            m.update(&(client.len() as u64).to_be_bytes());
            m.update(client);
        }
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// An HA1 for a user with none: as long as a real one, derived from the key so that it is
    /// stable per user and unguessable.
    fn dummy_ha1(&self, c: &Credentials) -> String {
        let mut m = self.mac.clone();
        m.update(b"stg-auth dummy ha1 v1\0");
        m.update(c.algorithm.name().as_bytes());
        m.update(b"\0");
        m.update(c.realm.as_bytes());
        m.update(b"\0");
        m.update(c.user.as_bytes());
        let full = m.finalize().into_bytes();
        to_hex(&full[..c.algorithm.len()])
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Digest")
            .field("config", &self.config)
            .field("remembered_nonces", &self.counts.len())
            .finish_non_exhaustive()
    }
}

/// The request-digest with `qop=auth` (RFC 7616 §3.4.1):
/// `H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" H(method ":" digest-uri))`.
pub(crate) fn response(alg: Algorithm, ha1: &str, c: &Credentials, method: &[u8]) -> String {
    let ha2 = alg.hex(&[method, c.uri.as_bytes()]);
    alg.hex(&[
        ha1.as_bytes(),
        c.nonce.as_bytes(),
        c.nc.as_bytes(),
        c.cnonce.as_bytes(),
        c.qop.as_bytes(),
        ha2.as_bytes(),
    ])
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A quoted-string (RFC 3261 §25.1), escaping `"` and `\`; CR and LF, which no realm has,
/// are dropped so that a bad config cannot break the header.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(b[2 * i])? << 4 | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
