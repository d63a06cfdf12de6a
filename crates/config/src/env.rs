//! `STG_*` environment overrides, applied to the TOML tree before it is converted, so that an
//! override goes through exactly the parsing and checks a value in the file does.
//!
//! `STG_SIP__TIMERS__T1=250ms` sets `sip.timers.t1`: after `STG_`, `__` separates the levels
//! and each level is lower-cased. Only names containing `__` are overrides; a plain `STG_FOO`
//! (e.g. `STG_CONFORMANCE_DIR`) is not configuration and is ignored.

use toml::{Table, Value};

use crate::ConfigError;

const PREFIX: &str = "STG_";
const SEPARATOR: &str = "__";

/// The overrides applied, to tell which variable stands behind a key named in an error.
#[derive(Debug, Default)]
pub(crate) struct Overrides(Vec<(String, String)>);

impl Overrides {
    /// The variable that set `key` or one of its parents or children: an error may name a
    /// deeper key (`sip.listen[0].address` set by `STG_SIP__LISTEN`) or the first unknown
    /// level of a longer path (`sip.timerz` for `STG_SIP__TIMERZ__T1`).
    pub(crate) fn var_for(&self, key: &str) -> Option<&str> {
        let within = |inner: &str, outer: &str| {
            inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        self.0
            .iter()
            .filter(|(path, _)| within(key, path) || within(path, key))
            .max_by_key(|(path, _)| path.len())
            .map(|(_, var)| var.as_str())
    }
}

/// Applies every override among `vars` to `tree`.
pub(crate) fn apply(
    tree: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Overrides, ConfigError> {
    let mut overrides: Vec<(Vec<String>, String, String)> = vars
        .into_iter()
        .filter_map(|(var, value)| {
            let path = var.strip_prefix(PREFIX)?;
            if !path.contains(SEPARATOR) {
                return None;
            }
            let path = path.split(SEPARATOR).map(str::to_ascii_lowercase).collect();
            Some((path, var, value))
        })
        .collect();
    // Shallow first, so STG_SIP__TIMERS__T1 refines STG_SIP__TIMERS={...} whatever order the
    // environment lists them in.
    overrides.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.cmp(b)));

    let mut applied = Overrides::default();
    for (path, var, value) in overrides {
        let env_error = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        if path.iter().any(String::is_empty) {
            return Err(env_error(format!(
                "empty level in the name; write e.g. {PREFIX}SIP{SEPARATOR}TIMERS{SEPARATOR}T1"
            )));
        }
        let value = parse_value(&value).map_err(env_error)?;
        insert(tree, &path, value).map_err(env_error)?;
        applied.0.push((path.join("."), var));
    }
    Ok(applied)
}

/// A value is TOML when it looks like an array, an inline table, a quoted string, a boolean or
/// a plain integer, and text otherwise: `250ms`, `sip:10.0.0.5;transport=tcp` and `debug`
/// need no quotes. Floats and dates stay text, since no key takes one.
fn parse_value(text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    match trimmed.as_bytes().first() {
        Some(b'[' | b'{') => {
            toml_value(trimmed).map_err(|e| format!("invalid TOML array or table: {e}"))
        }
        Some(b'"' | b'\'') => Ok(toml_value(trimmed).unwrap_or_else(|_| text.into())),
        _ => Ok(match trimmed {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => match plain_integer(trimmed) {
                Some(i) => Value::Integer(i),
                None => text.into(),
            },
        }),
    }
}

/// Decimal digits with an optional minus and no leading zero, so that a string key given
/// "007" or "+5" keeps its text exactly.
fn plain_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

fn toml_value(text: &str) -> Result<Value, String> {
    let mut table: Table =
        toml::from_str(&format!("v = {text}")).map_err(|e| crate::one_line(e.message()))?;
    // A newline in the variable could smuggle in further keys; one value is all it may hold.
    match table.remove("v") {
        Some(value) if table.is_empty() => Ok(value),
        _ => Err("expected a single value".to_owned()),
    }
}

fn insert(tree: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("names no key")?;
    let mut table = tree;
    for (depth, level) in parents.iter().enumerate() {
        let entry = table
            .entry(level.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            Value::Array(_) => {
                return Err(format!(
                    "{} is an array and is overridden whole, e.g. \
                     STG_SIP__LISTEN=[{{transport=\"udp\", address=\"0.0.0.0:5060\"}}]",
                    path[..=depth].join(".")
                ))
            }
            other => {
                return Err(format!(
                    "{} is not a configuration key: {} is a {}, not a table",
                    path.join("."),
                    path[..=depth].join("."),
                    other.type_str()
                ))
            }
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}
