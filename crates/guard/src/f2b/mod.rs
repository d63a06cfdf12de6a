//! fail2ban filter compatibility: operators' existing `filter.d/*.conf` files, read and run
//! with fail2ban's semantics, so a log that bans under fail2ban bans under stg.
//!
//! # How it fits
//! [`FilterSpec::load`] reads a filter file with its includes and an option set
//! (`sshd.conf[mode=aggressive]`, see [`parse_filter_arg`]) into its final regexes;
//! [`Filter::new`] compiles them; [`Filter::process_line`] takes one log line (and the
//! caller's "now" and time zone, for year-less dates) and returns what fail2ban's
//! `Filter.processLine` returns: one [`Failure`] per matching `failregex`, each with its
//! failure id (the host), its time and its ticket fields (`user`, `users`, matched lines).
//! The stream readers (log tails, `stg ban test-filter`) turn the failures that are real
//! ([`Failure::is_failure`]) into guard events.
//!
//! # Semantics kept from fail2ban
//! - The date is found first (the filter's `datepattern`) and cut out of the line; the
//!   regexes see the rest (hence `[]` where a bracketed date was).
//! - `prefregex` must match first; its `<F-CONTENT>` is what the `failregex`es see.
//! - Multi-line failure ids (`<F-MLFID>`, sshd's session prefix) carry groups between
//!   lines: a `<F-NOFAIL>` line records the address of a session, a later line of the
//!   same session without an address fails with it; `<F-MLFFORGET>` closes the session;
//!   `<F-MLFGAINED>` (a success) clears pending failures unless several users were tried.
//! - `check_all` (fail2ban-regex's and fail2ban's own test harness's mode): every
//!   `failregex` is tried, not only up to the first match.
//!
//! # Not implemented
//! `maxlines` > 1 (no shipped filter among the conformance set needs it): lines are
//! matched one at a time; `<SKIPLINES>`; DNS resolution (hosts are reported raw, the
//! engine bans addresses only); `journalmatch` (journal entries arrive through
//! [`Filter::process_dated`]).

mod date;
mod ini;
pub(crate) mod pyre;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;

use date::DateDetector;
pub use date::{format_local, parse_iso_local, Tz};
use ini::{Files, Ini};
use pyre::Re;

/// Why a filter could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// No such filter file or built-in filter.
    #[error("no filter {0}")]
    Missing(String),
    /// The configuration cannot be read (bad interpolation, bad option syntax).
    #[error("filter configuration: {0}")]
    Config(String),
    /// A regex does not compile.
    #[error("{what} does not compile: {error}")]
    Regex {
        /// Which option (`failregex 3`, `prefregex`, `datepattern`).
        what: String,
        /// The engines' message.
        error: String,
    },
}

/// Built-in filters: stg's own text (fail2ban's syntax), selectable by name.
pub const BUILTIN: &[(&str, &str)] = &[(
    "truco-ko",
    // The operators' `TRUCO_KO` lines: the address follows, bare or in brackets, v4 or v6
    // (`TRUCO_KO [1.2.3.4] fail2ban sip 10:11:12.123`, `TRUCO_KO 1.2.3.4 ... token
    // invalido`), anywhere in a syslog line.
    "[Definition]\n\
     failregex = TRUCO_KO <ADDR>(?:\\s|$)\n\
     datepattern = {^LN-BEG}\n",
)];

/// The options fail2ban's filter reader takes from `[Definition]`.
const DEFINITION_OPTIONS: &[&str] = &[
    "usedns",
    "prefregex",
    "failregex",
    "ignoreregex",
    "maxlines",
    "datepattern",
    "journalmatch",
];

/// A filter's final regexes, after includes, interpolation and tag substitution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterSpec {
    /// `prefregex`, when the filter has one.
    pub prefregex: Option<String>,
    /// One regex per `failregex` line, in order.
    pub failregex: Vec<String>,
    /// One regex per `ignoreregex` line.
    pub ignoreregex: Vec<String>,
    /// `datepattern` (one template per line), or `None` for fail2ban's defaults.
    pub datepattern: Option<String>,
    /// `maxlines` (1 when absent).
    pub maxlines: usize,
}

impl FilterSpec {
    /// Reads a filter file (with its includes) under an option set such as
    /// `[("mode", "aggressive")]`.
    pub fn load(path: &Path, opts: &[(String, String)]) -> Result<Self, FilterError> {
        let ini = Ini::load(path, &Files)?;
        Self::from_ini(&ini, opts)
    }

