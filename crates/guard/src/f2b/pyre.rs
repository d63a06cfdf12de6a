//! Python `re` patterns run on Rust engines: the syntax translation, the choice of engine
//! (the `regex` crate when the pattern allows it, `fancy-regex` for lookaround,
//! backreferences and conditionals), and the required-literal extraction behind the
//! prefilter.
//!
//! fail2ban filters are written for Python's backtracking `re`. Both Rust engines give the
//! same leftmost-first match and the same captures on the patterns they share, so the only
//! work is syntax: `(?(name)yes|no)` becomes `(?(<name>)yes|no)`, `\Z` becomes `\z`,
//! Python's literal `{` and escaped punctuation become explicit escapes, and a `[` inside a
//! class (a literal in Python, a nested class for `regex`) is escaped.

use std::sync::OnceLock;

/// Characters the `regex` crate treats as meta characters (and so accepts escaped).
const RUST_META: &str = "\\.+*?()|[]{}^$#&-~";

/// A compiled pattern on whichever engine it needs, with two faster forms of it that give
/// the same results where they apply:
/// - an ASCII form for haystacks that are all ASCII (most log lines): the same pattern
///   compiled without Unicode, so `\w`, `\s`, `.` and negated classes are byte classes
///   (smaller automata, no UTF-8 decoding). On an ASCII haystack every class and case
///   folding of the two forms agrees, since they differ only on non-ASCII characters;
/// - a head form for a pattern ending in `(?P<name>.+)$` (the `<F-CONTENT>` of most
///   `prefregex`es): see [`Head`].
///
/// The faster forms are compiled on first use: most regexes of a filter never see a line.
#[derive(Debug)]
pub(crate) struct Re {
    /// The translated pattern.
    rust: String,
    unicode: Engine,
    ascii: OnceLock<Option<Engine>>,
    /// The translated head pattern and the group's index, when the pattern has one.
    head_rust: Option<(String, usize)>,
    head: OnceLock<Option<Head>>,
}

/// The pattern without its final `(?P<name>.+)$`, with `(.)` in its place.
///
/// On a haystack without `\n` (nor `\r`), `(?P<name>.+)$` matches exactly when at least one
/// character is left, and so does `(.)`; the engines report the first path in priority
/// order (leftmost-first) that matches, so both forms take the same path through the
/// head, and the group starts where `(.)` starts and ends at the end of the haystack.
/// The head form does not run `.+` over the rest of the line, which is most of it.
#[derive(Debug)]
struct Head {
    unicode: Engine,
    ascii: Option<Engine>,
}

#[derive(Debug)]
enum Engine {
    Std(regex::Regex),
    Fancy(fancy_regex::Regex),
    /// Compiled without Unicode, run on the bytes of ASCII haystacks.
    Bytes(regex::bytes::Regex),
    /// Compiled in fancy-regex's ASCII byte mode, run on the bytes of ASCII haystacks.
    FancyBytes(fancy_regex::Regex),
}

/// The named groups of one match, in the order of [`Re::names`].
#[cfg(test)]
pub(crate) type Groups<'t> = Vec<Option<&'t str>>;

/// A byte span.
pub(crate) type Span = (usize, usize);

/// Spans of chosen groups, `None` for those that did not take part.
pub(crate) type Spans = Vec<Option<Span>>;

/// The backtracking limit of `fancy-regex`: the filters' worst cases (sshd's injection
/// samples) stay far below this; a pathological pattern fails the line instead of
/// stalling the reader.
const BACKTRACK_LIMIT: usize = 1_000_000;

impl Engine {
    /// `regex` first: it is faster and runs in linear time; `fancy-regex` only for what
    /// `regex` cannot express.
    fn new(rust: &str) -> Result<Self, String> {
        match regex::Regex::new(rust) {
            Ok(re) => Ok(Self::Std(re)),
            Err(std_err) => fancy_regex::RegexBuilder::new(rust)
                .backtrack_limit(BACKTRACK_LIMIT)
                .build()
                .map(Self::Fancy)
                .map_err(|e| format!("{e} (regex: {std_err}) in `{rust}`")),
        }
    }

