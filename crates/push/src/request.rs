//! What a push says and whom it wakes: the [`PushRequest`] model, the device's target
//! resolved from its RFC 8599 parameters (Linphone's combined iOS form included), and the one
//! JSON payload every provider carries.

use std::fmt;

use serde_json::{json, Map, Value};
use stg_registrar::Push;

/// Longest device token accepted (FCM tokens are ~160 bytes, APNs tokens 64 hex digits; the
/// margin is for future formats, the cap for the outside that writes them).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Longest `apns-collapse-id` Apple accepts, in bytes.
pub const MAX_COLLAPSE_ID: usize = 64;

/// Why a push is sent; decides the APNs push type and the `type` field of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PushKind {
    /// An INVITE waits for the device: APNs VoIP (iOS must report it to CallKit), FCM
    /// high-priority data.
    Call,
    /// A MESSAGE waits for the device: a visible APNs alert.
    Message,
    /// An operator's test (`stg push test`): an APNs background push, nothing shown.
    Test,
}

impl PushKind {
    /// The payload's `type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Message => "message",
            Self::Test => "test",
        }
    }
}

/// One wake-up for one device. Built by the proxy core's shell when a branch needs a push;
/// the clients turn it into their provider's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub kind: PushKind,
    /// The SIP Call-ID the device will be offered on its return.
    pub call_id: String,
    /// The caller's (or sender's) URI.
    pub from_uri: String,
    /// The caller's display name; may be empty.
    pub display_name: String,
    /// A v4 UUID naming this push (iOS CallKit wants one per call).
    pub uuid: String,
    /// When the push was built, unix milliseconds.
    pub send_time_ms: u64,
    /// For messages: the id the device can use to fetch or acknowledge it.
    pub msg_id: Option<String>,
    /// `apns-collapse-id`: pushes with the same id replace each other on the device. Ignored
    /// when longer than [`MAX_COLLAPSE_ID`] bytes.
    pub collapse_id: Option<String>,
    /// The device's push parameters, from its binding.
    pub push: Push,
}

impl PushRequest {
    /// A request with a fresh random UUID, stamped with the current wall-clock time.
    pub fn new(
        kind: PushKind,
        push: Push,
        call_id: &str,
        from_uri: &str,
        display_name: &str,
    ) -> Self {
        Self {
            kind,
            call_id: call_id.to_owned(),
            from_uri: from_uri.to_owned(),
            display_name: display_name.to_owned(),
            uuid: random_uuid(),
            send_time_ms: crate::unix_ms(),
            msg_id: None,
            collapse_id: None,
            push,
        }
    }

    /// The JSON fields every provider carries, all strings (FCM `data` takes only strings,
    /// and one shape everywhere keeps the apps' parsers simple):
    /// `type`, `call-id`, `from-uri`, `display-name`, `uuid`, `send-time` (unix ms) and, for
    /// messages that have one, `msg-id`.
    pub fn fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("type".into(), self.kind.as_str().into());
        m.insert("call-id".into(), self.call_id.clone().into());
        m.insert("from-uri".into(), self.from_uri.clone().into());
        m.insert("display-name".into(), self.display_name.clone().into());
        m.insert("uuid".into(), self.uuid.clone().into());
        m.insert("send-time".into(), self.send_time_ms.to_string().into());
        if let Some(id) = &self.msg_id {
            m.insert("msg-id".into(), id.clone().into());
        }
        m
    }

    /// The payload as the webhook receives it: [`fields`](Self::fields) plus the device's
    /// `pn-provider`, `pn-prid` and `pn-param`, so the receiver can deliver it.
    pub fn webhook_body(&self) -> Vec<u8> {
        let mut m = self.fields();
        m.insert("pn-provider".into(), self.push.provider.clone().into());
        m.insert("pn-prid".into(), self.push.prid.clone().into());
        m.insert(
            "pn-param".into(),
            self.push.param.clone().unwrap_or_default().into(),
        );
        Value::Object(m).to_string().into_bytes()
    }
}

/// A v4 UUID (RFC 9562 §5.4) from the OS's random source.
pub fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    // A failing OS random source leaves zeros: the UUID only names the push, it guards
    // nothing, and a push must not fail for it.
    let _ = getrandom::fill(&mut bytes);
    uuid_v4(bytes)
}

