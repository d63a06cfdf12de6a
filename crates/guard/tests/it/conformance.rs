//! fail2ban's sample logs as a conformance suite, checked the way fail2ban's own
//! `samplestestcase.py` checks them (the annotation format is specified in
//! `$STG_CONFORMANCE_DIR/fail2ban/README.md`): every filter, loaded from its `.conf` under
//! every option set the logs name, must match each `match: true` sample exactly once with
//! the right host, time and fields, match no `match: false` sample, and every `failregex`
//! must match at least one sample.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use stg_guard::f2b::{parse_iso_local, Filter, FilterSpec, Tz};

/// fail2ban's frozen test "now": 2005-08-14 12:00:00 CEST.
const TEST_NOW: i64 = 1_124_013_600;
/// The samples' time zone (Zurich rules).
const TEST_TZ: &str = "CET-01CEST-02,M3.5.0,M10.5.0";
/// Annotated samples in the suite (README: 314 must match, 92 must not).
const SAMPLES: usize = 406;
/// Of which must match.
const SAMPLES_MATCHING: usize = 314;

fn suite_dir() -> PathBuf {
    let Some(dir) = std::env::var_os("STG_CONFORMANCE_DIR") else {
        panic!(
            "STG_CONFORMANCE_DIR is not set: point it at the shared conformance corpora, e.g. \
             `export STG_CONFORMANCE_DIR=/work/shared/conformance` (scripts/test sets it)"
        );
    };
    let dir = PathBuf::from(dir).join("fail2ban");
    assert!(
        dir.join("logs").is_dir() && dir.join("filter.d").is_dir(),
        "no fail2ban suite under {} (expected logs/ and filter.d/)",
        dir.display()
    );
    dir
}

/// One built filter: a filter file under one option set, with its state across blocks.
struct Built {
    key: String,
    filter: Filter,
    used: BTreeSet<usize>,
}

/// Evaluates the three constraint forms the suite uses (`name == 'x'`,
/// `opts.get('k') == 'v'`, `opts.get('k') != 'v'`).
fn eval(expr: &str, name: &str, opts: &BTreeMap<String, String>) -> Result<bool, String> {
    let (lhs, rhs, eq) = if let Some((l, r)) = expr.split_once("==") {
        (l, r, true)
    } else if let Some((l, r)) = expr.split_once("!=") {
        (l, r, false)
    } else {
        return Err(format!("unsupported constraint `{expr}`"));
    };
    let lit = rhs.trim().trim_matches(['\'', '"']);
    let lhs = lhs.trim();
    let value: Option<&str> = if lhs == "name" {
        Some(name)
    } else if let Some(k) = lhs
        .strip_prefix("opts.get(")
        .and_then(|r| r.strip_suffix(')'))
    {
        opts.get(k.trim_matches(['\'', '"'])).map(String::as_str)
    } else {
        return Err(format!("unsupported constraint `{expr}`"));
    };
    Ok((value == Some(lit)) == eq)
}

fn as_string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Default)]
struct Tally {
    samples: usize,
    samples_true: usize,
    checks: usize,
    matched: usize,
    errors: Vec<String>,
}

