//! Failed authentications as values: the reason tokens and the [`AuthFailure`] event that is
//! both the operators' `TRUCO_KO` log line and the guard's input.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

/// Why credentials were refused. The first challenge (no credentials at all) is not a
/// failure and has no reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailReason {
    /// An `algorithm` we do not offer (unknown, a `-sess` variant, or disabled in config).
    BadAlgorithm,
    /// The nonce is not one of ours: wrong MAC (forged, or another key), or not decodable.
    BadNonce,
    /// `qop` absent or not `auth` (we require it: without it there is no nonce-count, so no
    /// replay protection), or `cnonce`/`nc` missing with it.
    BadQop,
    /// Unparsable credentials: syntax, duplicate or missing parameters, bad `nc`.
    Malformed,
    /// Through mode: the PBX answered 401/407/403 to a request that carried credentials.
    PbxRejected,
    /// A nonce-count not above the last one accepted for that nonce: a replay.
    ReplayedNonce,
    /// No HA1 stored for that user. The caller must answer exactly as for
    /// [`FailReason::WrongResponse`]; only the log tells them apart.
    UnknownUser,
    /// The credentials are for another realm than the one challenged.
    WrongRealm,
    /// Portal: the password does not match the stored argon2 hash.
    WrongPassword,
    /// The response does not match the stored HA1: a wrong password.
    WrongResponse,
    /// Valid credentials of one user for another user's identity (a REGISTER for someone
    /// else's AOR, a call From someone else): an authorization failure (RFC 3261 §10.3
    /// step 6), as worth a ban as a wrong password.
    WrongIdentity,
}

impl FailReason {
    /// Short static token for the log line and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadAlgorithm => "bad_algorithm",
            Self::WrongIdentity => "wrong_identity",
            Self::BadNonce => "bad_nonce",
            Self::BadQop => "bad_qop",
            Self::Malformed => "malformed",
            Self::PbxRejected => "pbx_rejected",
            Self::ReplayedNonce => "replayed_nonce",
            Self::UnknownUser => "unknown_user",
            Self::WrongPassword => "wrong_password",
            Self::WrongRealm => "wrong_realm",
            Self::WrongResponse => "wrong_response",
        }
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed authentication: the operators' log line (`Display`) and the guard's input.
///
/// `Display` writes exactly `TRUCO_KO <ip> <service> <reason> <user>` on one line. `user`
/// comes from the attacker, so it is sanitized when written: anything but printable ASCII
/// (spaces, control characters, line breaks, non-ASCII) becomes `?`, it is cut to
/// [`AuthFailure::MAX_USER`] characters, and an empty user is written `-`; whatever the input,
/// the line has five space-separated fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFailure {
    /// Source address of the request (after PROXY protocol, i.e. the real client).
    pub ip: IpAddr,
    /// Which service refused: `"sip"`, `"portal"` (login), `"token"` (a protected route).
    pub service: &'static str,
    /// A [`FailReason::as_str`] token (or another crate's own token).
    pub reason: &'static str,
    /// The user name as the client sent it, unsanitized (sanitized when displayed).
    pub user: String,
}

impl AuthFailure {
    /// Longest user name written in the log line, in characters.
    pub const MAX_USER: usize = 64;

    /// A SIP digest failure.
    pub fn sip(ip: IpAddr, reason: FailReason, user: &str) -> Self {
        Self {
            ip,
            service: "sip",
            reason: reason.as_str(),
            user: user.chars().take(Self::MAX_USER).collect(),
        }
    }

    /// A failed portal login: `TRUCO_KO <ip> portal <reason> <user>`, the reason being
    /// [`FailReason::WrongPassword`] or [`FailReason::UnknownUser`] (the answer is the same
    /// for both; only the log tells them apart).
    pub fn portal(ip: IpAddr, reason: FailReason, user: &str) -> Self {
        Self {
            service: "portal",
            ..Self::sip(ip, reason, user)
        }
    }

