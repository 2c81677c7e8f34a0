//! `export/student.json`: which blocks the exported student keeps, its size, and how it
//! samples (the same sampler is in the student file's metadata).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How a few-step sampler moves from one time to the next.
///
/// Both predict the clean video `x0 = x - t v` at each step. `Euler` then moves along the
/// predicted velocity, `x' = x + (t' - t) v`, which keeps the noise implied by the previous
/// predictions; `Renoise` (DMD2's and Self-Forcing's few-step sampler) puts fresh noise on the
/// prediction, `x' = (1 - t') x0 + t' eps`, so each step starts from a properly noised input.
/// The last step (to t = 0) is the same for both.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    #[default]
    Euler,
    Renoise,
}

impl SamplerKind {
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::Renoise => "renoise",
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "euler" => Ok(SamplerKind::Euler),
            "renoise" => Ok(SamplerKind::Renoise),
            other => Err(format!("unknown sampler {other:?}: euler or renoise")),
        }
    }
}

/// How a distilled student samples.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SamplerSettings {
    /// Times from noise towards data, already shifted (the last step goes to 0).
    pub timesteps: Vec<f64>,
    pub cfg: f64,
    /// Euler or re-noising steps; files written before the choice existed are Euler.
    #[serde(default)]
    pub kind: SamplerKind,
    /// Number of steps and the shift the timesteps were made with (for people reading the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
}

impl SamplerSettings {
    /// What makes this sampler unusable (from a file, so anything): times in (0, 1] going
    /// strictly down, at most 1000 of them, guidance finite in [0, 100].
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let t = &self.timesteps;
        if t.is_empty() || t.len() > 1000 {
            out.push(format!(
                "sampler.timesteps: 1 to 1000 times, got {}",
                t.len()
            ));
        }
        if t.iter().any(|&x| !(x > 0.0 && x <= 1.0)) || t.windows(2).any(|w| w[1] >= w[0]) {
            out.push(format!(
                "sampler.timesteps: times in (0, 1] going strictly down, got {t:?}"
            ));
        }
        if !(self.cfg.is_finite() && (0.0..=100.0).contains(&self.cfg)) {
            out.push(format!(
                "sampler.cfg: a number in [0, 100], got {}",
                self.cfg
            ));
        }
        out
    }
}

/// `export/student.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StudentInfo {
    /// Where the weights came from.
    pub source: String,
    /// Original indices of the blocks the student keeps.
    pub block_ids: Vec<usize>,
    /// Original indices of the removed blocks.
    pub removed_blocks: Vec<usize>,
    pub params: i64,
    /// Parameters of the same model with every block.
    pub full_params: i64,
    /// Kept share of the transformer blocks' parameters (docs/method.md's "70%").
    pub block_param_share: f64,
    /// Kept share of all parameters (embeddings and head included).
    pub param_share: f64,
    pub sampler: SamplerSettings,
}

impl StudentInfo {
    /// One line for people: which blocks, what share, how many steps, where.
    pub fn summary(&self, run_dir: &crate::RunDir) -> String {
        format!(
            "student: blocks {:?} ({:.1}% of block parameters, {} parameters), {} steps -> {} (diffusers form: {})",
            self.block_ids,
            self.block_param_share * 100.0,
            self.params,
            self.sampler.timesteps.len(),
            run_dir.student().display(),
            run_dir.student_diffusers().display()
        )
    }

    pub fn read(path: &Path) -> Result<StudentInfo> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// `sampler.json` beside a student in diffusers or Wan form: how to sample it with any
/// inference stack. Times run from noise (1) to data (0) with the flow-matching convention
/// x_t = (1 - t) x0 + t noise and a velocity v = noise - x0; the transformer is called with
/// `transformer_timesteps` (t * 1000).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PortableSampler {
    /// "euler" (x <- x + (t_next - t) v) or "renoise" (x0 = x - t v, then
    /// x <- (1 - t_next) x0 + t_next fresh_noise).
    pub kind: SamplerKind,
    pub steps: usize,
    /// The times, shifted, from noise towards data; the last step goes to 0.
    pub timesteps: Vec<f64>,
    pub transformer_timesteps: Vec<f64>,
    /// Classifier-free guidance scale; 1 means none (one transformer call per step).
    pub guidance_scale: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
}

impl PortableSampler {
    pub fn new(s: &SamplerSettings) -> PortableSampler {
        PortableSampler {
            kind: s.kind,
            steps: s.steps.unwrap_or(s.timesteps.len()),
            timesteps: s.timesteps.clone(),
            transformer_timesteps: s.timesteps.iter().map(|t| t * 1000.0).collect(),
            guidance_scale: s.cfg,
            shift: s.shift,
        }
    }

    /// The settings fastlightgen's samplers take (`sample --model` on a student folder).
    pub fn settings(&self) -> SamplerSettings {
        SamplerSettings {
            timesteps: self.timesteps.clone(),
            cfg: self.guidance_scale,
            kind: self.kind,
            steps: Some(self.steps),
            shift: self.shift,
        }
    }
}
