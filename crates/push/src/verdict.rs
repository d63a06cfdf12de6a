//! What a provider's answer means for stg, and how long to wait before trying again: the
//! classification of APNs and FCM responses into one [`Verdict`], and the retry schedule.
//!
//! The one place where provider status codes and reason strings become decisions; the
//! clients only act on the verdict.

use std::time::Duration;

use serde_json::Value;

/// Largest response body read from a provider; the rest is not needed to classify it.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Accepted; the provider's id for it (`apns-id`, FCM message `name`).
    Sent { id: String },
    /// The token is dead: the binding must go.
    RemoveBinding { reason: String },
    /// Our credentials were refused: renew them (once) and try again.
    RenewAuth { status: u16, reason: String },
    /// The provider is busy or failing: try again, not before `after` if it said so.
    Retry {
        status: Option<u16>,
        reason: String,
        after: Option<Duration>,
    },
    /// Trying again would not help.
    Fail { status: Option<u16>, reason: String },
}

/// APNs's answer to `POST /3/device/<token>`. Reasons are those of Apple's "Handling
/// notification responses from APNs" table, carried as `{"reason": ".."}`.
pub fn classify_apns(status: u16, apns_id: Option<&str>, body: &[u8]) -> Verdict {
    let reason = || {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("reason")?.as_str().map(short))
            .unwrap_or_default()
    };
    match status {
        200 => Verdict::Sent {
            id: apns_id.map(short).unwrap_or_default(),
        },
        410 => Verdict::RemoveBinding {
            reason: non_empty(reason(), "Unregistered"),
        },
        400 => {
            let r = reason();
            if r == "BadDeviceToken" || r == "DeviceTokenNotForTopic" {
                Verdict::RemoveBinding { reason: r }
            } else {
                Verdict::Fail {
                    status: Some(400),
                    reason: r,
                }
            }
        }
        403 => {
            let r = reason();
            if r == "ExpiredProviderToken" || r == "InvalidProviderToken" {
                Verdict::RenewAuth {
                    status: 403,
                    reason: r,
                }
            } else {
                Verdict::Fail {
                    status: Some(403),
                    reason: r,
                }
            }
        }
        429 | 500 | 503 => Verdict::Retry {
            status: Some(status),
            reason: reason(),
            after: None,
        },
        _ => Verdict::Fail {
            status: Some(status),
            reason: reason(),
        },
    }
}