    /// The ASCII form of an engine for `rust`, on the same engine. `None` when the
    /// pattern has no ASCII form (a Unicode class such as `\p{L}`).
    fn ascii(&self, rust: &str) -> Option<Self> {
        match self {
            Self::Std(_) => regex::bytes::RegexBuilder::new(rust)
                .unicode(false)
                .build()
                .ok()
                .map(Self::Bytes),
            Self::Fancy(_) => fancy_regex::RegexBuilder::new(rust)
                .backtrack_limit(BACKTRACK_LIMIT)
                .bytes_mode(fancy_regex::BytesMode::Ascii)
                .build()
                .ok()
                .map(Self::FancyBytes),
            Self::Bytes(_) | Self::FancyBytes(_) => None,
        }
    }

    /// The spans of every group (index 0: the match) of the first match at or after
    /// `start`, into `out`; whether there is one (a backtracking limit hit counts as
    /// none).
    fn spans(&self, text: &str, start: usize, out: &mut Spans) -> bool {
        out.clear();
        match self {
            Self::Std(re) => {
                let Some(c) = re.captures_at(text, start) else {
                    return false;
                };
                out.extend(c.iter().map(|m| m.map(|m| (m.start(), m.end()))));
            }
            Self::Bytes(re) => {
                let Some(c) = re.captures_at(text.as_bytes(), start) else {
                    return false;
                };
                out.extend(c.iter().map(|m| m.map(|m| (m.start(), m.end()))));
            }
            Self::Fancy(re) => {
                let Ok(Some(c)) = re.captures_from_pos(text, start) else {
                    return false;
                };
                out.extend(c.iter().map(|m| m.map(|m| (m.start(), m.end()))));
            }
            Self::FancyBytes(re) => {
                let Ok(Some(c)) = re.captures_from_pos(text.as_bytes(), start) else {
                    return false;
                };
                out.extend(c.iter().map(|m| m.map(|m| (m.start(), m.end()))));
            }
        }
        true
    }

    fn is_match(&self, text: &str) -> bool {
        match self {
            Self::Std(re) => re.is_match(text),
            Self::Bytes(re) => re.is_match(text.as_bytes()),
            Self::Fancy(re) => re.is_match(text).unwrap_or(false),
            Self::FancyBytes(re) => re.is_match(text.as_bytes()).unwrap_or(false),
        }
    }
}

impl Re {
    /// Compiles a Python pattern.
    pub(crate) fn new(python: &str) -> Result<Self, String> {
        let rust = translate(python);
        let unicode = Engine::new(&rust)?;
        let head_rust = match (&unicode, split_tail(python)) {
            (Engine::Std(re), Some(head)) => {
                Some((format!("{}(.)", translate(head)), re.captures_len() - 1))
            }
            _ => None,
        };
        Ok(Self {
            rust,
            unicode,
            ascii: OnceLock::new(),
            head_rust,
            head: OnceLock::new(),
        })
    }

    /// The pattern on its engine alone, without the faster forms (what they must agree
    /// with).
    #[cfg(test)]
    pub(crate) fn plain(python: &str) -> Result<Self, String> {
        let re = Self::new(python)?;
        re.ascii.get_or_init(|| None);
        re.head.get_or_init(|| None);
        Ok(re)
    }

    /// Which faster forms this pattern has: (ASCII, head).
    #[cfg(test)]
    pub(crate) fn forms(&self) -> (bool, bool) {
        (self.ascii().is_some(), self.head_form().is_some())
    }

    fn ascii(&self) -> Option<&Engine> {
        self.ascii
            .get_or_init(|| self.unicode.ascii(&self.rust))
            .as_ref()
    }

    fn head_form(&self) -> Option<&Head> {
        self.head
            .get_or_init(|| {
                let (rust, _) = self.head_rust.as_ref()?;
                // Only where both forms run on `regex`, whose leftmost-first search the
                // equivalence rests on.
                match Engine::new(rust) {
                    Ok(h @ Engine::Std(_)) => Some(Head {
                        ascii: h.ascii(rust),
                        unicode: h,
                    }),
                    _ => None,
                }
            })
            .as_ref()
    }

