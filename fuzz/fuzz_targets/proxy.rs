//! Sequences of inputs from the outside and the inside (requests, responses, retransmissions,
//! CANCELs), send failures, DNS answers and time steps through the proxy core, checked
//! against the edge policy after every step (`stg_sip_core::fuzz_support::proxy`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stg_sip_core::fuzz_support::proxy(data));
