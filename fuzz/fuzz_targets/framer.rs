//! A TCP stream through the `Framer`, split into reads of input-chosen sizes, then each
//! frame through the message checks (`stg_sip_msg::fuzz_support::framer`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stg_sip_msg::fuzz_support::framer(data));
