//! The shell around the registrar: what the core's [`Output::Register`] and
//! [`Output::Locate`] ask for, done against the binding store and the credentials.
//!
//! Every decision is made by the sans-IO crates (`stg-registrar` for bindings and answers,
//! `stg-auth` for digest); this module only sequences them around the asynchronous store:
//! the store's atomic read-modify-write runs [`stg_registrar::apply`] on the record it read,
//! so two nodes registering one AOR at the same moment lose nothing.
//!
//! Failures of the store answer 503 with `Retry-After` (the store logs the outage once and
//! counts it); nothing is acknowledged to a device that was not written.
//!
//! [`Output::Register`]: stg_sip_core::proxy::Output::Register
//! [`Output::Locate`]: stg_sip_core::proxy::Output::Locate

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use stg_auth::{AuthFailure, Credentials, Digest, DigestConfig, FailReason, Verdict};
use stg_config::{Config, RegistrarMode as CfgMode};
use stg_registrar::{Applied, Origin, Register, Reject, Settings};
use stg_sip_core::proxy::{
    pn_timeout, Authorization, Located, OpId, RegisterAnswer, RegistrarDomain, RegistrarMode,
    Registration, Wake,
};
use stg_sip_msg::{Message, StatusCode};
use stg_store::{Bindings, Change, StoreError, Users};
use tokio::sync::Semaphore;

use crate::conn::{CoreInput, Shared};

/// Store operations in flight at once; beyond it a registration or a lookup is answered 503
/// at once (a flood of REGISTERs must not queue unbounded work behind a slow store).
const MAX_STORE_OPS: usize = 512;

/// The registrar's state in the shell: stores, policy, the digest engine.
pub(crate) struct Registrar {
    bindings: Bindings,
    users: Option<Users>,
    settings: Settings,
    realm: String,
    digest: Mutex<Digest>,
    /// Registrations and digest checks in flight.
    ops: Arc<Semaphore>,
    /// Location lookups in flight: their own share, so a flood of registrations or
    /// credentials from outside cannot starve the PBX's calls to registered devices.
    lookups: Arc<Semaphore>,
    /// Binds published by other nodes, for the AORs with calls waiting here (Redis only).
    watcher: std::sync::OnceLock<stg_store::Watcher>,
}

/// The core's view of the `[registrar]` domains.
pub(crate) fn domains(config: &Config) -> Vec<RegistrarDomain> {
    config
        .registrar
        .domains
        .iter()
        .map(|d| RegistrarDomain {
            domain: d.name.clone(),
            mode: match d.mode {
                CfgMode::Through => RegistrarMode::Through,
                CfgMode::Local => RegistrarMode::Local,
            },
            authenticate: d.authenticate,
        })
        .collect()
}

/// Wall-clock unix seconds: bindings are shared with other nodes (and Flexisip), so their
/// times are the wall clock's, not the process's monotonic one.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // getrandom fails only without an entropy source at all; then uniqueness, not secrecy,
    // is what the callers (generated binding keys, nonce salt) need.
    if getrandom::fill(&mut b).is_err() {
        return unix_now() ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_le_bytes(b)
}

/// The digest nonce key, kept in `<data_dir>/digest.key` (0600) so that a restart does not
/// turn every device's nonce into a failure; copy the file to every node of a cluster.
fn digest_key(data_dir: &std::path::Path) -> Result<[u8; 32], StoreError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("digest.key");
    if let Ok(bytes) = std::fs::read(&path) {
        return <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            StoreError::Config(format!(
                "{}: holds {} bytes, not a 32-byte key (remove it to make a new one)",
                path.display(),
                bytes.len()
            ))
        });
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| StoreError::Config(format!("no randomness for the digest key: {e}")))?;
    let created = std::fs::create_dir_all(data_dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
    });
    match created {
        Ok(mut f) => f
            .write_all(&key)
            .map_err(|e| StoreError::Config(format!("{}: {e}", path.display())))?,
        // Another process made it first: its key is the one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return digest_key(data_dir),
        Err(e) => return Err(StoreError::Config(format!("{}: {e}", path.display()))),
    }
    Ok(key)
}

