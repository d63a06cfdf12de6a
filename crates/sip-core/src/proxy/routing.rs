//! The routing step (RFC 3261 §16.5): what a request's targets are.
//!
//! A request yields a [`Route`]: a known flow, a URI to resolve (RFC 3263), or a question for
//! a service the core does not own: the *location service* (a request from the PBX for a
//! registered device, [`Output::Locate`]) or the *registrar* (a device's REGISTER,
//! [`Output::Register`]). Those answers are asynchronous (the store is Redis or a file), so
//! they leave as outputs and come back as inputs ([`Proxy::handle_located`],
//! [`Proxy::handle_register`]), exactly like [`Output::Resolve`]; meanwhile the response
//! context waits with no branch and does not end. Each answer becomes a *target set*: one
//! branch per target, each with its own Request-URI and flow.
//!
//! The registrar itself (bindings, expiry, the Flexisip record) is not here: it lives in
//! `stg-registrar`, and the shell calls it between the output and the input. The core only
//! decides *which* requests are the registrar's and how a registration travels: upstream with
//! stg's Path (RFC 3327) in `through` mode, answered by the node in `local` mode.

use bytes::Bytes;
use stg_sip_msg::{Message, Method, SipUri, StatusCode, Uri};

use super::{uri_target, DestPolicy, Inbound, Plan, Proxy, ResolveTarget};
use crate::net::{Flow, Side};

/// How the node takes registrations for a domain (`[registrar]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrarMode {
    /// The PBX is the registrar: the REGISTER goes upstream with stg's Path, and the binding
    /// is stored when the PBX answers 2xx, with the expiry it granted (Flexisip's
    /// `reg-on-response`).
    Through,
    /// stg is the registrar: it challenges, stores and answers itself.
    Local,
}

/// One registrar domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrarDomain {
    /// The domain of the Request-URI of a REGISTER (and of the AORs the PBX calls); `*`
    /// takes every REGISTER, and calls addressed to the node's own names.
    pub domain: String,
    /// How.
    pub mode: RegistrarMode,
    /// Devices of this domain (the From host) must prove who they are with digest before
    /// their INVITEs and MESSAGEs go upstream ([`Output::Authorize`]).
    pub authenticate: bool,
}

/// Id of a location or registrar operation the shell performs for the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(pub(super) u64);

/// A registration for the shell to process ([`Output::Register`]).
#[derive(Clone, Debug)]
pub struct Registration {
    /// The id to answer with.
    pub id: OpId,
    /// The domain's mode.
    pub mode: RegistrarMode,
    /// The REGISTER as the device sent it.
    pub request: Message,
    /// The flow it came on.
    pub flow: Flow,
    /// The flow token naming that flow (a binding's `fs-conn-id`).
    pub flow_token: String,
    /// stg's own Path entry (RFC 3327): the one sent upstream in `through` mode, the inside
    /// listener's in `local` mode. Stored first in the binding's path.
    pub path: Bytes,
    /// `through` mode, second step: the PBX's 2xx; store the binding with the expiry it
    /// granted. `None`: check the request (`through`) or handle it whole (`local`).
    pub response: Option<Message>,
}

/// The shell's answer to an [`Output::Register`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterAnswer {
    /// `through` mode, first step: send the REGISTER upstream with these Contact values in
    /// place of the device's (push parameters removed).
    Forward {
        /// Contact header values.
        contacts: Vec<Bytes>,
    },
    /// The final answer. After a PBX 2xx, a 2xx here forwards the PBX's response with its
    /// Contact headers replaced by `headers`; any other status (the store failed) answers
    /// from the request.
    Respond {
        /// Status.
        status: StatusCode,
        /// Headers to add (Contact, Expires, Min-Expires, WWW-Authenticate, Retry-After…).
        headers: Vec<(&'static str, Bytes)>,
    },
}

