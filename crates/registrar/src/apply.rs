//! Applying a REGISTER to an AOR's record (RFC 3261 §10.3 steps 6–8, RFC 5626 §6,
//! RFC 5627 §5, RFC 8599 token uniqueness), and the 200 OK that answers it.

use std::collections::{BTreeMap, BTreeSet};

use stg_sip_msg::{HeaderName, Message};

use crate::codec::{find_param, generate_key, Binding, BOOKKEEPING_PARAMS};
use crate::register::{strip_uri_params, Contact, Register, Reject};
use crate::Settings;

/// Where and when the binding was made.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    /// The device's connection; goes to `fs-conn-id` (omitted when empty).
    pub conn_id: &'a str,
    /// Our own Path entry first, then the request's Path values (URIs, brackets optional).
    pub path: &'a [String],
    /// Unix seconds.
    pub now: u64,
}

/// What to write for one REGISTER. Order for the store (one MULTI/EXEC, as Flexisip):
/// `DEL` when `delete_all`, else `HDEL del…`, `HSET set…`, `EXPIREAT expire_at`; then
/// `PUBLISH publish.0 publish.1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Fields to write (field, Flexisip value).
    pub set: Vec<(String, String)>,
    /// Fields to delete (expired, removed with `expires=0`, replaced under another field,
    /// evicted). Never holds a field of `set`.
    pub del: Vec<String>,
    /// Delete the whole hash: `Contact: *`, or no live binding left.
    pub delete_all: bool,
    /// Latest expiry among the live bindings after the change (`EXPIREAT`); `None` with
    /// `delete_all`.
    pub expire_at: Option<u64>,
    /// Channel `user@host` and message: the unique id (`+sip.instance`, else `pn-tok`, else
    /// `line`, raw) of the first contact, or `""` (what Flexisip nodes listen for).
    pub publish: (String, String),
    /// All live bindings of the AOR after the change, newest first.
    pub bindings: Vec<Binding>,
}

/// The live bindings of a record, newest first (ties by field); undecodable values are
/// skipped and counted, as Flexisip skips them.
pub fn live_bindings(current: &BTreeMap<String, String>, now: u64) -> (Vec<Binding>, usize) {
    let mut bad = 0;
    let mut live: Vec<Binding> = current
        .iter()
        .filter_map(|(k, v)| match Binding::decode(k, v) {
            Ok(b) => Some(b),
            Err(_) => {
                bad += 1;
                None
            }
        })
        .filter(|b| b.is_live(now))
        .collect();
    sort_newest_first(&mut live);
    (live, bad)
}