/// Formats 16 random bytes as a v4 UUID, setting the version and variant bits.
pub fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The push services stg speaks natively, named after `pn-provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provider {
    /// `pn-provider=apns`: Apple's production gateway.
    Apns,
    /// `pn-provider=apns.dev`: Apple's sandbox gateway (development builds).
    ApnsSandbox,
    /// `pn-provider=fcm`: Firebase Cloud Messaging, HTTP v1 API.
    Fcm,
    /// Any other provider: only the webhook (or the log) can take it.
    Other,
}

impl Provider {
    /// From a `pn-provider` value (case-insensitive).
    pub fn from_pn(provider: &str) -> Self {
        if provider.eq_ignore_ascii_case("apns") {
            Self::Apns
        } else if provider.eq_ignore_ascii_case("apns.dev") {
            Self::ApnsSandbox
        } else if provider.eq_ignore_ascii_case("fcm") {
            Self::Fcm
        } else {
            Self::Other
        }
    }

    /// The `provider` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Apns => "apns",
            Self::ApnsSandbox => "apns.dev",
            Self::Fcm => "fcm",
            Self::Other => "other",
        }
    }
}

/// The kind of APNs push (`apns-push-type`): the ones stg sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApnsPushType {
    Alert,
    Background,
    Voip,
}

impl ApnsPushType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Background => "background",
            Self::Voip => "voip",
        }
    }

    /// `apns-priority`: background pushes must be 5 (Apple refuses 10 for them).
    pub fn priority(self) -> u8 {
        match self {
            Self::Background => 5,
            Self::Alert | Self::Voip => 10,
        }
    }
}

/// Where an APNs push goes: which token, under which topic, as which push type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsTarget {
    /// The device token, hex, lower case.
    pub token: String,
    /// `apns-topic`: the bundle id, with `.voip` for VoIP pushes.
    pub topic: String,
    pub push_type: ApnsPushType,
    /// The team id from `pn-param`, if it has one.
    pub team_id: Option<String>,
}

/// Why a binding's push parameters cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    #[error("empty pn-prid")]
    NoToken,
    #[error("pn-prid longer than {MAX_TOKEN_LEN} bytes or with spaces or control characters")]
    BadToken,
    #[error("APNs token is not hexadecimal")]
    NotHex,
    #[error("pn-param {0:?} is not <team>.<bundle>[.<services>]")]
    BadParam(String),
    #[error("no pn-param: the APNs topic is unknown")]
    NoParam,
    #[error("the device has no token for a {0} push")]
    NoService(&'static str),
}

/// One `<token>:<service>` part of a combined `pn-prid`, or a plain token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TokenPart<'a> {
    token: &'a str,
    service: Option<&'a str>,
}

/// Splits `pn-prid`: `<voiptoken>:voip&<remotetoken>:remote` (Linphone iOS) or one token
/// (at most four parts are looked at).
fn token_parts(prid: &str) -> Vec<TokenPart<'_>> {
    prid.split('&')
        .filter(|p| !p.is_empty())
        .take(4)
        .map(|p| match p.rsplit_once(':') {
            // FCM tokens hold a colon themselves: only a known service is a suffix.
            Some((token, service)) if service == "voip" || service == "remote" => TokenPart {
                token,
                service: Some(service),
            },
            _ => TokenPart {
                token: p,
                service: None,
            },
        })
        .collect()
}

/// The parts of an APNs `pn-param`: `<team>.<bundle>.<services>` where services is `voip`,
/// `remote` or `voip&remote` (RFC 8599 §9.3 and Linphone's combined form). A last label that
/// is not a service belongs to the bundle, and the push is a remote one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsParam<'a> {
    pub team_id: &'a str,
    pub bundle: &'a str,
    pub services: Vec<&'a str>,
}

pub fn parse_apns_param(param: &str) -> Result<ApnsParam<'_>, TargetError> {
    let bad = || TargetError::BadParam(param.chars().take(200).collect());
    let (team_id, rest) = param.split_once('.').ok_or_else(bad)?;
    if team_id.is_empty() || rest.is_empty() {
        return Err(bad());
    }
    let (bundle, services) = match rest.rsplit_once('.') {
        Some((bundle, last))
            if !bundle.is_empty() && last.split('&').all(|s| s == "voip" || s == "remote") =>
        {
            (bundle, last.split('&').collect())
        }
        _ => (rest, vec!["remote"]),
    };
    if bundle
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad());
    }
    Ok(ApnsParam {
        team_id,
        bundle,
        services,
    })
}

fn check_token(token: &str) -> Result<(), TargetError> {
    if token.is_empty() {
        return Err(TargetError::NoToken);
    }
    if token.len() > MAX_TOKEN_LEN
        || token
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b >= 0x80)
    {
        return Err(TargetError::BadToken);
    }
    Ok(())
}

/// Resolves an APNs push: a call goes to the VoIP token as a `voip` push; a message to the
/// remote token as an `alert`; a test to the remote token as a `background` push. A device
/// with only one of the two services gets the push through that one (a call through a remote
/// token is an alert; a message through a VoIP token is a VoIP push, which the app must
/// handle).
pub fn apns_target(push: &Push, kind: PushKind) -> Result<ApnsTarget, TargetError> {
    let param = push.param.as_deref().ok_or(TargetError::NoParam)?;
    let param = parse_apns_param(param)?;
    let parts = token_parts(&push.prid);
    if parts.is_empty() {
        return Err(TargetError::NoToken);
    }
    // A token's service: its own `:svc` suffix, else (one token) the param's only service.
    let only_service = match param.services.as_slice() {
        [one] => *one,
        _ => "remote",
    };
    let service_of = |p: &TokenPart<'_>| p.service.unwrap_or(only_service).to_owned();
    let wanted = match kind {
        PushKind::Call => "voip",
        PushKind::Message | PushKind::Test => "remote",
    };
    let chosen = parts
        .iter()
        .find(|p| service_of(p) == wanted)
        .or_else(|| {
            parts
                .iter()
                .find(|p| matches!(service_of(p).as_str(), "voip" | "remote"))
        })
        .ok_or(TargetError::NoService(wanted))?;
    check_token(chosen.token)?;
    if !chosen.token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TargetError::NotHex);
    }
    let voip = service_of(chosen) == "voip";
    let push_type = match (voip, kind) {
        (true, _) => ApnsPushType::Voip,
        (false, PushKind::Test) => ApnsPushType::Background,
        (false, _) => ApnsPushType::Alert,
    };
    let topic = if voip {
        format!("{}.voip", param.bundle)
    } else {
        param.bundle.to_owned()
    };
    Ok(ApnsTarget {
        token: chosen.token.to_ascii_lowercase(),
        topic,
        push_type,
        team_id: Some(param.team_id.to_owned()),
    })
}

/// Where an FCM push goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmTarget {
    /// The registration token.
    pub token: String,
    /// The project from `pn-param`, if the device named one.
    pub project: Option<String>,
}

/// Resolves an FCM push: the token is `pn-prid` (its first part, should a device combine
/// services as iOS does), the project `pn-param` when it looks like a project id.
pub fn fcm_target(push: &Push) -> Result<FcmTarget, TargetError> {
    let parts = token_parts(&push.prid);
    let first = parts.first().ok_or(TargetError::NoToken)?;
    check_token(first.token)?;
    let project = push
        .param
        .as_deref()
        .map(str::trim)
        .filter(|p| is_project_id(p))
        .map(str::to_owned);
    Ok(FcmTarget {
        token: first.token.to_owned(),
        project,
    })
}

/// A Google Cloud project id (6–30 letters, digits, hyphens) or a numeric project number:
/// anything else never goes into the request path.
fn is_project_id(p: &str) -> bool {
    (1..=64).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A device token shortened for logs: enough to find it in the store, not the whole secret.
pub struct Abbrev<'a>(pub &'a str);

impl fmt::Display for Abbrev<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        if t.len() <= 12 {
            return f.write_str(t);
        }
        let head: String = t.chars().take(8).collect();
        write!(f, "{head}…({} bytes)", t.len())
    }
}

/// The APNs JSON body: the payload fields beside an `aps` dictionary suited to the push type
/// (VoIP: empty, the app reads the fields; alert: a localizable alert with a sound;
/// background: `content-available`).
pub fn apns_body(req: &PushRequest, push_type: ApnsPushType) -> Vec<u8> {
    let who = if req.display_name.is_empty() {
        req.from_uri.as_str()
    } else {
        req.display_name.as_str()
    };
    let aps = match push_type {
        ApnsPushType::Voip => json!({}),
        ApnsPushType::Background => json!({ "content-available": 1 }),
        ApnsPushType::Alert => {
            // Linphone's apps localize these keys; others show the argument.
            let key = match req.kind {
                PushKind::Call => "IC_MSG",
                PushKind::Message | PushKind::Test => "IM_MSG",
            };
            json!({
                "alert": { "loc-key": key, "loc-args": [who] },
                "sound": "default",
            })
        }
    };
    let mut m = req.fields();
    m.insert("aps".into(), aps);
    Value::Object(m).to_string().into_bytes()
}

/// The FCM HTTP v1 body: `message.token`, Android high priority with a TTL, and the fields
/// as `data` (all strings, as FCM requires).
pub fn fcm_body(req: &PushRequest, token: &str, ttl_secs: u64) -> Vec<u8> {
    json!({
        "message": {
            "token": token,
            "android": { "priority": "high", "ttl": format!("{ttl_secs}s") },
            "data": Value::Object(req.fields()),
        }
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(provider: &str, prid: &str, param: Option<&str>) -> Push {
        Push {
            provider: provider.into(),
            prid: prid.into(),
            param: param.map(Into::into),
        }
    }

    fn request(kind: PushKind, p: Push) -> PushRequest {
        PushRequest {
            kind,
            call_id: "c1@h".into(),
            from_uri: "sip:alice@example.com".into(),
            display_name: "Alice".into(),
            uuid: uuid_v4([0xff; 16]),
            send_time_ms: 1_700_000_000_123,
            msg_id: None,
            collapse_id: None,
            push: p,
        }
    }

    const VOIP: &str = "aaaa1111";
    const REMOTE: &str = "BBBB2222";

    #[test]
    fn linphone_combined_form_picks_the_token_per_kind() {
        let p = push(
            "apns",
            &format!("{VOIP}:voip&{REMOTE}:remote"),
            Some("ABCDE12345.org.linphone.phone.voip&remote"),
        );
        let call = apns_target(&p, PushKind::Call).unwrap();
        assert_eq!(call.token, VOIP);
        assert_eq!(call.topic, "org.linphone.phone.voip");
        assert_eq!(call.push_type, ApnsPushType::Voip);
        assert_eq!(call.team_id.as_deref(), Some("ABCDE12345"));
        let msg = apns_target(&p, PushKind::Message).unwrap();
        assert_eq!(msg.token, REMOTE.to_ascii_lowercase());
        assert_eq!(msg.topic, "org.linphone.phone");
        assert_eq!(msg.push_type, ApnsPushType::Alert);
        let test = apns_target(&p, PushKind::Test).unwrap();
        assert_eq!(test.push_type, ApnsPushType::Background);
        assert_eq!(test.push_type.priority(), 5);
    }

    #[test]
    fn single_service_forms() {
        let voip_only = push("apns", VOIP, Some("T.com.ex.app.voip"));
        let t = apns_target(&voip_only, PushKind::Call).unwrap();
        assert_eq!(
            (t.topic.as_str(), t.push_type),
            ("com.ex.app.voip", ApnsPushType::Voip)
        );
        // A message to a VoIP-only device still goes through VoIP.
        let t = apns_target(&voip_only, PushKind::Message).unwrap();
        assert_eq!(t.push_type, ApnsPushType::Voip);

        let remote_only = push("apns.dev", REMOTE, Some("T.com.ex.app.remote"));
        let t = apns_target(&remote_only, PushKind::Call).unwrap();
        assert_eq!(
            (t.topic.as_str(), t.push_type),
            ("com.ex.app", ApnsPushType::Alert)
        );

        // No service label: the whole rest is the bundle, a remote push.
        let bare = push("apns", REMOTE, Some("T.com.ex.app"));
        let t = apns_target(&bare, PushKind::Message).unwrap();
        assert_eq!(t.topic, "com.ex.app");
    }

    #[test]
    fn bad_apns_parameters_are_refused() {
        let cases = [
            (push("apns", "xyz", Some("T.b.voip")), TargetError::NotHex),
            (push("apns", "", Some("T.b.voip")), TargetError::NoToken),
            (push("apns", "aa", None), TargetError::NoParam),
            (
                push("apns", "aa", Some("nodot")),
                TargetError::BadParam("nodot".into()),
            ),
            (
                push("apns", "aa:other", Some("T.b.voip")),
                TargetError::NotHex,
            ),
        ];
        for (p, want) in cases {
            assert_eq!(apns_target(&p, PushKind::Call), Err(want), "{p:?}");
        }
        let long = push("apns", &"a".repeat(MAX_TOKEN_LEN + 1), Some("T.b.voip"));
        assert_eq!(
            apns_target(&long, PushKind::Call),
            Err(TargetError::BadToken)
        );
    }

    #[test]
    fn fcm_project_from_param_only_when_it_is_one() {
        let t = fcm_target(&push("fcm", "dXk:APA91b-x", Some("my-project-42"))).unwrap();
        assert_eq!(t.token, "dXk:APA91b-x");
        assert_eq!(t.project.as_deref(), Some("my-project-42"));
        let t = fcm_target(&push("fcm", "dXk:APA91b:remote&x:voip", None)).unwrap();
        assert_eq!(t.token, "dXk:APA91b");
        let t = fcm_target(&push("fcm", "tok", Some("../etc?x"))).unwrap();
        assert_eq!(t.project, None);
        assert_eq!(
            fcm_target(&push("fcm", "a b", None)),
            Err(TargetError::BadToken)
        );
    }

    #[test]
    fn uuid_is_v4() {
        let u = uuid_v4([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let r = random_uuid();
        assert_eq!(r.len(), 36);
        assert_eq!(&r[14..15], "4");
    }

    #[test]
    fn payload_shapes() {
        let p = push("apns", VOIP, Some("T.b.voip"));
        let mut r = request(PushKind::Message, p);
        r.msg_id = Some("m-1".into());
        let fields = Value::Object(r.fields());
        assert_eq!(
            fields,
            json!({
                "type": "message", "call-id": "c1@h", "from-uri": "sip:alice@example.com",
                "display-name": "Alice", "uuid": "ffffffff-ffff-4fff-bfff-ffffffffffff",
                "send-time": "1700000000123", "msg-id": "m-1",
            })
        );
        let voip: Value = serde_json::from_slice(&apns_body(&r, ApnsPushType::Voip)).unwrap();
        assert_eq!(voip["aps"], json!({}));
        assert_eq!(voip["call-id"], "c1@h");
        let alert: Value = serde_json::from_slice(&apns_body(&r, ApnsPushType::Alert)).unwrap();
        assert_eq!(alert["aps"]["alert"]["loc-args"], json!(["Alice"]));
        assert_eq!(alert["aps"]["sound"], "default");
        let bg: Value = serde_json::from_slice(&apns_body(&r, ApnsPushType::Background)).unwrap();
        assert_eq!(bg["aps"]["content-available"], 1);

        let fcm: Value = serde_json::from_slice(&fcm_body(&r, "tok", 60)).unwrap();
        assert_eq!(fcm["message"]["token"], "tok");
        assert_eq!(
            fcm["message"]["android"],
            json!({"priority": "high", "ttl": "60s"})
        );
        assert!(fcm["message"]["data"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string));

        let hook: Value = serde_json::from_slice(&r.webhook_body()).unwrap();
        assert_eq!(hook["pn-prid"], VOIP);
        assert_eq!(hook["type"], "message");
    }

    #[test]
    fn abbreviated_tokens() {
        assert_eq!(Abbrev("short").to_string(), "short");
        assert_eq!(Abbrev(&"a".repeat(64)).to_string(), "aaaaaaaa…(64 bytes)");
    }
}
