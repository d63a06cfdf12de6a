//! `Authorization` / `Proxy-Authorization` values as a device may send them: parsed, never a
//! panic (`stg_auth::fuzz_credentials`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stg_auth::fuzz_credentials(data));