    /// A protected route reached with a token we never issued (forged, tampered with,
    /// garbage): `TRUCO_KO <ip> token invalido -`, the seed's wording.
    pub fn invalid_token(ip: IpAddr) -> Self {
        Self {
            ip,
            service: "token",
            reason: "invalido",
            user: String::new(),
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TRUCO_KO {} ", self.ip)?;
        // `service` and `reason` are ours, but a stray space there would shift the fields
        // fail2ban reads just as a hostile user name would.
        write_field(f, self.service)?;
        f.write_str(" ")?;
        write_field(f, self.reason)?;
        f.write_str(" ")?;
        write_field(f, &self.user)
    }
}

fn write_field(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    if s.is_empty() {
        return f.write_str("-");
    }
    for c in s.chars().take(AuthFailure::MAX_USER) {
        f.write_char(if c.is_ascii_graphic() { c } else { '?' })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn line_format() {
        let f = AuthFailure::sip(ip(), FailReason::WrongResponse, "alice");
        assert_eq!(f.to_string(), "TRUCO_KO 192.0.2.7 sip wrong_response alice");
        let f = AuthFailure::sip("2001:db8::1".parse().unwrap(), FailReason::UnknownUser, "");
        assert_eq!(f.to_string(), "TRUCO_KO 2001:db8::1 sip unknown_user -");
    }

    #[test]
    fn hostile_user_cannot_forge_a_line_or_a_field() {
        for user in [
            "a b\nTRUCO_KO 1.2.3.4",
            "a b\r\nTRUCO_KO 1.2.3.4 sip x y",
            "\tx\u{0}y\u{7f}",
            "é\u{2028}TRUCO_KO\u{85}1.2.3.4",
            " ",
            "\n",
        ] {
            let line = AuthFailure::sip(ip(), FailReason::WrongResponse, user).to_string();
            assert!(!line.contains(['\r', '\n', '\t', '\0']), "{line:?}");
            assert!(line.is_ascii(), "{line:?}");
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 5, "{line:?}");
            assert_eq!(
                &fields[..4],
                ["TRUCO_KO", "192.0.2.7", "sip", "wrong_response"]
            );
            assert_eq!(line.matches("TRUCO_KO ").count(), 1, "{line:?}");
        }
        let line = AuthFailure::sip(ip(), FailReason::Malformed, "a b\nTRUCO_KO 1.2.3.4");
        assert_eq!(
            line.to_string(),
            "TRUCO_KO 192.0.2.7 sip malformed a?b?TRUCO_KO?1.2.3.4"
        );
    }

    #[test]
    fn portal_lines() {
        let f = AuthFailure::portal(ip(), FailReason::WrongPassword, "bob");
        assert_eq!(
            f.to_string(),
            "TRUCO_KO 192.0.2.7 portal wrong_password bob"
        );
        let f = AuthFailure::invalid_token(ip());
        assert_eq!(f.to_string(), "TRUCO_KO 192.0.2.7 token invalido -");
    }

    #[test]
    fn user_is_capped() {
        let long = "x".repeat(1000);
        let f = AuthFailure::sip(ip(), FailReason::WrongResponse, &long);
        assert_eq!(f.user.len(), AuthFailure::MAX_USER);
        // A struct built by hand is capped when written too.
        let f = AuthFailure { user: long, ..f };
        let line = f.to_string();
        assert_eq!(
            line.rsplit(' ').next().unwrap().len(),
            AuthFailure::MAX_USER
        );
    }

    #[test]
    fn reason_tokens_are_single_fields() {
        use FailReason::*;
        for r in [
            BadAlgorithm,
            BadNonce,
            BadQop,
            Malformed,
            PbxRejected,
            ReplayedNonce,
            UnknownUser,
            WrongPassword,
            WrongRealm,
            WrongResponse,
            WrongIdentity,
        ] {
            let s = r.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
        }
    }
}
