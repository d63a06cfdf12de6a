//! Redis' glob (the `SCAN MATCH` / `KEYS` dialect), so the embedded store's `scan` takes the
//! same patterns as Redis: `*`, `?`, `[abc]`, `[^a-z]`, and `\x` for a literal `x`.

/// Does `text` match the glob `pattern` as Redis would match it?
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    match_from(&p, &t)
}

fn match_from(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it is currently stretched to: on a mismatch
    // the star swallows one more character (linear backtracking, no recursion blow-up).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                _ => {
                    if let Some((len, ok)) = one(&p[pi..], t[ti]) {
                        if ok {
                            pi += len;
                            ti += 1;
                            continue;
                        }
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                star = Some((sp, st + 1));
                pi = sp + 1;
                ti = st + 1;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches one pattern element (not `*`) at the start of `p` against `c`: the element's
/// length in the pattern and whether it matched. `None` at the end of the pattern.
fn one(p: &[char], c: char) -> Option<(usize, bool)> {
    match *p.first()? {
        '?' => Some((1, true)),
        '\\' if p.len() >= 2 => Some((2, p[1] == c)),
        '[' => Some(class(p, c)),
        x => Some((1, x == c)),
    }
}

/// A `[...]` class at the start of `p`. As in Redis, an unterminated class runs to the end
/// of the pattern.
fn class(p: &[char], c: char) -> (usize, bool) {
    let mut i = 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    while i < p.len() && p[i] != ']' {
        if p[i] == '\\' && i + 1 < p.len() {
            hit |= p[i + 1] == c;
            i += 2;
        } else if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            let (lo, hi) = if p[i] <= p[i + 2] {
                (p[i], p[i + 2])
            } else {
                (p[i + 2], p[i])
            };
            hit |= lo <= c && c <= hi;
            i += 3;
        } else {
            hit |= p[i] == c;
            i += 1;
        }
    }
    let len = if i < p.len() { i + 1 } else { i };
    (len, hit != negate)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_glob_semantics() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything"));
        assert!(matches("a*c", "abbbc"));
        assert!(matches("a*c", "ac"));
        assert!(!matches("a*c", "acb"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("[abc]x", "bx"));
        assert!(!matches("[^abc]x", "bx"));
        assert!(matches("[^abc]x", "dx"));
        assert!(matches("[a-c]", "b"));
        assert!(matches("[c-a]", "b"));
        assert!(!matches("[a-c]", "d"));
        assert!(matches("\\*", "*"));
        assert!(!matches("\\*", "x"));
        assert!(matches("[\\]]", "]"));
        assert!(matches("40004\\*01@*", "40004*01@sips.example.org"));
        assert!(!matches("40004\\*01@*", "40004x01@sips.example.org"));
        assert!(matches("*@host", "a*b@host"));
        assert!(matches("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!matches("*a*b*c*", "xxaxxcxxbxx"));
    }
}
