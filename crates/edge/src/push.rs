//! The shell side of push wake-ups: carries out the core's [`Output::Push`].
//!
//! The core decides *when* a device is pushed (its connection is gone, or it did not answer
//! within the push timeout) and waits for it to come back; this module decides *how*, from
//! the binding's push parameters (RFC 8599 `pn-provider`/`pn-prid`/`pn-param`, or the legacy
//! linphone ones), and tells the core how it went ([`CoreInput::Pushed`]).
//!
//! Today every push is logged (the embedded default, `push.mode = "log"`); the providers
//! (APNs, FCM, a webhook) plug in here.
//!
//! [`Output::Push`]: stg_sip_core::proxy::Output::Push
//! [`CoreInput::Pushed`]: crate::conn::CoreInput::Pushed

use std::sync::Arc;

use stg_sip_core::proxy::{PushId, PushOutcome, PushRequest};

use crate::conn::Shared;

/// Sends one push; the outcome now, or later through the core's queue (`None`).
pub(crate) fn send(p: PushRequest, shared: &Arc<Shared>) -> Option<(PushId, PushOutcome)> {
    let contact = String::from_utf8_lossy(&p.contact);
    let Some(push) = stg_registrar::push_of_uri(&contact) else {
        metrics::counter!("stg_push_sent_total", "provider" => "none", "result" => "no_params")
            .increment(1);
        return Some((p.id, PushOutcome::Failed));
    };
    let provider = provider_label(&push.provider);
    let call_id = String::from_utf8_lossy(p.request.call_id()).into_owned();
    let kind = p.request.method().map_or("other", |m| {
        if m == stg_sip_msg::Method::Invite {
            "call"
        } else {
            "message"
        }
    });
    // A device's token is a credential for its pushes: the log keeps its first characters.
    let token: String = push.prid.chars().take(8).collect();
    let _ = shared;
    tracing::info!(
        aor = %p.aor,
        device = %String::from_utf8_lossy(&p.key),
        provider = %push.provider,
        token = %format_args!("{token}…"),
        %kind,
        call_id = %call_id,
        "push (log only)"
    );
    metrics::counter!("stg_push_sent_total", "provider" => provider, "result" => "logged")
        .increment(1);
    Some((p.id, PushOutcome::Sent))
}

/// A bounded label for metrics: the provider names a device sent cannot grow the series.
fn provider_label(provider: &str) -> &'static str {
    match provider {
        "apns" => "apns",
        "apns.dev" => "apns.dev",
        "fcm" => "fcm",
        _ => "other",
    }
}
