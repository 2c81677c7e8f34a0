//! fastlightgen's metadata entry in its own model files: what the file is (dimensions, which
//! original blocks it holds, what its prompts mean, and for a distilled student its sampler),
//! so `sample` and `eval` need no config. Released checkpoints have no such entry.

use crate::config::ModelDims;
use crate::dataset::MovingShapesParams;
use crate::formats::student::SamplerSettings;
use serde::{Deserialize, Serialize};

/// The safetensors metadata key fastlightgen writes.
pub const META_KEY: &str = "fastlightgen";

/// What the prompts of a model mean: the moving-shapes class table it was trained with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Prompts {
    pub text_len: i64,
    pub text_dim: i64,
    pub shapes: MovingShapesParams,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    pub dims: ModelDims,
    /// Original indices of the blocks in the file.
    pub block_ids: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Prompts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerSettings>,
}

impl ModelMeta {
    /// Everything in the metadata a model cannot be built or sampled from, one line each,
    /// named by field: impossible dimensions, block ids that are not the model's, a prompt
    /// table whose videos the model cannot take, an unusable sampler.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .dims
            .problems()
            .into_iter()
            .map(|(k, m)| format!("dims.{k}: {m}"))
            .collect();
        let n = self.dims.num_blocks.max(0) as usize;
        let b = &self.block_ids;
        if b.is_empty() || b.windows(2).any(|w| w[0] >= w[1]) || b.iter().any(|&x| x >= n) {
            out.push(format!(
                "block_ids: distinct increasing block numbers below num_blocks ({n}), got {b:?}"
            ));
        }
        if let Some(p) = &self.prompts {
            if !(1..=self.dims.text_len).contains(&p.text_len) {
                out.push(format!(
                    "prompts.text_len: 1..={} (the model's text_len), got {}",
                    self.dims.text_len, p.text_len
                ));
            }
            if p.text_dim != self.dims.text_dim {
                out.push(format!(
                    "prompts.text_dim: the model's text_dim {}, got {}",
                    self.dims.text_dim, p.text_dim
                ));
            }
            let g = &p.shapes;
            for (k, m) in crate::config::moving_shapes_geometry(g.frames, g.size) {
                out.push(format!("prompts.shapes.{k}: {m}"));
            }
            let patch = self.dims.patch;
            if patch.iter().all(|&q| q >= 1)
                && (g.frames % patch[0] != 0 || g.size % patch[1] != 0 || g.size % patch[2] != 0)
            {
                out.push(format!(
                    "prompts.shapes: the patch {patch:?} must divide the videos ({} frames of {}x{})",
                    g.frames, g.size, g.size
                ));
            }
            if !(1..=1000).contains(&g.num_classes) {
                out.push(format!(
                    "prompts.shapes.num_classes: 1..=1000, got {}",
                    g.num_classes
                ));
            }
        }
        if let Some(s) = &self.sampler {
            out.extend(s.problems());
        }
        out
    }
}