    /// The named groups with their indices, in group order.
    pub(crate) fn names(&self) -> Vec<(String, usize)> {
        fn named<'a>(it: impl Iterator<Item = Option<&'a str>>) -> Vec<(String, usize)> {
            it.enumerate()
                .filter_map(|(i, n)| Some((n?.to_owned(), i)))
                .collect()
        }
        match &self.unicode {
            Engine::Std(re) => named(re.capture_names()),
            Engine::Fancy(re) => named(re.capture_names()),
            Engine::Bytes(re) => named(re.capture_names()),
            Engine::FancyBytes(re) => named(re.capture_names()),
        }
    }

    /// Whether the `fancy-regex` engine runs this pattern.
    pub(crate) fn is_fancy(&self) -> bool {
        matches!(self.unicode, Engine::Fancy(_))
    }

    /// The engine for `text` (the ASCII form when it applies).
    fn engine(&self, text: &str) -> &Engine {
        match self.ascii() {
            Some(a) if text.is_ascii() => a,
            _ => &self.unicode,
        }
    }

    /// The head form, when it applies to `text` (see [`Head`]), and the group's index.
    fn head(&self, text: &str) -> Option<(&Engine, usize)> {
        let (_, group) = self.head_rust.as_ref()?;
        // `\r` too: in CRLF mode (`(?R)`) `.` does not match it.
        if memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_some() {
            return None;
        }
        let h = self.head_form()?;
        let e = match &h.ascii {
            Some(a) if text.is_ascii() => a,
            _ => &h.unicode,
        };
        Some((e, *group))
    }

    /// Searches `text`; on a match fills `out` with the span of every group (index 0:
    /// the whole match), `None` for those that did not take part, and returns true (a
    /// backtracking limit hit counts as no match).
    pub(crate) fn all_spans(&self, text: &str, out: &mut Spans) -> bool {
        if let Some((head, group)) = self.head(text) {
            if !head.spans(text, 0, out) {
                return false;
            }
            // The group runs to the end; so does the whole match.
            if let Some(Some(g)) = out.get_mut(group) {
                g.1 = text.len();
            }
            if let Some(Some(m)) = out.get_mut(0) {
                m.1 = text.len();
            }
            return true;
        }
        self.engine(text).spans(text, 0, out)
    }

    /// Searches `text`; on a match returns the named groups in the order of
    /// [`Re::names`] (a backtracking limit hit counts as no match).
    #[cfg(test)]
    pub(crate) fn captures<'t>(
        &self,
        text: &'t str,
        names: &[(String, usize)],
    ) -> Option<Groups<'t>> {
        let mut spans = Vec::new();
        if !self.all_spans(text, &mut spans) {
            return None;
        }
        Some(
            names
                .iter()
                .map(|(_, i)| spans.get(*i).copied().flatten().map(|(a, b)| &text[a..b]))
                .collect(),
        )
    }

    /// Whether the pattern matches somewhere in `text`.
    pub(crate) fn is_match(&self, text: &str) -> bool {
        match self.head(text) {
            Some((head, _)) => head.is_match(text),
            None => self.engine(text).is_match(text),
        }
    }

    /// Searches `text` from `start`; returns the spans of the groups `idx`.
    pub(crate) fn spans_at(&self, text: &str, start: usize, idx: &[usize]) -> Option<Spans> {
        let mut all = Vec::new();
        if !self.engine(text).spans(text, start, &mut all) {
            return None;
        }
        Some(idx.iter().map(|i| all.get(*i).copied().flatten()).collect())
    }
}

/// The head of a pattern that ends in `(?P<name>.+)$` at its top level (not inside a
/// group or after a top-level `|`), without that group; `None` for any other pattern.
fn split_tail(py: &str) -> Option<&str> {
    let body = py.strip_suffix(".+)$")?;
    let open = body.rfind("(?P<")?;
    let name = &body[open + 4..].strip_suffix('>')?;
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return None;
    }
    let head = &py[..open];
    // `\(?P<` is a literal parenthesis; in verbose mode a comment may hide anything.
    let escapes = head.chars().rev().take_while(|&c| c == '\\').count();
    if escapes % 2 == 1 || py.contains("(?x") {
        return None;
    }
    // A reference to the group from the head (a backreference or a conditional) would
    // see it unset in the head form.
    if head.contains(&format!("(?P={name})")) || head.contains(&format!("({name})")) {
        return None;
    }
    top_level_sequence(head).then_some(head)
}

/// Whether `py` is balanced and has no `|` outside groups (so that appending to it
/// appends to every match).
fn top_level_sequence(py: &str) -> bool {
    let c: Vec<char> = py.chars().collect();
    let mut depth = 0usize;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '[' => {
                let mut tmp = String::new();
                i = class(&c, i, &mut tmp);
                // An unterminated class runs to the end: nothing to append to.
                if i >= c.len() && !tmp.ends_with(']') {
                    return false;
                }
            }
            '(' => {
                depth += 1;
                i += 1;
            }
            ')' => {
                let Some(d) = depth.checked_sub(1) else {
                    return false;
                };
                depth = d;
                i += 1;
            }
            '|' if depth == 0 => return false,
            _ => i += 1,
        }
    }
    depth == 0
}