/// FCM HTTP v1's answer to `messages:send`. Errors are Google API errors,
/// `{"error": {"code", "message", "status", "details": [{"@type": "..FcmError", "errorCode"}]}}`.
/// `retry_after` is the `Retry-After` header, if any.
pub fn classify_fcm(status: u16, retry_after: Option<&str>, body: &[u8]) -> Verdict {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &v["error"];
    let codes: Vec<&str> = error["details"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .filter_map(|d| d.get("errorCode").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let api_status = error["status"].as_str().unwrap_or_default();
    let message = error["message"].as_str().unwrap_or_default();
    let reason =
        codes
            .first()
            .copied()
            .filter(|c| !c.is_empty())
            .unwrap_or(if api_status.is_empty() {
                message
            } else {
                api_status
            });
    let reason = short(reason);
    match status {
        200 => Verdict::Sent {
            id: short(v["name"].as_str().unwrap_or_default()),
        },
        404 if codes.contains(&"UNREGISTERED") || api_status == "NOT_FOUND" => {
            Verdict::RemoveBinding {
                reason: non_empty(reason, "UNREGISTERED"),
            }
        }
        400 if about_the_token(error) => Verdict::RemoveBinding {
            reason: non_empty(reason, "INVALID_ARGUMENT"),
        },
        401 => Verdict::RenewAuth {
            status: 401,
            reason,
        },
        429 | 500 | 503 => Verdict::Retry {
            status: Some(status),
            reason,
            after: retry_after.and_then(parse_retry_after),
        },
        _ => Verdict::Fail {
            status: Some(status),
            reason,
        },
    }
}

/// Whether a 400 INVALID_ARGUMENT blames the registration token (and not, say, our payload):
/// a field violation on `message.token`, or Google's "not a valid FCM registration token".
fn about_the_token(error: &Value) -> bool {
    let violation = error["details"].as_array().is_some_and(|ds| {
        ds.iter().any(|d| {
            d["fieldViolations"].as_array().is_some_and(|fs| {
                fs.iter()
                    .any(|f| f["field"].as_str() == Some("message.token"))
            })
        })
    });
    let message = error["message"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    violation || message.contains("registration token")
}

/// `Retry-After` in delta-seconds (RFC 9110 §10.2.3); an HTTP date is not honoured (Google
/// sends seconds).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A provider's string cut to what a log line and a metric label need.
fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

fn non_empty(s: String, default: &str) -> String {
    if s.is_empty() {
        default.to_owned()
    } else {
        s
    }
}

/// Exponential backoff without jitter: `base · 2^attempt`, at most `cap`. `attempt` counts
/// from 0 for the wait before the first retry. Pushes to one provider are few and spread by
/// the calls themselves, so there is no herd to break up.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

/// The wait before retry number `attempt` (from 0), or `None` to give up: after
/// `max_retries` retries, or when the provider asks for a longer wait than `cap` (honouring
/// it would outlast the call the push is for).
pub fn retry_delay(
    attempt: u32,
    max_retries: u32,
    base: Duration,
    cap: Duration,
    asked: Option<Duration>,
) -> Option<Duration> {
    if attempt >= max_retries {
        return None;
    }
    let wait = backoff(attempt, base, cap);
    match asked {
        Some(asked) if asked > cap => None,
        Some(asked) => Some(wait.max(asked)),
        None => Some(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_answers() {
        assert_eq!(
            classify_apns(200, Some("abc-1"), b""),
            Verdict::Sent { id: "abc-1".into() }
        );
        assert_eq!(
            classify_apns(410, None, br#"{"reason":"Unregistered","timestamp":1}"#),
            Verdict::RemoveBinding {
                reason: "Unregistered".into()
            }
        );
        for r in ["BadDeviceToken", "DeviceTokenNotForTopic"] {
            let body = format!(r#"{{"reason":"{r}"}}"#);
            assert_eq!(
                classify_apns(400, None, body.as_bytes()),
                Verdict::RemoveBinding { reason: r.into() }
            );
        }
        assert_eq!(
            classify_apns(400, None, br#"{"reason":"BadTopic"}"#),
            Verdict::Fail {
                status: Some(400),
                reason: "BadTopic".into()
            }
        );
        assert!(matches!(
            classify_apns(403, None, br#"{"reason":"ExpiredProviderToken"}"#),
            Verdict::RenewAuth { status: 403, .. }
        ));
        assert!(matches!(
            classify_apns(403, None, br#"{"reason":"BadCertificate"}"#),
            Verdict::Fail { .. }
        ));
        for s in [429, 500, 503] {
            assert!(matches!(
                classify_apns(s, None, b"junk"),
                Verdict::Retry { .. }
            ));
        }
        assert!(matches!(
            classify_apns(413, None, b""),
            Verdict::Fail { .. }
        ));
    }

    #[test]
    fn fcm_answers() {
        assert_eq!(
            classify_fcm(200, None, br#"{"name":"projects/p/messages/1"}"#),
            Verdict::Sent {
                id: "projects/p/messages/1".into()
            }
        );
        let unreg = br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(
            classify_fcm(404, None, unreg),
            Verdict::RemoveBinding {
                reason: "UNREGISTERED".into()
            }
        );
        let bad_token = br#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"}]}}"#;
        assert!(matches!(
            classify_fcm(400, None, bad_token),
            Verdict::RemoveBinding { .. }
        ));
        let violation = br#"{"error":{"code":400,"message":"Request contains an invalid argument.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.token","description":"Invalid registration token"}]}]}}"#;
        assert!(matches!(
            classify_fcm(400, None, violation),
            Verdict::RemoveBinding { .. }
        ));
        let bad_payload = br#"{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}"#;
        assert!(matches!(
            classify_fcm(400, None, bad_payload),
            Verdict::Fail {
                status: Some(400),
                ..
            }
        ));
        assert!(matches!(
            classify_fcm(401, None, b""),
            Verdict::RenewAuth { status: 401, .. }
        ));
        assert_eq!(
            classify_fcm(429, Some("7"), b"{}"),
            Verdict::Retry {
                status: Some(429),
                reason: String::new(),
                after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            classify_fcm(503, Some("soon"), b""),
            Verdict::Retry { after: None, .. }
        ));
        assert!(matches!(classify_fcm(403, None, b""), Verdict::Fail { .. }));
    }

    #[test]
    fn backoff_schedule() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let waits: Vec<_> = (0..7).map(|a| backoff(a, base, cap).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(u32::MAX, base, cap), cap);

        assert_eq!(retry_delay(0, 3, base, cap, None), Some(base));
        assert_eq!(retry_delay(3, 3, base, cap, None), None);
        // Retry-After is honoured when it is longer, refused when it outlasts the cap.
        assert_eq!(
            retry_delay(0, 3, base, cap, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_delay(0, 3, base, cap, Some(Duration::from_secs(60))),
            None
        );
    }
}
