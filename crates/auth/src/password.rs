//! Portal passwords: argon2id (RFC 9106) hashes in PHC string format
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), stored in the user table.
//!
//! Sans-IO like the rest of the crate: the salt is an argument (the caller draws it from the
//! OS), and hashing is plain CPU work that the caller must run off its async runtime (each
//! call takes tens of milliseconds and [`PasswordParams::m_kib`] of memory).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params, Version};

/// The argon2id cost of new hashes.
///
/// The default is OWASP's first argon2id recommendation, m = 19 MiB, t = 2, p = 1, chosen for
/// a 2-core edge node. One verification takes about 50 ms of one core (measured in release
/// on the 2-core build machine under load, `hash_time` below), so with the portal's in-flight
/// cap at 1 a node verifies some 20 logins per second and keeps a core for SIP, and a login
/// flood costs 19 MiB per hash in flight, not the machine. Against an offline guess (a stolen
/// database) every candidate costs the attacker the same 19 MiB and two passes, which defeats
/// GPU farms far better than the HA1s the SIP table must keep anyway. `p = 1`: more lanes
/// would only let one login take more cores at once, which the cap is there to prevent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory in KiB (`m`). Default 19456 (19 MiB).
    pub m_kib: u32,
    /// Passes (`t`). Default 2.
    pub t: u32,
    /// Lanes (`p`). Default 1.
    pub p: u32,
}

impl Default for PasswordParams {
    fn default() -> Self {
        Self {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

impl PasswordParams {
    /// Largest cost a stored hash may ask for (a corrupt or hostile row must not make one
    /// login allocate gigabytes): 256 MiB, 16 passes, 8 lanes.
    pub const MAX: Self = Self {
        m_kib: 256 * 1024,
        t: 16,
        p: 8,
    };

    /// Whether argon2 accepts these values and they are within [`PasswordParams::MAX`].
    pub fn check(&self) -> Result<(), PasswordError> {
        if self.m_kib > Self::MAX.m_kib || self.t > Self::MAX.t || self.p > Self::MAX.p {
            return Err(PasswordError::Params(format!(
                "m={}, t={}, p={} above the maximum m={}, t={}, p={}",
                self.m_kib,
                self.t,
                self.p,
                Self::MAX.m_kib,
                Self::MAX.t,
                Self::MAX.p
            )));
        }
        self.argon2().map(drop)
    }

    fn argon2(&self) -> Result<Argon2<'static>, PasswordError> {
        let params = Params::new(self.m_kib, self.t, self.p, None)
            .map_err(|e| PasswordError::Params(e.to_string()))?;
        Ok(Argon2::new(
            argon2::Algorithm::Argon2id,
            Version::V0x13,
            params,
        ))
    }
}

/// Longest password accepted, in bytes: a longer one is refused without hashing (argon2 would
/// take it, but nobody types 1 KiB and hashing megabytes is a cheap way to burn CPU).
pub const MAX_PASSWORD: usize = 1024;

/// Why a password could not be hashed or a stored hash could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// Cost parameters argon2 refuses, or above [`PasswordParams::MAX`].
    #[error("argon2 parameters: {0}")]
    Params(String),
    /// The stored hash is not an argon2id PHC string we can verify (a config or data problem,
    /// not the user's).
    #[error("stored password hash: {0}")]
    BadHash(String),
    /// Empty or longer than [`MAX_PASSWORD`].
    #[error("password must be 1 to {MAX_PASSWORD} bytes")]
    BadPassword,
}

/// Hashes `password` with argon2id, `params` and a 16-byte random `salt` (from the OS: the
/// caller's job) into a PHC string for the user table.
pub fn hash_password(
    password: &str,
    salt: &[u8; 16],
    params: PasswordParams,
) -> Result<String, PasswordError> {
    if password.is_empty() || password.len() > MAX_PASSWORD {
        return Err(PasswordError::BadPassword);
    }
    params.check()?;
    let salt = SaltString::encode_b64(salt).map_err(|e| PasswordError::Params(e.to_string()))?;
    params
        .argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Params(e.to_string()))
}

