//! One binding as Flexisip 2.3 stores it: a field and a value of the AOR's Redis hash.
//!
//! # What Flexisip 2.3 does (read from its sources and sofia-sip's, tag 2.3.5)
//! - **Key** `fs:<user>@<host>` of the From URI (user and host as written, no port, no
//!   params; host alone when the From URI has no user). One hash per AOR.
//! - **Field** (the contact key): the first of `+sip.instance`, `pn-tok`, `line` found on the
//!   Contact, header parameter first, then URI parameter, value as written (quotes and
//!   angle brackets of `+sip.instance` kept). Without one (or with an empty one): `fs-gen-`
//!   followed by 20 characters of the base64url alphabet (`A-Za-z0-9-_`, 122 bits). A
//!   refresh that matches an existing binding keeps the existing field.
//! - **Value**: the Contact as sofia-sip prints it. Display name as received, a space,
//!   `<`, the contact URI as received (with the registrar's `fs-conn-id=<hex>` appended to
//!   its parameters), then `;callid=`, `;expires=`, `;cseq=`, `;updatedAt=`, `;alias=`,
//!   `;usedAsRoute=` in that order, then `?path=…&accept=…&user-agent=…`, `>`, then the
//!   Contact's header parameters as received, plus `pub-gruu`.
//! - `expires` is **relative** (seconds granted); `updatedAt` is **absolute** unix seconds
//!   (the registration time). A binding is dead once `updatedAt + expires <= now`.
//! - `alias` and `usedAsRoute` are `yes`/`no` (read back as "contains `yes`"). `alias=yes`
//!   marks a contact whose URI is in one of the proxy's own domains (an alias to another
//!   AOR, adjacent registration only); devices always get `no`. `usedAsRoute=yes` when the
//!   From URI has no user part (domain registration): the contact is then used as a route
//!   instead of replacing the Request-URI.
//! - `callid` is %-escaped only when it holds URI-reserved characters, and then only the
//!   characters `` "#&,;<=>@\^`{|}% ``, space, controls, non-ASCII, `[` and `]`.
//! - URI headers are written by `sip_headers_as_url_query`: all three are always present
//!   (`path=&accept=&user-agent=` when empty), names lower case, values %-escaped (upper
//!   case hex) for: controls, space, non-ASCII, `"`, `#`, `%`, `<`, `>`, `[`, `\`, `]`, `^`,
//!   `` ` ``, `{`, `|`, `}`, and `:`, `=`, `,`, `;`. Not escaped: `&`, `?`, `/`, `@`, `+`,
//!   `$`, `(`, `)`, `'`, `*`, `!`, `~`. So the seed's §5 example is a *decoded* rendering:
//!   in Redis its path reads `path=%3Csip%3Anode%3A5556%3Btransport%3Dtcp…%3E%2C%3C…%3E` and
//!   its user agent `LinphoneAndroid/5.2.0%20(…)`. Path entries are each `<uri>` joined by
//!   `,`; Accept values are the media types only (no parameters) joined by `,`.
//! - A `&` in a user agent is not escaped by sofia-sip, so Flexisip itself cannot read such
//!   a value back whole; we escape `&` and `?` too (Flexisip unescapes them correctly).
//! - A value Flexisip cannot parse is logged and skipped (neither used nor deleted); expired
//!   bindings found while binding are deleted (HDEL), then the record gets `EXPIREAT` at its
//!   latest expiry, and `PUBLISH <user@host> <unique id of the first contact or "">`.
//! - Flexisip reads every bookkeeping parameter as the *first* URI parameter of that name,
//!   so we strip those names from a device's contact URI before storing it (a device could
//!   otherwise choose its own `expires`/`updatedAt`).

use thiserror::Error;

/// URI parameters the registrar adds to the contact URI, in the order Flexisip writes them.
pub const BOOKKEEPING_PARAMS: &[&str] = &[
    "fs-conn-id",
    "callid",
    "expires",
    "cseq",
    "updatedAt",
    "alias",
    "usedAsRoute",
];

/// Prefix of a generated hash field (no instance, `pn-tok` or `line` on the contact).
pub const GENERATED_KEY_PREFIX: &str = "fs-gen-";

