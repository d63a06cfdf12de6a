//! Timestamps in log lines: fail2ban's date templates (`datepattern`, `{^LN-BEG}`,
//! `{DATE}`, strptime-style `%` fields), the year of year-less syslog dates decided by an
//! explicit "now", and local times read in a POSIX `TZ` rule (`CET-01CEST-02,M3.5.0,
//! M10.5.0`) evaluated here, so nothing depends on the host's time zone.

use std::sync::OnceLock;

use super::pyre::{translate, Re, Span, Spans};

/// A time zone: a fixed offset, or a POSIX `TZ` rule with daylight saving time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tz {
    /// Standard offset east of UTC, seconds.
    std_offset: i64,
    /// Daylight offset and the rules that bound it, when the zone has DST.
    dst: Option<Dst>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Dst {
    offset: i64,
    start: Rule,
    end: Rule,
}

/// `Mm.w.d/time`: day `d` (0 = Sunday) of week `w` (5 = last) of month `m`, at `time`
/// seconds of local time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    month: u32,
    week: u32,
    weekday: u32,
    time: i64,
}

impl Tz {
    /// UTC.
    pub const UTC: Self = Self {
        std_offset: 0,
        dst: None,
    };

    /// Reads a POSIX `TZ` value such as `CET-01CEST-02,M3.5.0,M10.5.0` or `UTC0`
    /// (`Jn`/`n` day rules are not supported: zones in use today all have `M` rules).
    pub fn parse_posix(s: &str) -> Option<Self> {
        let s = s.trim();
        let (_, rest) = name(s)?;
        let (std, rest) = offset(rest)?;
        if rest.is_empty() {
            return Some(Self {
                std_offset: -std,
                dst: None,
            });
        }
        let (_, rest) = name(rest)?;
        let (dst_off, rest) = match offset(rest) {
            Some((o, r)) if !rest.starts_with(',') => (-o, r),
            _ => (-std + 3600, rest),
        };
        let rest = rest.strip_prefix(',')?;
        let (a, b) = rest.split_once(',')?;
        Some(Self {
            std_offset: -std,
            dst: Some(Dst {
                offset: dst_off,
                start: rule(a)?,
                end: rule(b)?,
            }),
        })
    }

    /// Offset east of UTC at the UTC instant `t`.
    pub fn offset_at(&self, t: i64) -> i64 {
        let Some(dst) = &self.dst else {
            return self.std_offset;
        };
        let (y, _, _) = civil(t + self.std_offset);
        // Transitions in UTC: the start rule is in standard time, the end in DST.
        let start = dst.start.at(y) - self.std_offset;
        let end = dst.end.at(y) - dst.offset;
        let in_dst = if start < end {
            t >= start && t < end
        } else {
            t >= start || t < end
        };
        if in_dst {
            dst.offset
        } else {
            self.std_offset
        }
    }

    /// The UTC instant of a local wall-clock time (`mktime` with `tm_isdst = -1`: in a
    /// gap or an overlap, the standard-time reading).
    pub fn local_to_utc(&self, local: i64) -> i64 {
        let t = local - self.std_offset;
        let off = self.offset_at(t);
        if off == self.std_offset {
            return t;
        }
        let t2 = local - off;
        if self.offset_at(t2) == off {
            t2
        } else {
            t
        }
    }
}

fn name(s: &str) -> Option<(&str, &str)> {
    if let Some(r) = s.strip_prefix('<') {
        let e = r.find('>')?;
        return Some((&r[..e], &r[e + 1..]));
    }
    let n = s
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(s.len());
    (n >= 3).then(|| (&s[..n], &s[n..]))
}

/// `[+-]hh[:mm[:ss]]` in seconds (POSIX sign: west of UTC is positive).
fn offset(s: &str) -> Option<(i64, &str)> {
    let (sign, r) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => (1, s),
    };
    let end = r
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(r.len());
    if end == 0 {
        return None;
    }
    let mut parts = r[..end].split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let sec: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    Some((sign * (h * 3600 + m * 60 + sec), &r[end..]))
}

fn rule(s: &str) -> Option<Rule> {
    let s = s.strip_prefix('M')?;
    let (date, time) = match s.split_once('/') {
        Some((d, t)) => (d, offset(t)?.0),
        None => (s, 7200),
    };
    let mut p = date.split('.');
    let month = p.next()?.parse().ok()?;
    let week = p.next()?.parse().ok()?;
    let weekday = p.next()?.parse().ok()?;
    ((1..=12).contains(&month) && (1..=5).contains(&week) && weekday <= 6).then_some(Rule {
        month,
        week,
        weekday,
        time,
    })
}

