//! The PROXY protocol v2 parser on the input and on every prefix of it (a header arriving
//! byte by byte), then encode → parse round trips of each header it accepts.
//!
//! The checks are the contract in `stg_edge::proxy_protocol`'s module docs: never panic;
//! `Incomplete { needed }` has `needed > 0`, no decision comes before the bytes it asked
//! for, and once the fixed part is in `needed` is exact; appending bytes never turns an
//! error into success or changes a decision; what `encode` writes parses back to the same
//! command, transport, addresses and TLVs. They live in `proxy_v2_check.rs`, which
//! `stg-edge`'s unit tests include too, to replay `fuzz/seeds/proxy_v2` and
//! `fuzz/regressions/proxy_v2` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stg_edge::proxy_protocol as pp;

mod proxy_v2_check;

fuzz_target!(|data: &[u8]| proxy_v2_check::check(data));
