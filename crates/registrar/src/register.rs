//! A REGISTER request, checked (RFC 3261 §10.3 steps 1–6 that need no store).

use stg_sip_msg::{HeaderName, Message, Method, NameAddr, Uri};

use crate::codec::split_uri;
use crate::{Settings, PUSH_PARAMS};

/// A refusal: the status, reason phrase and extra headers of the response to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Status code (400, 423, 500…).
    pub status: u16,
    /// Reason phrase.
    pub reason: &'static str,
    /// Extra headers (`Min-Expires` for 423).
    pub headers: Vec<(&'static str, String)>,
}

impl Reject {
    pub(crate) fn bad(reason: &'static str) -> Self {
        Self {
            status: 400,
            reason,
            headers: Vec::new(),
        }
    }
}

/// A checked REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Register {
    /// `user@host` of the From URI as received (the hash is `fs:` + this).
    pub aor: String,
    /// The From URI as received (pub-gruu is built on it, as Flexisip does).
    pub from_uri: String,
    /// Whether the From URI has a user part (else: domain registration, `usedAsRoute`).
    pub from_has_user: bool,
    /// Call-ID.
    pub call_id: String,
    /// CSeq number.
    pub cseq: u32,
    /// The `Expires` header, if any.
    pub expires: Option<u32>,
    /// `Contact: *` (always with `Expires: 0`, checked).
    pub star: bool,
    /// The contacts, in order; empty for `*` and for a fetch (no Contact).
    pub contacts: Vec<Contact>,
    /// The request's Path URIs (RFC 3327), top first, without brackets.
    pub path: Vec<String>,
    /// User-Agent, if any.
    pub user_agent: Option<String>,
    /// Accept media types (parameters dropped, as Flexisip stores them).
    pub accept: Vec<String>,
    /// Option tags of Supported, lower case.
    pub supported: Vec<String>,
}

/// One Contact of a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The Contact element as received.
    pub raw: String,
    /// Display name as received (quotes kept).
    pub display_name: Option<String>,
    /// The URI as received.
    pub uri: String,
    /// Header parameters as received (`;a=b` list, leading `;` included).
    pub params_raw: String,
    /// Header parameters, values raw.
    pub params: Vec<(String, Option<String>)>,
    /// The `expires` header parameter, if any.
    pub expires: Option<u32>,
}

impl Register {
    /// Whether Supported lists `tag`.
    pub fn supports(&self, tag: &str) -> bool {
        self.supported.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }

    /// Whether this REGISTER only asks for the current bindings (no Contact).
    pub fn is_fetch(&self) -> bool {
        !self.star && self.contacts.is_empty()
    }

    /// The expiry a registrar answering itself grants to `c` (RFC 3261 §10.3 step 7):
    /// the contact's `expires`, else the `Expires` header, else the default; 0 stays 0, a
    /// non-zero value below `min_expires` is refused with 423 + `Min-Expires`, above
    /// `max_expires` it is lowered.
    pub fn local_expiry(&self, c: &Contact, s: &Settings) -> Result<u32, Reject> {
        match c.expires.or(self.expires) {
            Some(0) => Ok(0),
            Some(n) if n < s.min_expires => Err(Reject {
                status: 423,
                reason: "Interval Too Brief",
                headers: vec![("Min-Expires", s.min_expires.to_string())],
            }),
            Some(n) => Ok(n.min(s.max_expires)),
            // Not `clamp`: it panics on a min above the max, a configuration mistake.
            None => Ok(s.default_expires.max(s.min_expires).min(s.max_expires)),
        }
    }
}

impl Contact {
    /// The raw `+sip.instance` header parameter, quotes kept.
    pub fn instance(&self) -> Option<&str> {
        crate::codec::find_param(&self.params, "+sip.instance").flatten()
    }

    /// The `reg-id` header parameter (RFC 5626).
    pub fn reg_id(&self) -> Option<u32> {
        crate::codec::find_param(&self.params, "reg-id")
            .flatten()
            .and_then(|v| v.parse().ok())
    }

    /// The Flexisip hash field this contact asks for: the first non-empty of
    /// `+sip.instance`, `pn-tok`, `line` (header parameter first, then URI parameter), raw.
    pub fn unique_id(&self) -> Option<String> {
        let uri_params = split_uri(&self.uri).map(|(_, p)| p).unwrap_or_default();
        for name in ["+sip.instance", "pn-tok", "line"] {
            if let Some(v) = crate::codec::find_param(&self.params, name) {
                // Flexisip returns the header parameter even when empty, which then
                // means "generate one".
                return v.filter(|v| !v.is_empty()).map(str::to_owned);
            }
            if let Some((_, _, Some(v))) = uri_params
                .iter()
                .find(|(_, n, _)| n.eq_ignore_ascii_case(name))
            {
                if !v.is_empty() {
                    return Some((*v).to_owned());
                }
            }
        }
        None
    }

