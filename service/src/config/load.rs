//! Reading the layers: built-in defaults < TOML file < `BERTH_*` environment < flags.
//!
//! Environment values are text: each is turned into what its setting takes, never into what
//! the text looks like (`BERTH_S3_BUCKET=12345` is a bucket name, `BERTH_S3_PART_SIZE=12345`
//! a number). Every mistake is named the way the operator wrote it: the variable, or the file
//! and line, with the value and what was expected, and a close match for an unknown name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Visitor};

use super::{Overrides, Settings};

/// A configuration mistake, said for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(message: String) -> Self {
        ConfigError(message)
    }
}

/// Where a value came from.
#[derive(Clone, Debug)]
enum Source {
    File { path: PathBuf, line: Option<usize> },
    Environment,
}

impl Source {
    /// `BERTH_LISTEN=5002` or `berth.toml, line 3: listen = 5002`.
    fn show(&self, key: &str, value: &str) -> String {
        match self {
            Source::Environment => format!("{}={value}", variable(key)),
            Source::File { path, line: Some(line) } => format!("{}, line {line}: {key} = {value}", path.display()),
            Source::File { path, line: None } => format!("{}: {key} = {value}", path.display()),
        }
    }
}

/// The environment variable of a setting.
pub fn variable(key: &str) -> String {
    format!("BERTH_{}", key.to_ascii_uppercase())
}

/// Every setting's key, in declaration order: what `Settings`' derived `Deserialize` asks
/// for, caught by a deserializer that only listens.
pub fn keys() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    struct Catch<'a>(&'a mut Fields);

    #[derive(Debug)]
    struct Caught;
    impl std::fmt::Display for Caught {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields caught")
        }
    }
    impl std::error::Error for Caught {}
    impl de::Error for Caught {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Caught
        }
    }

    impl<'de> de::Deserializer<'de> for Catch<'_> {
        type Error = Caught;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Caught> {
            Err(Caught)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Caught> {
            self.0.0 = Some(fields);
            Err(Caught)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    static KEYS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mut fields = Fields(None);
        let _ = Settings::deserialize(Catch(&mut fields));
        fields.0.unwrap_or(&[])
    })
}

/// The known key closest to `key`, if one is close enough to be a typo of it.
fn suggestion(key: &str) -> Option<&'static str> {
    keys().iter().map(|k| (edit_distance(key, k), *k)).filter(|(d, k)| *d <= 2.max(k.len() / 4)).min().map(|(_, k)| k)
}

/// Levenshtein distance, on bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, &y) in b.iter().enumerate() {
            current.push((previous[j] + usize::from(x != y)).min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The line of `text` where `key` is set, counting from 1.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            line.strip_prefix(key)
                .or_else(|| line.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// What serde says was expected, said without its backticks: "one of filesystem, s3".
fn expected(error: &str) -> String {
    let text = error.split_once("expected ").map_or(error, |(_, e)| e).replace('`', "");
    match text.as_str() {
        "a boolean" => "true or false".into(),
        t if t.starts_with('u') || t.starts_with('i') || t == "an integer" => "a whole number".into(),
        _ => text,
    }
}

type Table = toml::map::Map<String, toml::Value>;

/// Whether `value` is a valid `key`: the defaults with only it changed must deserialize.
fn try_value(defaults: &Table, key: &str, value: toml::Value) -> Result<toml::Value, String> {
    let mut table = defaults.clone();
    table.insert(key.to_owned(), value.clone());
    Settings::deserialize(toml::Value::Table(table)).map(|_| value).map_err(|e| e.message().to_owned())
}

/// An environment value as its setting takes it: as text when the setting is text, else read
/// as a TOML literal (a number, `true`, `false`).
fn typed(defaults: &Table, key: &str, raw: &str) -> Result<toml::Value, String> {
    let as_text = try_value(defaults, key, toml::Value::String(raw.to_owned()));
    if as_text.is_ok() {
        return as_text;
    }
    let literal = toml::from_str::<Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v"));
    match literal {
        Some(value @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_))) => {
            try_value(defaults, key, value).or(as_text)
        }
        _ => as_text,
    }
}

/// The settings written as arrays of tables, in the config file only.
pub const TABLES: &[&str] = &["retention", "immutable", "quota", "upstream"];