/// The outcome of [`Passwords::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The password matches.
    Ok,
    /// No hash for that user: the dummy hash was verified instead, at the same cost.
    UnknownUser,
    /// The password does not match (or is empty or too long).
    Wrong,
    /// The stored hash is unusable ([`PasswordError::BadHash`]); the user cannot log in
    /// until `stg user passwd` (the caller logs it as an error and answers as for a wrong
    /// password).
    BadHash(String),
}

/// Verifies passwords so that a missing user costs what a wrong password costs: it holds a
/// dummy hash, made once with the configured parameters, which stands in for the missing one.
#[derive(Clone, Debug)]
pub struct Passwords {
    params: PasswordParams,
    dummy: String,
}

impl Passwords {
    /// Makes the dummy hash (one full hash: call it off the async runtime too). `salt` and
    /// `secret` are random (from the OS).
    pub fn new(
        params: PasswordParams,
        salt: &[u8; 16],
        secret: &[u8; 16],
    ) -> Result<Self, PasswordError> {
        // A password nobody knows: the hex of a random secret, thrown away.
        let dummy = hash_password(&crate::to_hex(secret), salt, params)?;
        Ok(Self { params, dummy })
    }

    /// The cost of new hashes.
    pub fn params(&self) -> PasswordParams {
        self.params
    }

    /// Checks `password` against the stored PHC string, or against the dummy hash when the
    /// user has none (`stored` is `None`). Costs one argon2 hash either way; outputs compare
    /// in constant time.
    pub fn verify(&self, stored: Option<&str>, password: &str) -> PasswordCheck {
        let (phc, known) = match stored {
            Some(s) => (s, true),
            None => (self.dummy.as_str(), false),
        };
        let parsed = match parse(phc) {
            Ok(p) => p,
            Err(e) => {
                // Still spend the time: the answer must not come back faster.
                let _ = verify_parsed(&self.dummy_parsed(), password);
                return PasswordCheck::BadHash(e.to_string());
            }
        };
        let ok = !password.is_empty()
            && password.len() <= MAX_PASSWORD
            && verify_parsed(&parsed, password);
        match (known, ok) {
            (false, _) => PasswordCheck::UnknownUser,
            (true, true) => PasswordCheck::Ok,
            (true, false) => PasswordCheck::Wrong,
        }
    }

    fn dummy_parsed(&self) -> PasswordHash<'_> {
        // Made by `hash_password` in `new`: always a valid PHC string.
        PasswordHash::new(&self.dummy).expect("the dummy hash is ours")
    }
}

/// Parses a stored PHC string and checks that it is argon2id within [`PasswordParams::MAX`].
fn parse(phc: &str) -> Result<PasswordHash<'_>, PasswordError> {
    let bad = |m: String| PasswordError::BadHash(m);
    let h = PasswordHash::new(phc).map_err(|e| bad(e.to_string()))?;
    if h.algorithm.as_str() != "argon2id" {
        return Err(bad(format!("algorithm {}, not argon2id", h.algorithm)));
    }
    let p = Params::try_from(&h).map_err(|e| bad(e.to_string()))?;
    let p = PasswordParams {
        m_kib: p.m_cost(),
        t: p.t_cost(),
        p: p.p_cost(),
    };
    p.check().map_err(|e| bad(e.to_string()))?;
    Ok(h)
}