impl Rule {
    /// Local seconds (since the epoch, as if local were UTC) of the rule in `year`.
    fn at(&self, year: i64) -> i64 {
        let first = days_from_civil(year, self.month, 1);
        // 1970-01-01 was a Thursday (4).
        let wd_first = (first + 4).rem_euclid(7) as u32;
        let mut day = 1 + (self.weekday + 7 - wd_first) % 7 + (self.week - 1) * 7;
        let len = days_in_month(year, self.month);
        while day > len {
            day -= 7;
        }
        days_from_civil(year, self.month, day) * 86400 + self.time
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a count of seconds since the epoch.
pub(crate) fn civil(t: i64) -> (i64, u32, u32) {
    let z = t.div_euclid(86400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Formats local seconds as `YYYY-MM-DDTHH:MM:SS`.
pub fn format_local(local: i64) -> String {
    let (y, m, d) = civil(local);
    let s = local.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.ffffff]` as local seconds and microseconds.
pub fn parse_iso_local(s: &str) -> Option<(i64, u32)> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut t = hms.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let se: i64 = t.next()?.parse().ok()?;
    let us = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}")[..6].parse().ok()?
    };
    Some((
        days_from_civil(y, m, day) * 86400 + h * 3600 + mi * 60 + se,
        us,
    ))
}

// === Date templates ===

/// Where a template may match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anchor {
    /// At the line's start, after at most two non-word characters (`{^LN-BEG}`).
    LineBegin,
    /// The pattern anchors itself (`^...`).
    Own,
    /// Anywhere, at a word boundary.
    Word,
}

/// One date template.
#[derive(Debug)]
struct Template {
    anchor: Anchor,
    /// The regex, as [`Re::new`] takes it.
    source: String,
    /// Compiled at once for a filter's own templates (so that a bad one fails the filter),
    /// on first use for fail2ban's defaults: a log needs one or two of them, and compiling
    /// all of them costs more than reading a few thousand lines.
    matcher: OnceLock<Option<Matcher>>,
}

/// A compiled template.
#[derive(Debug)]
struct Matcher {
    re: Re,
    /// Group names (`_date` first) and their indices.
    names: Vec<String>,
    idx: Vec<usize>,
}

/// fail2ban's default templates (the strptime forms of `datedetector.py`), written out
/// here. `{SEP}` stands for one separator; each is compiled once per separator since the
/// `regex` crate has no backreference.
const DEFAULTS: &[&str] = &[
    r"%ExY{SEP}%m{SEP}%d(?:T|  ?)%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%a )?%b %d %ExY %k:%M:%S(?:\.%f)?",
    r"%d{SEP2}%m{SEP2}(?:%ExY|%Exy) %k:%M:%S",
    r"%d{SEP2}%b{SEP2}%ExY[ :]?%H:%M:%S(?:\.%f)?(?: %z)?",
    r"%m/%d/%ExY:%H:%M:%S",
    r"%m-%d-%ExY %k:%M:%S(?:\.%f)?",
    r"EPOCH",
    r"%Exy%Exm%Exd  ?%H:%M:%S",
    r"%b %d, %ExY %I:%M:%S %p",
    r"%ExY%Exm%Exd(?:-|T|  ?)%ExH:?%ExM:?%ExS(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%Z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
];

/// Templates that anchor themselves at the line's start.
const DEFAULTS_LINE_BEGIN: &[&str] = &[
    r"{^LN-BEG}%H:%M:%S",
    r"^<%m/%d/%Exy@%H:%M:%S>",
    r"^%b-%d-%Exy %k:%M:%S",
];

fn expand_seps(p: &str) -> Vec<String> {
    if p.contains("{SEP}") {
        ["-", "/", r"\."]
            .iter()
            .map(|s| p.replace("{SEP}", s))
            .collect()
    } else if p.contains("{SEP2}") {
        ["-", "/"].iter().map(|s| p.replace("{SEP2}", s)).collect()
    } else {
        vec![p.to_owned()]
    }
}

/// The regex of one strptime field.
fn field(f: &str) -> Option<&'static str> {
    Some(match f {
        "a" => "(?P<a>monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tue|wed|thu|fri|sat|sun)",
        "A" => "(?P<A>monday|tuesday|wednesday|thursday|friday|saturday|sunday)",
        "b" => "(?P<b>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)",
        "B" => "(?P<B>january|february|march|april|may|june|july|august|september|october|november|december)",
        "d" => r"(?P<d>[1-2]\d|[0 ]?[1-9]|3[0-1])",
        "f" => r"(?P<f>[0-9]{1,6})",
        "H" => r"(?P<H>[0-1]?\d|2[0-3])",
        "I" => r"(?P<I>1[0-2]|0[1-9]|[1-9])",
        "j" => r"(?P<j>36[0-6]|3[0-5]\d|[12]\d\d|0[1-9]\d|00[1-9]|[1-9]\d|0[1-9]|[1-9])",
        "k" => r" ?(?P<H>[0-2]?\d)",
        "l" => r" ?(?P<I>1?\d)",
        "m" => r"(?P<m>0?[1-9]|1[0-2])",
        "M" => r"(?P<M>[0-5]?\d)",
        "p" => r"(?P<p>am|pm)",
        "S" => r"(?P<S>[0-5]?\d|6[0-1])",
        "w" => r"(?P<w>[0-6])",
        "y" => r"(?P<y>\d\d)",
        "Y" => r"(?P<Y>\d\d\d\d)",
        "z" => r"(?P<z>Z|UTC|GMT|[+-][01]\d(?::?\d{2})?)",
        "Z" => r"(?P<Z>Z|[A-Z]{3,5})",
        "Exd" => r"(?P<d>[1-2]\d|0[1-9]|3[0-1])",
        "Exm" => r"(?P<m>0[1-9]|1[0-2])",
        "ExH" => r"(?P<H>[0-1]\d|2[0-3])",
        "Exk" => r" ?(?P<H>[0-1]?\d|2[0-3])",
        "Exl" => r" ?(?P<I>1[0-2]|\d)",
        "ExM" => r"(?P<M>[0-5]\d)",
        "ExS" => r"(?P<S>[0-5]\d|6[0-1])",
        // fail2ban limits %ExY to the years around "now"; 2000-2099 keeps that intent.
        "ExY" => r"(?P<Y>20\d\d)",
        "Exy" => r"(?P<y>\d\d)",
        "ExZ" => r"(?P<Z>[A-Z](?:[A-Z]{2,4})?)",
        "Exz" => r"(?P<z>(?:[A-Z](?:[A-Z]{2,4})?)?[+-][01]\d(?::?\d{2})?|[A-Z](?:[A-Z]{2,4})?)",
        _ => return None,
    })
}

/// Expands `%` fields; `%%` is a literal `%`. Returns the regex and whether it reads names
/// (matched case-insensitively, as fail2ban does).
fn expand_fields(p: &str) -> (String, bool) {
    let mut out = String::new();
    let mut alpha = false;
    let mut s = p;
    while let Some(i) = s.find('%') {
        out.push_str(&s[..i]);
        let r = &s[i + 1..];
        if let Some(r2) = r.strip_prefix('%') {
            out.push('%');
            s = r2;
            continue;
        }
        let key = if r.starts_with("Ex") && r.len() >= 3 {
            &r[..3]
        } else {
            r.get(..1).unwrap_or("")
        };
        match field(key) {
            Some(f) => {
                if matches!(key, "a" | "A" | "b" | "B" | "p") {
                    alpha = true;
                }
                out.push_str(f);
                s = &r[key.len()..];
            }
            None => {
                out.push('%');
                s = r;
            }
        }
    }
    out.push_str(s);
    (out, alpha)
}

impl Matcher {
    fn new(source: &str) -> Result<Self, String> {
        let re = Re::new(source)?;
        let mut named = re.names();
        // `_date` first: `find` reads its span from position 0.
        named.sort_by_key(|(n, _)| n != "_date");
        Ok(Self {
            names: named.iter().map(|(n, _)| n.clone()).collect(),
            idx: named.iter().map(|(_, i)| *i).collect(),
            re,
        })
    }
}

const EPOCH_RE: &str = r"(?P<epoch>\d{10,11}\b(?:\.\d{3,6})?)";

impl Template {
    /// A template compiled now.
    fn compile(pattern: &str, anchor: Anchor) -> Result<Self, String> {
        let t = Self::lazy(pattern, anchor);
        let m = Matcher::new(&t.source)?;
        t.matcher.get_or_init(|| Some(m));
        Ok(t)
    }

    /// A template compiled on first use (fail2ban's defaults, known to compile).
    fn lazy(pattern: &str, anchor: Anchor) -> Self {
        let (body, alpha) = if pattern == "EPOCH" {
            (EPOCH_RE.to_owned(), false)
        } else {
            let (b, a) = expand_fields(pattern);
            (translate(&b), a)
        };
        let flags = if alpha { "(?i)" } else { "" };
        let source = match anchor {
            Anchor::LineBegin => format!(r"{flags}^(?:\W{{0,2}})?(?P<_date>{body})"),
            Anchor::Word => format!(r"{flags}(?P<_date>{body})"),
            Anchor::Own => {
                let rest = body.strip_prefix('^').unwrap_or(&body);
                format!(r"{flags}^(?P<_date>{rest})")
            }
        };
        Self {
            anchor,
            source,
            matcher: OnceLock::new(),
        }
    }

    fn matcher(&self) -> Option<&Matcher> {
        self.matcher
            .get_or_init(|| Matcher::new(&self.source).ok())
            .as_ref()
    }

    /// The date's span and the spans of the template's groups when it matches `line`.
    fn find(&self, line: &str) -> Option<(Span, Spans)> {
        let m = self.matcher()?;
        let mut from = 0;
        loop {
            let spans = m.re.spans_at(line, from, &m.idx)?;
            let (s, e) = (*spans.first()?)?;
            // fail2ban's `(?=^|\b|\W)` before and `(?=\b|\W|$)` after: not inside a word.
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            let end_ok = !(word(line[..e].chars().next_back()) && word(line[e..].chars().next()));
            let start_ok = self.anchor != Anchor::Word
                || !(word(line[..s].chars().next_back()) && word(line[s..].chars().next()));
            if end_ok && start_ok {
                return Some(((s, e), spans));
            }
            if self.anchor != Anchor::Word {
                return None;
            }
            from = s + line[s..].chars().next().map_or(1, char::len_utf8);
        }
    }
}

/// A found date: its span in the line and its UTC instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Found {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) time: Option<i64>,
}

/// The date templates of one filter (`datepattern`), tried in order.
#[derive(Debug)]
pub(crate) struct DateDetector {
    templates: Vec<Template>,
    /// The template that matched last, tried first (fail2ban reorders by hits).
    last: usize,
    /// The hand-written reader of the commonest dates, when the templates are fail2ban's
    /// default list.
    fast: Option<Fast>,
}

/// Where, in fail2ban's default template list, the templates that the hand-written
/// reader stands in for are.
///
/// [`syslog_date`] and [`iso_date`] take a date at the start of a line (after at most two
/// ASCII non-word characters, as `{^LN-BEG}` allows) only in forms where exactly these
/// templates of the default list match, all with the same span and fields, so reading it
/// by hand gives what the template search gives; anything else (a fraction, a year or a
/// zone after the time, an hour past 23, a character after it that is not ASCII...) is
/// declined and goes to the templates.
#[derive(Clone, Copy, Debug)]
struct Fast {
    /// `(?:%a )?%b %d %k:%M:%S...` (the first in list order), and its `%Z` and `%z`
    /// prefixed twins: `Jan  1 00:00:02`.
    syslog: [usize; 3],
    /// `%ExY{SEP}%m{SEP}%d(?:T|  ?)%H:%M:%S...` for the separators `-`, `/`, `.`:
    /// `2026-01-01 00:00:02`, `2026-01-01T00:00:02`.
    iso: [usize; 3],
}

impl DateDetector {
    /// Builds the detector from a `datepattern` value (one pattern per line), or the
    /// default templates when there is none.
    pub(crate) fn new(datepattern: Option<&str>) -> Result<Self, String> {
        let mut templates = Vec::new();
        let lines: Vec<&str> = match datepattern {
            Some(p) => p
                .split('\n')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect(),
            None => vec!["{DEFAULT}"],
        };
        let single_default = lines.len() == 1
            && matches!(lines[0].to_uppercase().as_str(), "{^LN-BEG}" | "{DEFAULT}");
        // Template index of each default (of its first separator), in the list above.
        let mut first_of = Vec::with_capacity(DEFAULTS.len());
        for l in lines {
            let upper = l.to_uppercase();
            if upper == "{^LN-BEG}" || upper == "{DEFAULT}" {
                for p in DEFAULTS {
                    first_of.push(templates.len());
                    for p in expand_seps(p) {
                        templates.push(Template::lazy(&p, Anchor::LineBegin));
                    }
                }
                for p in DEFAULTS_LINE_BEGIN {
                    match p.strip_prefix("{^LN-BEG}") {
                        Some(r) => templates.push(Template::lazy(r, Anchor::LineBegin)),
                        None => templates.push(Template::lazy(p, Anchor::Own)),
                    }
                }
                if upper == "{DEFAULT}" {
                    for p in DEFAULTS.iter().flat_map(|p| expand_seps(p)) {
                        templates.push(Template::lazy(&p, Anchor::Word));
                    }
                }
            } else if upper == "{NONE}" {
                // No date in the lines: the caller's time is used.
            } else if l.contains("{DATE}") {
                for p in DEFAULTS.iter().flat_map(|p| expand_seps(p)) {
                    let full = l.replace("{DATE}", &p);
                    let anchor = if full.starts_with('^') {
                        Anchor::Own
                    } else {
                        Anchor::Word
                    };
                    templates.push(Template::compile(&full, anchor)?);
                }
            } else if let Some(r) = l.strip_prefix("{^LN-BEG}") {
                templates.push(Template::compile(r, Anchor::LineBegin)?);
            } else if l.starts_with('^') {
                templates.push(Template::compile(l, Anchor::Own)?);
            } else {
                templates.push(Template::compile(l, Anchor::Word)?);
            }
        }
        // The list starts with the defaults at the line's start; whatever follows them
        // (`{DEFAULT}`'s search anywhere) loses to a match at the start.
        let fast = single_default.then(|| Fast {
            syslog: [first_of[1], first_of[11], first_of[12]],
            iso: [first_of[0], first_of[0] + 1, first_of[0] + 2],
        });
        Ok(Self {
            templates,
            last: 0,
            fast,
        })
    }

    /// Finds the date in `line`: `now` (UTC seconds) decides the year of year-less dates,
    /// `tz` reads local times.
    pub(crate) fn find(&mut self, line: &str, now: i64, tz: &Tz) -> Option<Found> {
        if let Some(fast) = self.fast {
            if let Some(found) = self.find_fast(fast, line, now, tz) {
                return Some(found);
            }
        }
        let n = self.templates.len();
        let order = std::iter::once(self.last).chain((0..n).filter(|&i| i != self.last));
        let mut best: Option<(usize, Span, Spans)> = None;
        for i in order {
            let Some(t) = self.templates.get(i) else {
                continue;
            };
            if let Some((span, fields)) = t.find(line) {
                if t.anchor != Anchor::Word {
                    best = Some((i, span, fields));
                    break;
                }
                if best.as_ref().is_none_or(|b| span.0 < b.1 .0) {
                    best = Some((i, span, fields));
                }
            }
        }
        let (i, (s, e), spans) = best?;
        self.last = i;
        let names = &self.templates[i].matcher()?.names;
        let get = |k: &str| {
            let p = names.iter().position(|n| n == k)?;
            let (a, b) = (*spans.get(p)?)?;
            line.get(a..b)
        };
        Some(Found {
            start: s,
            end: e,
            time: to_time(&get, now, tz),
        })
    }

    /// The hand-written reader: the date and the template the search would have settled on
    /// (the last one when it is among the equivalent ones, else the first in list order),
    /// or `None` to search.
    fn find_fast(&mut self, fast: Fast, line: &str, now: i64, tz: &Tz) -> Option<Found> {
        let (date, same) = match syslog_date(line) {
            Some(d) => (d, &fast.syslog[..]),
            None => {
                let d = iso_date(line)?;
                (d, &fast.iso[d.sep..=d.sep])
            }
        };
        if !same.contains(&self.last) {
            self.last = same[0];
        }
        let get = |k: &str| match k {
            "Y" => date.year,
            "m" => date.month_num,
            "b" => date.month_name,
            "d" => Some(date.day),
            "H" => Some(date.hour),
            "M" => Some(date.minute),
            "S" => Some(date.second),
            _ => None,
        };
        Some(Found {
            start: date.start,
            end: date.end,
            time: to_time(&get, now, tz),
        })
    }
}

/// A date read by hand: its span and its fields as the template's groups would hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HandDate<'a> {
    start: usize,
    end: usize,
    year: Option<&'a str>,
    month_num: Option<&'a str>,
    month_name: Option<&'a str>,
    day: &'a str,
    hour: &'a str,
    minute: &'a str,
    second: &'a str,
    /// Which separator (`-`, `/`, `.`) an ISO date uses.
    sep: usize,
}

/// Where a date may start: after at most two ASCII non-word characters (`{^LN-BEG}`'s
/// `\W{0,2}`, which is greedy: with more the start is not a date).
fn date_start(b: &[u8]) -> Option<usize> {
    let k = b
        .iter()
        .take(3)
        .take_while(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || **c == b'_'))
        .count();
    (k <= 2).then_some(k)
}

/// `b[i..i + 2]` as two ASCII digits, with its value.
fn two_digits(b: &[u8], i: usize) -> Option<u32> {
    match b.get(i..i + 2)? {
        [x, y] if x.is_ascii_digit() && y.is_ascii_digit() => {
            Some(u32::from(x - b'0') * 10 + u32::from(y - b'0'))
        }
        _ => None,
    }
}

/// `HH:MM:SS` at `i` (hours 00-23, minutes and seconds 00-59), and the index after it.
fn clock(b: &[u8], i: usize) -> Option<usize> {
    let h = two_digits(b, i)?;
    let m = two_digits(b, i + 3)?;
    let s = two_digits(b, i + 6)?;
    (h <= 23 && m <= 59 && s <= 59 && b.get(i + 2) == Some(&b':') && b.get(i + 5) == Some(&b':'))
        .then_some(i + 8)
}

/// Whether `c`, right after a date, ends it: an ASCII non-word character (the templates'
/// word-boundary check; a non-ASCII one is left to them).
fn ends_date(c: u8) -> bool {
    c.is_ascii() && !(c.is_ascii_alphanumeric() || c == b'_')
}

/// `Mon dd HH:MM:SS` (day ` d`, `dd` or `d`; month in any case) at a line's start,
/// followed by the end of the line or by an ASCII non-word character that is not `.` (a
/// fraction) nor a space before a digit (a year).
fn syslog_date(line: &str) -> Option<HandDate<'_>> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let b = line.as_bytes();
    let start = date_start(b)?;
    let name = b.get(start..start + 3)?;
    let lower = [
        name[0].to_ascii_lowercase(),
        name[1].to_ascii_lowercase(),
        name[2].to_ascii_lowercase(),
    ];
    if !MONTHS.contains(&&lower) || b.get(start + 3) != Some(&b' ') {
        return None;
    }
    let d = start + 4;
    let (day, value) = match (b.get(d)?, b.get(d + 1)?) {
        (b' ', x @ b'1'..=b'9') => (d..d + 2, u32::from(x - b'0')),
        (x @ b'1'..=b'9', b' ') => (d..d + 1, u32::from(x - b'0')),
        _ => (d..d + 2, two_digits(b, d)?),
    };
    if !(1..=31).contains(&value) || b.get(day.end) != Some(&b' ') {
        return None;
    }
    let t = day.end + 1;
    let end = clock(b, t)?;
    match b.get(end) {
        None => {}
        Some(b'.') => return None,
        Some(b' ') if b.get(end + 1).is_some_and(u8::is_ascii_digit) => return None,
        Some(&c) if !ends_date(c) => return None,
        Some(_) => {}
    }
    Some(HandDate {
        start,
        end,
        year: None,
        month_num: None,
        month_name: Some(&line[start..start + 3]),
        day: &line[day],
        hour: &line[t..t + 2],
        minute: &line[t + 3..t + 5],
        second: &line[t + 6..t + 8],
        sep: 0,
    })
}

/// `20YY-MM-DD HH:MM:SS` (or with `T`; separators `-`, `/` or `.`) at a line's start,
/// followed by the end of the line or by an ASCII non-word character that is not `.` or
/// `,` (a fraction), where no zone (`Z`, `UTC`, `GMT`, `+hh`, `-hh`) follows the spaces.
fn iso_date(line: &str) -> Option<HandDate<'_>> {
    let b = line.as_bytes();
    let start = date_start(b)?;
    if b.get(start..start + 2)? != b"20" {
        return None;
    }
    two_digits(b, start + 2)?;
    let sep_char = *b.get(start + 4)?;
    let sep = [b'-', b'/', b'.'].iter().position(|&c| c == sep_char)?;
    let month = two_digits(b, start + 5)?;
    let day = two_digits(b, start + 8)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || b.get(start + 7) != Some(&sep_char)
        || !matches!(b.get(start + 10), Some(b'T' | b' '))
    {
        return None;
    }
    let t = start + 11;
    let end = clock(b, t)?;
    match b.get(end) {
        None => {}
        Some(b'.' | b',') => return None,
        Some(&c) if !ends_date(c) => return None,
        Some(_) => {
            let after = b[end..]
                .iter()
                .position(|c| !c.is_ascii_whitespace() && *c != 0x0b)
                .map(|i| b[end + i]);
            if matches!(after, Some(b'Z' | b'U' | b'G' | b'+' | b'-'))
                || !after.is_none_or(|c| c.is_ascii())
            {
                return None;
            }
        }
    }
    Some(HandDate {
        start,
        end,
        year: Some(&line[start..start + 4]),
        month_num: Some(&line[start + 5..start + 7]),
        month_name: None,
        day: &line[start + 8..start + 10],
        hour: &line[t..t + 2],
        minute: &line[t + 3..t + 5],
        second: &line[t + 6..t + 8],
        sep,
    })
}

fn month_of(name: &str) -> Option<u32> {
    const M: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    // ASCII case folding is enough: no other character lowers to one of these letters.
    let head = name.as_bytes().get(..3)?;
    M.iter()
        .position(|m| head.eq_ignore_ascii_case(m.as_bytes()))
        .map(|p| p as u32 + 1)
}

/// Zone abbreviations fail2ban knows, in minutes east of UTC (the common ones).
fn zone_offset(z: &str) -> Option<i64> {
    let (abbr, off) = match z.find(['+', '-']) {
        Some(i) => (&z[..i], &z[i..]),
        None => (z, ""),
    };
    let base = match abbr {
        "" | "Z" | "UTC" | "GMT" | "WET" | "WT" | "EGST" => 0,
        "CET" | "WEST" | "WAT" | "A" => 60,
        "CEST" | "EET" | "CAT" | "SAST" | "B" => 120,
        "EEST" | "MSK" | "EAT" | "IDT" | "C" => 180,
        "EST" | "CDT" | "R" => -300,
        "EDT" | "AST" | "Q" => -240,
        "CST" | "MDT" | "S" => -360,
        "MST" | "PDT" | "T" => -420,
        "PST" | "AKDT" | "U" => -480,
        "JST" | "KST" | "I" => 540,
        "IST" => 330,
        "AEST" | "K" => 600,
        _ => return None,
    };
    if off.is_empty() {
        return Some(base);
    }
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let digits: String = off[1..].chars().filter(char::is_ascii_digit).collect();
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i64>().ok()?, 0),
        4 => (
            digits[..2].parse::<i64>().ok()?,
            digits[2..].parse::<i64>().ok()?,
        ),
        _ => return None,
    };
    Some(base + sign * (h * 60 + m))
}

/// fail2ban's `reGroupDictStrptime`, without fractions of a second (fail2ban drops them).
fn to_time<'a>(get: &dyn Fn(&str) -> Option<&'a str>, now: i64, tz: &Tz) -> Option<i64> {
    if let Some(e) = get("epoch") {
        return e.split('.').next()?.parse().ok();
    }
    let num = |k: &str| get(k).and_then(|v| v.trim().parse::<i64>().ok());
    let mut year = num("Y");
    if year.is_none() {
        year = num("y").map(|y| if y <= 2000 { y + 2000 } else { y });
    }
    let month = num("m")
        .map(|m| m as u32)
        .or_else(|| get("b").and_then(month_of))
        .or_else(|| get("B").and_then(month_of));
    let day = num("d").map(|d| d as u32);
    let mut hour = num("H").unwrap_or(0);
    if let Some(i) = num("I") {
        hour = i;
        let pm = get("p").is_some_and(|p| p.eq_ignore_ascii_case("pm"));
        if pm && hour != 12 {
            hour += 12;
        } else if !pm && hour == 12 {
            hour = 0;
        }
    }
    let minute = num("M").unwrap_or(0);
    let second = num("S").unwrap_or(0);
    let tzoffset = get("z")
        .or_else(|| get("Z"))
        .and_then(zone_offset)
        .map(|m| m * 60);
    let now_local = now + tz.offset_at(now);
    let (now_y, now_m, now_d) = civil(now_local);
    let assume_year = year.is_none();
    let year = year.unwrap_or(now_y);
    let (month, day, assume_today) = match (month, day) {
        (Some(m), Some(d)) => (m, d, false),
        (None, None) => (now_m, now_d, true),
        _ => return None,
    };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let secs = hour * 3600 + minute * 60 + second;
    let mut naive = days_from_civil(year, month, day) * 86400 + secs;
    if let Some(o) = tzoffset {
        naive -= o;
    }
    if assume_today && naive > now_local {
        naive -= 86400;
    }
    if assume_year && naive > now_local + 86400 {
        // The same date a year earlier (fail2ban's `replace(year=year-1)`).
        if month == 2 && day == 29 {
            return None;
        }
        naive = days_from_civil(year - 1, month, day) * 86400 + secs - tzoffset.unwrap_or(0);
    }
    Some(match tzoffset {
        Some(_) => naive,
        None => tz.local_to_utc(naive),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random lines built from date pieces, near-misses included, and other templates'
    /// dates among them (so that the last-matched template varies).
    fn date_lines(n: usize) -> Vec<String> {
        const PREFIX: &[&str] = &["", "", "", " ", "[", "[[", "[[[", "<", "é", "  ", "x"];
        const MONTH: &[&str] = &["Jan", "jan", "JAN", "Feb", "Jun", "Sep", "Dec", "Mon", "Ja"];
        const DAY: &[&str] = &[
            " 1", "01", "1", "9", "10", "29", "30", "31", "32", "00", " 0", "15", " 5",
        ];
        const HOUR: &[&str] = &["00", "09", "23", "24", "29", "7", " 7", "12", "18", "20"];
        const MINSEC: &[&str] = &["00", "07", "59", "60", "61", "5", "30", "45", "12"];
        const YEAR: &[&str] = &["2012", "2026", "1999", "2099", "20"];
        const NUM: &[&str] = &["01", "02", "12", "13", "00", "1", "29", "30", "31"];
        const SEP: &[&str] = &["-", "/", ".", ":"];
        const BETWEEN: &[&str] = &[" ", "T", "  ", "t", "_"];
        const SUFFIX: &[&str] = &[
            "",
            " srv sshd[1]: x",
            ".123 x",
            ",5 x",
            " 2005 x",
            " 2005",
            " 20",
            "x",
            "_",
            ":",
            ": x",
            "é",
            " é",
            ",",
            "\t",
            "  ",
            " Z",
            "Z",
            " +01:00",
            "+0100",
            "-05",
            " UTC",
            " GMT x",
            " U x",
            "\tZ",
            " \u{85}Z",
            " \u{a0}x",
            "]",
            "] x",
        ];
        const OTHER: &[&str] = &[
            "2012/04/09 11:53:29 [error]",
            "[Sun Sep 14 21:44:43.008606 2014] [authz_core:error]",
            "08/03/2005:07:56:53 x",
            "1124013600 epoch",
            "Jan 01, 2005 07:56:53 PM x",
            "CET Jan  1 00:00:00 x",
            "Mon Jan  1 00:00:00 x",
            "20050803 07:56:53 x",
            "no date here",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut pick = |v: &[&'static str]| -> &'static str {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v[(seed % v.len() as u64) as usize]
        };
        (0..n)
            .map(|i| match i % 5 {
                0 | 1 => format!(
                    "{}{} {} {}:{}:{}{}",
                    pick(PREFIX),
                    pick(MONTH),
                    pick(DAY),
                    pick(HOUR),
                    pick(MINSEC),
                    pick(MINSEC),
                    pick(SUFFIX)
                ),
                2 | 3 => {
                    let sep = pick(SEP);
                    format!(
                        "{}{}{sep}{}{sep}{}{}{}:{}:{}{}",
                        pick(PREFIX),
                        pick(YEAR),
                        pick(NUM),
                        pick(NUM),
                        pick(BETWEEN),
                        pick(HOUR),
                        pick(MINSEC),
                        pick(MINSEC),
                        pick(SUFFIX)
                    )
                }
                _ => pick(OTHER).to_owned(),
            })
            .collect()
    }

    #[test]
    fn hand_reader_agrees_with_templates() {
        let tz = Tz::parse_posix("CET-01CEST-02,M3.5.0,M10.5.0").unwrap();
        let lines = date_lines(40_000);
        for pattern in [Some("{^LN-BEG}"), Some("{DEFAULT}"), None] {
            let mut fast = DateDetector::new(pattern).unwrap();
            assert!(fast.fast.is_some());
            let mut slow = DateDetector::new(pattern).unwrap();
            slow.fast = None;
            let mut taken = 0;
            // New Year's Eve and a summer day: the year of year-less dates differs.
            for (i, line) in lines.iter().enumerate() {
                let now = [1_767_225_599, 1_124_013_600][i % 2];
                taken += usize::from(
                    fast.fast
                        .is_some_and(|_| syslog_date(line).is_some() || iso_date(line).is_some()),
                );
                let a = fast.find(line, now, &tz);
                let b = slow.find(line, now, &tz);
                assert_eq!(a, b, "{pattern:?} {line:?}");
                assert_eq!(fast.last, slow.last, "{pattern:?} {line:?}");
            }
            // The random lines reach both the hand reader and the templates.
            assert!(taken > lines.len() / 40, "{taken}");
            assert!(taken < lines.len() / 2, "{taken}");
        }
        // Any other datepattern is left to the templates.
        assert!(DateDetector::new(Some("{^LN-BEG}\n{DEFAULT}"))
            .unwrap()
            .fast
            .is_none());
        assert!(DateDetector::new(Some("^%b %d %H:%M:%S"))
            .unwrap()
            .fast
            .is_none());
    }

    #[test]
    fn default_templates_compile() {
        let d = DateDetector::new(None).unwrap();
        assert!(d.templates.iter().all(|t| t.matcher().is_some()));
        // A filter's own template fails the filter at once.
        assert!(DateDetector::new(Some("^%H:%M:%S(")).is_err());
    }

    #[test]
    fn hand_reader_forms() {
        for line in [
            "Jan  1 00:00:02 srv sshd[1]: x",
            "Dec 31 23:59:59",
            "jun 1 12:00:00 x",
            "[Sep 09 01:02:03] x",
        ] {
            assert!(syslog_date(line).is_some(), "{line}");
        }
        for line in [
            "2026-01-01 00:00:02 x",
            "2026-01-01T00:00:02",
            "[2012/02/13 17:21:54] x",
            "2012.02.13 17:21:54 x",
        ] {
            assert!(iso_date(line).is_some(), "{line}");
        }
        // A fraction, a year or a zone after the time, an hour past 23, day 32, three
        // characters before the date, a letter or a non-ASCII character right after it.
        for line in [
            "Jan  1 00:00:02.5 x",
            "Jan  1 00:00:02 2005 x",
            "Jan  1 24:00:02 x",
            "Jan 32 00:00:02 x",
            "[[[Jan  1 00:00:02 x",
            "Jan  1 00:00:02x",
            "Jan  1 00:00:02é",
            "Sun Jan  1 00:00:02 x",
        ] {
            assert_eq!(syslog_date(line), None, "{line}");
        }
        for line in [
            "2026-01-01 00:00:02.5 x",
            "2026-01-01 00:00:02 +01:00 x",
            "2026-01-01 00:00:02Z",
            "2026-01-01 00:00:02 UTC",
            "1999-01-01 00:00:02 x",
            "2026-13-01 00:00:02 x",
            "2026-01-01  00:00:02 x",
            "2026-01/01 00:00:02 x",
        ] {
            assert_eq!(iso_date(line), None, "{line}");
        }
    }

    fn zurich() -> Tz {
        Tz::parse_posix("CET-01CEST-02,M3.5.0,M10.5.0").unwrap()
    }

    #[test]
    fn posix_rules() {
        let tz = zurich();
        // 2005-08-14 12:00:00 CEST is the conformance suite's frozen now.
        let local = parse_iso_local("2005-08-14T12:00:00").unwrap().0;
        assert_eq!(tz.local_to_utc(local), 1_124_013_600);
        let winter = parse_iso_local("2005-01-05T01:31:41").unwrap().0;
        assert_eq!(tz.local_to_utc(winter), winter - 3600);
        // Last Sunday of March 2005 is the 27th: 01:59 CET is before, 03:00 CEST after.
        let before = parse_iso_local("2005-03-27T01:59:00").unwrap().0;
        let after = parse_iso_local("2005-03-27T03:00:00").unwrap().0;
        assert_eq!(tz.local_to_utc(after) - tz.local_to_utc(before), 60);
        assert_eq!(Tz::parse_posix("UTC0").unwrap(), Tz::UTC);
        assert_eq!(format_local(local), "2005-08-14T12:00:00");
    }

    #[test]
    fn templates() {
        let tz = zurich();
        let now = 1_124_013_600;
        let mut d = DateDetector::new(Some("{^LN-BEG}")).unwrap();
        let exp = |s: &str| tz.local_to_utc(parse_iso_local(s).unwrap().0);
        for (line, time, rest) in [
            (
                "Nov 11 23:33:27 Server sshd",
                "2004-11-11T23:33:27",
                " Server sshd",
            ),
            ("Jun 21 16:47:48 x", "2005-06-21T16:47:48", " x"),
            (
                "[2012-02-13 17:21:54] NOTICE",
                "2012-02-13T17:21:54",
                "[] NOTICE",
            ),
            (
                "2012/04/09 11:53:29 [error]",
                "2012-04-09T11:53:29",
                " [error]",
            ),
            (
                "[Sun Sep 14 21:44:43.008606 2014] [authz_core:error]",
                "2014-09-14T21:44:43",
                "[] [authz_core:error]",
            ),
            ("Mar  1 15:35:53 pbx", "2005-03-01T15:35:53", " pbx"),
        ] {
            let f = d.find(line, now, &tz).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(f.time, Some(exp(time)), "{line}");
            assert_eq!(format!("{}{}", &line[..f.start], &line[f.end..]), rest);
        }
        let mut d = DateDetector::new(Some("^<\\d+>\\d+\\s+{DATE}")).unwrap();
        let f = d
            .find("<38>1 2019-07-08T17:40:16.954167-04:00 host sshd", now, &tz)
            .unwrap();
        assert_eq!(f.time, Some(exp("2019-07-08T23:40:16")));
        let mut d =
            DateDetector::new(Some("^(?:%Y-)?%m-%d[ T]%H:%M:%S(?:\\.%f)?\n{^LN-BEG}")).unwrap();
        let f = d.find("08-03 07:56:53.026292 [WARN]", now, &tz).unwrap();
        assert_eq!(f.time, Some(exp("2005-08-03T07:56:53")));
    }
}
