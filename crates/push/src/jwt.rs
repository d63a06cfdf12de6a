//! The two JSON Web Tokens push needs (RFC 7519, compact JWS of RFC 7515) and when to renew
//! them: APNs provider tokens (ES256 from the team's `.p8` key) and the FCM service account's
//! JWT-bearer assertion (RS256, RFC 7523), exchanged for an OAuth2 access token.
//!
//! Signing uses aws-lc-rs, already in the build through rustls: no second crypto library.
//! Time is always an argument (unix seconds), so the renewal rules are plain tests.

use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

/// The OAuth2 scope FCM HTTP v1 needs.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The grant type of RFC 7523 §2.1.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Lifetime asked for the FCM assertion; Google accepts at most one hour.
pub const ASSERTION_LIFETIME: u64 = 3600;

/// A key that cannot sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("not a PEM PKCS#8 private key: {0}")]
    Pem(String),
    #[error("not a P-256 EC key (an APNs .p8 key is one)")]
    NotP256,
    #[error("not an RSA key of 2048 to 8192 bits")]
    NotRsa,
    #[error("signing failed")]
    Sign,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The signing input of a compact JWS: `b64(header).b64(claims)`.
fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn pkcs8_der(pem: &[u8]) -> Result<Vec<u8>, KeyError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map(|k| k.secret_pkcs8_der().to_vec())
        .map_err(|e| KeyError::Pem(e.to_string()))
}

/// An APNs token-auth key: the `.p8` file Apple hands out (PKCS#8, P-256), its key id and
/// the team id.
pub struct ApnsKey {
    key: EcdsaKeyPair,
    key_id: String,
    team_id: String,
}

impl std::fmt::Debug for ApnsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsKey")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

impl ApnsKey {
    /// From the `.p8` PEM text. aws-lc-rs also takes PKCS#8 keys without the optional public
    /// key, as some exports are.
    pub fn from_pem(pem: &[u8], key_id: &str, team_id: &str) -> Result<Self, KeyError> {
        let der = pkcs8_der(pem)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| KeyError::NotP256)?;
        Ok(Self {
            key,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
        })
    }

    /// A provider token issued at `iat` (unix seconds): header `{"alg":"ES256","kid":..}`,
    /// claims `{"iss":team,"iat":..}`, signature R‖S (the JOSE form, not DER).
    pub fn token(&self, iat: u64) -> Result<String, KeyError> {
        let header = json!({ "alg": "ES256", "kid": self.key_id });
        let claims = json!({ "iss": self.team_id, "iat": iat });
        let input = signing_input(&header, &claims);
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| KeyError::Sign)?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }
}

/// The renewal rules of APNs provider tokens: Apple refuses a token older than one hour
/// (`ExpiredProviderToken`) and one renewed more often than every 20 minutes
/// (`TooManyProviderTokenUpdates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Renew a token this old before using it. Default 50 minutes.
    pub renew_after: Duration,
    /// Never renew a token younger than this, even when Apple says it expired (a clock
    /// ahead of Apple's would otherwise renew on every push). Default 20 minutes.
    pub min_interval: Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            renew_after: Duration::from_secs(50 * 60),
            min_interval: Duration::from_secs(20 * 60),
        }
    }
}

impl TokenPolicy {
    /// Whether the token issued at `issued_at` must be replaced before a push at `now` (unix
    /// seconds). No token yet: due. A clock that went back counts the token as fresh.
    pub fn token_due(&self, now: u64, issued_at: Option<u64>) -> bool {
        match issued_at {
            None => true,
            Some(iat) => now.saturating_sub(iat) >= self.renew_after.as_secs(),
        }
    }

    /// Whether Apple's "expired" may be answered with a new token now: only once the token
    /// is at least [`min_interval`](Self::min_interval) old.
    pub fn may_renew(&self, now: u64, issued_at: Option<u64>) -> bool {
        match issued_at {
            None => true,
            Some(iat) => now.saturating_sub(iat) >= self.min_interval.as_secs(),
        }
    }
}

/// `token_due` with the default policy: the token is 50 minutes old or more, or missing.
pub fn token_due(now: u64, issued_at: Option<u64>) -> bool {
    TokenPolicy::default().token_due(now, issued_at)
}

/// A Google service account's identity and key, from its JSON file.
pub struct ServiceAccount {
    pub client_email: String,
    pub token_uri: String,
    pub project_id: String,
    key: RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

/// Why a service-account file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("missing or empty {0:?}")]
    Missing(&'static str),
    #[error("private_key: {0}")]
    Key(KeyError),
}

impl ServiceAccount {
    /// From the JSON Google hands out (`type: service_account`).
    pub fn from_json(text: &[u8]) -> Result<Self, AccountError> {
        let v: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| AccountError::Json(e.to_string()))?;
        let field = |name: &'static str| {
            v.get(name)
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or(AccountError::Missing(name))
        };
        let pem = field("private_key")?;
        let der = pkcs8_der(pem.as_bytes()).map_err(AccountError::Key)?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|_| AccountError::Key(KeyError::NotRsa))?;
        Ok(Self {
            client_email: field("client_email")?,
            token_uri: field("token_uri")?,
            project_id: field("project_id")?,
            key,
        })
    }

    /// The claims of the assertion issued at `iat`.
    pub fn claims(&self, iat: u64) -> serde_json::Value {
        json!({
            "iss": self.client_email,
            "scope": FCM_SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
        })
    }

    /// The RS256 assertion issued at `iat` (RFC 7523 §2.1).
    pub fn assertion(&self, iat: u64) -> Result<String, KeyError> {
        let header = json!({ "alg": "RS256", "typ": "JWT" });
        let input = signing_input(&header, &self.claims(iat));
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| KeyError::Sign)?;
        Ok(format!("{input}.{}", b64(&sig)))
    }

    /// The form body POSTed to `token_uri`.
    pub fn token_request_body(&self, iat: u64) -> Result<String, KeyError> {
        // The assertion is base64url and dots: nothing in it needs percent-encoding.
        Ok(format!(
            "grant_type={}&assertion={}",
            form_encode(JWT_BEARER_GRANT),
            self.assertion(iat)?
        ))
    }
}