fn answer(status: u16, headers: Vec<(&'static str, String)>) -> RegisterAnswer {
    RegisterAnswer::Respond {
        status: StatusCode(status),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n, Bytes::from(v)))
            .collect(),
    }
}

fn rejected(r: &Reject) -> RegisterAnswer {
    answer(r.status, r.headers.clone())
}

fn unavailable() -> RegisterAnswer {
    answer(503, vec![("Retry-After", "5".to_owned())])
}

fn count(mode: &'static str, result: &'static str) {
    metrics::counter!("stg_registrar_registers_total", "mode" => mode, "result" => result)
        .increment(1);
}

impl Registrar {
    /// Opens the stores named by `[store]`. The credentials database is opened only when a
    /// domain is in local mode (through mode never reads it).
    pub(crate) async fn open(config: &Config) -> Result<Self, StoreError> {
        let data_dir = &config.node.data_dir;
        let bindings = Bindings::open(&config.store.url, data_dir).await?;
        let local = config
            .registrar
            .domains
            .iter()
            .any(|d| d.mode == CfgMode::Local);
        let users = if local {
            Some(Users::open(&config.store.users_url, data_dir).await?)
        } else {
            None
        };
        let r = &config.registrar;
        let secs = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let settings = Settings {
            min_expires: secs(r.min_expires),
            max_expires: secs(r.max_expires),
            default_expires: secs(r.default_expires),
            max_contacts: r.max_contacts,
            strip_push_params: r.strip_push_params,
            ..Settings::default()
        };
        let key = digest_key(data_dir)?;
        Ok(Self {
            bindings,
            users,
            settings,
            realm: r.realm.clone(),
            digest: Mutex::new(Digest::new(
                key,
                DigestConfig {
                    algorithms: r
                        .digest_algorithms
                        .iter()
                        .filter_map(|a| stg_auth::Algorithm::parse(a))
                        .collect(),
                    nonce_ttl: r.nonce_ttl,
                    ..DigestConfig::default()
                },
            )),
            ops: Arc::new(Semaphore::new(MAX_STORE_OPS)),
            lookups: Arc::new(Semaphore::new(MAX_STORE_OPS)),
            watcher: std::sync::OnceLock::new(),
        })
    }