const KEY_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Characters sofia-sip always escapes (besides controls, space and non-ASCII).
const BASE_ESCAPED: &[u8] = b"\"#%<>[\\]^`{|}";
/// Extra characters escaped in URI header values (`HNV_RESERVED`), plus `&` and `?`, which
/// would otherwise split the value (see the module docs).
const HNV_ESCAPED: &[u8] = b":=,;&?";
/// Extra characters escaped in the `callid` parameter (Flexisip's `sipUriParamValueReserved`),
/// plus `?`, which would otherwise end the URI parameters.
const CALLID_ESCAPED: &[u8] = b"&,;=@?";

/// Why a stored value could not be read.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The hash field is empty.
    #[error("empty hash field")]
    EmptyKey,
    /// No `<URI>` in the value.
    #[error("no <URI> in the value")]
    NoUri,
    /// The display name is neither a quoted string nor tokens.
    #[error("bad display name")]
    DisplayName,
    /// Not a `sip:`/`sips:` URI with a host.
    #[error("not a sip: or sips: URI")]
    Uri,
    /// A bookkeeping parameter is missing or not a number.
    #[error("missing or bad `{0}` parameter")]
    Field(&'static str),
    /// The header parameters after `>` do not parse.
    #[error("bad header parameter")]
    Param,
    /// An unescaped value is not UTF-8.
    #[error("escaped text is not UTF-8")]
    Utf8,
}

/// One contact of an AOR, decoded from / encoded to the Flexisip value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The hash field (see the module docs).
    pub key: String,
    /// Display name as received (quotes kept), if any.
    pub display_name: Option<String>,
    /// Contact URI as received, without the `fs-conn-id` and bookkeeping params and without
    /// URI headers.
    pub uri: String,
    /// `fs-conn-id`: the connection the device registered over.
    pub conn_id: Option<String>,
    /// Call-ID of the REGISTER that made or refreshed the binding (unescaped).
    pub call_id: String,
    /// CSeq of that REGISTER.
    pub cseq: u32,
    /// Expiry granted, in seconds from `updated_at`.
    pub expires: u32,
    /// When the binding was made or refreshed, unix seconds.
    pub updated_at: u64,
    /// `alias=yes` (see the module docs).
    pub alias: bool,
    /// `usedAsRoute=yes`: domain registration, the contact is a route.
    pub used_as_route: bool,
    /// Path URIs (RFC 3327), top first, without angle brackets.
    pub path: Vec<String>,
    /// Accept media types of the REGISTER.
    pub accept: Vec<String>,
    /// User-Agent of the REGISTER.
    pub user_agent: Option<String>,
    /// Contact header parameters as received, in order (`+sip.instance`, `reg-id`, feature
    /// tags, `pub-gruu`), values raw (quotes kept); `None` for a flag.
    pub params: Vec<(String, Option<String>)>,
}

/// RFC 8599 push parameters of a binding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Push {
    /// `pn-provider` (`apns`, `apns.dev`, `fcm`, …).
    pub provider: String,
    /// `pn-prid`: the device token.
    pub prid: String,
    /// `pn-param` (APNs: `<team>.<bundle>.<service>`, FCM: the project id).
    pub param: Option<String>,
}

// === impl Binding ===

impl Binding {
    /// Unix second at which the binding dies.
    pub fn expires_at(&self) -> u64 {
        self.updated_at.saturating_add(u64::from(self.expires))
    }

    /// Whether the binding is still live at `now` (Flexisip: dead once `expires_at <= now`).
    pub fn is_live(&self, now: u64) -> bool {
        self.expires_at() > now
    }

    /// The raw `+sip.instance` header parameter (RFC 5626 §4.1), quotes kept.
    pub fn instance(&self) -> Option<&str> {
        find_param(&self.params, "+sip.instance").flatten()
    }

    /// The `reg-id` header parameter (RFC 5626 §4.2).
    pub fn reg_id(&self) -> Option<u32> {
        find_param(&self.params, "reg-id")
            .flatten()
            .and_then(|v| v.parse().ok())
    }

    /// Whether the hash field was generated (no device identifier on the contact).
    pub fn has_generated_key(&self) -> bool {
        self.key.starts_with(GENERATED_KEY_PREFIX)
    }

