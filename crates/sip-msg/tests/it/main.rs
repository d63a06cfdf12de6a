//! Integration tests of stg-sip-msg: conformance corpora and proxy-hop serialization.

mod conformance;
mod replay;
mod write;

pub(crate) use stg_testkit::{conformance_dir, manifest};

pub(crate) fn load(sub: &str, name: &str) -> bytes::Bytes {
    stg_testkit::load_conformance(sub, name).into()
}
