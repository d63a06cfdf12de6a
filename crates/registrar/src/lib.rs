//! The registrar of stg, sans-IO: REGISTER handling per RFC 3261 §10 with RFC 3327 (Path),
//! RFC 5626 (outbound: `+sip.instance`, `reg-id`), RFC 5627 (`pub-gruu`) and RFC 8599
//! (push parameters), over records stored in **Flexisip 2.3's exact Redis layout**, so stg
//! and live Flexisip nodes can share one Redis during a migration.
//!
//! # How it fits
//! The proxy parses a REGISTER with [`parse_register`] (400s), reads the AOR's hash
//! (`HGETALL fs:<aor>`, [`aor_of`]), and calls [`apply`]:
//! - **local** mode (stg is the registrar): `granted = None`; the answer is a 200 with
//!   [`ok_headers`], or the [`Reject`] (423 + `Min-Expires`, 500 for an old CSeq);
//! - **through** mode (the PBX is the registrar): the proxy forwards the REGISTER with our
//!   Path and [`upstream_contacts`] (push parameters removed), and only on the PBX's 2xx
//!   calls [`apply`] with `granted = Some(2xx)`: the expiries the PBX granted are stored.
//!
//! The store adapter writes [`Applied`] in one transaction and publishes as Flexisip does.
//! [`live_bindings`] gives the targets of a request to the AOR; [`Binding::push`] its push
//! parameters.
//!
//! # Invariants
//! - No I/O, no clock, no randomness inside: time comes in as `now` (unix seconds), and the
//!   `fs-gen-` fields draw from the caller's `rng`.
//! - Nothing panics on input: a stored value that does not decode is an error, skipped and
//!   counted (as Flexisip skips it), never rewritten.
//! - What we write decodes back to the same [`Binding`], and a value written by Flexisip
//!   re-encodes byte-identical (the layout is documented in [`codec`]).
#![forbid(unsafe_code)]

mod apply;
pub mod codec;
mod register;

pub use apply::{apply, live_bindings, ok_headers, Applied, Origin};
pub use codec::{fuzz_decode, generate_key, push_of_uri, Binding, CodecError, Push};
pub use register::{aor_of, parse_register, upstream_contacts, Contact, Register, Reject};

/// Contact URI parameters that carry push-notification data (RFC 8599 and the linphone /
/// Flexisip extensions and legacy names): removed from the Contact sent upstream.
pub const PUSH_PARAMS: &[&str] = &[
    // Flexisip 2.3's default `params-to-remove`, in its order.
    "pn-tok",
    "pn-type",
    "app-id",
    "pn-msg-str",
    "pn-call-str",
    "pn-call-snd",
    "pn-msg-snd",
    "pn-timeout",
    "pn-silent",
    "pn-provider",
    "pn-prid",
    "pn-param",
    // Other push parameters Flexisip or linphone read.
    "pn-purr",
    "pn-groupchat-str",
    "pn-missing-call-str",
    "pn-call-remote-push-interval",
    "pn-call-declined-elsewhere-str",
    "pn-call-accepted-elsewhere-str",
];

/// Registrar policy of one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Shortest non-zero expiry accepted in local mode (423 below it). Default 60.
    pub min_expires: u32,
    /// Longest expiry granted in local mode (longer requests are lowered). Default 86400.
    pub max_expires: u32,
    /// Expiry when the REGISTER names none. Default 3600.
    pub default_expires: u32,
    /// Most bindings per AOR; the oldest are evicted beyond it. Default 10.
    pub max_contacts: usize,
    /// Remove push parameters from the Contact sent upstream (through mode). Default true.
    pub strip_push_params: bool,
    /// Assign a `pub-gruu` (RFC 5627) to devices that support gruu. Default true.
    pub gruu: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 86_400,
            default_expires: 3600,
            max_contacts: 10,
            strip_push_params: true,
            gruu: true,
        }
    }
}

#[cfg(test)]
mod tests;
