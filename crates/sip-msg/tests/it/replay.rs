//! The fuzz targets' checks (`stg_sip_msg::fuzz_support`) on stable: every committed
//! regression input, our own seeds, and every conformance message, so that a finding stays
//! fixed and CI runs what the fuzzer runs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use stg_sip_msg::fuzz_support;

use crate::conformance_dir;

/// Regular files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// A 6-octet framer prefix (`fuzz_support::framer`): default limits, the stream arriving
/// in reads of `chunk` octets (0: one read).
fn framed(chunk: u8, data: &[u8]) -> Vec<u8> {
    let mut input = fuzz_support::FRAMER_PREFIX.to_vec();
    input[2..].fill(chunk);
    input.extend_from_slice(data);
    input
}

#[test]
fn fuzz_regressions_replay() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let conformance = conformance_dir();
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut run = |path: &Path, target: &str, check: &dyn Fn(&[u8])| {
        let data = std::fs::read(path).unwrap();
        ran += 1;
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failures.push(format!("{target}: {}", path.display()));
        }
    };
    for dir in ["regressions/message", "seeds/message"] {
        for path in files(&fuzz.join(dir)) {
            run(&path, "message", &fuzz_support::message);
        }
    }
    for path in files(&fuzz.join("regressions/framer")) {
        run(&path, "framer", &fuzz_support::framer);
    }
    for sub in ["rfc4475", "rfc5118"] {
        for path in files(&conformance.join(sub)) {
            if path.extension().is_some_and(|e| e == "dat") {
                run(&path, "message", &fuzz_support::message);
                run(&path, "framer", &|d| fuzz_support::framer(&framed(0, d)));
                run(&path, "framer, 1-octet reads", &|d| {
                    fuzz_support::framer(&framed(1, d));
                });
            }
        }
    }
    // 50 RFC 4475 messages and 12 RFC 5118 ones, three runs each.
    assert!(
        ran >= 3 * 62,
        "only {ran} runs: are the conformance files there?"
    );
    assert!(
        failures.is_empty(),
        "fuzz checks failed on:\n{}",
        failures.join("\n")
    );
}
