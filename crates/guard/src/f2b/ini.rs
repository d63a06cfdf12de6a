//! fail2ban's configuration files, read the way fail2ban reads them: Python's
//! `ConfigParser` rules (continuation lines, `;` inline comments, lower-cased option names,
//! `%(name)s` interpolation with `%%` escapes), fail2ban's `[INCLUDES] before/after` (and
//! `.local` overrides), its `%(section/option)s` and `%(known/option)s` references, and the
//! `<tag>` substitution that turns a filter's options into its final regexes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::FilterError;

/// Python's `configparser` gives up after this many nested interpolations.
const MAX_INTERPOLATION_DEPTH: usize = 10;
/// fail2ban's limit on replacing one tag within one value.
const MAX_TAG_REPLACE_COUNT: usize = 25;
/// Include files deeper than this are a loop or a mistake.
const MAX_INCLUDE_DEPTH: usize = 16;

type Section = HashMap<String, String>;

/// One file as parsed, before merging.
#[derive(Debug, Default)]
struct RawFile {
    defaults: Section,
    sections: Vec<(String, Section)>,
}

/// The merged configuration of a filter file and its includes.
#[derive(Debug, Default)]
pub(crate) struct Ini {
    defaults: Section,
    /// Sections, including fail2ban's `KNOWN/<name>`: the values a later file overrode.
    sections: HashMap<String, Section>,
}

/// Where configuration text comes from: the file system, or built-in text.
pub(crate) trait Source {
    /// The text of `path`, or `None` when there is no such file.
    fn read(&self, path: &Path) -> Option<String>;
}

/// Reads files from disk.
pub(crate) struct Files;

impl Source for Files {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

impl Ini {
    /// Reads `path` with its includes, in fail2ban's order: `before` files, the file,
    /// `after` files; each followed by its `.local` when one exists.
    pub(crate) fn load(path: &Path, src: &dyn Source) -> Result<Self, FilterError> {
        let mut order = Vec::new();
        let mut cache = HashMap::new();
        includes(path, src, &mut Vec::new(), &mut order, &mut cache, 0)?;
        if order.is_empty() {
            return Err(FilterError::Missing(path.display().to_string()));
        }
        let mut ini = Self::default();
        for p in &order {
            if let Some(f) = cache.get(p) {
                ini.merge(f);
            }
        }
        Ok(ini)
    }

    /// Reads one text with no includes (the built-in filters).
    pub(crate) fn from_text(text: &str) -> Self {
        let mut ini = Self::default();
        ini.merge(&parse(text));
        ini
    }