    /// RFC 8599 view of the push parameters; the legacy `pn-type`/`pn-tok`/`app-id` are
    /// mapped as Flexisip maps them (see [`push_of_uri`]).
    pub fn push(&self) -> Option<Push> {
        push_of_uri(&self.uri)
    }

    /// The Flexisip value (see the module docs for the layout).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(256 + self.uri.len());
        if let Some(d) = &self.display_name {
            out.push_str(d);
            out.push(' ');
        }
        out.push('<');
        out.push_str(&self.uri);
        if let Some(c) = &self.conn_id {
            out.push_str(";fs-conn-id=");
            out.push_str(c);
        }
        out.push_str(";callid=");
        escape_into(&mut out, &self.call_id, CALLID_ESCAPED);
        out.push_str(";expires=");
        out.push_str(&self.expires.to_string());
        out.push_str(";cseq=");
        out.push_str(&self.cseq.to_string());
        out.push_str(";updatedAt=");
        out.push_str(&self.updated_at.to_string());
        out.push_str(";alias=");
        out.push_str(yes_no(self.alias));
        out.push_str(";usedAsRoute=");
        out.push_str(yes_no(self.used_as_route));
        out.push_str("?path=");
        let path = self
            .path
            .iter()
            .map(|p| format!("<{p}>"))
            .collect::<Vec<_>>()
            .join(",");
        escape_into(&mut out, &path, HNV_ESCAPED);
        out.push_str("&accept=");
        escape_into(&mut out, &self.accept.join(","), HNV_ESCAPED);
        out.push_str("&user-agent=");
        escape_into(
            &mut out,
            self.user_agent.as_deref().unwrap_or(""),
            HNV_ESCAPED,
        );
        out.push('>');
        for (name, value) in &self.params {
            out.push(';');
            out.push_str(name);
            if let Some(v) = value {
                out.push('=');
                out.push_str(v);
            }
        }
        out
    }

    /// Reads a Flexisip value. Never panics; anything it cannot make sense of is an error
    /// (the caller skips such values, as Flexisip does).
    pub fn decode(key: &str, value: &str) -> Result<Self, CodecError> {
        if key.is_empty() {
            return Err(CodecError::EmptyKey);
        }
        let s = value.trim_matches(|c| c == ' ' || c == '\t');
        let (display_name, rest) = split_display(s)?;
        let rest = rest.strip_prefix('<').ok_or(CodecError::NoUri)?;
        let gt = rest.find('>').ok_or(CodecError::NoUri)?;
        let full_uri = &rest[..gt];
        let params = parse_header_params(&rest[gt + 1..]).ok_or(CodecError::Param)?;

        let (main, headers) = match full_uri.find('?') {
            Some(q) => (&full_uri[..q], Some(&full_uri[q + 1..])),
            None => (full_uri, None),
        };
        let (base, uri_params) = split_uri(main).ok_or(CodecError::Uri)?;

        let mut uri = base.to_owned();
        // The first of each bookkeeping name counts (as in Flexisip); later ones are dropped
        // so that what we write back reads the same.
        let mut found: [Option<&str>; 7] = [None; 7];
        for (raw, name, value) in uri_params {
            match BOOKKEEPING_PARAMS
                .iter()
                .position(|b| b.eq_ignore_ascii_case(name))
            {
                Some(i) => {
                    found[i] = found[i].or(Some(value.unwrap_or("")));
                }
                None => {
                    uri.push(';');
                    uri.push_str(raw);
                }
            }
        }
        let [conn_id, call_id, expires, cseq, updated_at, alias, used_as_route] = found;
        let number = |v: Option<&str>, what: &'static str| -> Result<u64, CodecError> {
            v.and_then(|v| v.parse::<u64>().ok())
                .ok_or(CodecError::Field(what))
        };
        let expires =
            u32::try_from(number(expires, "expires")?).map_err(|_| CodecError::Field("expires"))?;
        let updated_at = number(updated_at, "updatedAt")?;
        // Flexisip reads a missing or bad CSeq as 0; so do we.
        let cseq = cseq.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        let call_id = unescape(call_id.unwrap_or(""))?;

        let mut binding = Self {
            key: key.to_owned(),
            display_name: display_name.map(str::to_owned),
            uri,
            conn_id: conn_id.map(str::to_owned),
            call_id,
            cseq,
            expires,
            updated_at,
            alias: alias.is_some_and(|v| v.contains("yes")),
            used_as_route: used_as_route.is_some_and(|v| v.contains("yes")),
            path: Vec::new(),
            accept: Vec::new(),
            user_agent: None,
            params,
        };
        for pair in headers.into_iter().flat_map(|h| h.split('&')) {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let value = unescape(value)?;
            if name.eq_ignore_ascii_case("path") {
                binding.path = split_path(&value);
            } else if name.eq_ignore_ascii_case("accept") {
                binding.accept = value
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect();
            } else if name.eq_ignore_ascii_case("user-agent") && !value.is_empty() {
                binding.user_agent = Some(value);
            }
        }
        Ok(binding)
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A fresh `fs-gen-` field: 20 characters of the base64url alphabet, 6 bits per draw.
pub fn generate_key(rng: &mut dyn FnMut() -> u64) -> String {
    let mut key = String::with_capacity(GENERATED_KEY_PREFIX.len() + 20);
    key.push_str(GENERATED_KEY_PREFIX);
    for _ in 0..20 {
        key.push(char::from(KEY_ALPHABET[(rng() >> 58) as usize]));
    }
    key
}

