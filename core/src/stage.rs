//! The pipeline's stages: one name each, in the order they run.
//!
//! Config files, events, metrics lines and checkpoint manifests spell a stage by its
//! [`Stage::name`]; code matches on the enum. Only the training stages take steps, and so
//! only they have checkpoints: a checkpoint's global step (`step-<N>`) is the steps of the
//! training stages before it plus its stage step, so checkpoints of different stages never
//! collide. The step counts and offsets under a config are `impl Stage` in `config/`.

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

    /// The metrics.jsonl keys the stage's loss curves are drawn from, with their legends.
    pub const fn loss_curves(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Stage::Pretrain => &[("loss", "flow-matching loss")],
            Stage::Pruning => &[
                ("loss", "Stage II loss"),
                ("gap", "|P - U|^2 (pruned vs full)"),
                ("flow_full", "flow loss, full pass U"),
                ("flow_pruned", "flow loss, pruned pass P"),
                ("feature", "feature loss (token states against U's)"),
            ],
            Stage::Distill => &[
                ("fake_loss", "fake-score flow loss"),
                ("generator_loss", "generator DMD loss"),
                (
                    "regression_loss",
                    "generator regression loss (teacher ODE pairs)",
                ),
                ("data_forcing_loss", "generator data-forcing loss"),
                ("gan_generator_loss", "generator GAN loss (ln 2 at chance)"),
                (
                    "gan_classifier_loss",
                    "GAN classifier loss (ln 4 at chance)",
                ),
            ],
            _ => &[],
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
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
        assert!("distil"
            .parse::<Stage>()
            .unwrap_err()
            .contains("pretrain, importance"));
    }
}