    /// A built-in filter by name ([`BUILTIN`]).
    pub fn builtin(name: &str, opts: &[(String, String)]) -> Result<Self, FilterError> {
        let text = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| FilterError::Missing(name.to_owned()))?;
        Self::from_ini(&Ini::from_text(text), opts)
    }

    /// fail2ban's `FilterReader.getOptions` + `getCombined`.
    fn from_ini(ini: &Ini, opts: &[(String, String)]) -> Result<Self, FilterError> {
        let p_opts: HashMap<String, String> = opts
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v.clone()))
            .collect();
        let mut init: Vec<(String, String)> = opts.to_vec();
        let mut combined: Vec<(String, String)> = Vec::new();
        for name in DEFINITION_OPTIONS {
            if p_opts.contains_key(*name) {
                continue;
            }
            if let Some(v) = ini.get("Definition", name, &p_opts)? {
                combined.push(((*name).to_owned(), v));
            }
        }
        if ini.has_section("Init") {
            for opt in ini.own_options("Init") {
                let v = ini.get("Init", &opt, &HashMap::new())?.unwrap_or_default();
                if !opt.starts_with("known/") {
                    init.push((format!("known/{opt}"), v.clone()));
                }
                if !init.iter().any(|(k, _)| *k == opt) {
                    init.push((opt, v));
                }
            }
        }
        for (k, v) in init {
            match combined.iter_mut().find(|(n, _)| *n == k) {
                Some(e) => e.1 = v,
                None => combined.push((k, v)),
            }
        }
        let addrepl = |tag: &str| ini.get_ex("Definition", tag, &p_opts).ok().flatten();
        Ini::substitute_tags(&mut combined, &addrepl)?;
        let get = |n: &str| {
            combined
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        let lines = |v: Option<String>| -> Vec<String> {
            v.map(|v| {
                v.split('\n')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
        };
        let maxlines = match get("maxlines") {
            Some(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map_err(|_| FilterError::Config(format!("maxlines = {v}")))?,
            _ => 1,
        };
        Ok(Self {
            prefregex: get("prefregex").filter(|p| !p.trim().is_empty()),
            failregex: lines(get("failregex")),
            ignoreregex: lines(get("ignoreregex")),
            datepattern: get("datepattern").filter(|p| !p.trim().is_empty()),
            maxlines,
        })
    }
}

/// Splits fail2ban's `name[opt=value, opt2="v 2"]` into the name and its options.
pub fn parse_filter_arg(s: &str) -> Result<(String, Vec<(String, String)>), FilterError> {
    let s = s.trim();
    let Some(open) = s.find('[') else {
        return Ok((s.to_owned(), Vec::new()));
    };
    let inner = s[open + 1..]
        .strip_suffix(']')
        .ok_or_else(|| FilterError::Config(format!("unterminated options in `{s}`")))?;
    let mut opts = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| FilterError::Config(format!("option without `=` in `{s}`")))?;
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].trim_start();
        let (value, next) = match after.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let end = after[1..]
                    .find(q)
                    .ok_or_else(|| FilterError::Config(format!("unterminated quote in `{s}`")))?;
                (after[1..1 + end].to_owned(), &after[end + 2..])
            }
            _ => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            }
        };
        opts.push((key, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Ok((s[..open].trim().to_owned(), opts))
}

/// The fields of one failure, as fail2ban's ticket data: the regex groups (`ip4`, `user`,
/// `mlfid`...), the matched lines, the users a session tried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ticket {
    /// Named groups that matched (fail2ban drops the ones that did not).
    pub groups: BTreeMap<String, String>,
    /// The lines that count as attempts.
    pub matches: Vec<String>,
    /// Lines of a session held back while it shows no failure.
    pub nofail_matches: Vec<String>,
    /// Every user a multi-line session tried.
    pub users: BTreeSet<String>,
    /// A session line failed before its address was known.
    pub mlfpending: bool,
}

impl Ticket {
    fn flag(&self, k: &str) -> bool {
        self.groups.get(k).is_some_and(|v| !v.is_empty())
    }

    /// A group's value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.groups.get(k).map(String::as_str)
    }
}

/// One `failregex` match, as fail2ban's `processLine` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Index of the `failregex` that matched.
    pub regex: usize,
    /// The failure id (the host as written in the log), `None` while a session's address
    /// is unknown.
    pub id: Option<String>,
    /// The line's time (UTC seconds), when it has one.
    pub time: Option<i64>,
    /// The groups and matched lines.
    pub ticket: Ticket,
}

impl Failure {
    /// Whether this counts as a failure (not an `F-NOFAIL` helper, not a pending session).
    pub fn is_failure(&self) -> bool {
        self.id.is_some() && !self.ticket.flag("nofail")
    }

    /// The number of attempts this failure stands for (fail2ban: its matched lines).
    pub fn attempts(&self) -> usize {
        self.ticket.matches.len()
    }
}

/// A compiled regex with its named groups.
#[derive(Debug)]
struct Compiled {
    re: Re,
    names: Vec<(String, usize)>,
    /// Whether a group is an `alt_<name>` one.
    has_alt: bool,
    /// The index of the one `content` group, when no `alt_` group may stand for it.
    content: Option<usize>,
}

impl Compiled {
    fn new(python: &str, what: impl Fn() -> String) -> Result<Self, FilterError> {
        let re = Re::new(&resolve_host_tags(python)).map_err(|error| FilterError::Regex {
            what: what(),
            error,
        })?;
        let names = re.names();
        let has_alt = names.iter().any(|(n, _)| n.starts_with("alt_"));
        let mut content = names
            .iter()
            .filter(|(n, _)| n == "content")
            .map(|(_, i)| *i);
        let content = match (content.next(), content.next()) {
            (Some(i), None) if !has_alt => Some(i),
            _ => None,
        };
        Ok(Self {
            re,
            names,
            has_alt,
            content,
        })
    }

