//! Authentication for stg, sans-IO: SIP digest (RFC 3261 §22, RFC 7616 with RFC 8760's
//! SHA-256) for the local registrar and for requests a domain wants authenticated, the
//! portal's argon2id passwords ([`password`]) and signed session tokens ([`token`]), and the
//! [`AuthFailure`] event that every failed attempt becomes.
//!
//! # How it fits
//! The proxy path owns one [`Digest`]. A request without credentials gets a 401/407 whose
//! `WWW-Authenticate`/`Proxy-Authenticate` values come from [`Digest::challenge`]. A request
//! with credentials is checked in two steps so that the SQL fetch stays outside this crate:
//! [`Digest::credentials`] parses them, the caller fetches the stored HA1 for
//! `(user, realm, algorithm)`, and [`Digest::verify`] decides. A [`Verdict::Fail`] becomes an
//! [`AuthFailure`], whose `Display` is the operators' `TRUCO_KO` line and which the guard
//! counts, so the log and the ban counter cannot drift.
//!
//! # Invariants
//! - No clock, no RNG, no I/O: `now` and the random part of each nonce, salt and token id
//!   are arguments. Argon2 hashing is CPU work that blocks for tens of milliseconds: the
//!   caller runs it off its async runtime, a bounded number at a time.
//! - Issuing a nonce costs no memory (it carries its time and a MAC); only nonces that were
//!   used successfully are remembered, in a table bounded by [`DigestConfig::max_nonces`].
//!   A nonce that was forgotten is answered [`Verdict::Stale`], never accepted twice.
//! - A known and an unknown user go through the same computation (an HA1 derived from the
//!   key stands in for the missing one, responses compare in constant time).
//! - No input makes this crate panic.
#![forbid(unsafe_code)]

mod credentials;
mod digest;
mod failure;
pub mod password;
pub mod token;

use std::fmt::Write as _;

use stg_sip_msg::Message;

pub use credentials::Credentials;
pub use digest::{Digest, DigestConfig, Verdict};
pub use failure::{AuthFailure, FailReason};
pub use password::{hash_password, PasswordCheck, PasswordError, PasswordParams, Passwords};
pub use token::{Session, TokenError, TokenKey};

/// A digest algorithm (RFC 7616 §3.3, RFC 8760 §2). The `-sess` variants are not offered:
/// SIP clients rarely implement them and they add nothing against an offline guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`, the RFC 2617 default (an absent `algorithm` parameter means MD5).
    Md5,
    /// `SHA-256` (RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The name as written in the `algorithm` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    /// Reads an `algorithm` parameter value (case-insensitive, RFC 7616 §3.3).
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Self::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Self::Sha256)
        } else {
            None
        }
    }

    /// Length in bytes of this algorithm's hash.
    fn len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha256 => 32,
        }
    }

    /// `H(p1 ":" p2 ":" ...)` as lower-case hex (RFC 7616 §3.4).
    fn hex(self, parts: &[&[u8]]) -> String {
        fn run<D: sha2::Digest>(parts: &[&[u8]]) -> String {
            let mut h = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    h.update(b":");
                }
                h.update(p);
            }
            to_hex(&h.finalize())
        }
        match self {
            Self::Md5 => run::<md5::Md5>(parts),
            Self::Sha256 => run::<sha2::Sha256>(parts),
        }
    }
}

/// HA1 = `H(user ":" realm ":" password)` as lower-case hex (RFC 7616 §3.4.2): what the user
/// table stores per realm and algorithm (`stg user add`, tests).
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    alg.hex(&[user.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The `username` of the first Digest credentials in `m` (`Authorization`, then
/// `Proxy-Authorization`), whatever their realm: for through mode, where the PBX judges the
/// credentials and a 401/407/403 from it to a request that carried some becomes
/// `AuthFailure::sip(ip, FailReason::PbxRejected, &user)`. `None` when the request carried
/// none (the PBX's first challenge is not a failure).
pub fn credentials_user(m: &Message) -> Option<String> {
    m.header_values_by_name(b"Authorization")
        .chain(m.header_values_by_name(b"Proxy-Authorization"))
        .filter_map(|v| Credentials::parse(v, ""))
        .map(|c| c.user)
        .next()
}

/// Parses `data` as an `Authorization` value and formats the failure line a caller would log
/// for it. For the fuzz target: accepts any bytes and must never panic.
#[doc(hidden)]
pub fn fuzz_credentials(data: &[u8]) {
    if let Some(c) = Credentials::parse(data, "fuzz.example") {
        let line = AuthFailure::sip(
            std::net::Ipv4Addr::LOCALHOST.into(),
            c.problem().unwrap_or(FailReason::WrongResponse),
            &c.user,
        )
        .to_string();
        assert!(
            !line.contains(['\r', '\n']),
            "a failure line must stay one line"
        );
        assert_eq!(line.split(' ').count(), 5, "a failure line has five fields");
    }
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for a in [Algorithm::Md5, Algorithm::Sha256] {
            assert_eq!(Algorithm::parse(a.name()), Some(a));
            assert_eq!(Algorithm::parse(&a.name().to_lowercase()), Some(a));
        }
        assert_eq!(Algorithm::parse("MD5-sess"), None);
        assert_eq!(Algorithm::parse("SHA-512-256"), None);
        assert_eq!(Algorithm::parse(""), None);
    }

    #[test]
    fn ha1_known_values() {
        // RFC 2617 §3.5's user; the MD5 of this string is widely published.
        assert_eq!(
            ha1(
                Algorithm::Md5,
                "Mufasa",
                "testrealm@host.com",
                "Circle Of Life"
            ),
            "939e7578ed9e3c518a452acee763bce9"
        );
        assert_eq!(ha1(Algorithm::Sha256, "a", "b", "c").len(), 64);
        assert_eq!(
            Algorithm::Md5.hex(&[b""]),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            Algorithm::Sha256.hex(&[b""]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
