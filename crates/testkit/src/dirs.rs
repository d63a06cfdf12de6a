//! The shared corpora next to the repository, and per-test temp dirs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// The repository's parent: `shared/` sits beside the repository.
fn beside_repo(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../..")
        .join(sub)
}

/// The conformance corpus: `STG_CONFORMANCE_DIR`, or `shared/conformance` beside the
/// repository. Missing, the test fails naming where it looked.
pub fn conformance_dir() -> PathBuf {
    let dir = std::env::var_os("STG_CONFORMANCE_DIR")
        .map_or_else(|| beside_repo("shared/conformance"), PathBuf::from);
    assert!(
        dir.join("rfc4475/manifest.tsv").is_file(),
        "conformance corpus not found at {} (set STG_CONFORMANCE_DIR)",
        dir.display()
    );
    dir
}

/// `shared/` beside the repository (bench scenarios, Kamailio config), or `STG_SHARED_DIR`.
pub fn shared_dir() -> PathBuf {
    let dir =
        std::env::var_os("STG_SHARED_DIR").map_or_else(|| beside_repo("shared"), PathBuf::from);
    assert!(
        dir.join("bench").is_dir(),
        "shared dir not found at {} (set STG_SHARED_DIR)",
        dir.display()
    );
    dir
}

/// Rows of a corpus's `manifest.tsv` (`sub` is `rfc4475` or `rfc5118`): (name, expected).
pub fn manifest(sub: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(conformance_dir().join(sub).join("manifest.tsv"))
        .unwrap_or_else(|e| panic!("{sub}/manifest.tsv: {e}"));
    text.lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0].to_string(), cols[3].to_string())
        })
        .collect()
}

/// One message of a corpus, as bytes.
pub fn load_conformance(sub: &str, name: &str) -> Vec<u8> {
    let path = conformance_dir().join(sub).join(format!("{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh, empty directory under the system temp dir, unique in this process.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "stg-it-{}-{}-{}",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