/// `application/x-www-form-urlencoded` for the few characters a grant type holds.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An OAuth2 access token and when it stops being used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: String,
    /// Unix second after which it is not used: 60 s before `expires_in` runs out, so a push
    /// in flight never carries a token that dies on the way.
    pub use_until: u64,
}

/// Margin kept before an access token's expiry.
pub const ACCESS_TOKEN_MARGIN: u64 = 60;

impl AccessToken {
    /// From the token endpoint's JSON answer (RFC 6749 §5.1) received at `now`.
    pub fn from_response(body: &[u8], now: u64) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let token = v.get("access_token")?.as_str()?.to_owned();
        if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let expires_in = v
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(3600);
        Some(Self {
            token,
            use_until: now + expires_in.saturating_sub(ACCESS_TOKEN_MARGIN),
        })
    }

    /// Whether a push at `now` must fetch a new token first.
    pub fn is_due(&self, now: u64) -> bool {
        now >= self.use_until
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{
        KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
    };

    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        use base64::engine::general_purpose::STANDARD;
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn apns_token_is_a_verifiable_es256_jwt() {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let key =
            ApnsKey::from_pem(pem("PRIVATE KEY", doc.as_ref()).as_bytes(), "KID1", "TEAM").unwrap();
        let jwt = key.token(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(decode(parts[0]), json!({"alg": "ES256", "kid": "KID1"}));
        assert_eq!(
            decode(parts[1]),
            json!({"iss": "TEAM", "iat": 1_700_000_000u64})
        );
        let public = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "JOSE R||S, not DER");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn keys_of_the_wrong_kind_are_refused() {
        assert!(matches!(
            ApnsKey::from_pem(b"junk", "k", "t"),
            Err(KeyError::Pem(_))
        ));
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_pem = pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref());
        assert_eq!(
            ApnsKey::from_pem(rsa_pem.as_bytes(), "k", "t").unwrap_err(),
            KeyError::NotP256
        );
    }

    #[test]
    fn renewal_schedule() {
        let p = TokenPolicy::default();
        let t0 = 1_000_000;
        assert!(p.token_due(t0, None));
        assert!(!p.token_due(t0 + 49 * 60 + 59, Some(t0)));
        assert!(p.token_due(t0 + 50 * 60, Some(t0)));
        // A clock that went back does not renew.
        assert!(!p.token_due(t0 - 10, Some(t0)));
        assert!(token_due(t0 + 3600, Some(t0)));
        // Asked to renew (403 ExpiredProviderToken): only after 20 minutes.
        assert!(!p.may_renew(t0 + 19 * 60, Some(t0)));
        assert!(p.may_renew(t0 + 20 * 60, Some(t0)));
        assert!(p.may_renew(t0, None));
    }

    #[test]
    fn fcm_assertion_claims_and_signature() {
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let key_pem = pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref());
        let account = json!({
            "type": "service_account",
            "project_id": "p-1",
            "private_key": key_pem,
            "client_email": "push@p-1.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.example/token",
        });
        let sa = ServiceAccount::from_json(account.to_string().as_bytes()).unwrap();
        let jwt = sa.assertion(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(decode(parts[0]), json!({"alg": "RS256", "typ": "JWT"}));
        assert_eq!(
            decode(parts[1]),
            json!({
                "iss": "push@p-1.iam.gserviceaccount.com",
                "scope": FCM_SCOPE,
                "aud": "https://oauth2.example/token",
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, rsa.public_key().as_ref())
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        let body = sa.token_request_body(1_700_000_000).unwrap();
        assert!(body.starts_with(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=ey"
        ));

        let missing = json!({"private_key": key_pem, "client_email": "x"});
        assert_eq!(
            ServiceAccount::from_json(missing.to_string().as_bytes()).unwrap_err(),
            AccountError::Missing("token_uri")
        );
    }

    #[test]
    fn access_token_cached_until_a_minute_before_expiry() {
        let t = AccessToken::from_response(
            br#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#,
            1000,
        )
        .unwrap();
        assert_eq!(t.use_until, 1000 + 3599 - 60);
        assert!(!t.is_due(1000 + 3538));
        assert!(t.is_due(1000 + 3539));
        assert_eq!(AccessToken::from_response(b"{}", 0), None);
        assert_eq!(
            AccessToken::from_response(br#"{"access_token":"a b"}"#, 0),
            None
        );
    }
}
