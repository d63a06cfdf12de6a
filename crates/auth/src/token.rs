//! Portal session tokens: signed, expiring, stateless.
//!
//! A token is `v1.<payload>.<mac>`, both parts base64url without padding:
//! - payload: `issued (8, big-endian unix seconds) | expires (8) | id (8, random) | user`;
//! - mac: HMAC-SHA-256 over the ASCII text `v1.<payload>`, under a key derived from the
//!   node's secret for this use only ([`TokenKey::new`]), so that no other MAC made with the
//!   same secret (digest nonces, a later token version) can pass for a token.
//!
//! Checking a token needs no state: any node holding the same secret accepts it (copy the
//! key file to every node of a cluster). The MAC is checked first and in constant time;
//! nothing in a token is trusted before that. Wall-clock time (unix seconds) is an argument:
//! tokens cross nodes, so a monotonic instant would mean nothing on the next one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The MAC label that separates session tokens from every other use of the secret.
const LABEL: &[u8] = b"stg portal session token v1";

/// Prefix of this format.
const VERSION: &str = "v1.";

/// Longest user name a token carries, in bytes (the user table's column is 255).
pub const MAX_TOKEN_USER: usize = 255;

/// Longest token text accepted: anything longer is malformed without decoding it.
pub const MAX_TOKEN_LEN: usize = 512;

/// How far in the future a token's issue time may be (clocks of the cluster's nodes differ
/// a little); beyond it the token is refused.
pub const CLOCK_SKEW: u64 = 60;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET: usize = 32;

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The user who logged in.
    pub user: String,
    /// Unix seconds when it was issued.
    pub issued: u64,
    /// Unix seconds from which it is no longer accepted.
    pub expires: u64,
    /// A random id: two tokens issued to one user in the same second still differ.
    pub id: [u8; 8],
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Right MAC, but its time has passed: one of ours, just old (not an attack).
    #[error("token expired")]
    Expired,
    /// Not a token of ours: wrong MAC (forged, tampered with, or another key).
    #[error("token not signed by this key")]
    BadMac,
    /// Not even shaped like a token.
    #[error("malformed token")]
    Malformed,
    /// Right MAC, issued further in the future than [`CLOCK_SKEW`] allows (a node's clock
    /// is wrong).
    #[error("token issued in the future")]
    NotYetValid,
}

impl TokenError {
    /// Whether the token is one we never issued: a forgery or garbage, worth a guard event.
    /// An expired or early token of ours is not (a browser or app that kept it too long).
    pub fn is_forged(self) -> bool {
        matches!(self, Self::BadMac | Self::Malformed)
    }
}

/// Issues and checks tokens under one secret.
#[derive(Clone)]
pub struct TokenKey {
    mac: Hmac<Sha256>,
}