    /// The named groups of the first match in `text` but `content`, and what the
    /// `failregex`es see: the `content` group when it is not empty, else all of `text`.
    fn groups_but_content<'t>(
        &self,
        text: &'t str,
        spans: &mut pyre::Spans,
    ) -> Option<(BTreeMap<String, String>, Cow<'t, str>)> {
        let Some(c) = self.content else {
            // An `alt_` group may stand for `content`: the general way.
            let mut g = self.groups(text, spans)?;
            let buf = match g.remove("content").filter(|c| !c.is_empty()) {
                Some(c) => Cow::Owned(c),
                None => Cow::Borrowed(text),
            };
            return Some((g, buf));
        };
        if !self.re.all_spans(text, spans) {
            return None;
        }
        let mut m = BTreeMap::new();
        for (n, i) in &self.names {
            if *i == c {
                continue;
            }
            if let Some(Some((a, b))) = spans.get(*i) {
                m.insert(n.clone(), text[*a..*b].to_owned());
            }
        }
        let buf = match spans.get(c) {
            Some(Some((a, b))) if b > a => &text[*a..*b],
            _ => text,
        };
        Some((m, Cow::Borrowed(buf)))
    }

    /// The named groups of the first match in `text`; `spans` is scratch space.
    fn groups(&self, text: &str, spans: &mut pyre::Spans) -> Option<BTreeMap<String, String>> {
        if !self.re.all_spans(text, spans) {
            return None;
        }
        let mut m = BTreeMap::new();
        for (n, i) in &self.names {
            if let Some(Some((a, b))) = spans.get(*i) {
                m.insert(n.clone(), text[*a..*b].to_owned());
            }
        }
        if !self.has_alt {
            return Some(m);
        }
        // `alt_<name>` fills `<name>` when that one is empty (fail2ban's alternatives).
        let alts: Vec<(String, String)> = m
            .iter()
            .filter_map(|(k, v)| {
                let base = k.strip_prefix("alt_")?;
                let base = base.trim_end_matches(|c: char| c.is_ascii_digit());
                let base = base.strip_suffix('_').unwrap_or(base);
                Some((map_tag(base), v.clone()))
            })
            .collect();
        for (n, v) in alts {
            if !v.is_empty() && m.get(&n).is_none_or(|x| x.is_empty()) {
                m.insert(n, v);
            }
        }
        Some(m)
    }
}

fn map_tag(t: &str) -> String {
    let t = t.to_lowercase();
    match t.as_str() {
        "id" => "fid".to_owned(),
        "port" => "fport".to_owned(),
        _ => t,
    }
}

const IP4: &str = r"(?:\d{1,3}\.){3}\d{1,3}";
// fail2ban ends this with `(?<=:):`; every repetition before it ends with `:`, so the
// lookbehind always holds and the pattern stays within the `regex` crate.
const IP6: &str = r"(?:[0-9a-fA-F]{1,4}::?|:){1,7}(?:[0-9a-fA-F]{1,4}|:)";

/// fail2ban's `Regex._resolveHostTag`: `<HOST>`, `<ADDR>`, `<IP4>`... and `<F-NAME>`
/// groups.
fn resolve_host_tags(regex: &str) -> String {
    let r_ip4 = format!(r"(?:::f{{4,6}}:)?(?P<ip4>{IP4})");
    let r_ip6 = format!(r"(?P<ip6>{IP6})");
    let r_dns = r"(?P<dns>[\w\-.^_]*\w)";
    let r_addr = format!(r"\[?(?:{r_ip4}|{r_ip6})\]?");
    let r_host = format!(r"(?:{r_addr}|{r_dns})");
    let r_cidr = r"(?P<cidr>\d+)";
    let r_subnet = format!(r"\[?(?:{r_ip4}|{r_ip6})(?:/{r_cidr})?\]?");
    let mut open: BTreeSet<String> = BTreeSet::new();
    let mut out = String::with_capacity(regex.len() * 2);
    let b = regex.as_bytes();
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        // `</?[\w\-]+/?>`
        let mut j = i + 1;
        if j < b.len() && b[j] == b'/' {
            j += 1;
        }
        let name_start = j;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'-') {
            j += 1;
        }
        if j == name_start {
            i += 1;
            continue;
        }
        if j < b.len() && b[j] == b'/' {
            j += 1;
        }
        if j >= b.len() || b[j] != b'>' {
            i += 1;
            continue;
        }
        let tn = &regex[i + 1..j];
        let repl: Option<String> = match tn {
            "HOST" => Some(r_host.clone()),
            "IP4" | "F-IP4/" => Some(r_ip4.clone()),
            "IP6" | "F-IP6/" => Some(r_ip6.clone()),
            "ADDR" | "F-ADDR/" => Some(r_addr.clone()),
            "CIDR" | "F-CIDR/" => Some(r_cidr.to_owned()),
            "SUBNET" | "F-SUBNET/" => Some(r_subnet.clone()),
            "DNS" | "F-DNS/" => Some(r_dns.to_owned()),
            "F-ID/" => Some(r"(?P<fid>\S+)".to_owned()),
            "F-PORT/" => Some(r"(?P<fport>\w+)".to_owned()),
            _ => {
                let (close, body) = match tn.strip_prefix('/') {
                    Some(b) => (true, b),
                    None => (false, tn),
                };
                match body.strip_prefix("F-") {
                    Some(n)
                        if !n.is_empty()
                            && n.bytes().all(|c| {
                                c.is_ascii_uppercase()
                                    || c.is_ascii_digit()
                                    || c == b'_'
                                    || c == b'-'
                            }) =>
                    {
                        if close {
                            open.contains(n).then(|| ")".to_owned())
                        } else {
                            open.insert(n.to_owned());
                            Some(format!("(?P<{}>", map_tag(n)))
                        }
                    }
                    _ => None,
                }
            }
        };
        if let Some(r) = repl {
            out.push_str(&regex[last..i]);
            out.push_str(&r);
            last = j + 1;
        }
        i = j + 1;
    }
    out.push_str(&regex[last..]);
    out
}