    /// The contact URI with the push parameters removed.
    pub fn uri_without_push(&self) -> String {
        strip_uri_params(&self.uri, |n| {
            PUSH_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(n))
        })
    }
}

/// `uri` without the parameters `drop` selects (and, when `drop_headers`, without `?…`).
pub(crate) fn strip_uri_params(uri: &str, drop: impl Fn(&str) -> bool) -> String {
    let (main, headers) = match uri.find('?') {
        Some(q) => (&uri[..q], Some(&uri[q..])),
        None => (uri, None),
    };
    let Some((base, params)) = split_uri(main) else {
        return uri.to_owned();
    };
    let mut out = base.to_owned();
    for (raw, name, _) in params {
        if !drop(name) {
            out.push(';');
            out.push_str(raw);
        }
    }
    if let Some(h) = headers {
        out.push_str(h);
    }
    out
}

/// The key of the AOR: `user@host` of the From URI as received (no scheme, no port, no
/// params); the host alone when the URI has no user (Flexisip's `defineKeyFromUrl`).
pub fn aor_of(m: &Message) -> Option<String> {
    let from = m.from()?;
    let sip = from.uri.as_sip()?;
    let host = String::from_utf8_lossy(sip.host_raw);
    Some(match sip.user {
        Some(u) => format!("{}@{host}", String::from_utf8_lossy(u)),
        None => host.into_owned(),
    })
}

/// Checks a REGISTER (RFC 3261 §10.3): From and To must be SIP URIs, contacts must parse and
/// be SIP URIs, `Expires` and `expires` must be numbers, `Contact: *` only alone and with
/// `Expires: 0`. All of these give 400. The 423 for a too-brief expiry is not decided here,
/// since only a registrar answering itself refuses it: see [`Register::local_expiry`], which
/// [`crate::apply`] calls in local mode.
pub fn parse_register(m: &Message, s: &Settings) -> Result<Register, Reject> {
    if m.method() != Some(Method::Register) {
        return Err(Reject::bad("Not a REGISTER"));
    }
    let from = m.from().ok_or(Reject::bad("Bad From"))?;
    let from_sip = from
        .uri
        .as_sip()
        .ok_or(Reject::bad("From is not a SIP URI"))?;
    let to = m.to().ok_or(Reject::bad("Bad To"))?;
    let Some(to_sip) = to.uri.as_sip() else {
        return Err(Reject::bad("To is not a SIP URI"));
    };
    // The record is keyed by From (Flexisip's layout) while a PBX registrar binds and
    // authenticates To: a REGISTER whose two differ would write, under an identity nobody
    // checked, someone else's record. Third-party registration is refused (RFC 3261 §10.2
    // lets a registrar do so).
    if from_sip.user != to_sip.user || !from_sip.host_raw.eq_ignore_ascii_case(to_sip.host_raw) {
        return Err(Reject {
            status: 403,
            reason: "Third-party registration not allowed",
            headers: Vec::new(),
        });
    }
    let aor = aor_of(m).ok_or(Reject::bad("Bad From"))?;
    let expires = match m.header_values(HeaderName::Expires).next() {
        Some(v) => Some(parse_delta(v).ok_or(Reject::bad("Bad Expires"))?),
        None => None,
    };

    let mut star = false;
    let mut contacts = Vec::new();
    for value in m.header_values(HeaderName::Contact) {
        if trim(value) == b"*" {
            star = true;
            continue;
        }
        let list =
            stg_sip_msg::parse_name_addr_list(value).map_err(|_| Reject::bad("Bad Contact"))?;
        for na in list {
            contacts.push(contact_of(&na)?);
        }
    }
    // Each contact costs a merge against every stored one and up to a record value of its
    // size: a REGISTER cannot bring more than the AOR may keep, nor contacts of any size.
    if contacts.len() > s.max_contacts {
        return Err(Reject {
            status: 403,
            reason: "Too many contacts",
            headers: Vec::new(),
        });
    }
    if contacts.iter().any(|c| c.raw.len() > MAX_CONTACT_LEN) {
        return Err(Reject::bad("Contact too long"));
    }
    if contacts
        .iter()
        .filter_map(Contact::instance)
        .any(|i| !valid_instance(i))
    {
        return Err(Reject::bad("Bad +sip.instance"));
    }
    if star && (!contacts.is_empty() || expires != Some(0)) {
        return Err(Reject::bad(
            "Contact * needs Expires: 0 and no other contact",
        ));
    }

    let mut path = Vec::new();
    for value in m.header_values(HeaderName::Path) {
        let list = stg_sip_msg::parse_name_addr_list(value).map_err(|_| Reject::bad("Bad Path"))?;
        path.extend(list.iter().map(|na| text(na.uri.as_bytes())));
    }
    let user_agent = m
        .header_values_by_name(b"User-Agent")
        .next()
        .map(|v| text(trim(&v[..v.len().min(MAX_USER_AGENT_LEN)])))
        .filter(|v| !v.is_empty());
    let accept = m
        .header_values_by_name(b"Accept")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|item| text(trim(item.split(|&b| b == b';').next().unwrap_or(item))))
        // A media type is a token pair: anything with a space or a control character in it
        // (a vertical tab survives the trim) would not read back the same.
        .filter(|a| {
            !a.is_empty() && a.len() <= MAX_ACCEPT_LEN && a.bytes().all(|b| b.is_ascii_graphic())
        })
        .take(MAX_ACCEPT)
        .collect();
    let supported = m
        .option_tags(HeaderName::Supported)
        .map(|t| text(t).to_ascii_lowercase())
        .collect();

    Ok(Register {
        aor,
        from_uri: text(from_sip.raw),
        from_has_user: from_sip.user.is_some(),
        call_id: text(m.call_id()),
        cseq: m.cseq(),
        expires,
        star,
        contacts,
        path,
        user_agent,
        accept,
        supported,
    })
}