/// The shell's answer to an [`Output::Authorize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authorization {
    /// The credentials checked: the request goes on (without them: they were for stg).
    Allow,
    /// Answer this instead (407 with a challenge, 503 when the credentials store failed).
    Deny {
        /// Status.
        status: StatusCode,
        /// Headers to add (`Proxy-Authenticate`, `Retry-After`).
        headers: Vec<(&'static str, Bytes)>,
    },
}

/// A target the location service found for a request ([`Proxy::handle_located`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The binding's contact: the branch's Request-URI.
    pub uri: Bytes,
    /// The flow token the binding recorded (`fs-conn-id`); a token that does not check (an
    /// older process, another node, garbage) means the device is not connected here.
    pub conn: Option<String>,
    /// The binding's Path (RFC 3327), top first, each a URI with or without brackets. When
    /// the device is not connected here, a first entry naming another node (a cluster peer,
    /// a Flexisip node during a migration) is where the request goes, with the path as its
    /// Route set; an entry of this node's means the connection is gone (480).
    pub path: Vec<Bytes>,
    /// The binding's key in its AOR's record (`+sip.instance`, else the push token or a
    /// generated id): the device, when it binds again.
    pub key: Bytes,
    /// Set when the binding has push parameters: how its device is woken.
    pub wake: Option<super::Wake>,
}

/// Where a request goes next.
#[derive(Debug)]
pub(super) enum Target {
    /// Over a known flow (a flow token).
    Flow(Flow),
    /// To a URI's host, resolved per RFC 3263, on a side, under a destination policy.
    Resolve(ResolveTarget, Side, DestPolicy),
}

/// What the routing step decided for a request.
#[derive(Debug)]
pub(super) enum Route {
    /// One target now.
    Target(Target),
    /// Ask the location service for the bindings of this AOR (`user@host` as received).
    Locate(String),
    /// A new call the PBX sends along a device's Path (through mode): to that flow, but with
    /// the device's binding looked up first (its push parameters), so a device whose
    /// connection is gone can be woken. The AOR is the To's.
    LocatePath(String, Flow),
    /// The registrar's.
    Register(RegistrarMode),
    /// To the upstream once the device has proven who it is.
    Authorize,
}

impl Proxy {
    /// The one place a request's next hop is chosen.
    pub(super) fn route_request(
        &self,
        m: &Message,
        inbound: Inbound,
        plan: &mut Plan,
        route_flow: Option<Flow>,
    ) -> Route {
        if inbound.side == Side::Outside {
            if m.method() == Some(Method::Register) {
                if let Some(mode) = self.registrar_mode(m) {
                    return Route::Register(mode);
                }
            }
            // Out of dialog: no To-tag, or one that does not follow stg's own Record-Route (a
            // made-up "in-dialog" request is no less initial to a PBX that trusts stg).
            let initial = m.to_tag().is_none() || plan.pop_routes == 0;
            if initial
                && !matches!(m.method(), Some(Method::Ack | Method::Cancel))
                && self.must_authenticate(m)
            {
                return Route::Authorize;
            }
            return Route::Target(Target::Resolve(
                self.config.upstream.clone(),
                Side::Inside,
                DestPolicy::Upstream,
            ));
        }
        if let Some(flow) = route_flow {
            let initial = m.to_tag().is_none()
                && matches!(m.method(), Some(Method::Invite | Method::Message));
            if initial && !self.config.registrar.is_empty() {
                if let Some(aor) = m.to().and_then(|t| to_aor(&t.uri)) {
                    return Route::LocatePath(aor, flow);
                }
            }
            return Route::Target(Target::Flow(flow));
        }
        // Strict-router compatibility (RFC 3261 §16.4): our own URI as Request-URI means the
        // previous hop replaced it with our Record-Route; the real one is the last Route.
        if let Some(Uri::Sip(u)) = m.request_uri() {
            if self.is_local(&u) && u.lr() {
                if let Some(last) = m.routes().nth(plan.pop_routes).and(m.routes().last()) {
                    plan.request_uri = Some(m.slice(last.uri.as_bytes()));
                    plan.remove_last_route = true;
                }
                if let Some(f) = u.user.and_then(|t| self.tokens.decode(t)) {
                    return Route::Target(Target::Flow(f));
                }
            }
        }
        // A request for a registered device addressed to its AOR (the PBX routes the domain
        // to stg): the location service knows where it is. Only with no foreign Route left
        // (a Route would name the next hop) and never for an ACK or CANCEL (hop by hop).
        if m.routes().nth(plan.pop_routes).is_none()
            && !matches!(m.method(), Some(Method::Ack | Method::Cancel))
        {
            if let Some(Uri::Sip(u)) = m.request_uri() {
                if let Some(aor) = self.aor_for_location(&u) {
                    return Route::Locate(aor);
                }
            }
        }
        let next = m
            .routes()
            .nth(plan.pop_routes)
            .map(|r| r.uri)
            .or_else(|| m.request_uri());
        let target = match next.as_ref().and_then(Uri::as_sip) {
            Some(u) => uri_target(u),
            None => ResolveTarget {
                host: String::new(),
                port: None,
                transport: None,
                sips: false,
            },
        };
        let policy = if target == self.config.upstream {
            DestPolicy::Upstream
        } else {
            DestPolicy::Chosen
        };
        Route::Target(Target::Resolve(target, Side::Outside, policy))
    }

