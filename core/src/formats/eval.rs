//! `eval.json`: the eval stage's table (teacher, teacher at the student's step count,
//! student; six scores each, their average, the Fréchet distance, sampling seconds) and the
//! measured and theoretical speedups.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The six scores, in report order: the key in eval.json (and `Scores`' field), and the
/// short column name tables use. The one list of score names.
pub const SCORES: [(&str, &str); 6] = [
    ("prompt_following", "prompt"),
    ("frame_quality", "quality"),
    ("background", "background"),
    ("motion_smoothness", "smoothness"),
    ("subject_consistency", "consistency"),
    ("dynamic_degree", "dynamic"),
];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scores {
    pub prompt_following: f64,
    pub frame_quality: f64,
    pub background: f64,
    pub motion_smoothness: f64,
    pub subject_consistency: f64,
    pub dynamic_degree: f64,
}

impl Scores {
    pub fn values(&self) -> [f64; 6] {
        [
            self.prompt_following,
            self.frame_quality,
            self.background,
            self.motion_smoothness,
            self.subject_consistency,
            self.dynamic_degree,
        ]
    }

    /// (key, value) in the order of [`SCORES`].
    pub fn named(&self) -> [(&'static str, f64); 6] {
        let v = self.values();
        std::array::from_fn(|i| (SCORES[i].0, v[i]))
    }

    pub fn average(&self) -> f64 {
        self.values().iter().sum::<f64>() / 6.0
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub num_videos: usize,
    pub frames: usize,
    pub size: usize,
    pub scores: Scores,
    pub average: f64,
    pub frechet_distance: f64,
    /// Distinct motion directions (the signs of the first-to-last-frame displacement, 8 at
    /// most) among a class's videos, mean over the classes present: real data has 8 with
    /// enough videos; a student that collapsed to one still video per class has 0. Absent
    /// from files written before it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directions_per_class: Option<f64>,
}

/// One model and sampler, scored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub model: String,
    pub steps: usize,
    pub cfg: f64,
    /// Network evaluations per video (2 per step with CFG).
    pub nfe: usize,
    pub params: i64,
    /// Kept share of the transformer blocks' parameters.
    pub block_param_share: f64,
    /// Wall seconds to sample every video (the slowest rank; when one run takes under
    /// `eval.min_timed_seconds`, the mean of repeats after a warm-up run).
    pub seconds: f64,
    pub eval: EvalReport,
}

/// `eval.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunEval {
    pub run: String,
    pub world: usize,
    pub num_videos: usize,
    pub seed: u64,
    pub rows: Vec<Row>,
    /// Reference teacher seconds / student seconds, same videos, same run.
    pub speedup_measured: Option<f64>,
    /// Teacher NFE / (student NFE x student block-parameter share).
    pub speedup_theoretical: Option<f64>,
}

impl RunEval {
    pub fn read(path: &Path) -> Result<RunEval> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// Row names.
pub const TEACHER: &str = "teacher";
pub const TEACHER_FEW: &str = "teacher-few-step";
pub const STUDENT: &str = "student";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_list_names_every_field_in_value_order() {
        let s = Scores {
            prompt_following: 1.0,
            frame_quality: 2.0,
            background: 3.0,
            motion_smoothness: 4.0,
            subject_consistency: 5.0,
            dynamic_degree: 6.0,
        };
        let json = serde_json::to_value(&s).unwrap();
        let fields = json.as_object().unwrap();
        assert_eq!(fields.len(), SCORES.len());
        for (key, v) in s.named() {
            assert_eq!(fields[key].as_f64(), Some(v), "{key}");
        }
        assert_eq!(s.average(), 3.5);
    }
}