fn verify_parsed(h: &PasswordHash<'_>, password: &str) -> bool {
    // `Argon2::default()` takes algorithm, version and cost from the hash itself, and compares
    // the outputs in constant time.
    Argon2::default()
        .verify_password(password.as_bytes(), h)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so that debug-build tests stay fast; the default cost is exercised
    /// once below.
    const CHEAP: PasswordParams = PasswordParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("s3cret pässword", &[7; 16], CHEAP).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let pw = Passwords::new(CHEAP, &[1; 16], &[2; 16]).unwrap();
        assert_eq!(pw.verify(Some(&phc), "s3cret pässword"), PasswordCheck::Ok);
        assert_eq!(
            pw.verify(Some(&phc), "s3cret password"),
            PasswordCheck::Wrong
        );
        assert_eq!(pw.verify(Some(&phc), ""), PasswordCheck::Wrong);
        assert_eq!(
            pw.verify(Some(&phc), &"x".repeat(MAX_PASSWORD + 1)),
            PasswordCheck::Wrong
        );
        // Same password, other salt: another hash, both verify.
        let phc2 = hash_password("s3cret pässword", &[8; 16], CHEAP).unwrap();
        assert_ne!(phc, phc2);
        assert_eq!(pw.verify(Some(&phc2), "s3cret pässword"), PasswordCheck::Ok);
    }

    #[test]
    fn the_stored_cost_is_used_not_the_configured_one() {
        let old = hash_password("pw", &[3; 16], CHEAP).unwrap();
        let pw = Passwords::new(
            PasswordParams {
                m_kib: 128,
                t: 2,
                p: 1,
            },
            &[1; 16],
            &[2; 16],
        )
        .unwrap();
        assert_eq!(pw.verify(Some(&old), "pw"), PasswordCheck::Ok);
    }

    #[test]
    fn missing_user_goes_through_the_dummy_hash() {
        let pw = Passwords::new(CHEAP, &[1; 16], &[2; 16]).unwrap();
        assert_eq!(pw.verify(None, "anything"), PasswordCheck::UnknownUser);
        // Not even the dummy's own password logs a missing user in.
        assert_eq!(
            pw.verify(None, &crate::to_hex(&[2; 16])),
            PasswordCheck::UnknownUser
        );
        assert!(pw.dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
    }

    #[test]
    fn unusable_hashes_are_reported_never_accepted() {
        let pw = Passwords::new(CHEAP, &[1; 16], &[2; 16]).unwrap();
        let argon2i = "$argon2i$v=19$m=64,t=1,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        for bad in [
            "",
            "plain",
            "0123456789abcdef0123456789abcdef",
            argon2i,
            huge,
        ] {
            assert!(
                matches!(pw.verify(Some(bad), "pw"), PasswordCheck::BadHash(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_parameters_and_passwords_are_errors() {
        let zero = PasswordParams { t: 0, ..CHEAP };
        assert!(matches!(
            hash_password("pw", &[0; 16], zero),
            Err(PasswordError::Params(_))
        ));
        let big = PasswordParams {
            m_kib: PasswordParams::MAX.m_kib + 1,
            ..CHEAP
        };
        assert!(big.check().is_err());
        assert_eq!(
            hash_password("", &[0; 16], CHEAP),
            Err(PasswordError::BadPassword)
        );
    }

    /// The time of one hash at the default cost, in release:
    /// `cargo test --release -p stg-auth -- --ignored --nocapture hash_time`. A figure for
    /// the notes, not an assertion.
    #[test]
    #[ignore = "a measurement: run in release"]
    #[allow(clippy::disallowed_methods)] // a wall-clock measurement, not core logic
    fn hash_time() {
        let pw = Passwords::new(PasswordParams::default(), &[1; 16], &[2; 16]).unwrap();
        let phc = hash_password("pw", &[3; 16], PasswordParams::default()).unwrap();
        let n = 50;
        let started = std::time::Instant::now();
        for _ in 0..n {
            assert_eq!(pw.verify(Some(&phc), "pw"), PasswordCheck::Ok);
        }
        let per = started.elapsed() / n;
        println!("hash_time: argon2id m=19456 KiB t=2 p=1: {per:?} per verification (one core)");
    }

    #[test]
    fn default_cost_is_owasp_argon2id() {
        assert_eq!(
            PasswordParams::default(),
            PasswordParams {
                m_kib: 19456,
                t: 2,
                p: 1
            }
        );
        let phc = hash_password("pw", &[9; 16], PasswordParams::default()).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    }
}