fn run_filter(dir: &Path, name: &str, tz: &Tz, tally: &mut Tally) {
    let conf = dir.join("filter.d").join(format!("{name}.conf"));
    let mut files = vec![name.to_owned()];
    let mut built: Vec<Built> = Vec::new();
    let mut used_re: BTreeSet<String> = BTreeSet::new();
    let mut common: BTreeMap<String, String> = BTreeMap::new();
    // (index into `built`, the option set with its `test.*` keys)
    let mut tests: Option<Vec<(usize, BTreeMap<String, String>)>> = None;
    let build = |built: &mut Vec<Built>,
                 opts: &BTreeMap<String, String>,
                 errors: &mut Vec<String>|
     -> Option<usize> {
        let flt: Vec<(String, String)> = opts
            .iter()
            .filter(|(k, _)| !k.starts_with("test."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let key = format!("{name}{flt:?}");
        if let Some(i) = built.iter().position(|b| b.key == key) {
            return Some(i);
        }
        let spec = match FilterSpec::load(&conf, &flt) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("{key}: cannot load {}: {e}", conf.display()));
                return None;
            }
        };
        match Filter::new(&spec, true) {
            Ok(filter) => {
                built.push(Built {
                    key,
                    filter,
                    used: BTreeSet::new(),
                });
                Some(built.len() - 1)
            }
            Err(e) => {
                errors.push(format!("{key}: {e}"));
                None
            }
        }
    };
    let mut fi = 0;
    while fi < files.len() {
        let file = dir.join("logs").join(&files[fi]);
        fi += 1;
        let text = std::fs::read(&file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let mut ignore_block = false;
        let mut n = 0;
        while n < lines.len() {
            let raw = lines[n];
            n += 1;
            let lnnum = n;
            let mut faildata: BTreeMap<String, Value> = BTreeMap::new();
            let mut line = raw;
            let trimmed = raw.trim_end_matches(['\r', '\n']);
            let directive = trimmed
                .trim_start_matches('#')
                .strip_prefix(' ')
                .or_else(|| Some(trimmed.trim_start_matches('#')))
                .filter(|_| trimmed.starts_with('#'))
                .and_then(|r| {
                    ["failJSON", "fileOptions", "filterOptions", "addFILE"]
                        .iter()
                        .find_map(|d| {
                            r.strip_prefix(d)
                                .and_then(|x| x.strip_prefix(':'))
                                .map(|p| (*d, p))
                        })
                });
            if let Some((kind, payload)) = directive {
                let v: Value = serde_json::from_str(payload.trim()).unwrap_or_else(|e| {
                    panic!("{}:{lnnum}: bad JSON ({e}): {payload}", file.display())
                });
                match kind {
                    "fileOptions" => {
                        common = as_string_map(&v);
                        continue;
                    }
                    "filterOptions" => {
                        let mut t = Vec::new();
                        ignore_block = false;
                        let sets: Vec<Value> = match v {
                            Value::Array(a) => a,
                            o => vec![o],
                        };
                        for set in sets {
                            let mut opts = common.clone();
                            opts.extend(as_string_map(&set));
                            if let Some(c) = opts.get("test.condition") {
                                ignore_block =
                                    !eval(c, name, &opts).unwrap_or_else(|e| panic!("{e}"));
                            }
                            if !ignore_block {
                                if let Some(i) = build(&mut built, &opts, &mut tally.errors) {
                                    t.push((i, opts));
                                }
                            }
                        }
                        tests = Some(t);
                        continue;
                    }
                    "addFILE" => {
                        files.push(v.as_str().unwrap_or_default().to_owned());
                        continue;
                    }
                    _ => {
                        faildata = v
                            .as_object()
                            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                            .unwrap_or_default();
                        let Some(next) = lines.get(n) else {
                            break;
                        };
                        line = next;
                        n += 1;
                    }
                }
            } else if ignore_block || trimmed.starts_with('#') || trimmed.trim().is_empty() {
                continue;
            }
            if ignore_block {
                continue;
            }
            if directive.is_some() {
                tally.samples += 1;
                if faildata.get("match").and_then(Value::as_bool) == Some(true) {
                    tally.samples_true += 1;
                }
            }
            if tests.is_none() {
                let t = build(&mut built, &BTreeMap::new(), &mut tally.errors)
                    .map(|i| vec![(i, BTreeMap::new())])
                    .unwrap_or_default();
                tests = Some(t);
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let expect_match = faildata
                .get("match")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            for (bi, opts) in tests.as_deref().unwrap_or_default() {
                if let Some(c) = faildata.get("constraint").and_then(Value::as_str) {
                    match eval(c, name, opts) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tally.errors.push(format!("{}:{}: {e}", file.display(), n));
                            continue;
                        }
                    }
                }
                tally.checks += 1;
                let b = &mut built[*bi];
                let ret = if opts.get("logtype").map(String::as_str) != Some("journal") {
                    b.filter.process_line(line, TEST_NOW, tz)
                } else {
                    let l = format!(
                        "{}{line}",
                        opts.get("test.prefix-line")
                            .map(String::as_str)
                            .unwrap_or("")
                    );
                    b.filter.process_dated(&l, TEST_NOW)
                };
                let mut found = Vec::new();
                for f in ret {
                    if f.is_failure() {
                        found.push(f);
                    } else {
                        b.used.insert(f.regex);
                        used_re.insert(b.filter.failregex()[f.regex].clone());
                    }
                }
                let at = format!("{}: {}:{}:\n    {line}\n", b.key, files[fi - 1], n);
                if found.is_empty() {
                    if expect_match {
                        tally
                            .errors
                            .push(format!("{at}  line not matched when it should have"));
                    }
                    continue;
                }
                if !expect_match {
                    tally.errors.push(format!(
                        "{at}  line matched (regex {}) when it should not have",
                        found[0].regex
                    ));
                    continue;
                }
                if found.len() != 1 {
                    let r: Vec<usize> = found.iter().map(|f| f.regex).collect();
                    tally
                        .errors
                        .push(format!("{at}  several regexes matched: {r:?}"));
                    continue;
                }
                tally.matched += 1;
                let f = &found[0];
                for (k, want) in &faildata {
                    if ["time", "match", "desc", "constraint"].contains(&k.as_str()) {
                        continue;
                    }
                    let got: Value = match k.as_str() {
                        "users" if !f.ticket.users.is_empty() => Value::Array(
                            f.ticket.users.iter().cloned().map(Value::String).collect(),
                        ),
                        _ => match f.ticket.get(k) {
                            Some(v) => Value::String(v.to_owned()),
                            None if k == "host" => f.id.clone().map_or(Value::Null, Value::String),
                            None if k == "attempts" => Value::from(f.attempts()),
                            None => Value::Null,
                        },
                    };
                    let same = match (want, &got) {
                        (Value::Array(w), Value::Array(g)) => {
                            let mut w: Vec<String> = w.iter().map(|x| x.to_string()).collect();
                            let mut g: Vec<String> = g.iter().map(|x| x.to_string()).collect();
                            w.sort();
                            g.sort();
                            w == g
                        }
                        (w, g) => w == g,
                    };
                    if !same {
                        tally.errors.push(format!(
                            "{at}  {k}: expected {want}, got {got} (regex {}, ticket {:?})",
                            f.regex, f.ticket.groups
                        ));
                    }
                }
                if let Some(t) = faildata.get("time").and_then(Value::as_str) {
                    let (local, us) = parse_iso_local(t).expect("sample time");
                    let want = tz.local_to_utc(local) as f64 + f64::from(us) / 1e6;
                    let got = f.time.map(|t| t as f64);
                    if got != Some(want) {
                        tally.errors.push(format!(
                            "{at}  time: expected {t} ({want}), got {got:?} (regex {})",
                            f.regex
                        ));
                    }
                }
                b.used.insert(f.regex);
                used_re.insert(b.filter.failregex()[f.regex].clone());
            }
        }
    }
    for b in &built {
        for (i, r) in b.filter.failregex().iter().enumerate() {
            if !b.used.contains(&i) && !used_re.contains(r) {
                tally
                    .errors
                    .push(format!("{}: regex has no samples: {i}: {r}", b.key));
            }
        }
    }
}

