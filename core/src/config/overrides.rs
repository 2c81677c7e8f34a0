//! `--set section.key=value`: a config key changed on the command line for one run, applied
//! to the file's TOML before it is parsed, so that it is checked exactly like the file (an
//! unknown key, a wrong type or an out-of-range value is refused by the same messages), and
//! recorded in the run's resolved config.

use super::{Config, ConfigError, ConfigIssue, LoadOptions};
use std::path::Path;

/// One `section.key=value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// The dotted key, e.g. `distill.steps` or `distill.regression.weight`.
    pub key: String,
    /// The value as TOML reads it (`3`, `2e-4`, `true`, `"euler"`, `[1, 2]`); a bare word
    /// that is not TOML is taken as a string (`--set experiment.name=try2`).
    pub value: toml::Value,
    /// The argument as given, for messages and the record.
    pub text: String,
}

impl Override {
    /// Parses `section.key=value`.
    pub fn parse(arg: &str) -> Result<Override, String> {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(format!(
                "--set {arg:?}: expected section.key=value, e.g. distill.steps=300"
            ));
        };
        let key = key.trim();
        let parts: Vec<&str> = key.split('.').collect();
        if parts.len() < 2
            || parts.iter().any(|p| {
                p.is_empty()
                    || !p
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
        {
            return Err(format!(
                "--set {arg:?}: the key must be section.key (letters, digits, '_'), e.g. distill.steps"
            ));
        }
        let value = value.trim();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        Ok(Override {
            key: key.to_string(),
            value: parsed,
            text: format!("{key}={value}"),
        })
    }

    /// Sets this key in `table`, making the sections on the way; refuses to replace a whole
    /// section by a value or to go through a value as if it were a section.
    fn apply(&self, table: &mut toml::Table) -> Result<(), String> {
        let parts: Vec<&str> = self.key.split('.').collect();
        let (last, path) = parts.split_last().expect("a key has two parts at least");
        let mut at = table;
        for (i, p) in path.iter().enumerate() {
            let entry = at
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(format!(
                        "{} is a value, not a section",
                        parts[..=i].join(".")
                    ))
                }
            };
        }
        if matches!(at.get(*last), Some(toml::Value::Table(_))) && !self.value.is_table() {
            return Err(format!("{} is a section; set one of its keys", self.key));
        }
        at.insert(last.to_string(), self.value.clone());
        Ok(())
    }
}

/// The config text with `overrides` applied, in order (a later one wins), or the issues.
pub fn apply(text: &str, overrides: &[Override]) -> Result<String, Vec<ConfigIssue>> {
    if overrides.is_empty() {
        return Ok(text.to_string());
    }
    // A file that is not TOML is reported by the parse that follows, as without overrides.
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return Ok(text.to_string());
    };
    let mut issues = Vec::new();
    for o in overrides {
        if let Err(message) = o.apply(&mut table) {
            issues.push(ConfigIssue {
                key: o.key.clone(),
                message: format!("--set {}: {message}", o.text),
            });
        }
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(toml::to_string(&table).expect("a TOML table serialises"))
}

/// The lines that head a run's resolved config when keys were set on the command line.
pub fn record(overrides: &[Override]) -> String {
    overrides
        .iter()
        .map(|o| format!("# --set {}\n", o.text))
        .collect()
}

impl Config {
    /// `load_with`, with `overrides` applied to the file first. Issues about an overridden
    /// key say that the value came from `--set`.
    pub fn load_overridden(
        path: &Path,
        options: LoadOptions,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        if overrides.is_empty() {
            return Config::load_with(path, options);
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            issues: vec![ConfigIssue {
                key: "<file>".into(),
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        let text = apply(&text, overrides).map_err(|issues| ConfigError {
            file: path.to_path_buf(),
            issues,
        })?;
        Config::parse(&text, path, options).map_err(|mut e| {
            for issue in &mut e.issues {
                if let Some(o) = overrides
                    .iter()
                    .rev()
                    .find(|o| issue.key == o.key || issue.key.starts_with(&format!("{}.", o.key)))
                {
                    issue.message = format!("{} (set by --set {})", issue.message, o.text);
                }
            }
            e
        })
    }
}