/// Rewrites Python `re` syntax into the syntax both Rust engines read.
pub(crate) fn translate(py: &str) -> String {
    let c: Vec<char> = py.chars().collect();
    let mut out = String::with_capacity(py.len() + 16);
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '\\' if i + 1 < c.len() => {
                escape(c[i + 1], &mut out);
                i += 2;
            }
            '[' => i = class(&c, i, &mut out),
            '(' if c.get(i + 1) == Some(&'?') && c.get(i + 2) == Some(&'(') => {
                // Conditional `(?(name)`: fancy-regex wants `(?(<name>)` for names.
                let close = c[i + 3..].iter().position(|&x| x == ')').map(|p| p + i + 3);
                match close {
                    Some(end) => {
                        let name: String = c[i + 3..end].iter().collect();
                        if !name.is_empty() && name.chars().all(|x| x.is_ascii_digit())
                            || name.starts_with('<')
                            || name.starts_with('\'')
                        {
                            out.push_str("(?(");
                            out.push_str(&name);
                        } else {
                            out.push_str("(?(<");
                            out.push_str(&name);
                            out.push('>');
                        }
                        out.push(')');
                        i = end + 1;
                    }
                    None => {
                        out.push('(');
                        i += 1;
                    }
                }
            }
            '{' => {
                // Python reads `{` as a literal unless it opens `{m}`, `{m,}`, `{m,n}` or
                // `{,n}`.
                let close = c[i + 1..].iter().position(|&x| x == '}').map(|p| p + i + 1);
                let body: Option<String> = close.map(|e| c[i + 1..e].iter().collect());
                match body {
                    Some(b) if is_quantifier(&b) => {
                        out.push('{');
                        if b.starts_with(',') {
                            out.push('0');
                        }
                        out.push_str(&b);
                        out.push('}');
                        i += b.chars().count() + 2;
                    }
                    _ => {
                        out.push_str("\\{");
                        i += 1;
                    }
                }
            }
            '}' => {
                out.push_str("\\}");
                i += 1;
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

fn is_quantifier(b: &str) -> bool {
    let mut parts = b.splitn(2, ',');
    let lo = parts.next().unwrap_or("");
    let hi = parts.next();
    let digits = |s: &str| s.chars().all(|x| x.is_ascii_digit());
    match hi {
        None => !lo.is_empty() && digits(lo),
        Some(h) => digits(lo) && digits(h) && !(lo.is_empty() && h.is_empty()),
    }
}

fn escape(e: char, out: &mut String) {
    match e {
        'Z' => out.push_str("\\z"),
        _ if e.is_ascii_alphanumeric() => {
            out.push('\\');
            out.push(e);
        }
        _ if RUST_META.contains(e) => {
            out.push('\\');
            out.push(e);
        }
        // Python accepts any escaped punctuation as itself; `regex` does not.
        _ => out.push(e),
    }
}

/// Copies a character class starting at `c[start] == '['`; returns the index after it.
fn class(c: &[char], start: usize, out: &mut String) -> usize {
    let mut i = start + 1;
    out.push('[');
    if c.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    // A `]` right after the opening (or `[^`) is a literal in Python.
    if c.get(i) == Some(&']') {
        out.push_str("\\]");
        i += 1;
    }
    while i < c.len() {
        match c[i] {
            ']' => {
                out.push(']');
                return i + 1;
            }
            '\\' if i + 1 < c.len() => {
                let e = c[i + 1];
                if e.is_ascii_alphanumeric() || RUST_META.contains(e) {
                    out.push('\\');
                    out.push(e);
                } else {
                    out.push(e);
                }
                i += 2;
            }
            '[' | '&' | '~' => {
                out.push('\\');
                out.push(c[i]);
                i += 1;
            }
            '-' if c.get(i + 1) == Some(&'-') => {
                out.push_str("\\-");
                i += 1;
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    // Unterminated class: let the engine report it.
    i
}

/// A set of literals of which every match of a pattern contains at least one, or `None`
/// when no such set could be found.
pub(crate) type Required = Option<Vec<String>>;

/// The required literals of a Python pattern (conservative: `None` when unsure).
pub(crate) fn required_literals(py: &str) -> Required {
    if py.contains("(?i") || py.contains("(?x") {
        return None;
    }
    let c: Vec<char> = py.chars().collect();
    let mut i = 0;
    let r = alternation(&c, &mut i);
    if i < c.len() {
        return None;
    }
    r
}

fn score(r: &[String]) -> usize {
    r.iter().map(|s| s.chars().count()).min().unwrap_or(0)
}

fn better(a: Required, b: Required) -> Required {
    match (a, b) {
        (Some(a), Some(b)) => Some(if score(&b) > score(&a) { b } else { a }),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Parses alternatives until `)` (not consumed) or the end.
fn alternation(c: &[char], i: &mut usize) -> Required {
    let mut all: Vec<String> = Vec::new();
    let mut ok = true;
    loop {
        let branch = sequence(c, i);
        match branch {
            Some(b) if !b.is_empty() && ok => all.extend(b),
            _ => ok = false,
        }
        if *i < c.len() && c[*i] == '|' {
            *i += 1;
            continue;
        }
        break;
    }
    if ok && !all.is_empty() {
        all.sort();
        all.dedup();
        Some(all)
    } else {
        None
    }
}

/// What the next atom may repeat: returns (min_is_zero, consumed chars).
fn quantifier(c: &[char], i: usize) -> (bool, bool, usize) {
    // (zero allowed, repeats, length)
    let (zero, rep, mut n) = match c.get(i) {
        Some('?') => (true, false, 1),
        Some('*') => (true, true, 1),
        Some('+') => (false, true, 1),
        Some('{') => {
            let close = c[i + 1..].iter().position(|&x| x == '}');
            match close {
                Some(p) => {
                    let body: String = c[i + 1..i + 1 + p].iter().collect();
                    if is_quantifier(&body) {
                        let lo = body.split(',').next().unwrap_or("");
                        let zero = lo.is_empty() || lo.parse::<u32>().map_or(true, |v| v == 0);
                        (zero, true, p + 2)
                    } else {
                        (false, false, 0)
                    }
                }
                None => (false, false, 0),
            }
        }
        _ => (false, false, 0),
    };
    // Lazy or possessive suffix.
    if n > 0 && matches!(c.get(i + n), Some('?') | Some('+')) {
        n += 1;
    }
    (zero, rep, n)
}

fn sequence(c: &[char], i: &mut usize) -> Required {
    let mut best: Required = None;
    let mut run = String::new();
    let flush = |run: &mut String, best: &mut Required| {
        if !run.is_empty() {
            *best = better(best.take(), Some(vec![std::mem::take(run)]));
        }
    };
    while *i < c.len() {
        let ch = c[*i];
        match ch {
            '|' | ')' => break,
            '(' => {
                // Group kinds: lookaround and conditionals prove nothing about the text.
                let rest: String = c[*i..(*i + 4).min(c.len())].iter().collect();
                let skip_only = rest.starts_with("(?=")
                    || rest.starts_with("(?!")
                    || rest.starts_with("(?<=")
                    || rest.starts_with("(?<!")
                    || rest.starts_with("(?(")
                    || rest.starts_with("(?#");
                let backref = rest.starts_with("(?P=");
                *i += 1;
                if c.get(*i) == Some(&'?') {
                    // Skip the group header up to its body.
                    if rest.starts_with("(?P<") {
                        while *i < c.len() && c[*i] != '>' {
                            *i += 1;
                        }
                        *i += 1;
                    } else if rest.starts_with("(?:") {
                        *i += 2;
                    } else if !skip_only && !backref {
                        // Inline flags such as `(?u)`: no body to read.
                        while *i < c.len() && c[*i] != ')' {
                            *i += 1;
                        }
                        *i += 1;
                        continue;
                    }
                }
                let inner = if skip_only || backref {
                    skip_group(c, i);
                    None
                } else {
                    let r = alternation(c, i);
                    if *i < c.len() && c[*i] == ')' {
                        *i += 1;
                    }
                    r
                };
                let (zero, _, n) = quantifier(c, *i);
                *i += n;
                flush(&mut run, &mut best);
                if !zero {
                    best = better(best, inner);
                }
            }
            '[' => {
                flush(&mut run, &mut best);
                let mut tmp = String::new();
                *i = class(c, *i, &mut tmp);
                let (_, _, n) = quantifier(c, *i);
                *i += n;
            }
            '\\' => {
                let e = c.get(*i + 1).copied().unwrap_or('\\');
                *i += 2;
                let lit = !e.is_ascii_alphanumeric();
                let (zero, rep, n) = quantifier(c, *i);
                *i += n;
                if lit && !zero {
                    run.push(e);
                    if rep {
                        flush(&mut run, &mut best);
                    }
                } else {
                    flush(&mut run, &mut best);
                }
            }
            '.' | '^' | '$' => {
                *i += 1;
                let (_, _, n) = quantifier(c, *i);
                *i += n;
                flush(&mut run, &mut best);
            }
            _ => {
                *i += 1;
                let (zero, rep, n) = quantifier(c, *i);
                *i += n;
                if zero {
                    flush(&mut run, &mut best);
                } else {
                    run.push(ch);
                    if rep {
                        flush(&mut run, &mut best);
                    }
                }
            }
        }
    }
    flush(&mut run, &mut best);
    best
}

/// Skips a group whose body is not read (lookaround, conditional, backreference): `i` is
/// just after its `(`; leaves `i` after the matching `)`.
fn skip_group(c: &[char], i: &mut usize) {
    let mut depth = 1;
    while *i < c.len() {
        match c[*i] {
            '\\' => *i += 1,
            '[' => {
                let mut tmp = String::new();
                *i = class(c, *i, &mut tmp);
                continue;
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    *i += 1;
                    return;
                }
            }
            _ => {}
        }
        *i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation() {
        assert_eq!(translate(r"a(?(x)b|c)\Z"), r"a(?(<x>)b|c)\z");
        assert_eq!(translate(r"[^\[\]\s]"), r"[^\[\]\s]");
        assert_eq!(translate(r"{^LN-BEG}x{2}y{,3}"), r"\{^LN-BEG\}x{2}y{0,3}");
        assert_eq!(translate(r"\'q\'"), "'q'");
        assert_eq!(translate(r"[]a[]"), r"[\]a\[]");
        for p in [r"(?P<n>a)(?P=n)", r"(?!x)y", r"(?P<c>a)?(?(c)b|d)"] {
            Re::new(p).unwrap();
        }
        assert!(!Re::new(r"^foo (?P<x>\d+)$").unwrap().is_fancy());
    }

    #[test]
    fn tail_split() {
        assert_eq!(
            split_tail(r"^(?P<m>\S+) (?:x)?(?P<content>.+)$"),
            Some(r"^(?P<m>\S+) (?:x)?")
        );
        assert_eq!(split_tail(r"^a(?P<c>.+)$"), Some("^a"));
        for p in [
            r"^a|(?P<content>.+)$",
            r"^(?:a|(?P<content>.+)$)",
            r"^a\(?P<content>.+)$",
            r"^(?P<content>.+?)$",
            r"^(?P<content>.*)$",
            r"^(?:(?P<content>x)|y)(?P=content)(?P<content2>.+)$z",
            r"(?x)^a # (\n(?P<content>.+)$",
        ] {
            assert_eq!(split_tail(p), None, "{p}");
        }
        assert_eq!(split_tail(r"^[)|](?P<content>.+)$"), Some(r"^[)|]"));
        assert_eq!(split_tail(r"^[(](?P<content>.+)$"), Some(r"^[(]"));
        let re = Re::new(r"^(?P<host>\S+) (?:error: )?(?P<content>.+)$").unwrap();
        assert_eq!(re.forms(), (true, true));
        let names = re.names();
        for text in [
            "srv error: x y",
            "srv x",
            "srv ",
            "é x",
            "srv a\nb",
            "srv a\rb",
        ] {
            let plain = Re::plain(r"^(?P<host>\S+) (?:error: )?(?P<content>.+)$").unwrap();
            assert_eq!(
                re.captures(text, &names),
                plain.captures(text, &names),
                "{text:?}"
            );
        }
        // Lookaround runs on fancy-regex, in its ASCII mode for ASCII lines.
        assert_eq!(Re::new(r"^a(?!b)\w+").unwrap().forms(), (true, false));
        // No ASCII form for a Unicode property.
        assert_eq!(Re::new(r"^\pL+").unwrap().forms(), (false, false));
    }

    #[test]
    fn literals() {
        assert_eq!(
            required_literals(r"^Failed (?:password|key) for"),
            Some(vec!["Failed ".to_owned()])
        );
        assert_eq!(
            required_literals(r"(?:Connection (?:closed|reset)|Disconnect(?:ed|ing)) by"),
            Some(vec!["Connection ".to_owned(), "Disconnect".to_owned()])
        );
        assert_eq!(
            required_literals(r"TRUCO_KO \[?x"),
            Some(vec!["TRUCO_KO ".to_owned()])
        );
        assert_eq!(required_literals(r"a|\d+"), None);
        assert_eq!(
            required_literals(r"(?!x)abc\(d\)"),
            Some(vec!["abc(d)".to_owned()])
        );
    }
}