impl TokenKey {
    /// Derives the token key from the node's `secret` (at least [`MIN_SECRET`] random bytes):
    /// `HMAC-SHA-256(secret, "stg portal session token v1")`.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET {
            return Err(format!(
                "the token secret has {} bytes, at least {MIN_SECRET} are needed",
                secret.len()
            ));
        }
        // HMAC takes keys of any length (RFC 2104 §2): these cannot fail.
        let mut derive = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        derive.update(LABEL);
        let key = derive.finalize().into_bytes();
        Ok(Self {
            mac: Hmac::new_from_slice(&key).expect("any key length"),
        })
    }

    /// A token for `user`, valid from `now` (unix seconds) for `lifetime` seconds; `id` is
    /// random (from the OS). `None` if the user name is empty or longer than
    /// [`MAX_TOKEN_USER`].
    pub fn issue(&self, user: &str, now: u64, lifetime: u64, id: [u8; 8]) -> Option<String> {
        if user.is_empty() || user.len() > MAX_TOKEN_USER {
            return None;
        }
        let mut payload = Vec::with_capacity(24 + user.len());
        payload.extend_from_slice(&now.to_be_bytes());
        payload.extend_from_slice(&now.saturating_add(lifetime).to_be_bytes());
        payload.extend_from_slice(&id);
        payload.extend_from_slice(user.as_bytes());
        let mut token = format!("{VERSION}{}", B64.encode(&payload));
        let mac = self.mac_of(&token).finalize().into_bytes();
        token.push('.');
        token.push_str(&B64.encode(mac));
        Some(token)
    }

    /// Checks `token` at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Session, TokenError> {
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(VERSION) {
            return Err(TokenError::Malformed);
        }
        let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mac = B64.decode(mac).map_err(|_| TokenError::Malformed)?;
        // `verify_slice` compares in constant time (and refuses a wrong length).
        self.mac_of(signed)
            .verify_slice(&mac)
            .map_err(|_| TokenError::BadMac)?;
        // Ours from here on: anything odd below is our own bug, still not a panic.
        let payload = B64
            .decode(&signed[VERSION.len()..])
            .map_err(|_| TokenError::Malformed)?;
        if payload.len() < 25 {
            return Err(TokenError::Malformed);
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[i..i + 8]);
            b
        };
        let issued = u64::from_be_bytes(word(0));
        let expires = u64::from_be_bytes(word(8));
        let id = word(16);
        let user = std::str::from_utf8(&payload[24..])
            .map_err(|_| TokenError::Malformed)?
            .to_owned();
        if issued > now.saturating_add(CLOCK_SKEW) {
            return Err(TokenError::NotYetValid);
        }
        if now >= expires {
            return Err(TokenError::Expired);
        }
        Ok(Session {
            user,
            issued,
            expires,
            id,
        })
    }

    fn mac_of(&self, signed: &str) -> Hmac<Sha256> {
        let mut m = self.mac.clone();
        m.update(signed.as_bytes());
        m
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("TokenKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn key() -> TokenKey {
        TokenKey::new(&[42; 32]).unwrap()
    }

    #[test]
    fn a_token_carries_user_and_times_until_it_expires() {
        let k = key();
        let t = k.issue("alice", T0, 3600, [1; 8]).unwrap();
        assert!(t.starts_with("v1.") && t.len() < MAX_TOKEN_LEN, "{t}");
        let s = k.verify(&t, T0).unwrap();
        assert_eq!(
            s,
            Session {
                user: "alice".into(),
                issued: T0,
                expires: T0 + 3600,
                id: [1; 8]
            }
        );
        assert_eq!(k.verify(&t, T0 + 3599).unwrap().user, "alice");
        assert_eq!(k.verify(&t, T0 + 3600), Err(TokenError::Expired));
        assert_eq!(k.verify(&t, u64::MAX), Err(TokenError::Expired));
        // A little clock skew between nodes is tolerated, more is not.
        assert!(k.verify(&t, T0 - CLOCK_SKEW).is_ok());
        assert_eq!(
            k.verify(&t, T0 - CLOCK_SKEW - 1),
            Err(TokenError::NotYetValid)
        );
        // Unicode user names round-trip; ids keep two tokens apart.
        let t2 = k.issue("José Ñ", T0, 60, [2; 8]).unwrap();
        assert_eq!(k.verify(&t2, T0).unwrap().user, "José Ñ");
        assert_ne!(t, k.issue("alice", T0, 3600, [2; 8]).unwrap());
    }

    #[test]
    fn tampering_is_detected() {
        let k = key();
        let t = k.issue("alice", T0, 3600, [1; 8]).unwrap();
        // Any single character changed anywhere.
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let Ok(forged) = String::from_utf8(b) else {
                continue;
            };
            if forged == t {
                continue;
            }
            let e = k.verify(&forged, T0).unwrap_err();
            assert!(e.is_forged(), "{i}: {e:?}");
        }
        // A longer lifetime or another user, re-encoded without the key.
        let (_, mac) = t.rsplit_once('.').unwrap();
        let mut payload = Vec::new();
        payload.extend_from_slice(&T0.to_be_bytes());
        payload.extend_from_slice(&(T0 + 10 * 3600).to_be_bytes());
        payload.extend_from_slice(&[1; 8]);
        payload.extend_from_slice(b"admin");
        let forged = format!("v1.{}.{mac}", B64.encode(&payload));
        assert_eq!(k.verify(&forged, T0), Err(TokenError::BadMac));
        // Truncated MAC, no MAC.
        assert_eq!(k.verify(&t[..t.len() - 3], T0), Err(TokenError::BadMac));
        assert!(k.verify(&t[..t.len() - 4], T0).unwrap_err().is_forged());
        let signed = t.rsplit_once('.').unwrap().0;
        assert!(k.verify(signed, T0).unwrap_err().is_forged());
    }

    #[test]
    fn another_key_does_not_verify() {
        let t = key().issue("alice", T0, 3600, [1; 8]).unwrap();
        let other = TokenKey::new(&[43; 32]).unwrap();
        assert_eq!(other.verify(&t, T0), Err(TokenError::BadMac));
    }

    #[test]
    fn the_key_is_derived_for_this_use_only() {
        // A MAC made with the raw secret over the same text (what any other HMAC use of the
        // secret would produce) is not a token MAC.
        let secret = [42u8; 32];
        let t = key().issue("alice", T0, 3600, [1; 8]).unwrap();
        let signed = t.rsplit_once('.').unwrap().0;
        let mut raw = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
        raw.update(signed.as_bytes());
        let forged = format!("{signed}.{}", B64.encode(raw.finalize().into_bytes()));
        assert_eq!(key().verify(&forged, T0), Err(TokenError::BadMac));
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let k = key();
        let long = "v1.".to_owned() + &"A".repeat(MAX_TOKEN_LEN);
        for g in [
            "",
            ".",
            "v1.",
            "v1..",
            "v2.AAAA.AAAA",
            "v1.!!!.???",
            "v1.AAAA",
            "Bearer x",
            "v1.é.é",
            long.as_str(),
        ] {
            let e = k.verify(g, T0).unwrap_err();
            assert!(e.is_forged(), "{g:?}: {e:?}");
        }
    }

    #[test]
    fn bad_inputs_to_issue_and_new() {
        let k = key();
        assert_eq!(k.issue("", T0, 60, [0; 8]), None);
        assert_eq!(
            k.issue(&"u".repeat(MAX_TOKEN_USER + 1), T0, 60, [0; 8]),
            None
        );
        let t = k
            .issue(&"u".repeat(MAX_TOKEN_USER), T0, 60, [0; 8])
            .unwrap();
        assert!(t.len() <= MAX_TOKEN_LEN, "{}", t.len());
        assert!(k.verify(&t, T0).is_ok());
        assert!(TokenKey::new(&[0; 31]).is_err());
        // A lifetime that overflows saturates instead of wrapping into the past.
        let t = k.issue("a", u64::MAX - 1, 3600, [0; 8]).unwrap();
        assert_eq!(k.verify(&t, u64::MAX - 1).unwrap().expires, u64::MAX);
    }
}