    /// Starts following the binds other nodes publish (a shared Redis): a device pushed
    /// from here may wake on any node, and the call waiting here must learn where it is.
    pub(crate) fn start_watching(self: &Arc<Self>, shared: &Arc<Shared>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<stg_store::Bound>(1024);
        let Some(w) = self.bindings.watcher(tx) else {
            return;
        };
        let _ = self.watcher.set(w);
        let this = self.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if b.aor == stg_store::BANS_CHANNEL {
                    shared.bans.remote(&b.uid);
                    continue;
                }
                // One read per notification; the core ignores AORs nobody waits for, and
                // a bind it already knows (its own, echoed by Redis).
                let Ok(permit) = this.lookups.clone().try_acquire_owned() else {
                    continue;
                };
                let (this, shared) = (this.clone(), shared.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(record) = this.bindings.get(&b.aor).await else {
                        return;
                    };
                    let (live, _) = stg_registrar::live_bindings(&record.fields, unix_now());
                    for binding in live {
                        if !b.uid.is_empty() && binding.key != b.uid {
                            continue;
                        }
                        let input = CoreInput::Bound {
                            aor: b.aor.clone(),
                            binding: located(binding),
                        };
                        let _ = shared.core_tx.send(input).await;
                    }
                });
            }
        });
    }

    /// The pub/sub watcher, when the store is Redis.
    pub(crate) fn watcher(&self) -> Option<stg_store::Watcher> {
        self.watcher.get().cloned()
    }

    /// While a call waits for a pushed device of `aor` (at most `wait`), binds published by
    /// other nodes for it are followed.
    pub(crate) fn watch_for(&self, aor: &str, wait: std::time::Duration) {
        let Some(w) = self.watcher.get() else {
            return;
        };
        w.watch(aor);
        let (w, aor) = (w.clone(), aor.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            w.unwatch(&aor);
        });
    }

    /// The binding store (for the admin endpoint's diagnostics).
    pub(crate) fn bindings(&self) -> &Bindings {
        &self.bindings
    }

    /// The store's kind, for the startup line.
    pub(crate) fn store_kind(&self) -> &'static str {
        self.bindings.kind()
    }

    /// Handles one [`Output::Register`]: the first step of a `through` registration is
    /// answered at once (no store access); the rest run as tasks that answer through the
    /// core's queue.
    ///
    /// [`Output::Register`]: stg_sip_core::proxy::Output::Register
    pub(crate) fn register(
        self: &Arc<Self>,
        r: Registration,
        shared: &Arc<Shared>,
    ) -> Option<RegisterAnswer> {
        let reg = match stg_registrar::parse_register(&r.request, &self.settings) {
            Ok(reg) => reg,
            Err(rej) => {
                count(mode_label(r.mode), "rejected");
                return Some(rejected(&rej));
            }
        };
        if r.mode == RegistrarMode::Through && r.response.is_none() {
            let contacts = stg_registrar::upstream_contacts(&reg, &self.settings)
                .into_iter()
                .map(Bytes::from)
                .collect();
            return Some(RegisterAnswer::Forward { contacts });
        }
        let Ok(permit) = self.ops.clone().try_acquire_owned() else {
            count(mode_label(r.mode), "overloaded");
            return Some(unavailable());
        };
        let this = self.clone();
        let shared2 = shared.clone();
        shared.tasks.spawn(async move {
            let _permit = permit;
            let id = r.id;
            let (answer, bound) = match r.mode {
                RegistrarMode::Through => this.bind(&r, &reg, r.response.as_ref()).await,
                RegistrarMode::Local => this.local(&r, &reg, &shared2).await,
            };
            let _ = shared2
                .core_tx
                .send(CoreInput::Registered { id, answer })
                .await;
            // Then calls waiting for this device (pushed) go out over its connection: after
            // its 200, so the device hears its registration is done first. A device back on
            // a new connection also gets the messages kept for it.
            for (binding, fresh) in bound {
                if binding.wake.is_some() {
                    if let Some(m) = shared2.messages.get() {
                        m.bound(reg.aor.clone(), binding.clone(), fresh);
                    }
                }
                let aor = reg.aor.clone();
                let _ = shared2
                    .core_tx
                    .send(CoreInput::Bound { aor, binding })
                    .await;
            }
        });
        None
    }

    /// Stores the binding (`granted`: the PBX's 2xx in through mode) and builds the 2xx;
    /// with the bindings made on the REGISTER's own connection.
    async fn bind(
        &self,
        r: &Registration,
        reg: &Register,
        granted: Option<&Message>,
    ) -> (RegisterAnswer, Vec<(Located, bool)>) {
        let mode = mode_label(r.mode);
        let now = unix_now();
        // Only stg's own entry: a Path a device wrote itself names whatever it likes, and a
        // stored path is where calls for the device are sent.
        let path = [String::from_utf8_lossy(&r.path).into_owned()];
        let origin = Origin {
            conn_id: &r.flow_token,
            path: &path,
            now,
        };
        let settings = &self.settings;
        let result = self
            .bindings
            .update(&reg.aor, |record| {
                // Devices bound on this very connection already: a refresh, not a return.
                let refreshed: Vec<String> = record
                    .fields
                    .iter()
                    .filter(|(k, v)| {
                        stg_registrar::Binding::decode(k, v)
                            .is_ok_and(|b| b.conn_id.as_deref() == Some(&r.flow_token[..]))
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let mut rng = random_u64;
                let applied = stg_registrar::apply(
                    &record.fields,
                    reg,
                    &origin,
                    granted,
                    settings,
                    &mut rng,
                )?;
                let change = Change {
                    set: applied.set.clone(),
                    del: applied.del.clone(),
                    delete_all: applied.delete_all,
                    expire_at: applied.expire_at,
                    publish: Some(applied.publish.clone()),
                };
                Ok::<(Change, (Applied, Vec<String>)), Reject>((change, (applied, refreshed)))
            })
            .await;
        match result {
            Ok(Ok((applied, refreshed))) => {
                count(mode, "ok");
                let ok = answer(200, stg_registrar::ok_headers(reg, &applied, now));
                let bound = applied
                    .bindings
                    .into_iter()
                    .filter(|b| b.conn_id.as_deref() == Some(&r.flow_token[..]))
                    .map(|b| {
                        let fresh = !refreshed.contains(&b.key);
                        (located(b), fresh)
                    })
                    .collect();
                (ok, bound)
            }
            Ok(Err(rej)) => {
                count(mode, "rejected");
                (rejected(&rej), Vec::new())
            }
            Err(e) => {
                count(mode, "store_error");
                tracing::debug!(aor = %reg.aor, error = %e, "binding not stored");
                (unavailable(), Vec::new())
            }
        }
    }

    /// Local mode: digest first (the first challenge is not a failure), then the binding.
    async fn local(
        &self,
        r: &Registration,
        reg: &Register,
        shared: &Shared,
    ) -> (RegisterAnswer, Vec<(Located, bool)>) {
        let domain = request_domain(&r.request);
        let realm = if self.realm.is_empty() {
            domain.clone()
        } else {
            self.realm.clone()
        };
        // RFC 3261 §10.3 step 6: the user may change only the bindings of its own AOR, in the
        // domain its credentials are for.
        let owns = |user: &str| own_identity(&reg.aor, user, &domain);
        match self
            .digest_check(&r.request, false, &realm, r.flow.remote.ip(), owns, shared)
            .await
        {
            Checked::Passed => self.bind(r, reg, None).await,
            Checked::Answer {
                status,
                headers,
                label,
            } => {
                count("local", label);
                (RegisterAnswer::Respond { status, headers }, Vec::new())
            }
        }
    }

    /// The digest exchange of a REGISTER (401) or a device's request (407, `proxy`): no
    /// credentials or a stale or foreign nonce is a new challenge, not a failure; a wrong
    /// answer is a failure (TRUCO_KO) and a new challenge; right credentials for another
    /// identity than `owns` accepts are a failure and 403.
    async fn digest_check(
        &self,
        request: &Message,
        proxy: bool,
        realm: &str,
        client: IpAddr,
        owns: impl Fn(&str) -> bool,
        shared: &Shared,
    ) -> Checked {
        let challenge = |stale: bool, label: &'static str| {
            let (status, headers) = self.challenge_headers(realm, client, stale, proxy);
            Checked::Answer {
                status,
                headers,
                label,
            }
        };
        let Some(creds) = Digest::credentials(request, proxy, realm) else {
            return challenge(false, "challenged");
        };
        let unavailable = Checked::Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: vec![("Retry-After", Bytes::from_static(b"5"))],
            label: "store_error",
        };
        let Some(users) = &self.users else {
            return unavailable;
        };
        // The HA1 is fetched whatever the credentials look like: a known and an unknown
        // user must cost the same time and get the same answer.
        let ha1 = match users.ha1(&creds.user, realm, creds.algorithm.name()).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "credentials not read");
                return unavailable;
            }
        };
        let verdict = self
            .digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .verify_for(
                &creds,
                client.to_string().as_bytes(),
                request.method_bytes(),
                ha1.as_deref(),
                crate::now(),
            );
        match verdict {
            Verdict::Ok if !owns(&creds.user) => {
                auth_failure(shared, client, FailReason::WrongIdentity, &creds);
                Checked::Answer {
                    status: StatusCode::FORBIDDEN,
                    headers: Vec::new(),
                    label: "forbidden",
                }
            }
            Verdict::Ok => {
                // The nonce was bound to this address: it is a user's.
                shared.bans.authenticated(client);
                Checked::Passed
            }
            Verdict::Stale => challenge(true, "challenged"),
            // Not ours, not for this source, or from another run: a device that changed
            // network or met a restarted node, or a spoofer. Challenged again, not a failure.
            Verdict::Fail(FailReason::BadNonce) => challenge(false, "challenged"),
            Verdict::Fail(reason) => {
                auth_failure(shared, client, reason, &creds);
                challenge(false, "auth_failed")
            }
        }
    }

    /// A 401 (`WWW-Authenticate`, a registrar) or 407 (`Proxy-Authenticate`, a proxy).
    fn challenge_headers(
        &self,
        realm: &str,
        client: IpAddr,
        stale: bool,
        proxy: bool,
    ) -> (StatusCode, Vec<(&'static str, Bytes)>) {
        let values = self
            .digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .challenge_for(
                realm,
                client.to_string().as_bytes(),
                stale,
                crate::now(),
                random_u64(),
            );
        let (status, name) = if proxy {
            (407, "Proxy-Authenticate")
        } else {
            (401, "WWW-Authenticate")
        };
        (
            StatusCode(status),
            values.into_iter().map(|v| (name, Bytes::from(v))).collect(),
        )
    }

    /// Handles one [`Output::Authorize`]: a device's INVITE or MESSAGE in a domain that
    /// asks for digest (a proxy's 407, RFC 3261 §22.3).
    ///
    /// [`Output::Authorize`]: stg_sip_core::proxy::Output::Authorize
    pub(crate) fn authorize(
        self: &Arc<Self>,
        id: OpId,
        request: Message,
        flow: stg_sip_core::net::Flow,
        shared: &Arc<Shared>,
    ) -> Option<Authorization> {
        let Ok(permit) = self.ops.clone().try_acquire_owned() else {
            return Some(Authorization::Deny {
                status: StatusCode::SERVICE_UNAVAILABLE,
                headers: vec![("Retry-After", Bytes::from_static(b"5"))],
            });
        };
        let this = self.clone();
        let shared2 = shared.clone();
        shared.tasks.spawn(async move {
            let _permit = permit;
            let answer = this.check_request(&request, flow, &shared2).await;
            let _ = shared2
                .core_tx
                .send(CoreInput::Authorized { id, answer })
                .await;
        });
        None
    }

    async fn check_request(
        &self,
        request: &Message,
        flow: stg_sip_core::net::Flow,
        shared: &Shared,
    ) -> Authorization {
        let from = request.from();
        let from_sip = from.as_ref().and_then(|f| f.uri.as_sip());
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let from_host = from_sip.map(|u| text(u.host_raw)).unwrap_or_default();
        let from_user = from_sip.and_then(|u| u.user).map(text).unwrap_or_default();
        let realm = if self.realm.is_empty() {
            from_host
        } else {
            self.realm.clone()
        };
        // A device calls as itself: a caller's identity is its From (the PBX trusts it).
        let owns = |user: &str| user == from_user;
        match self
            .digest_check(request, true, &realm, flow.remote.ip(), owns, shared)
            .await
        {
            Checked::Passed => Authorization::Allow,
            Checked::Answer {
                status, headers, ..
            } => Authorization::Deny { status, headers },
        }
    }

    /// Handles one [`Output::Locate`]: the AOR's live bindings, newest first.
    ///
    /// [`Output::Locate`]: stg_sip_core::proxy::Output::Locate
    pub(crate) fn locate(self: &Arc<Self>, id: OpId, aor: String, shared: &Arc<Shared>) -> bool {
        let Ok(permit) = self.lookups.clone().try_acquire_owned() else {
            metrics::counter!("stg_registrar_lookups_total", "result" => "overloaded").increment(1);
            return false;
        };
        let this = self.clone();
        let shared2 = shared.clone();
        shared.tasks.spawn(async move {
            let _permit = permit;
            let result = match this.bindings.get(&aor).await {
                Ok(record) => {
                    let (live, bad) = stg_registrar::live_bindings(&record.fields, unix_now());
                    if bad > 0 {
                        metrics::counter!("stg_registrar_undecodable_total").increment(bad as u64);
                    }
                    let result = if live.is_empty() { "none" } else { "found" };
                    metrics::counter!("stg_registrar_lookups_total", "result" => result)
                        .increment(1);
                    Ok(live.into_iter().map(located).collect())
                }
                Err(_) => {
                    metrics::counter!("stg_registrar_lookups_total", "result" => "store_error")
                        .increment(1);
                    Err(())
                }
            };
            let _ = shared2
                .core_tx
                .send(CoreInput::Located { id, result })
                .await;
        });
        true
    }
}