    /// The registrar mode of a REGISTER's domain (its Request-URI host), if stg registers it.
    fn registrar_mode(&self, m: &Message) -> Option<RegistrarMode> {
        let Some(Uri::Sip(u)) = m.request_uri() else {
            return None;
        };
        self.config
            .registrar
            .iter()
            .find(|d| d.domain == "*" || d.domain.as_bytes().eq_ignore_ascii_case(u.host_raw))
            .map(|d| d.mode)
    }

    /// Whether a request from outside must prove its caller first. Once any domain asks for
    /// digest, the PBX is taking stg's word for who calls, so the From host a device writes
    /// cannot be the way around it: only a caller of a `through` domain (whose PBX checks
    /// credentials itself) is let through unchecked; any other From (an authenticating
    /// domain, an unknown host, an IP) is challenged in its own realm, where only real users
    /// of that domain can answer.
    fn must_authenticate(&self, m: &Message) -> bool {
        if !self.config.registrar.iter().any(|d| d.authenticate) {
            return false;
        }
        let host = m
            .from()
            .and_then(|f| f.uri.as_sip().map(|u| u.host_raw.to_vec()))
            .unwrap_or_default();
        let through = self.config.registrar.iter().any(|d| {
            d.mode == RegistrarMode::Through
                && d.domain != "*"
                && d.domain.as_bytes().eq_ignore_ascii_case(&host)
        });
        !through
    }

    /// `user@host` when a Request-URI names an AOR of a registrar domain: the domain itself,
    /// or with `*`, one of the node's own names.
    pub(super) fn aor_for_location(&self, u: &SipUri<'_>) -> Option<String> {
        let user = u.user?;
        let ours = self.config.registrar.iter().any(|d| {
            if d.domain == "*" {
                self.is_local(u)
            } else {
                d.domain.as_bytes().eq_ignore_ascii_case(u.host_raw)
            }
        });
        if !ours || user.is_empty() {
            return None;
        }
        let mut aor = String::with_capacity(user.len() + 1 + u.host_raw.len());
        aor.push_str(std::str::from_utf8(user).ok()?);
        aor.push('@');
        aor.push_str(std::str::from_utf8(u.host_raw).ok()?);
        Some(aor)
    }

