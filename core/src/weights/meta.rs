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