    fn merge(&mut self, f: &RawFile) {
        for (k, v) in &f.defaults {
            self.defaults.insert(k.clone(), v.clone());
        }
        for (name, s) in &f.sections {
            // Conditional sections (`name?cond`) only matter to actions.
            if let Some(q) = name.find('?') {
                if q > 0 && name[..q].chars().all(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
            }
            match self.sections.get_mut(name) {
                Some(old) => {
                    let known: Vec<(String, String)> = s
                        .keys()
                        .filter_map(|k| old.get(k).map(|v| (k.clone(), v.clone())))
                        .collect();
                    old.extend(s.iter().map(|(k, v)| (k.clone(), v.clone())));
                    self.sections
                        .entry(format!("KNOWN/{name}"))
                        .or_default()
                        .extend(known);
                }
                None => {
                    self.sections.insert(name.clone(), s.clone());
                }
            }
        }
    }

    /// Whether the section exists.
    pub(crate) fn has_section(&self, section: &str) -> bool {
        self.sections.contains_key(section)
    }

    /// The options of a section itself (not those of `[DEFAULT]`).
    pub(crate) fn own_options(&self, section: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .sections
            .get(section)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `ConfigParser.get(section, option, vars=vars)`: the interpolated value, `Ok(None)`
    /// when the option (or the section) does not exist.
    pub(crate) fn get(
        &self,
        section: &str,
        option: &str,
        vars: &HashMap<String, String>,
    ) -> Result<Option<String>, FilterError> {
        let opt = option.to_lowercase();
        let sec = if section == "DEFAULT" {
            None
        } else {
            match self.sections.get(section) {
                Some(s) => Some(s),
                None => return Ok(None),
            }
        };
        let raw = vars
            .get(&opt)
            .or_else(|| sec.and_then(|s| s.get(&opt)))
            .or_else(|| self.defaults.get(&opt));
        match raw {
            None => Ok(None),
            Some(raw) => self.interpolate(raw, section, vars, 1).map(Some),
        }
    }

    /// fail2ban's `get_ex`: like [`Ini::get`], and `section/option` or `known/option` names
    /// another section's option.
    pub(crate) fn get_ex(
        &self,
        section: &str,
        option: &str,
        vars: &HashMap<String, String>,
    ) -> Result<Option<String>, FilterError> {
        if let Some((sec, opt)) = split_section_option(option) {
            let candidates: Vec<String> = if sec.eq_ignore_ascii_case("known") {
                vec![format!("KNOWN/{section}"), section.to_owned()]
            } else if sec.eq_ignore_ascii_case("default") {
                vec!["DEFAULT".to_owned()]
            } else {
                vec![sec.to_owned()]
            };
            for s in candidates {
                if let Some(v) = self.get(&s, opt, &HashMap::new())? {
                    return Ok(Some(v));
                }
            }
        }
        self.get(section, option, vars)
    }

    fn lookup<'a>(
        &'a self,
        section: &str,
        name: &str,
        vars: &'a HashMap<String, String>,
    ) -> Option<&'a str> {
        if let Some(v) = vars.get(name) {
            return Some(v);
        }
        if section != "DEFAULT" {
            if let Some(v) = self.sections.get(section).and_then(|s| s.get(name)) {
                return Some(v);
            }
        }
        if let Some(v) = self.defaults.get(name) {
            return Some(v);
        }
        // `%(section/option)s` and `%(known/option)s` (raw values, as fail2ban maps them).
        let (sec, opt) = name.split_once('/')?;
        if sec.eq_ignore_ascii_case("default") {
            return self.defaults.get(opt).map(String::as_str);
        }
        if sec.eq_ignore_ascii_case("known") {
            return self
                .sections
                .get(&format!("KNOWN/{section}"))
                .and_then(|s| s.get(opt))
                .or_else(|| self.defaults.get(opt))
                .map(String::as_str);
        }
        let s = self.sections.get(sec)?;
        s.get(opt)
            .or_else(|| self.defaults.get(opt))
            .map(String::as_str)
    }

    fn interpolate(
        &self,
        rest: &str,
        section: &str,
        vars: &HashMap<String, String>,
        depth: usize,
    ) -> Result<String, FilterError> {
        if depth > MAX_INTERPOLATION_DEPTH {
            return Err(FilterError::Config(format!(
                "interpolation too deep in [{section}]: {rest}"
            )));
        }
        let mut out = String::with_capacity(rest.len());
        let mut s = rest;
        while let Some(p) = s.find('%') {
            out.push_str(&s[..p]);
            let after = &s[p + 1..];
            if let Some(r) = after.strip_prefix('%') {
                out.push('%');
                s = r;
            } else if let Some(r) = after.strip_prefix('(') {
                let Some(close) = r.find(")s") else {
                    return Err(FilterError::Config(format!(
                        "bad interpolation in `{rest}`"
                    )));
                };
                let name = r[..close].to_lowercase();
                let Some(v) = self.lookup(section, &name, vars) else {
                    return Err(FilterError::Config(format!(
                        "[{section}] refers to `%({name})s`, which is not defined"
                    )));
                };
                if v.contains('%') {
                    out.push_str(&self.interpolate(v, section, vars, depth + 1)?);
                } else {
                    out.push_str(v);
                }
                s = &r[close + 2..];
            } else {
                // Python refuses a lone `%`; keep it, the regex will say if it matters.
                out.push('%');
                s = after;
            }
        }
        out.push_str(s);
        Ok(out)
    }

