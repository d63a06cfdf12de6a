//! The operator's commands: `config example|check`, `sip lint`, and `run` on embedded defaults.

use std::process::Command;

use crate::harness::{conformance_dir, manifest, temp_dir};

fn stg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stg"))
}

#[test]
fn config_example_is_complete_and_checks() {
    let out = stg().args(["config", "example"]).output().unwrap();
    assert!(out.status.success());
    let dir = temp_dir("example");
    let path = dir.join("stg.toml");
    std::fs::write(&path, &out.stdout).unwrap();
    let check = stg()
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("OK"));
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = temp_dir("badcfg");
    let path = dir.join("stg.toml");
    std::fs::write(&path, "[sip.timers]\nt1 = \"5 parsecs\"\n").unwrap();
    let out = stg()
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sip.timers.t1"), "{err}");
    let out = stg()
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("STG_SIP__TIMERS__T1", "250ms")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "env override must win: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sip_lint_verdicts_on_the_torture_corpora() {
    for sub in ["rfc4475", "rfc5118"] {
        for (name, expected) in manifest(sub) {
            if name == "test" {
                continue;
            }
            let path = conformance_dir().join(sub).join(format!("{name}.dat"));
            let out = stg().args(["sip", "lint"]).arg(&path).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let want = if expected == "invalid" { 1 } else { 0 };
            assert_eq!(
                out.status.code(),
                Some(want),
                "{sub}/{name} ({expected}): {text}"
            );
            if want == 1 {
                assert!(
                    text.contains("malformed: line"),
                    "{name}: the reason must be said: {text}"
                );
            }
        }
    }
}

#[test]
fn sip_lint_reads_stdin_and_lf_only_text() {
    use std::io::Write;
    let msg = "OPTIONS sip:a@example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\nFrom: <sip:b@example.com>;tag=1\nTo: <sip:a@example.com>\nCall-ID: x\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n";
    let mut child = stg()
        .args(["sip", "lint", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(msg.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("valid SIP request: OPTIONS"), "{text}");
}