/// A binding as the core's location answer: where the device is, and how it is woken.
pub(crate) fn located(b: stg_registrar::Binding) -> Located {
    let wake = b.push().map(|p| Wake {
        timeout: pn_timeout(b.uri.as_bytes()),
        // Apple obliges an app woken by a VoIP push to show a call: a call cancelled before
        // the device is back is still delivered to it (INVITE, then CANCEL).
        deliver_cancel: p.provider.starts_with("apns")
            && p.param.as_deref().is_some_and(|x| x.contains("voip")),
    });
    Located {
        key: Bytes::from(b.key),
        uri: Bytes::from(b.uri),
        conn: b.conn_id,
        path: b.path.into_iter().map(Bytes::from).collect(),
        wake,
    }
}

/// Whether `aor` (`user@host`) belongs to the authenticated `user` of `domain`.
fn own_identity(aor: &str, user: &str, domain: &str) -> bool {
    aor.rsplit_once('@')
        .is_some_and(|(u, h)| u == user && h.eq_ignore_ascii_case(domain))
}

/// What the digest exchange decided.
enum Checked {
    /// The credentials check and are the identity's own: carry on.
    Passed,
    /// Answer this instead (a challenge, 403, 503), counted under `label`.
    Answer {
        status: StatusCode,
        headers: Vec<(&'static str, Bytes)>,
        label: &'static str,
    },
}

fn mode_label(m: RegistrarMode) -> &'static str {
    match m {
        RegistrarMode::Through => "through",
        RegistrarMode::Local => "local",
    }
}

/// The host of the Request-URI (the domain a REGISTER is for).
fn request_domain(m: &Message) -> String {
    m.request_uri()
        .and_then(|u| {
            u.as_sip()
                .map(|s| String::from_utf8_lossy(s.host_raw).into_owned())
        })
        .unwrap_or_default()
}

/// One authentication failure: the operators' `TRUCO_KO` line (throttled per source like
/// every line an outsider can cause; the counter is exact) and, later, the guard's input.
pub(crate) fn auth_failure(shared: &Shared, ip: IpAddr, reason: FailReason, creds: &Credentials) {
    report(shared, AuthFailure::sip(ip, reason, &creds.user));
}

/// Logs and counts a failure already built.
pub(crate) fn report(shared: &Shared, failure: AuthFailure) {
    metrics::counter!("stg_auth_failures_total", "service" => failure.service, "reason" => failure.reason)
        .increment(1);
    shared
        .bans
        .failure(failure.ip, stg_guard::Kind::SipAuth, Some(&failure.user));
    if shared.may_log("authentication failures", failure.reason, failure.ip) {
        tracing::warn!(target: "stg::auth", "{failure}");
    }
}