/// First header parameter named `name` (case-insensitive): `Some(None)` for a flag.
pub(crate) fn find_param<'a>(
    params: &'a [(String, Option<String>)],
    name: &str,
) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

// === push parameters ===

/// RFC 8599 push parameters of a contact URI. Without `pn-provider`+`pn-prid`, the legacy
/// linphone parameters are mapped as Flexisip maps them: `pn-type=firebase|google` → `fcm`
/// with `pn-tok` as prid and `app-id` as param; any other `pn-type` → APNs: `apns` when
/// `app-id` holds `.prod` (else `apns.dev`), param `ABCD1234.<app-id up to .prod/.dev>`.
pub fn push_of_uri(uri: &str) -> Option<Push> {
    let (_, params) = split_uri(uri.split('?').next().unwrap_or(uri))?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(_, n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, _, v)| *v)
            .filter(|v| !v.is_empty())
    };
    if let (Some(provider), Some(prid)) = (get("pn-provider"), get("pn-prid")) {
        return Some(Push {
            provider: provider.to_owned(),
            prid: prid.to_owned(),
            param: get("pn-param").map(str::to_owned),
        });
    }
    let (pn_type, tok, app_id) = (get("pn-type")?, get("pn-tok")?, get("app-id")?);
    if pn_type == "firebase" || pn_type == "google" {
        return Some(Push {
            provider: "fcm".to_owned(),
            prid: tok.to_owned(),
            param: Some(app_id.to_owned()),
        });
    }
    let (provider, bundle) = match app_id.find(".prod") {
        Some(i) => ("apns", &app_id[..i]),
        None => (
            "apns.dev",
            app_id.find(".dev").map_or(app_id, |i| &app_id[..i]),
        ),
    };
    Some(Push {
        provider: provider.to_owned(),
        prid: tok.to_owned(),
        param: Some(format!("ABCD1234.{bundle}")),
    })
}

// === parsing helpers ===

/// Splits the display name (quoted string or tokens) from `<…`.
fn split_display(s: &str) -> Result<(Option<&str>, &str), CodecError> {
    if s.starts_with('"') {
        let bytes = s.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    let rest = s[i + 1..].trim_start_matches([' ', '\t']);
                    return Ok((Some(&s[..=i]), rest));
                }
                _ => i += 1,
            }
        }
        return Err(CodecError::DisplayName);
    }
    let lt = s.find('<').ok_or(CodecError::NoUri)?;
    let d = s[..lt].trim_matches([' ', '\t']);
    if d.is_empty() {
        return Ok((None, &s[lt..]));
    }
    if d.contains(['"', ';', ',', '>', '\r', '\n']) {
        return Err(CodecError::DisplayName);
    }
    Ok((Some(d), &s[lt..]))
}