/// Sessions (`F-MLFID`) remembered at most; the oldest is forgotten first (fail2ban keeps
/// 100 for five minutes).
const MLFID_CAP: usize = 100;

/// One compiled filter and its state (sessions, last date).
#[derive(Debug)]
pub struct Filter {
    pref: Option<Compiled>,
    fail: Vec<Compiled>,
    fail_src: Vec<String>,
    ignore: Vec<Compiled>,
    dates: DateDetector,
    prefilter: Option<Prefilter>,
    /// Which `failregex`es the prefilter let through for the current line.
    candidates: Vec<bool>,
    /// Sessions by id, with their insertion number.
    mlfid: HashMap<String, (Ticket, u64)>,
    /// Session ids in insertion order (fail2ban's cache is first in, first out: a session
    /// keeps its place when it is updated); entries whose number no longer matches are
    /// stale.
    mlfid_order: VecDeque<(String, u64)>,
    mlfid_seq: u64,
    last_date: Option<i64>,
    check_all: bool,
    ignored: bool,
    /// Scratch space kept between lines: the line without its date, group spans.
    text: String,
    spans: pyre::Spans,
}

impl Filter {
    /// Compiles a filter. `check_all`: try every `failregex` on each line (what fail2ban's
    /// sample tests and `fail2ban-regex` do) rather than stopping at the first match.
    pub fn new(spec: &FilterSpec, check_all: bool) -> Result<Self, FilterError> {
        let pref = spec
            .prefregex
            .as_deref()
            .map(|p| Compiled::new(p, || "prefregex".to_owned()))
            .transpose()?;
        let fail = spec
            .failregex
            .iter()
            .enumerate()
            .map(|(i, r)| Compiled::new(r, || format!("failregex {i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let ignore = spec
            .ignoreregex
            .iter()
            .enumerate()
            .map(|(i, r)| Compiled::new(r, || format!("ignoreregex {i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let dates =
            DateDetector::new(spec.datepattern.as_deref()).map_err(|error| FilterError::Regex {
                what: "datepattern".to_owned(),
                error,
            })?;
        Ok(Self {
            pref,
            fail,
            fail_src: spec.failregex.clone(),
            ignore,
            dates,
            prefilter: Prefilter::new(&spec.failregex),
            candidates: vec![true; spec.failregex.len()],
            mlfid: HashMap::new(),
            mlfid_order: VecDeque::new(),
            mlfid_seq: 0,
            last_date: None,
            check_all,
            ignored: false,
            text: String::new(),
            spans: Vec::new(),
        })
    }

    /// The `failregex`es as written after tag substitution (for reports).
    pub fn failregex(&self) -> &[String] {
        &self.fail_src
    }

    /// Whether a literal prefilter guards this filter (every `failregex` has a required
    /// literal).
    pub fn has_prefilter(&self) -> bool {
        self.prefilter.is_some()
    }

    /// Where the first prefilter literal in `haystack` starts (a block of many lines: a
    /// reader skips the lines before it, which cannot match). `None` when there is none,
    /// or no prefilter ([`Filter::has_prefilter`]).
    pub fn next_candidate(&self, haystack: &[u8]) -> Option<usize> {
        self.prefilter
            .as_ref()?
            .scan
            .find(haystack)
            .map(|m| m.start())
    }

    /// The prefilter's literals (empty when there is no prefilter).
    pub fn prefilter_literals(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .prefilter
            .as_ref()
            .map(|p| p.literals.iter().map(|(l, _)| l.as_str()).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// How many regexes need the backtracking engine.
    pub fn backtracking_regexes(&self) -> usize {
        self.fail.iter().filter(|c| c.re.is_fancy()).count()
            + usize::from(self.pref.as_ref().is_some_and(|p| p.re.is_fancy()))
    }

    /// Whether the last line processed was dropped by an `ignoreregex`.
    pub fn last_ignored(&self) -> bool {
        self.ignored
    }

    /// Processes one log line that carries its own date. `now` (UTC seconds) decides the
    /// year of year-less dates and stands in for a missing date within a minute of the
    /// last one; `tz` reads local times.
    pub fn process_line(&mut self, line: &str, now: i64, tz: &Tz) -> Vec<Failure> {
        self.ignored = false;
        if let Some(p) = &self.prefilter {
            if !p.mark(line, &mut self.candidates) {
                return Vec::new();
            }
        }
        // The line without its date, in a buffer kept between lines.
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        let date = match self.dates.find(line, now, tz) {
            Some(f) => {
                text.push_str(&line[..f.start]);
                text.push_str(&line[f.end..]);
                if f.time.is_some() {
                    self.last_date = f.time;
                }
                f.time
            }
            None => {
                text.push_str(line);
                None
            }
        };
        let date = date.or(self.last_date.filter(|d| *d > now - 60));
        let out = self.find_failure(&text, line, date);
        self.text = text;
        out
    }

    /// Processes a line whose time is known from elsewhere (a journal entry): no date is
    /// looked for in the text.
    pub fn process_dated(&mut self, line: &str, time: i64) -> Vec<Failure> {
        self.ignored = false;
        if let Some(p) = &self.prefilter {
            if !p.mark(line, &mut self.candidates) {
                return Vec::new();
            }
        }
        self.last_date = Some(time);
        self.find_failure(line, line, Some(time))
    }

    fn is_ignored(&self, buf: &str) -> bool {
        self.ignore.iter().any(|r| r.re.is_match(buf))
    }

    /// fail2ban's `Filter.findFailure` for one line.
    fn find_failure(&mut self, text: &str, orig: &str, date: Option<i64>) -> Vec<Failure> {
        let mut spans = std::mem::take(&mut self.spans);
        let out = self.find_failure_with(text, orig, date, &mut spans);
        self.spans = spans;
        out
    }

    /// [`Filter::find_failure`] with scratch space for the group spans.
    fn find_failure_with(
        &mut self,
        text: &str,
        orig: &str,
        date: Option<i64>,
        spans: &mut pyre::Spans,
    ) -> Vec<Failure> {
        let mut out = Vec::new();
        if !self.ignore.is_empty()
            && self.ignore.len() + 2 < self.fail.len()
            && self.is_ignored(text)
        {
            self.ignored = true;
            return out;
        }
        let mut pre = BTreeMap::new();
        let mut content = Cow::Borrowed(text);
        if let Some(p) = &self.pref {
            let Some(g) = p.groups_but_content(text, spans) else {
                return out;
            };
            (pre, content) = g;
        }
        let buf: &str = &content;
        for i in 0..self.fail.len() {
            // A regex whose literals are not in the line cannot match it.
            if !self.candidates[i] {
                continue;
            }
            let Some(groups) = self.fail[i].groups(buf, spans) else {
                continue;
            };
            if !self.ignore.is_empty() && self.is_ignored(buf) {
                self.ignored = true;
                if !self.check_all {
                    break;
                }
                continue;
            }
            // The prefregex's groups go to every match; the last one can have them.
            let last = !self.candidates[i + 1..].contains(&true);
            let mut merged = if last {
                std::mem::take(&mut pre)
            } else {
                pre.clone()
            };
            merged.extend(groups);
            let mut ticket = Ticket {
                groups: merged,
                ..Ticket::default()
            };
            let mlfid = ticket.groups.get("mlfid").cloned();
            let mut keep = None;
            if let Some(id) = &mlfid {
                let (t, k) = self.merge(id, ticket, orig);
                ticket = t;
                keep = k;
            } else {
                ticket.matches.push(orig.to_owned());
            }
            let nofail = ticket.flag("nofail");
            if nofail && !self.check_all {
                if let (Some(k), Some(m)) = (keep, &mlfid) {
                    self.remember(m, ticket, k);
                }
                return out;
            }
            let fid = ticket.groups.get("fid").cloned();
            let ip = ticket
                .groups
                .get("ip4")
                .or_else(|| ticket.groups.get("ip6"))
                .or_else(|| ticket.groups.get("dns"))
                .cloned();
            let ip = match ip {
                Some(ip) => Some(ip),
                // A regex without any id group is a broken filter: skip it, as fail2ban
                // logs and skips it.
                None if fid.is_none() && mlfid.is_none() => continue,
                None => fid.clone(),
            };
            let id = match (&fid, ip) {
                (None, None) => {
                    ticket.mlfpending = true;
                    None
                }
                (Some(f), Some(ip)) if *f != ip => {
                    ticket.groups.insert("ip".to_owned(), ip);
                    Some(f.clone())
                }
                (_, ip) => ip,
            };
            if let (Some(k), Some(m)) = (keep, &mlfid) {
                self.remember(m, ticket.clone(), k);
            }
            if id.is_none() && !self.check_all {
                return out;
            }
            out.push(Failure {
                regex: i,
                id,
                time: date,
                ticket,
            });
            if !self.check_all {
                break;
            }
        }
        out
    }

    /// Keeps a session: `seq` is its place when it was already known, `None` for a new one
    /// (which may push the oldest out).
    fn remember(&mut self, mlfid: &str, t: Ticket, seq: Option<u64>) {
        let seq = match seq {
            Some(s) => s,
            None => {
                while self.mlfid.len() >= MLFID_CAP {
                    let Some((old, s)) = self.mlfid_order.pop_front() else {
                        break;
                    };
                    if self.mlfid.get(&old).is_some_and(|(_, x)| *x == s) {
                        self.mlfid.remove(&old);
                    }
                }
                self.mlfid_seq += 1;
                self.mlfid_order
                    .push_back((mlfid.to_owned(), self.mlfid_seq));
                // Stale places are bounded by the live ones.
                if self.mlfid_order.len() > 4 * MLFID_CAP {
                    let live = &self.mlfid;
                    self.mlfid_order
                        .retain(|(m, s)| live.get(m).is_some_and(|(_, x)| x == s));
                }
                self.mlfid_seq
            }
        };
        self.mlfid.insert(mlfid.to_owned(), (t, seq));
    }

    /// fail2ban's `_mergeFailure`: returns the merged ticket and whether it stays
    /// remembered for the session (`Some(Some(place))` where it was, `Some(None)` as new).
    #[allow(clippy::option_option)]
    fn merge(
        &mut self,
        mlfid: &str,
        mut fail: Ticket,
        line: &str,
    ) -> (Ticket, Option<Option<u64>>) {
        const NOFAIL: u8 = 1;
        const FORGET: u8 = 2;
        const PREV_NOFAIL: u8 = 4;
        const GAINED: u8 = 8;
        let mut nf = 0u8;
        if fail.flag("mlfgained") {
            nf |= GAINED | NOFAIL;
            if !fail.flag("nofail") {
                let g = fail.groups["mlfgained"].clone();
                fail.groups.insert("nofail".to_owned(), g);
            }
        } else if fail.flag("nofail") {
            nf |= NOFAIL;
        }
        if fail
            .groups
            .remove("mlfforget")
            .is_some_and(|v| !v.is_empty())
        {
            nf |= FORGET;
        }
        let user = fail.groups.get("user").filter(|u| !u.is_empty()).cloned();
        let keep;
        let users;
        if let Some((mut cached, place)) = self.mlfid.remove(mlfid) {
            if let Some(u) = &user {
                cached.users.insert(u.clone());
            }
            users = cached.users.len();
            if cached
                .groups
                .remove("nofail")
                .is_some_and(|v| !v.is_empty())
            {
                nf |= PREV_NOFAIL;
            }
            if cached
                .groups
                .remove("mlfgained")
                .is_some_and(|v| !v.is_empty())
            {
                nf |= PREV_NOFAIL;
            }
            if nf & GAINED != 0 {
                cached.mlfpending = false;
            }
            if nf & PREV_NOFAIL == 0 && !cached.mlfpending {
                cached.matches.clear();
            }
            cached.groups.extend(fail.groups);
            fail = cached;
            keep = (nf & FORGET == 0).then_some(Some(place));
        } else if nf & FORGET == 0 {
            if let Some(u) = &user {
                fail.users.insert(u.clone());
            }
            users = fail.users.len();
            keep = Some(None);
        } else {
            users = 0;
            keep = None;
        }
        let pending = std::mem::take(&mut fail.mlfpending);
        if pending || users > 1 {
            fail.groups.remove("nofail");
            fail.groups.remove("mlfgained");
            nf &= !(GAINED | NOFAIL);
        }
        if nf & NOFAIL == 0 {
            let mut m = std::mem::take(&mut fail.nofail_matches);
            m.append(&mut fail.matches);
            if nf & GAINED == 0 {
                m.push(line.to_owned());
            }
            fail.matches = m;
        } else if nf & (NOFAIL | FORGET) == NOFAIL {
            fail.nofail_matches.push(line.to_owned());
        }
        (fail, keep)
    }
}

/// The literal prefilter: every `failregex` has a set of literals one of which each of its
/// matches contains (each at least three characters long); a line that contains none of
/// a regex's literals is not searched with that regex, a line with no literal at all not
/// even for its date.
#[derive(Debug)]
struct Prefilter {
    /// The literals, leftmost-first: only these semantics get the SIMD (Teddy) searcher,
    /// for whole blocks and for single lines alike.
    scan: aho_corasick::AhoCorasick,
    /// Per automaton pattern: the literal and the `failregex` it stands for.
    literals: Vec<(String, usize)>,
    /// Per pattern, the other patterns that may match where it does (one is a prefix of
    /// the other, or they are equal): a leftmost-first search reports only one of them.
    same_start: Vec<Vec<usize>>,
}

impl Prefilter {
    fn new(failregex: &[String]) -> Option<Self> {
        let mut literals = Vec::new();
        for (i, r) in failregex.iter().enumerate() {
            let req = pyre::required_literals(&resolve_host_tags(r))?;
            if req.iter().any(|l| l.chars().count() < 3) {
                return None;
            }
            literals.extend(req.into_iter().map(|l| (l, i)));
        }
        if literals.is_empty() {
            return None;
        }
        let scan = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostFirst)
            .build(literals.iter().map(|(l, _)| l))
            .ok()?;
        let same_start = literals
            .iter()
            .enumerate()
            .map(|(p, (a, _))| {
                literals
                    .iter()
                    .enumerate()
                    .filter(|(q, (b, _))| {
                        *q != p && (a.starts_with(b.as_str()) || b.starts_with(a.as_str()))
                    })
                    .map(|(q, _)| q)
                    .collect()
            })
            .collect();
        Some(Self {
            scan,
            literals,
            same_start,
        })
    }

    /// Marks the regexes whose literals occur in `line`; whether any does.
    ///
    /// Each search from one past the last match's start finds the next position where a
    /// literal starts, so every such position is visited; of the literals starting there
    /// the search reports one, and the others are among its `same_start`.
    fn mark(&self, line: &str, candidates: &mut [bool]) -> bool {
        candidates.fill(false);
        let hay = line.as_bytes();
        let mut any = false;
        let mut at = 0;
        while at < hay.len() {
            let input = aho_corasick::Input::new(hay).span(at..hay.len());
            let Some(m) = self.scan.find(input) else {
                break;
            };
            let p = m.pattern().as_usize();
            let rest = &hay[m.start()..];
            let same = self.same_start.get(p).map_or(&[][..], Vec::as_slice);
            for q in std::iter::once(p).chain(same.iter().copied()) {
                let Some((lit, r)) = self.literals.get(q) else {
                    continue;
                };
                if q == p || rest.starts_with(lit.as_bytes()) {
                    if let Some(c) = candidates.get_mut(*r) {
                        *c = true;
                        any = true;
                    }
                }
            }
            at = m.start() + 1;
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The faster forms of the regexes (ASCII, head) give what the patterns alone give, on
    /// every regex of the conformance filters under each option set the samples use, and
    /// on every sample line (whole, without its date, the prefregex's content) as written
    /// and with non-ASCII characters in it.
    #[test]
    fn regex_forms_agree() {
        let Some(dir) = std::env::var_os("STG_CONFORMANCE_DIR") else {
            panic!("STG_CONFORMANCE_DIR is not set (export STG_CONFORMANCE_DIR=/work/shared/conformance)");
        };
        let dir = std::path::PathBuf::from(dir).join("fail2ban");
        let mut texts: Vec<String> = Vec::new();
        for e in std::fs::read_dir(dir.join("logs")).unwrap() {
            let log = std::fs::read_to_string(e.unwrap().path()).unwrap();
            for (i, l) in log.lines().filter(|l| !l.starts_with('#')).enumerate() {
                texts.push(l.to_owned());
                // Non-ASCII where the classes look: a space, a word, the end.
                texts.push(match i % 3 {
                    0 => l.replacen(' ', "\u{a0}", 1),
                    1 => l.replace("from", "frém"),
                    _ => format!("{l} é"),
                });
            }
        }
        let tz = Tz::UTC;
        let mut regexes: BTreeSet<String> = BTreeSet::new();
        let mut prefs: BTreeSet<String> = BTreeSet::new();
        for e in std::fs::read_dir(dir.join("filter.d")).unwrap() {
            let path = e.unwrap().path();
            if path.file_name().is_some_and(|n| n == "common.conf") {
                continue;
            }
            for mode in [
                "",
                "normal",
                "aggressive",
                "ddos",
                "extra",
                "auth",
                "fallback",
            ] {
                for logtype in ["", "journal", "rfc5424", "short"] {
                    let mut opts = Vec::new();
                    if !mode.is_empty() {
                        opts.push(("mode".to_owned(), mode.to_owned()));
                    }
                    if !logtype.is_empty() {
                        opts.push(("logtype".to_owned(), logtype.to_owned()));
                    }
                    let spec = FilterSpec::load(&path, &opts).unwrap();
                    prefs.extend(spec.prefregex.clone());
                    regexes.extend(
                        spec.prefregex
                            .iter()
                            .chain(&spec.failregex)
                            .chain(&spec.ignoreregex)
                            .map(|r| resolve_host_tags(r)),
                    );
                }
            }
        }
        // What the regexes see: lines, lines without their date, prefregex contents.
        let mut dates = DateDetector::new(None).unwrap();
        let prefs: Vec<Compiled> = prefs
            .iter()
            .map(|p| Compiled::new(p, String::new).unwrap())
            .collect();
        let mut inputs: BTreeSet<String> = BTreeSet::new();
        for t in &texts {
            inputs.insert(t.clone());
            if let Some(f) = dates.find(t, 1_124_013_600, &tz) {
                let cut = format!("{}{}", &t[..f.start], &t[f.end..]);
                for p in &prefs {
                    if let Some(g) = p.groups(&cut, &mut Vec::new()) {
                        inputs.extend(g.get("content").cloned());
                    }
                }
                inputs.insert(cut);
            }
        }
        let (mut checked, mut heads, mut ascii) = (0, 0, 0);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for r in &regexes {
            let fast = Re::new(r).unwrap();
            let plain = Re::plain(r).unwrap();
            let (a, h) = fast.forms();
            ascii += usize::from(a);
            heads += usize::from(h);
            if !a && !h {
                continue;
            }
            for t in &inputs {
                let m = fast.all_spans(t, &mut x);
                assert_eq!(m, plain.all_spans(t, &mut y), "{r} on {t:?}");
                if m {
                    assert_eq!(x, y, "{r} on {t:?}");
                }
                assert_eq!(fast.is_match(t), m, "{r} on {t:?}");
                checked += 1;
            }
        }
        assert!(heads > 0 && ascii > 0, "{heads} {ascii}");
        assert!(checked > 100_000, "{checked}");
        println!(
            "{} regexes ({ascii} with an ASCII form, {heads} with a head), {} inputs",
            regexes.len(),
            inputs.len()
        );
    }

    /// The prefilter marks what an overlapping search for every literal finds, on
    /// literals that overlap, nest and repeat.
    #[test]
    fn prefilter_marks_every_literal() {
        let failregex: Vec<String> = [
            "^Connection from <HOST>",
            "^Connection closed by <HOST>",
            "Disconnect(?:ed|ing) from <HOST>",
            "^Disconnecting: Too many authentication failures",
            "^Failed \\S+ for <HOST>",
            "^Failed publickey for invalid user x from <HOST>",
            "nnection reset <HOST>",
            "aaab <HOST>",
            "aab <HOST>",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let p = Prefilter::new(&failregex).unwrap();
        let all = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::Standard)
            .build(p.literals.iter().map(|(l, _)| l))
            .unwrap();
        const PIECES: &[&str] = &[
            "Connection ",
            "from ",
            "closed by ",
            "Disconnect",
            "ing",
            "ed",
            ": Too many authentication failures",
            "Failed ",
            "publickey for invalid user ",
            "reset ",
            "aa",
            "a",
            "b",
            "é",
            " ",
            "Conn",
        ];
        let mut seed = 7u64;
        let mut marked = 0;
        for _ in 0..20_000 {
            let mut line = String::new();
            for _ in 0..6 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                line.push_str(PIECES[(seed % PIECES.len() as u64) as usize]);
            }
            let mut want = vec![false; failregex.len()];
            for m in all.find_overlapping_iter(&line) {
                want[p.literals[m.pattern().as_usize()].1] = true;
            }
            let mut got = vec![true; failregex.len()];
            assert_eq!(p.mark(&line, &mut got), want.contains(&true), "{line:?}");
            assert_eq!(got, want, "{line:?}");
            marked += got.iter().filter(|c| **c).count();
        }
        assert!(marked > 5_000, "{marked}");
    }

    #[test]
    fn filter_arg_options() {
        assert_eq!(
            parse_filter_arg("sshd.conf[mode=aggressive, logtype=\"journal\"]").unwrap(),
            (
                "sshd.conf".to_owned(),
                vec![
                    ("mode".to_owned(), "aggressive".to_owned()),
                    ("logtype".to_owned(), "journal".to_owned())
                ]
            )
        );
        assert_eq!(parse_filter_arg("truco-ko").unwrap().1, vec![]);
    }

    #[test]
    fn host_tags() {
        let r = resolve_host_tags("^a <F-USER>x</F-USER> <HOST> <invalid user> </F-X>");
        assert!(r.starts_with("^a (?P<user>x) (?:"), "{r}");
        assert!(r.ends_with(" <invalid user> </F-X>"), "{r}");
    }

    #[test]
    fn truco_ko_builtin() {
        let spec = FilterSpec::builtin("truco-ko", &[]).unwrap();
        let mut f = Filter::new(&spec, false).unwrap();
        assert!(f.has_prefilter());
        let tz = Tz::UTC;
        for (line, host) in [
            ("TRUCO_KO [1.2.3.4] fail2ban sip 10:11:12.123", "1.2.3.4"),
            (
                "Dec  3 14:00:00 web fonbo: TRUCO_KO 10.0.0.7 /login token invalido",
                "10.0.0.7",
            ),
            ("TRUCO_KO [2001:db8::1] stg sip 10:11:12", "2001:db8::1"),
            ("x TRUCO_KO 2001:db8::2", "2001:db8::2"),
        ] {
            let r = f.process_line(line, 1_700_000_000, &tz);
            assert_eq!(r.len(), 1, "{line}");
            assert_eq!(r[0].id.as_deref(), Some(host), "{line}");
            assert!(r[0].is_failure());
        }
        assert!(f
            .process_line("TRUCO_OK 1.2.3.4", 1_700_000_000, &tz)
            .is_empty());
    }
}
