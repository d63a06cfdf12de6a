//! Integration tests of stg-sip-msg: conformance corpora and proxy-hop serialization.

mod conformance;
mod replay;
mod write;

use std::path::PathBuf;

/// `../shared/conformance`, or `STG_CONFORMANCE_DIR`. Missing → the test fails, naming it.
pub(crate) fn conformance_dir() -> PathBuf {
    let dir = std::env::var_os("STG_CONFORMANCE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
        PathBuf::from,
    );
    assert!(
        dir.join("rfc4475/manifest.tsv").is_file(),
        "conformance corpus not found at {} (set STG_CONFORMANCE_DIR)",
        dir.display()
    );
    dir
}

/// Rows of a manifest.tsv: (name, expected).
pub(crate) fn manifest(sub: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(conformance_dir().join(sub).join("manifest.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0].to_string(), cols[3].to_string())
        })
        .collect()
}

pub(crate) fn load(sub: &str, name: &str) -> bytes::Bytes {
    std::fs::read(conformance_dir().join(sub).join(format!("{name}.dat")))
        .unwrap()
        .into()
}
