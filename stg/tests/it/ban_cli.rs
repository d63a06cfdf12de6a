//! `stg ban test-filter`, the built binary against fail2ban's sample logs (read from the
//! shared conformance corpus) and against the built-in `TRUCO_KO` filter.

use std::process::Command;

use crate::harness::{conformance_dir, temp_dir};

fn stg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stg"))
}

const ZURICH: &str = "CET-01CEST-02,M3.5.0,M10.5.0";

#[test]
fn test_filter_json_on_the_asterisk_samples() {
    let f2b = conformance_dir().join("fail2ban");
    let out = stg()
        .args([
            "ban",
            "test-filter",
            "asterisk",
            "--json",
            "--tz",
            ZURICH,
            "--filter-dir",
        ])
        .arg(f2b.join("filter.d"))
        .arg(f2b.join("logs/asterisk"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The first sample: line 3, host and local time as the annotation says.
    assert_eq!(rows[0]["line"], 3);
    assert_eq!(rows[0]["host"], "1.2.3.4");
    assert_eq!(rows[0]["time"], "2012-02-13T17:21:54");
    // Every `match: true` sample (all of this file's samples are), nothing else: also the
    // journal block's two lines, whose text matches the file-mode filter too.
    let annotated_true = std::fs::read_to_string(f2b.join("logs/asterisk"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("# failJSON:") && l.contains("\"match\": true"))
        .count();
    assert_eq!(rows.len(), annotated_true, "{stdout}");
    assert!(rows.iter().any(|r| r["host"] == "2001:db8::1"));
}

#[test]
fn test_filter_summary_with_fail2ban_options_and_builtin() {
    let f2b = conformance_dir().join("fail2ban");
    let conf = f2b.join("filter.d/sshd.conf");
    let out = stg()
        .args(["ban", "test-filter"])
        .arg(format!("{}[mode=aggressive]", conf.display()))
        .arg(f2b.join("logs/sshd"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("Lines: 417 lines"), "{stdout}");
    assert!(
        stdout.contains("Did not receive identification string"),
        "{stdout}"
    );

    let dir = temp_dir("ban-cli");
    let log = dir.join("app.log");
    std::fs::write(
        &log,
        "Dec  3 10:00:00 web sercen: TRUCO_KO [192.0.2.7] fail2ban sip 10:11:12.123\n\
         Dec  3 10:00:01 web fonbo: TRUCO_KO 2001:db8::7 /fonbo token invalido\n\
         Dec  3 10:00:02 web fonbo: all fine\n",
    )
    .unwrap();
    let out = stg()
        .args(["ban", "test-filter", "truco-ko", "--json"])
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hosts: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["host"].to_string())
        .collect();
    assert_eq!(hosts, ["\"192.0.2.7\"", "\"2001:db8::7\""], "{stdout}");

    // Nothing matched: exit 1; an unknown filter: 66 and a message.
    std::fs::write(&log, "nothing here\n").unwrap();
    let out = stg()
        .args(["ban", "test-filter", "truco-ko"])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = stg()
        .args(["ban", "test-filter", "no-such-filter"])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(66));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no filter"));
}

#[test]
fn test_filter_line_numbers_with_crlf_and_no_final_newline() {
    let dir = temp_dir("ban-cli-lines");
    let log = dir.join("x.log");
    // A line far longer than the scanner's 1 MiB block sits between the hits.
    let long = "y".repeat(3 << 20);
    std::fs::write(
        &log,
        format!("a\r\nTRUCO_KO 192.0.2.1\r\nb\n{long}\nc\nTRUCO_KO 192.0.2.2"),
    )
    .unwrap();
    let out = stg()
        .args(["ban", "test-filter", "truco-ko", "--json"])
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<(u64, String)> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["host"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [(2, "192.0.2.1".to_owned()), (6, "192.0.2.2".to_owned())],
        "{stdout}"
    );
    let out = stg()
        .args(["ban", "test-filter", "truco-ko"])
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Lines: 6 lines, 0 ignored, 2 matched, 4 missed"),
        "{stdout}"
    );
}