    /// fail2ban's `substituteRecursiveTags`: replaces `<tag>` in every value by the value of
    /// the option `tag` (from `tags`, else from `addrepl`), until nothing changes. Tags
    /// with no value (`<HOST>`, `<F-USER>`) are left for the regex layer.
    pub(crate) fn substitute_tags(
        tags: &mut [(String, String)],
        addrepl: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), FilterError> {
        let mut done: Vec<bool> = vec![false; tags.len()];
        let mut counts: HashMap<usize, HashMap<String, usize>> = HashMap::new();
        loop {
            let mut again = false;
            for idx in 0..tags.len() {
                if done[idx] {
                    continue;
                }
                let (tag, orgval) = (tags[idx].0.clone(), tags[idx].1.clone());
                let mut value = orgval.clone();
                let rplc = counts.entry(idx).or_default();
                let mut from = 0;
                while let Some((start, end)) = find_tag(&value, from) {
                    let rtag = value[start + 1..end - 1].to_owned();
                    if rtag == tag || rplc.get(&rtag).copied().unwrap_or(1) > MAX_TAG_REPLACE_COUNT
                    {
                        return Err(FilterError::Config(format!(
                            "self-referencing tag <{rtag}> in `{tag}`"
                        )));
                    }
                    let repl = tags
                        .iter()
                        .find(|(k, _)| *k == rtag)
                        .map(|(_, v)| v.clone())
                        .or_else(|| addrepl(&rtag));
                    match repl {
                        None => from = end,
                        Some(r) => {
                            value = value.replace(&format!("<{rtag}>"), &r);
                            *rplc.entry(rtag).or_insert(0) += 1;
                            from = start;
                        }
                    }
                }
                if value != orgval {
                    if find_tag(&value, 0).is_some() {
                        again = true;
                    }
                    tags[idx].1 = value.clone();
                }
                if !value.contains('<') {
                    done[idx] = true;
                }
            }
            if !again {
                return Ok(());
            }
        }
    }
}

/// fail2ban's `TAG_CRE` (`<([^ <>]+)>`): the next tag at or after `from`, as a byte span.
fn find_tag(s: &str, from: usize) -> Option<(usize, usize)> {
    let b = s.as_bytes();
    let mut i = from;
    while i < b.len() {
        if b[i] == b'<' {
            let mut j = i + 1;
            while j < b.len() && !matches!(b[j], b' ' | b'<' | b'>') {
                j += 1;
            }
            if j < b.len() && b[j] == b'>' && j > i + 1 {
                return Some((i, j + 1));
            }
            i = j;
        } else {
            i += 1;
        }
    }
    None
}

/// `^([\w\-]+)/([^\s>]+)$`
fn split_section_option(s: &str) -> Option<(&str, &str)> {
    let (a, b) = s.split_once('/')?;
    let ok_a = !a.is_empty()
        && a.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    let ok_b = !b.is_empty() && !b.chars().any(|c| c.is_whitespace() || c == '>');
    (ok_a && ok_b).then_some((a, b))
}

fn includes(
    path: &Path,
    src: &dyn Source,
    seen: &mut Vec<PathBuf>,
    order: &mut Vec<PathBuf>,
    cache: &mut HashMap<PathBuf, RawFile>,
    depth: usize,
) -> Result<(), FilterError> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(FilterError::Config(format!(
            "includes nested too deep at {}",
            path.display()
        )));
    }
    let mut files = vec![path.to_path_buf()];
    let local = path.with_extension("local");
    if local != path && src.read(&local).is_some() {
        files.push(local);
    }
    for file in files {
        let Some(text) = src.read(&file) else {
            continue;
        };
        let parsed = parse(&text);
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let inc = parsed
            .sections
            .iter()
            .find(|(n, _)| n == "INCLUDES")
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        cache.insert(file.clone(), parsed);
        seen.push(file.clone());
        let list = |key: &str| -> Vec<PathBuf> {
            inc.get(key)
                .map(|v| {
                    v.split('\n')
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| dir.join(l.trim()))
                        .collect()
                })
                .unwrap_or_default()
        };
        for b in list("before") {
            if !seen.contains(&b) {
                includes(&b, src, seen, order, cache, depth + 1)?;
            }
        }
        order.push(file.clone());
        for a in list("after") {
            if !seen.contains(&a) {
                includes(&a, src, seen, order, cache, depth + 1)?;
            }
        }
        seen.pop();
    }
    Ok(())
}