    /// stg's Path entry (RFC 3327, with `ob`, RFC 5626 §5.1): the listener the REGISTER
    /// leaves on (the one the PBX sends the device's calls back to), the device's flow token
    /// as user part.
    pub(super) fn path_entry(
        &self,
        device: &Flow,
        out_listener: Option<super::ListenerId>,
    ) -> Bytes {
        let l = out_listener
            .and_then(|id| self.listener(id))
            .or_else(|| {
                self.config
                    .listeners
                    .iter()
                    .find(|l| l.side == Side::Inside)
            })
            .or_else(|| self.config.listeners.first());
        let Some(l) = l else {
            return Bytes::new();
        };
        let host_port = self.host_port(l.id);
        let token = self.tokens.encode(device);
        let mut e = Vec::with_capacity(token.len() + host_port.len() + 40);
        e.extend_from_slice(b"<sip:");
        e.extend_from_slice(token.as_bytes());
        e.push(b'@');
        e.extend_from_slice(&host_port);
        e.extend_from_slice(b";transport=");
        e.extend_from_slice(l.transport.param().as_bytes());
        if !self.config.node_id.is_empty() {
            e.extend_from_slice(b";stg-node=");
            e.extend_from_slice(self.config.node_id.as_bytes());
        }
        e.extend_from_slice(b";lr;ob>");
        Bytes::from(e)
    }
}

impl Proxy {
    /// Where a binding is reached: over its flow when its token names a connection of this
    /// process; else through the node its Path names first (with the path as Route set),
    /// unless that node is this one (then the connection is gone: `None`, 480).
    pub(super) fn binding_target(&self, t: &Located) -> Option<(Target, Vec<Bytes>)> {
        let flow = t
            .conn
            .as_deref()
            .and_then(|c| self.tokens.decode(c.as_bytes()))
            .filter(|f| {
                self.listener(f.listener)
                    .is_some_and(|l| l.side == Side::Outside)
            });
        if let Some(f) = flow {
            return Some((Target::Flow(f), Vec::new()));
        }
        let first = t.path.first()?;
        let inner = strip_brackets(first);
        let Ok(Uri::Sip(u)) = Uri::parse(inner) else {
            return None;
        };
        if self.is_local(&u) {
            return None;
        }
        // Every entry becomes a Route header: each must be one SIP URI, nothing else (a stored
        // value is as good as whoever could write the store).
        let all_uris = t.path.iter().all(|p| {
            let inner = strip_brackets(p);
            matches!(Uri::parse(inner), Ok(Uri::Sip(_)))
                && !inner
                    .iter()
                    .any(|&b| b == b'<' || b == b'>' || b.is_ascii_control())
        });
        if !all_uris {
            return None;
        }
        let routes = t
            .path
            .iter()
            .map(|p| {
                if p.first() == Some(&b'<') {
                    p.clone()
                } else {
                    let mut v = Vec::with_capacity(p.len() + 2);
                    v.push(b'<');
                    v.extend_from_slice(p);
                    v.push(b'>');
                    Bytes::from(v)
                }
            })
            .collect();
        // The path came from the store, not from the request, yet a device's record must not
        // become a way to reach what the destination filter protects.
        Some((
            Target::Resolve(uri_target(&u), Side::Inside, DestPolicy::Chosen),
            routes,
        ))
    }
}

fn strip_brackets(v: &[u8]) -> &[u8] {
    let v = v.trim_ascii();
    match (v.first(), v.last()) {
        (Some(b'<'), Some(b'>')) => &v[1..v.len() - 1],
        _ => v,
    }
}

/// The status for a request whose location lookup found no reachable target: nobody
/// registered (404), or bindings whose connections are gone (480, the calls-and-push issue
/// wakes them up).
pub(super) fn unreachable_status(found: usize) -> StatusCode {
    if found == 0 {
        StatusCode(404)
    } else {
        StatusCode(480)
    }
}

/// `user@host` of a To URI (the AOR a device registered under, when the PBX kept it).
fn to_aor(u: &Uri<'_>) -> Option<String> {
    let u = u.as_sip()?;
    let user = std::str::from_utf8(u.user.filter(|x| !x.is_empty())?).ok()?;
    let host = std::str::from_utf8(u.host_raw).ok()?;
    Some(format!("{user}@{host}"))
}
