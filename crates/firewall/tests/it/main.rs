//! stg-firewall against the real `nft` and kernel. Every test that runs nft first re-runs
//! itself inside a fresh network namespace (`Netns::run_test_inside`), so nothing here ever
//! reads or changes the host's ruleset. Needs root, util-linux's `unshare` and `nft`.

// Shared helpers: not every module uses every one of them.
#[allow(dead_code)]
mod common;
mod enforce;
mod errors;
mod scale;