fn sort_newest_first(v: &mut [Binding]) {
    v.sort_by(|a, b| {
        b.updated_at
            .cmp(&a.updated_at)
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// Applies a REGISTER to the AOR's current hash (field → value, as read from the store).
///
/// `granted`: through mode, the 2xx the PBX sent; its expiries win (a Contact of the 2xx
/// whose URI matches ours, push parameters aside, with an `expires` parameter; else, when
/// both sides have exactly one contact, that one's `expires`; else its `Expires` header;
/// else what the device asked for, or the default). `None`: local mode, where
/// [`Register::local_expiry`] decides and may refuse with 423.
///
/// Matching (Flexisip's rules): a binding with the same push token (provider, prid, param)
/// is replaced; a contact with a device identifier (`+sip.instance`, `pn-tok`, `line`)
/// replaces the binding under that field (RFC 5626: Flexisip keys by instance only, so a
/// second flow with another `reg-id` replaces the first); a contact without one replaces a
/// binding without one whose URI matches (RFC 3261 §19.1.4), keeping its `fs-gen-` field.
///
/// CSeq: a matched binding with the same Call-ID and a CSeq not lower than the request's
/// means the request is old (RFC 3261 §10.3 step 6: "the update MUST be aborted and the
/// request fails"). RFC 3261 names no status for a REGISTER; it gives 500 for an
/// out-of-order request in a dialog (§12.2.2), so local mode answers **500** (nothing is
/// written). In through mode the PBX has already accepted it, so that contact alone is
/// not stored.
pub fn apply(
    current: &BTreeMap<String, String>,
    reg: &Register,
    origin: &Origin<'_>,
    granted: Option<&Message>,
    s: &Settings,
    rng: &mut dyn FnMut() -> u64,
) -> Result<Applied, Reject> {
    let now = origin.now;
    if let Some(resp) = granted {
        if !resp.status().is_some_and(|st| st.is_success()) {
            return Err(Reject {
                status: 500,
                reason: "Upstream did not accept the REGISTER",
                headers: Vec::new(),
            });
        }
    }
    let local = granted.is_none();
    let publish = (
        reg.aor.clone(),
        reg.contacts
            .first()
            .and_then(Contact::unique_id)
            .unwrap_or_default(),
    );

    let mut live = Vec::new();
    let mut del = BTreeSet::new();
    for (k, v) in current {
        // Undecodable values stay untouched (Flexisip skips them too).
        if let Ok(b) = Binding::decode(k, v) {
            if b.is_live(now) {
                live.push(b);
            } else {
                del.insert(b.key);
            }
        }
    }

    if reg.star {
        let old = live
            .iter()
            .any(|b| b.call_id == reg.call_id && b.cseq >= reg.cseq);
        if old && local {
            return Err(out_of_order());
        }
        return Ok(Applied {
            delete_all: true,
            publish,
            ..Applied::default()
        });
    }

    // Local mode: every expiry is checked before anything changes.
    let mut expiries = Vec::with_capacity(reg.contacts.len());
    for c in &reg.contacts {
        expiries.push(match granted {
            None => reg.local_expiry(c, s)?,
            Some(resp) => granted_expiry(resp, reg, c, s),
        });
    }

    let path: Vec<String> = origin.path.iter().map(|p| bare_uri(p)).collect();
    let mut set_keys = BTreeSet::new();
    for (i, c) in reg.contacts.iter().enumerate() {
        let expiry = expiries[i];
        let unique = c.unique_id();
        // RFC 5626 §4.2 clients may list the same instance twice, once with expires=0 for
        // an old flow: that one is ignored (as Flexisip does).
        if expiry == 0
            && unique.is_some()
            && reg
                .contacts
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && o.unique_id() == unique)
        {
            continue;
        }
        let mut nb = new_binding(reg, c, &path, origin, expiry, unique.clone(), s);

        // Which existing bindings this contact replaces.
        let mut matched = Vec::new();
        let mut old = false;
        let new_push = nb.push();
        for (j, ex) in live.iter().enumerate() {
            let same = match &unique {
                Some(u) => *u == ex.key,
                None => ex.has_generated_key() && uri_equal(&ex.uri, &nb.uri),
            };
            if same {
                if ex.call_id == reg.call_id && ex.cseq >= reg.cseq {
                    old = true;
                }
                matched.push((j, true));
            } else if new_push.is_some() && ex.push() == new_push && ex.updated_at <= now {
                // RFC 8599 tokens are per device: the older binding is stale.
                matched.push((j, false));
            }
        }
        if old {
            if local {
                return Err(out_of_order());
            }
            continue;
        }
        let carried = matched
            .iter()
            .find(|(_, by_id)| *by_id)
            .map(|&(j, _)| live[j].key.clone());
        for &(j, _) in matched.iter().rev() {
            let gone = live.remove(j);
            del.insert(gone.key);
        }
        if expiry == 0 {
            continue;
        }
        nb.key = match (unique, carried) {
            (Some(u), _) => u,
            (None, Some(k)) => k,
            (None, None) => generate_key(rng),
        };
        set_keys.insert(nb.key.clone());
        live.push(nb);
    }

    // Too many bindings: the oldest go (RFC 3261 leaves the policy open; Flexisip's rule).
    sort_newest_first(&mut live);
    while live.len() > s.max_contacts.max(1) {
        if let Some(gone) = live.pop() {
            set_keys.remove(&gone.key);
            del.insert(gone.key);
        }
    }

    let set: Vec<(String, String)> = live
        .iter()
        .filter(|b| set_keys.contains(&b.key))
        .map(|b| (b.key.clone(), b.encode()))
        .collect();
    // What cannot be read back would never count against max_contacts nor expire with the
    // rest: nothing is written that does not decode.
    if set.iter().any(|(k, v)| Binding::decode(k, v).is_err()) {
        return Err(Reject::bad("Contact cannot be stored"));
    }
    for (k, _) in &set {
        del.remove(k);
    }
    let expire_at = live.iter().map(Binding::expires_at).max();
    Ok(Applied {
        set,
        del: del.into_iter().collect(),
        delete_all: live.is_empty() && !reg.is_fetch(),
        expire_at,
        publish,
        bindings: live,
    })
}

fn out_of_order() -> Reject {
    Reject {
        status: 500,
        reason: "Out of order CSeq",
        headers: Vec::new(),
    }
}

fn new_binding(
    reg: &Register,
    c: &Contact,
    path: &[String],
    origin: &Origin<'_>,
    expiry: u32,
    unique: Option<String>,
    s: &Settings,
) -> Binding {
    // A device does not choose our bookkeeping, nor URI headers (Flexisip overwrites them).
    let uri = strip_uri_params(&c.uri, |n| {
        BOOKKEEPING_PARAMS.iter().any(|b| b.eq_ignore_ascii_case(n))
    });
    let uri = match uri.find('?') {
        Some(q) => uri[..q].to_owned(),
        None => uri,
    };
    let mut params: Vec<(String, Option<String>)> = c
        .params
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("expires") && !n.eq_ignore_ascii_case("pub-gruu"))
        .cloned()
        .collect();
    // RFC 5627 §5.4 pub-gruu, as Flexisip stores it: the From URI with `gr=` the instance's
    // URN when the device supports gruu, else an empty `pub-gruu` flag.
    let gruu = (reg.supports("gruu") && s.gruu)
        .then(|| c.instance().and_then(instance_urn))
        .flatten()
        .map(|urn| format!("\"{};gr={urn}\"", reg.from_uri));
    params.push(("pub-gruu".to_owned(), gruu));
    Binding {
        key: unique.unwrap_or_default(),
        display_name: c.display_name.clone(),
        uri,
        // Kept to URI-parameter-safe characters: it is written raw, as Flexisip's hex is.
        conn_id: Some(
            origin
                .conn_id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect::<String>(),
        )
        .filter(|c| !c.is_empty()),
        call_id: reg.call_id.clone(),
        cseq: reg.cseq,
        expires: expiry,
        updated_at: origin.now,
        alias: false,
        used_as_route: !reg.from_has_user,
        path: path.to_vec(),
        accept: reg.accept.clone(),
        user_agent: reg.user_agent.clone(),
        params,
    }
}

/// `"<urn:uuid:…>"` → `urn:uuid:…`.
fn instance_urn(raw: &str) -> Option<&str> {
    let start = raw.find('<')? + 1;
    let end = start + raw[start..].find('>')?;
    (end > start).then(|| &raw[start..end])
}

fn bare_uri(p: &str) -> String {
    let p = p.trim();
    p.strip_prefix('<')
        .and_then(|r| r.split_once('>'))
        .map_or(p, |(u, _)| u)
        .to_owned()
}

/// Through mode: the expiry the PBX granted to our contact `c`.
fn granted_expiry(resp: &Message, reg: &Register, c: &Contact, s: &Settings) -> u32 {
    let ours = c.uri_without_push();
    let theirs: Vec<_> = resp.contacts().collect();
    let param = |na: &stg_sip_msg::NameAddr<'_>| {
        na.param(b"expires")
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    let by_uri = theirs.iter().find(|na| {
        std::str::from_utf8(na.uri.as_bytes())
            .is_ok_and(|u| uri_equal(&strip_uri_params(u, |_| false), &ours))
    });
    if let Some(e) = by_uri.and_then(param) {
        return e;
    }
    if theirs.len() == 1 && reg.contacts.len() == 1 {
        if let Some(e) = param(&theirs[0]) {
            return e;
        }
    }
    let header = resp
        .header_values(HeaderName::Expires)
        .next()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    // The PBX's word wins; when it said nothing, the device's wish is bounded as in local
    // mode (a device must not make its binding outlive every refresh).
    header.unwrap_or_else(|| {
        c.expires
            .or(reg.expires)
            .unwrap_or(s.default_expires)
            .min(s.max_expires)
    })
}

/// RFC 3261 §19.1.4, reduced to what tells two device contacts apart: scheme, user
/// (case-sensitive), host (case-insensitive), port, and the `transport`, `user`, `maddr`
/// parameters when either side has them. Other parameters (push tokens included) are
/// ignored, since both sides rarely carry the same ones.
pub(crate) fn uri_equal(a: &str, b: &str) -> bool {
    let parts = |u: &str| {
        let main = u.split('?').next().unwrap_or(u);
        let (base, params) = crate::codec::split_uri(main)?;
        let (scheme, rest) = base.split_once(':')?;
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u.split(':').next().unwrap_or(u).to_owned()), h),
            None => (None, rest),
        };
        let key = |n: &str| {
            params
                .iter()
                .find(|(_, pn, _)| pn.eq_ignore_ascii_case(n))
                .and_then(|(_, _, v)| *v)
                .map(str::to_ascii_lowercase)
        };
        Some((
            scheme.to_ascii_lowercase(),
            user,
            hostport.to_ascii_lowercase(),
            key("transport"),
            key("user"),
            key("maddr"),
        ))
    };
    match (parts(a), parts(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The 200 OK's headers for the device: one `Contact` per live binding with
/// `;expires=<remaining>` (RFC 3261 §10.3 step 8), its `+sip.instance` and `reg-id`, and
/// `pub-gruu` when the request had `Supported: gruu` and the binding has one (RFC 5627
/// §5.4); `Require: outbound` when the request had `Supported: outbound` and a contact with
/// `reg-id` and `+sip.instance` (RFC 5626 §6: we are the edge proxy, so the flow is ours).
pub fn ok_headers(reg: &Register, applied: &Applied, now: u64) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for b in &applied.bindings {
        let mut v = format!("<{}>;expires={}", b.uri, b.expires_at().saturating_sub(now));
        for name in ["+sip.instance", "reg-id"] {
            if let Some(Some(val)) = find_param(&b.params, name) {
                v.push_str(&format!(";{name}={val}"));
            }
        }
        if reg.supports("gruu") && b.instance().is_some() {
            if let Some(Some(g)) = find_param(&b.params, "pub-gruu") {
                if !g.is_empty() {
                    v.push_str(&format!(";pub-gruu={g}"));
                }
            }
        }
        out.push(("Contact", v));
    }
    let outbound = reg.supports("outbound")
        && reg
            .contacts
            .iter()
            .any(|c| c.reg_id().is_some() && c.instance().is_some());
    if outbound {
        out.push(("Require", "outbound".to_owned()));
    }
    out
}