#[test]
fn fail2ban_sample_logs() {
    let dir = suite_dir();
    let tz = Tz::parse_posix(TEST_TZ).expect("the suite's TZ");
    let mut names: Vec<String> = std::fs::read_dir(dir.join("logs"))
        .expect("logs dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| dir.join("filter.d").join(format!("{n}.conf")).is_file())
        .collect();
    names.sort();
    let mut tally = Tally::default();
    for n in &names {
        run_filter(&dir, n, &tz, &mut tally);
    }
    println!(
        "fail2ban conformance: {} filters ({}), {} samples ({} must match, {} must not), {} \
         checks (sample × option set), {} matches verified, {} errors",
        names.len(),
        names.join(", "),
        tally.samples,
        tally.samples_true,
        tally.samples - tally.samples_true,
        tally.checks,
        tally.matched,
        tally.errors.len()
    );
    assert!(
        tally.errors.is_empty(),
        "{} conformance errors:\n{}",
        tally.errors.len(),
        tally.errors.join("\n")
    );
    assert_eq!(
        (tally.samples, tally.samples_true),
        (SAMPLES, SAMPLES_MATCHING),
        "the suite has {SAMPLES} annotated samples, {SAMPLES_MATCHING} of them matching; \
         {} were read, {} matching",
        tally.samples,
        tally.samples_true
    );
}
