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

use stg_push::{Abbrev, Outcome, PushKind, Pusher};
use stg_sip_core::proxy::{PushId, PushOutcome, PushRequest};
use stg_sip_msg::Method;
use stg_store::Change;

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
    let token = req.push.prid.clone();
    shared.tasks.spawn(async move {
        let r = pusher.send(&req).await;
        // A binding without `+sip.instance` is keyed by its push token: logs show a prefix.
        let device = Abbrev(&key);
        let outcome = match &r.outcome {
            Outcome::Sent { .. } => PushOutcome::Sent,
            Outcome::RemoveBinding { reason } => {
                let removed = match registrar {
                    Some(reg) => remove_if_token(&reg, &aor, &key, &token).await,
                    None => false,
                };
                tracing::info!(%aor, %device, provider = r.provider, %reason, removed, "push token rejected");
                PushOutcome::Failed
            }
            other => {
                tracing::info!(%aor, %device, provider = r.provider, outcome = ?other, "push not sent");
                PushOutcome::Failed
            }
        };
        let _ = core_tx.send(CoreInput::Pushed { id, outcome }).await;
    });
    None
}

/// Removes the binding `key` of `aor` if it still carries the rejected `token`: the device
/// may have registered again with a fresh one while the push was in flight.
async fn remove_if_token(reg: &Registrar, aor: &str, key: &str, token: &str) -> bool {
    let r = reg
        .bindings()
        .update(aor, |record| {
            let current = record
                .fields
                .get(key)
                .and_then(|v| stg_registrar::Binding::decode(key, v).ok())
                .and_then(|b| b.push());
            if current.is_some_and(|p| p.prid == token) {
                let change = Change {
                    del: vec![key.to_owned()],
                    ..Change::default()
                };
                Ok::<_, ()>((change, true))
            } else {
                Ok((Change::default(), false))
            }
        })
        .await;
    match r {
        Ok(Ok(removed)) => removed,
        Ok(Err(())) => false,
        Err(e) => {
            tracing::warn!(%aor, error = %e, "binding with a dead push token not removed");
            false
        }
    }
}
