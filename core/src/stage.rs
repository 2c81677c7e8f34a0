//! The pipeline's stages: one name each, in the order they run.
//!
//! Config files, events, metrics lines and checkpoint manifests spell a stage by its
//! [`Stage::name`]; code matches on the enum. Only the training stages take steps, and so
//! only they have checkpoints: a checkpoint's global step (`step-<N>`) is the steps of the
//! training stages before it plus its stage step, so checkpoints of different stages never
//! collide.

use crate::config::Config;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Flow-matching training of a teacher from scratch (the tiny demo teacher).
    Pretrain,
    /// Stage I: each block's importance, and the blocks to remove.
    Importance,
    /// Stage II: training with the candidate blocks stochastically skipped.
    Pruning,
    /// Stage III: distribution-matching distillation to a few-step, pruned generator.
    Distill,
    /// The generator's EMA as a plain student file.
    Export,
    /// Teacher and student sampled and scored.
    Eval,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 6] = [
        Stage::Pretrain,
        Stage::Importance,
        Stage::Pruning,
        Stage::Distill,
        Stage::Export,
        Stage::Eval,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Stage::Pretrain => "pretrain",
            Stage::Importance => "importance",
            Stage::Pruning => "pruning",
            Stage::Distill => "distill",
            Stage::Export => "export",
            Stage::Eval => "eval",
        }
    }

    /// The stage spelled `name`, if any.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Every stage name, comma-separated (for error messages and help texts).
    pub fn names() -> String {
        Stage::ALL.map(Stage::name).join(", ")
    }

    /// Whether the stage takes optimiser steps (and so reports steps and has checkpoints).
    pub const fn trains(self) -> bool {
        matches!(self, Stage::Pretrain | Stage::Pruning | Stage::Distill)
    }

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

    /// The metrics.jsonl keys the stage's loss curves are drawn from, with their legends.
    pub const fn loss_curves(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Stage::Pretrain => &[("loss", "flow-matching loss")],
            Stage::Pruning => &[
                ("loss", "Stage II loss"),
                ("gap", "|P - U|^2 (pruned vs full)"),
                ("flow_full", "flow loss, full pass U"),
                ("flow_pruned", "flow loss, pruned pass P"),
            ],
            Stage::Distill => &[
                ("fake_loss", "fake-score flow loss"),
                ("generator_loss", "generator DMD loss"),
            ],
            _ => &[],
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Stage, String> {
        Stage::parse(s).ok_or_else(|| format!("unknown stage {s:?}: one of {}", Stage::names()))
    }
}

impl serde::Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Stage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Stage, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_training_stages_take_steps() {
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.name()), Some(s));
            assert_eq!(s.trains(), !s.loss_curves().is_empty());
        }
        assert_eq!(Stage::parse("prune"), None);
        assert!("distil".parse::<Stage>().unwrap_err().contains("pretrain, importance"));
    }

    #[test]
    fn global_steps_count_the_earlier_training_stages_the_config_runs() {
        let text = "[experiment]\nname = \"t\"\nstages = [\"pretrain\", \"importance\", \"pruning\", \"distill\"]\n[model]\npreset = \"tiny\"\n";
        let options = crate::config::LoadOptions { check_files: false };
        let mut cfg = Config::parse(text, std::path::Path::new("t.toml"), options).unwrap();
        cfg.pretrain.steps = 7;
        cfg.pruning.steps = 11;
        cfg.distill.steps = 13;
        assert_eq!(Stage::Pretrain.offset(&cfg), 0);
        assert_eq!(Stage::Importance.offset(&cfg), 7);
        assert_eq!(Stage::Distill.global_step(&cfg, 2), 7 + 11 + 2);
        cfg.experiment.stages.remove(0);
        assert_eq!(Stage::Distill.offset(&cfg), 11);
    }
}
