//! Experiment configuration: schema (`schema.rs`), model presets (`model.rs`) and the checks
//! (`validate.rs`).
//!
//! `load` reports *every* problem it can find, each naming the file, the key and what was
//! expected, so a user fixes a config in one round instead of one error at a time.
//!
//! Relative paths in a config are taken relative to the current directory, like any command-line
//! tool; the resolved copy written into the run directory has them absolute.

mod model;
mod overrides;
mod schema;
mod validate;
mod validate_data;

pub use model::{preset, ModelDims, PRESETS};
pub use overrides::record as record_overrides;
pub use overrides::Override;
pub use schema::*;
pub use validate_data::moving_shapes_geometry;

use crate::stage::Stage;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A stage's step counts under a config (here, not in `stage.rs`, so that the stage names
/// do not depend on the config).
impl Stage {
    /// Steps the stage takes under `cfg` (0 for the stages without steps).
    pub fn steps(self, cfg: &Config) -> u64 {
        match self {
            Stage::Pretrain => cfg.pretrain.steps,
            Stage::Pruning => cfg.pruning.steps,
            Stage::Distill => cfg.distill.steps,
            _ => 0,
        }
    }

    /// Videos per optimiser step, over all ranks (0 for the stages without steps).
    pub fn batch_size(self, cfg: &Config) -> u64 {
        match self {
            Stage::Pretrain => cfg.pretrain.batch_size,
            Stage::Pruning => cfg.pruning.batch_size,
            Stage::Distill => cfg.distill.batch_size,
            _ => 0,
        }
    }

    /// Steps of the training stages `cfg` runs before this one: `offset + step` is the
    /// global step that names a checkpoint.
    pub fn offset(self, cfg: &Config) -> u64 {
        cfg.stages()
            .into_iter()
            .take_while(|s| *s != self)
            .map(|s| s.steps(cfg))
            .sum()
    }

    /// The global step of `step` steps into this stage.
    pub fn global_step(self, cfg: &Config, step: u64) -> u64 {
        self.offset(cfg) + step
    }
}

/// One problem in a config: which key, and what was expected.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `cluster.world_size`; `<file>` for problems of the whole file.
    pub key: String,
    pub message: String,
}

/// Everything wrong with one config file.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            writeln!(
                f,
                "  {}: {}: {}",
                self.file.display(),
                issue.key,
                issue.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// True when some issue is about exactly this key.
    pub fn mentions(&self, key: &str) -> bool {
        self.issues.iter().any(|i| i.key == key)
    }
}

/// Collects issues while a config is read and checked.
#[derive(Debug, Default)]
pub(crate) struct Issues(pub Vec<ConfigIssue>);

impl Issues {
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Top-level section names the file may contain.
const SECTIONS: [&str; 10] = [
    "experiment",
    "cluster",
    "model",
    "data",
    "pretrain",
    "importance",
    "pruning",
    "distill",
    "checkpoint",
    "eval",
];

/// What `Config::load_with` checks beyond the file's own contents.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Check the files the config names (weights, data directory, hostfile) exist and fit the
    /// model. Off for a config meant for another machine (`validate --skip-files`).
    pub check_files: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { check_files: true }
    }
}