/// Longest Contact value kept (a device's, push parameters included, is a few hundred).
const MAX_CONTACT_LEN: usize = 1024;
/// Longest User-Agent stored (longer ones are cut).
const MAX_USER_AGENT_LEN: usize = 256;
/// Media types of Accept stored, and the longest one.
const MAX_ACCEPT: usize = 16;
const MAX_ACCEPT_LEN: usize = 128;

/// A `+sip.instance` value stg can store and quote back in a `pub-gruu`: `"<urn>"` with no
/// quote, backslash or angle bracket inside the URN.
fn valid_instance(v: &str) -> bool {
    let inner = v
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(v);
    let urn = inner
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(inner);
    !urn.is_empty()
        && !urn
            .bytes()
            .any(|b| matches!(b, b'"' | b'\\' | b'<' | b'>') || b.is_ascii_control())
}

fn contact_of(na: &NameAddr<'_>) -> Result<Contact, Reject> {
    let Uri::Sip(_) = na.uri else {
        return Err(Reject::bad("Contact is not a SIP URI"));
    };
    let params: Vec<(String, Option<String>)> =
        na.params().map(|(n, v)| (text(n), v.map(text))).collect();
    let expires = match crate::codec::find_param(&params, "expires") {
        Some(v) => Some(
            v.and_then(|v| parse_delta(v.as_bytes()))
                .ok_or(Reject::bad("Bad Contact expires"))?,
        ),
        None => None,
    };
    Ok(Contact {
        raw: text(na.raw),
        display_name: na.display.map(text),
        uri: text(na.uri.as_bytes()),
        params_raw: text(na.params),
        params,
        expires,
    })
}

/// `delta-seconds`; beyond 2³²−1 saturates (RFC 3261 §20.19 lets a registrar lower it).
fn parse_delta(v: &[u8]) -> Option<u32> {
    let v = trim(v);
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(u32::try_from(n).unwrap_or(u32::MAX))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Through mode: the Contact header values to send upstream. Push parameters are removed
/// from each URI when [`Settings::strip_push_params`] says so; everything else is kept as
/// received. `Contact: *` stays `*`.
pub fn upstream_contacts(reg: &Register, s: &Settings) -> Vec<String> {
    if reg.star {
        return vec!["*".to_owned()];
    }
    reg.contacts
        .iter()
        .map(|c| {
            if !s.strip_push_params {
                return c.raw.clone();
            }
            let stripped = c.uri_without_push();
            if stripped == c.uri {
                // Nothing to remove: the value goes on byte for byte, as a proxy forwards
                // what it does not need to change.
                return c.raw.clone();
            }
            let mut out = String::new();
            if let Some(d) = &c.display_name {
                out.push_str(d);
                out.push(' ');
            }
            out.push('<');
            out.push_str(&stripped);
            out.push('>');
            out.push_str(&c.params_raw);
            out
        })
        .collect()
}
