//! Bad input never panics: the conformance filters and the built-in one, fed lines
//! assembled at random from fragments that reach the date templates, the prefilter, the
//! prefregexes, the multi-line sessions and the backtracking regexes.

use stg_guard::f2b::{Filter, FilterSpec, Tz};

const FRAGMENTS: &[&str] = &[
    "Jun 21 16:47:48 ",
    "2012/04/09 11:53:29 ",
    "[2012-02-13 17:21:54] ",
    "<38>1 ",
    "2019-07-08T17:40:16.954167-04:00 ",
    "08-03 07:56:53.026292 ",
    "Feb 29 ",
    "99:99:99 ",
    "host ",
    "sshd[123]: ",
    "sshd: ",
    "[sshd] ",
    "error: PAM: ",
    "Failed password for ",
    "invalid user ",
    "root ",
    "from ",
    "1.2.3.4",
    "::ffff:",
    "2001:db8::1",
    "[",
    "]",
    "(",
    ")",
    " port 22",
    " ssh2",
    ": ",
    "Connection from ",
    "Connection closed by ",
    "[preauth]",
    "Accepted publickey for ",
    "Disconnecting: Too many authentication failures",
    "TRUCO_KO ",
    "NOTICE[1]: ",
    "chan_sip.c: ",
    "Registration from '",
    "' failed for '",
    "' - Wrong password",
    "[WARNING] sofia_reg.c:1 ",
    "Can't find user [1@x] from ",
    "[error] 1#0: *1 ",
    "user \"x\": password mismatch",
    ", client: ",
    "[client ",
    "AH01617: ",
    "é",
    "Негодяй",
    "\t",
    "  ",
    "%",
    "\\",
    "\"",
    "'",
    "{",
    "}",
    "?",
    "*",
    "\u{0}",
];

fn filters() -> Vec<(String, Filter)> {
    let mut v = vec![(
        "truco-ko".to_owned(),
        Filter::new(&FilterSpec::builtin("truco-ko", &[]).unwrap(), true).unwrap(),
    )];
    let Some(dir) = std::env::var_os("STG_CONFORMANCE_DIR") else {
        panic!(
            "STG_CONFORMANCE_DIR is not set (export STG_CONFORMANCE_DIR=/work/shared/conformance)"
        );
    };
    let dir = std::path::PathBuf::from(dir).join("fail2ban/filter.d");
    for name in [
        "sshd",
        "asterisk",
        "freeswitch",
        "nginx-http-auth",
        "apache-auth",
    ] {
        for mode in ["normal", "aggressive"] {
            let opts = vec![("mode".to_owned(), mode.to_owned())];
            let spec = FilterSpec::load(&dir.join(format!("{name}.conf")), &opts).unwrap();
            v.push((format!("{name}[{mode}]"), Filter::new(&spec, true).unwrap()));
        }
    }
    v
}

#[test]
fn random_lines_never_panic() {
    let tz = Tz::parse_posix("CET-01CEST-02,M3.5.0,M10.5.0").unwrap();
    let mut filters = filters();
    // A fixed xorshift: reproducible without a dependency.
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut failures = 0usize;
    for _ in 0..3_000 {
        let n = (next() % 14) as usize;
        let line: String = (0..n)
            .map(|_| FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize])
            .collect();
        for (_, f) in &mut filters {
            failures += f.process_line(&line, 1_124_013_600, &tz).len();
            failures += f.process_dated(&line, 1_124_013_600).len();
        }
    }
    // Some random lines do match: the run reached the regexes, not only the prefilter.
    assert!(failures > 0);
}