impl Config {
    /// Reads, parses and checks a config file, including the files it names.
    /// Problems come back all together.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, LoadOptions::default())
    }

    /// `load` with a choice of checks.
    pub fn load_with(path: &Path, options: LoadOptions) -> Result<Config, ConfigError> {
        let fail = |key: &str, message: String| ConfigError {
            file: path.to_path_buf(),
            issues: vec![ConfigIssue {
                key: key.into(),
                message,
            }],
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail("<file>", format!("cannot read the config file: {e}")))?;
        Config::parse(&text, path, options)
    }

    /// Parses and checks config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, options: LoadOptions) -> Result<Config, ConfigError> {
        let mut issues = Issues::default();
        let Some((config, broken)) = parse_sections(text, &mut issues) else {
            return Err(ConfigError {
                file: path.to_path_buf(),
                issues: issues.0,
            });
        };
        // Check the values too, with defaults standing in for sections that did not parse,
        // and keep only what is said about the sections that did: one typo must not hide the
        // rest of the file's problems, nor produce complaints about the defaults.
        let mut checked = Issues::default();
        validate::check(&config, options, &mut checked);
        // A key already reported as NaN or infinite needs no second message from its range.
        let non_finite: Vec<String> = issues.0.iter().map(|i| i.key.clone()).collect();
        issues.0.extend(checked.0.into_iter().filter(|i| {
            let section = i.key.split('.').next().unwrap_or("");
            !broken.contains(&section) && !non_finite.contains(&i.key)
        }));
        if issues.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: path.to_path_buf(),
                issues: issues.0,
            })
        }
    }

    /// The run directory: `<output_dir>/<name>`.
    pub fn run_dir(&self) -> crate::RunDir {
        crate::RunDir::new(self.experiment.output_dir.join(&self.experiment.name))
    }

    /// The model's dimensions: the preset with the file's overrides applied.
    /// Only valid on a config that passed `load` (the preset is known and complete).
    pub fn model_dims(&self) -> ModelDims {
        validate::resolve_model(&self.model).expect("model section was validated by Config::load")
    }

    /// Whether the experiment runs this stage.
    pub fn runs_stage(&self, stage: Stage) -> bool {
        self.experiment.stages.iter().any(|s| s == stage.name())
    }

    /// The stages the experiment runs, in order. Only valid on a config that passed `load`
    /// (every name is a stage).
    pub fn stages(&self) -> Vec<Stage> {
        self.experiment
            .stages
            .iter()
            .map(|s| Stage::parse(s).expect("experiment.stages was validated by Config::load"))
            .collect()
    }

    /// The config as TOML, e.g. for the resolved copy in the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serialises")
    }

    /// Checks that the config's world size is the one the workers were started with
    /// (`mpirun -np`). Called by every rank at start-up, before any collective.
    pub fn check_world_size(&self, file: &Path, actual: u32) -> Result<(), ConfigError> {
        if self.cluster.world_size == actual {
            return Ok(());
        }
        Err(ConfigError {
            file: file.to_path_buf(),
            issues: vec![ConfigIssue {
                key: "cluster.world_size".into(),
                message: format!(
                    "the config says {} ranks but the workers were started with {actual} \
                     (mpirun -np {actual}); make them agree",
                    self.cluster.world_size
                ),
            }],
        })
    }
}

/// Parses each section on its own so that one bad section does not hide another's problems.
/// Returns the config (defaults in place of sections that failed) and the failed sections'
/// names; `None` when the file is not TOML at all.
fn parse_sections(text: &str, issues: &mut Issues) -> Option<(Config, Vec<&'static str>)> {
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            issues.push(
                "<file>",
                format!("not valid TOML: {}", first_line(&e.to_string())),
            );
            return None;
        }
    };
    for key in table.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            issues.push(
                key.clone(),
                format!("unknown section; expected one of: {}", SECTIONS.join(", ")),
            );
        }
    }
    non_finite(&toml::Value::Table(table.clone()), "", issues);
    let mut broken = Vec::new();
    for required in ["experiment", "model"] {
        if !table.contains_key(required) {
            issues.push(required, "missing section: every experiment file needs it");
            broken.push(required);
        }
    }
    let take = |name: &'static str| -> Option<toml::Value> { table.get(name).cloned() };
    let config = Config {
        experiment: section(take("experiment"), "experiment", issues, &mut broken),
        cluster: section(take("cluster"), "cluster", issues, &mut broken),
        model: section(take("model"), "model", issues, &mut broken),
        data: section(take("data"), "data", issues, &mut broken),
        pretrain: section(take("pretrain"), "pretrain", issues, &mut broken),
        importance: section(take("importance"), "importance", issues, &mut broken),
        pruning: section(take("pruning"), "pruning", issues, &mut broken),
        distill: section(take("distill"), "distill", issues, &mut broken),
        checkpoint: section(take("checkpoint"), "checkpoint", issues, &mut broken),
        eval: section(take("eval"), "eval", issues, &mut broken),
    };
    Some((config, broken))
}

/// TOML allows `nan` and `inf`; no setting of fastlightgen means either (a NaN timeout, for
/// one, would turn hang detection off). Every such number is reported by its key.
fn non_finite(value: &toml::Value, key: &str, issues: &mut Issues) {
    match value {
        toml::Value::Float(f) if !f.is_finite() => {
            issues.push(key, format!("must be a finite number, got {f}"));
        }
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                non_finite(v, &path, issues);
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                non_finite(v, &format!("{key}[{i}]"), issues);
            }
        }
        _ => {}
    }
}

/// Deserialises one section (its defaults when absent). On failure it records the issue by
/// key path, marks the section broken and returns the defaults.
fn section<T: DeserializeOwned + Default>(
    value: Option<toml::Value>,
    name: &'static str,
    issues: &mut Issues,
    broken: &mut Vec<&'static str>,
) -> T {
    let Some(value) = value else {
        return T::default();
    };
    if !value.is_table() {
        issues.push(
            name,
            format!("expected a [{name}] table, found a {}", value.type_str()),
        );
        broken.push(name);
        return T::default();
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let key = if path == "." || path.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{path}")
            };
            issues.push(key, first_line(&e.inner().to_string()).to_string());
            broken.push(name);
            T::default()
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

#[cfg(test)]
mod tests;
