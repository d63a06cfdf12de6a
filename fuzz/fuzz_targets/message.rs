//! One datagram through `Message::parse`, every accessor, and what a proxy writes from it
//! (`stg_sip_msg::fuzz_support::message` holds the checks, shared with the replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stg_sip_msg::fuzz_support::message(data));
