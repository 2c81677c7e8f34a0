//! The settings that decide what a run computes, so that a checkpoint is only resumed by the
//! config that wrote it.
//!
//! Everything in the config counts except what may change between launches of the same run:
//! where and how the ranks run (`cluster.*`, including the world size: resuming on another
//! world size re-shards), how often checkpoints are taken (`checkpoint.*`), how the result is
//! evaluated (`eval.*`) and where runs are kept (`experiment.output_dir`).

use crate::config::Config;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Dotted keys, flattened from the resolved config, that may differ between launches.
const FREE: [&str; 4] = ["cluster", "checkpoint", "eval", "experiment.output_dir"];

/// The run-defining settings as `dotted.key -> value` (values in TOML syntax).
pub fn run_settings(cfg: &Config) -> BTreeMap<String, String> {
    let value = toml::Value::try_from(cfg).expect("a Config always serialises");
    let mut out = BTreeMap::new();
    flatten("", &value, &mut out);
    out.retain(|k, _| {
        !FREE
            .iter()
            .any(|f| k == f || k.starts_with(&format!("{f}.")))
    });
    out
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// sha256 of the run-defining settings (the `config_hash` of manifests and registrations).
pub fn settings_hash(settings: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in settings {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Human-readable differences `before` -> `now`, one per line; empty when equal.
pub fn differences(
    before: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| match (before.get(k), now.get(k)) {
            (Some(a), Some(b)) if a == b => None,
            (Some(a), Some(b)) => Some(format!("{k}: was {a}, this config has {b}")),
            (Some(a), None) => Some(format!("{k}: was {a}, this config leaves it unset")),
            (None, Some(b)) => Some(format!("{k}: was unset, this config has {b}")),
            (None, None) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny_config() -> Config {
        let text = "[experiment]\nname = \"t\"\nstages = [\"pretrain\", \"pruning\", \"distill\"]\n[model]\npreset = \"tiny\"\n";
        Config::parse(
            text,
            std::path::Path::new("t.toml"),
            crate::config::LoadOptions { check_files: false },
        )
        .expect("a valid config")
    }

    #[test]
    fn launch_settings_do_not_change_the_hash_but_training_settings_do() {
        let a = tiny_config();
        let mut b = a.clone();
        b.cluster.world_size = 4;
        b.checkpoint.interval_steps = 7;
        b.eval.num_samples = 3;
        assert_eq!(
            settings_hash(&run_settings(&a)),
            settings_hash(&run_settings(&b))
        );
        b.pruning.alpha = 0.25;
        let d = differences(&run_settings(&a), &run_settings(&b));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].starts_with("pruning.alpha: was "), "{d:?}");
        assert_ne!(
            settings_hash(&run_settings(&a)),
            settings_hash(&run_settings(&b))
        );
    }
}