/// Python `ConfigParser._read` with `inline_comment_prefixes=";"` and empty lines kept in
/// values.
fn parse(text: &str) -> RawFile {
    let mut f = RawFile::default();
    // (section index or None for DEFAULT), current option, its indent.
    let mut cur: Option<Option<usize>> = None;
    let mut opt: Option<String> = None;
    let mut values: Vec<(Option<usize>, String, Vec<String>)> = Vec::new();
    let mut cur_value: Option<usize> = None;
    let mut indent_level = 0usize;
    for line in text.lines() {
        // Inline comment: `;` preceded by whitespace.
        let mut comment_start = None;
        let lb = line.as_bytes();
        for i in 1..lb.len() {
            if lb[i] == b';' && lb[i - 1].is_ascii_whitespace() {
                comment_start = Some(i);
                break;
            }
        }
        let stripped = line.trim();
        if stripped.starts_with('#') || stripped.starts_with(';') {
            comment_start = Some(0);
        }
        let value = match comment_start {
            Some(c) => line[..c].trim(),
            None => stripped,
        };
        if value.is_empty() {
            if comment_start.is_none() && cur.is_some() && opt.is_some() {
                if let Some(v) = cur_value {
                    values[v].2.push(String::new());
                }
            }
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if cur.is_some() && opt.is_some() && indent > indent_level {
            if let Some(v) = cur_value {
                values[v].2.push(value.to_owned());
            }
            continue;
        }
        indent_level = indent;
        if value.starts_with('[') && value.ends_with(']') && value.len() > 2 {
            let name = &value[1..value.len() - 1];
            if name == "DEFAULT" {
                cur = Some(None);
            } else {
                match f.sections.iter().position(|(n, _)| n == name) {
                    Some(i) => cur = Some(Some(i)),
                    None => {
                        f.sections.push((name.to_owned(), Section::new()));
                        cur = Some(Some(f.sections.len() - 1));
                    }
                }
            }
            opt = None;
            cur_value = None;
            continue;
        }
        let Some(sec) = cur else {
            // Options before any section: Python refuses the file; skip the line.
            continue;
        };
        let Some(d) = value.find(['=', ':']) else {
            continue;
        };
        let name = value[..d].trim_end().to_lowercase();
        let v = value[d + 1..].trim().to_owned();
        values.push((sec, name.clone(), vec![v]));
        cur_value = Some(values.len() - 1);
        opt = Some(name);
    }
    for (sec, name, lines) in values {
        let v = lines.join("\n").trim_end().to_owned();
        match sec {
            None => {
                f.defaults.insert(name, v);
            }
            Some(i) => {
                f.sections[i].1.insert(name, v);
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<(&'static str, &'static str)>);
    impl Source for Mem {
        fn read(&self, path: &Path) -> Option<String> {
            self.0
                .iter()
                .find(|(p, _)| Path::new(p) == path)
                .map(|(_, t)| (*t).to_owned())
        }
    }

    #[test]
    fn includes_interpolation_known_and_continuations() {
        let src = Mem(vec![
            (
                "/f/common.conf",
                "[DEFAULT]\n_daemon = \\S*\nprefix = <_daemon>:\n[lt_file]\np = A%(x)s\n",
            ),
            (
                "/f/x.conf",
                "[INCLUDES]\nbefore = common.conf\n[DEFAULT]\n_daemon = sshd\nx = 1\n\
                 [lt_file]\np = %(known/p)sB\n[Definition]\nfailregex = ^a %(x)s ; c\n  \
                 # comment\n  ^b <lt_file/p>\nm = 100%%\n",
            ),
        ]);
        let ini = Ini::load(Path::new("/f/x.conf"), &src).unwrap();
        let v = HashMap::new();
        assert_eq!(
            ini.get("Definition", "failregex", &v).unwrap().unwrap(),
            "^a 1\n^b <lt_file/p>"
        );
        assert_eq!(ini.get("Definition", "m", &v).unwrap().unwrap(), "100%");
        assert_eq!(
            ini.get_ex("Definition", "lt_file/p", &v).unwrap().unwrap(),
            "A1B"
        );
        assert_eq!(
            ini.get("Definition", "prefix", &v).unwrap().unwrap(),
            "<_daemon>:"
        );
        let mut tags = vec![("failregex".to_owned(), "<prefix> <mode-<m>>".to_owned())];
        let vars: HashMap<String, String> = [("m".to_owned(), "x".to_owned())].into();
        Ini::substitute_tags(&mut tags, &|t| {
            ini.get_ex("Definition", t, &vars).ok().flatten()
        })
        .unwrap();
        assert_eq!(tags[0].1, "sshd: <mode-x>");
    }
}
