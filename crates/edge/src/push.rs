//! The shell side of push wake-ups: carries out the core's [`Output::Push`].
//!
//! The core decides *when* a device is pushed (its connection is gone, or it did not answer
//! within the push timeout) and waits for it to come back; this module decides *how*, from
//! the binding's push parameters (RFC 8599 `pn-provider`/`pn-prid`/`pn-param`, or the legacy
//! linphone ones), hands the push to [`stg_push::Pusher`] (APNs, FCM, the webhook, or the
//! log in the embedded default), and tells the core how it went ([`CoreInput::Pushed`]).
//! A token the provider declares dead removes its binding, as Flexisip does: the device
//! cannot be woken any more, and it registers again with a fresh token when it runs.
//!
//! [`Output::Push`]: stg_sip_core::proxy::Output::Push
//! [`CoreInput::Pushed`]: crate::conn::CoreInput::Pushed

use std::sync::Arc;

use stg_push::{Outcome, PushKind, Pusher};
use stg_sip_core::proxy::{PushId, PushOutcome, PushRequest};
use stg_sip_msg::Method;

use crate::conn::{CoreInput, Shared};
use crate::registrar::Registrar;

/// Starts one push; the outcome now when there is nothing to send, else later through the
/// core's queue (`None`).
pub(crate) fn send(
    p: PushRequest,
    pusher: &Pusher,
    registrar: Option<Arc<Registrar>>,
    shared: &Arc<Shared>,
) -> Option<(PushId, PushOutcome)> {
    let contact = String::from_utf8_lossy(&p.contact);
    let Some(push) = stg_registrar::push_of_uri(&contact) else {
        metrics::counter!("stg_push_sent_total", "provider" => "none", "result" => "no_params")
            .increment(1);
        return Some((p.id, PushOutcome::Failed));
    };
    let kind = if p.request.method() == Some(Method::Invite) {
        PushKind::Call
    } else {
        PushKind::Message
    };
    let call_id = String::from_utf8_lossy(p.request.call_id()).into_owned();
    let (from_uri, display) = match p.request.from() {
        Some(f) => (
            String::from_utf8_lossy(f.uri.as_bytes()).into_owned(),
            f.display
                .map(|d| String::from_utf8_lossy(d).trim_matches('"').to_owned())
                .unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    };
    let req = stg_push::PushRequest::new(kind, push, &call_id, &from_uri, &display);
    let pusher = pusher.clone();
    let core_tx = shared.core_tx.clone();
    let (id, aor, key) = (p.id, p.aor, String::from_utf8_lossy(&p.key).into_owned());
    shared.tasks.spawn(async move {
        let r = pusher.send(&req).await;
        let outcome = match &r.outcome {
            Outcome::Sent { .. } => PushOutcome::Sent,
            Outcome::RemoveBinding { reason } => {
                tracing::info!(%aor, device = %key, provider = r.provider, %reason, "push token rejected: binding removed");
                if let Some(reg) = registrar {
                    if let Err(e) = reg.bindings().remove(&aor, Some(&key)).await {
                        tracing::warn!(%aor, error = %e, "binding with a dead push token not removed");
                    }
                }
                PushOutcome::Failed
            }
            other => {
                tracing::info!(%aor, device = %key, provider = r.provider, outcome = ?other, "push not sent");
                PushOutcome::Failed
            }
        };
        let _ = core_tx.send(CoreInput::Pushed { id, outcome }).await;
    });
    None
}