/// One URI parameter: the raw `name[=value]` text, its name and value.
type UriParam<'a> = (&'a str, &'a str, Option<&'a str>);

/// Splits `sip:user@host:port;a=b;c` (no `?headers`) into `sip:user@host:port` and its
/// parameters. The user part may hold `;` (RFC 3261 `user-unreserved`), so parameters start
/// after the host.
pub(crate) fn split_uri(main: &str) -> Option<(&str, Vec<UriParam<'_>>)> {
    // Compared as bytes: slicing the text at 4 or 5 could cut a multi-byte character.
    let b = main.as_bytes();
    let scheme = if b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"sips:") {
        5
    } else if b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"sip:") {
        4
    } else {
        return None;
    };
    let body = &main[scheme..];
    let host_at = body.find('@').map_or(0, |i| i + 1);
    let params_at = body[host_at..]
        .find(';')
        .map_or(body.len(), |i| host_at + i);
    if params_at == host_at {
        return None;
    }
    let params = body[params_at..]
        .split(';')
        .skip(1)
        .filter(|p| !p.is_empty())
        .map(|raw| match raw.split_once('=') {
            Some((n, v)) => (raw, n, Some(v)),
            None => (raw, raw, None),
        })
        .collect();
    Some((&main[..scheme + params_at], params))
}

/// `*( ";" name [ "=" ( token / quoted-string ) ] )`, tolerant of spaces around `;`/`=`.
fn parse_header_params(s: &str) -> Option<Vec<(String, Option<String>)>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t') {
            *i += 1;
        }
    };
    let stop = |c: u8| matches!(c, b';' | b'=' | b' ' | b'\t' | b'"' | b',' | b'<' | b'>');
    loop {
        ws(&mut i);
        if i == b.len() {
            return Some(out);
        }
        if b[i] != b';' {
            return None;
        }
        i += 1;
        ws(&mut i);
        let start = i;
        while i < b.len() && !stop(b[i]) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let name = &s[start..i];
        ws(&mut i);
        let value = if i < b.len() && b[i] == b'=' {
            i += 1;
            ws(&mut i);
            let vstart = i;
            if i < b.len() && b[i] == b'"' {
                i += 1;
                loop {
                    match b.get(i)? {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            } else {
                while i < b.len() && !stop(b[i]) {
                    i += 1;
                }
                if i == vstart {
                    return None;
                }
            }
            Some(s[vstart..i].to_owned())
        } else {
            None
        };
        out.push((name.to_owned(), value));
    }
}

/// `<uri>,<uri>` → the URIs (an unbracketed entry is kept whole).
fn split_path(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = false;
    let mut start = 0;
    let push = |out: &mut Vec<String>, item: &str| {
        let item = item.trim();
        let uri = item
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .map_or(item, |(u, _)| u);
        // What is left of a broken entry could not be written back unambiguously.
        if !uri.is_empty() && !uri.contains(['<', '>']) {
            out.push(uri.to_owned());
        }
    };
    for (i, c) in value.char_indices() {
        match c {
            '<' => depth = true,
            '>' => depth = false,
            ',' if !depth => {
                push(&mut out, &value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&mut out, &value[start..]);
    out
}

// === escaping ===

fn escape_into(out: &mut String, s: &str, extra: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b <= 0x20 || b >= 0x7f || BASE_ESCAPED.contains(&b) || extra.contains(&b) {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        } else {
            out.push(char::from(b));
        }
    }
}

/// `%XX` → byte; a `%` not followed by two hex digits stays as is (as in sofia-sip).
fn unescape(s: &str) -> Result<String, CodecError> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let digit = |j: usize| b.get(j).and_then(|&c| hex(c));
            if let (Some(h), Some(l)) = (digit(i + 1), digit(i + 2)) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| CodecError::Utf8)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Fuzz entry: decoding never panics, and a decoded value survives encode/decode unchanged.
pub fn fuzz_decode(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (key, value) = s.split_once('\n').unwrap_or(("k", s));
    if let Ok(b) = Binding::decode(key, value) {
        let again = Binding::decode(key, &b.encode());
        assert_eq!(again.as_ref(), Ok(&b), "re-decoding {:?}", b.encode());
    }
}