/// Checks each `[[key]]` table on its own, so that a mistake names its entry and line.
fn check_tables(defaults: &Table, path: &Path, text: &str, key: &str, value: &toml::Value) -> Result<(), ConfigError> {
    let Some(entries) = value.as_array() else {
        return Err(ConfigError(format!("{}: {key} must be [[{key}]] tables", path.display())));
    };
    // The header lines, in order: the n-th entry's line.
    let headers: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            l.trim().strip_prefix("[[").and_then(|l| l.strip_suffix("]]")).is_some_and(|k| k.trim() == key)
        })
        .map(|(i, _)| i + 1)
        .collect();
    for (i, entry) in entries.iter().enumerate() {
        if let Err(e) = try_value(defaults, key, toml::Value::Array(vec![entry.clone()])) {
            let place = match headers.get(i) {
                Some(line) => format!("{}, line {line}", path.display()),
                None => path.display().to_string(),
            };
            let message = e.replace('`', "");
            return Err(ConfigError(format!("{place}: [[{key}]] entry {}: {message}", i + 1)));
        }
    }
    Ok(())
}

/// The settings the layers make. `env` is the process's environment (all of it: only the
/// `BERTH_` variables are read).
pub fn load(
    config_file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Settings, ConfigError> {
    let defaults = match toml::Value::try_from(Settings::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err(ConfigError("the built-in defaults do not serialize".into())),
    };
    let env: BTreeMap<String, String> =
        env.into_iter().filter_map(|(k, v)| Some((k.strip_prefix("BERTH_")?.to_ascii_lowercase(), v))).collect();
    let file = config_file.map(Path::to_path_buf).or_else(|| env.get("config").map(PathBuf::from));
    let mut merged = defaults.clone();
    let mut sources: BTreeMap<String, (Source, String)> = BTreeMap::new();
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read the config file {}: {e}", path.display())))?;
        let table: Table = toml::from_str(&text)
            .map_err(|e| ConfigError(format!("the config file {} is not valid TOML: {e}", path.display())))?;
        for (key, value) in table {
            let source = Source::File { path: path.clone(), line: line_of(&text, &key) };
            if !keys().contains(&key.as_str()) {
                let place = match &source {
                    Source::File { line: Some(line), .. } => format!("{}, line {line}", path.display()),
                    _ => path.display().to_string(),
                };
                let hint = suggestion(&key).map(|k| format!(" (did you mean {k}?)")).unwrap_or_default();
                return Err(ConfigError(format!("unknown setting {key} in {place}{hint}")));
            }
            if TABLES.contains(&key.as_str()) {
                check_tables(&defaults, path, &text, &key, &value)?;
            }
            if let Err(e) = try_value(&defaults, &key, value.clone()) {
                return Err(ConfigError(format!(
                    "{}: expected {}",
                    source.show(&key, &value.to_string()),
                    expected(&e)
                )));
            }
            sources.insert(key.clone(), (source, value.to_string()));
            merged.insert(key, value);
        }
    }
    for (key, raw) in env.iter().filter(|(k, _)| k.as_str() != "config") {
        if TABLES.contains(&key.as_str()) {
            return Err(ConfigError(format!(
                "{} cannot be set in the environment: write [[{key}]] tables in the config file",
                variable(key)
            )));
        }
        if !keys().contains(&key.as_str()) {
            let hint = suggestion(key).map(|k| format!(" (did you mean {}?)", variable(k))).unwrap_or_default();
            return Err(ConfigError(format!("unknown setting {} in the environment{hint}", variable(key))));
        }
        // An empty variable is an unset one: compose files pass `${X:-}` for settings left out.
        if raw.is_empty() {
            continue;
        }
        let value = typed(&defaults, key, raw)
            .map_err(|e| ConfigError(format!("{}: expected {}", Source::Environment.show(key, raw), expected(&e))))?;
        sources.insert(key.clone(), (Source::Environment, raw.clone()));
        merged.insert(key.clone(), value);
    }
    if let Ok(toml::Value::Table(flags)) = toml::Value::try_from(overrides) {
        merged.extend(flags);
    }
    let settings = Settings::deserialize(toml::Value::Table(merged))
        .map_err(|e| ConfigError(format!("invalid configuration: {}", e.message())))?;
    settings.validate().map_err(|e| match &file {
        // A rule table's mistake names its entry; the file is where to look for it.
        Some(path) if e.starts_with("[[") => ConfigError(format!("{}: {e}", path.display())),
        _ => ConfigError(e),
    })?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_a_key_and_typos_find_their_setting() {
        assert!(keys().len() > 40, "{:?}", keys());
        assert!(keys().contains(&"listen") && keys().contains(&"s3_bucket"));
        assert_eq!(suggestion("listn"), Some("listen"));
        assert_eq!(suggestion("s3_buckte"), Some("s3_bucket"));
        assert_eq!(suggestion("completely_different"), None);
    }

    #[test]
    fn serde_expectations_read_plainly() {
        assert_eq!(expected("invalid type: string \"x\", expected a boolean"), "true or false");
        assert_eq!(expected("unknown variant `s4`, expected `filesystem` or `s3`"), "filesystem or s3");
        assert_eq!(expected("invalid type: string \"x\", expected usize"), "a whole number");
    }
}
