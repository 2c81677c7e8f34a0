//! Export: the Stage III generator (its EMA) as a plain, unsharded student file.
//!
//! `export/student.safetensors` holds only the kept blocks under their original Wan key
//! indices, with metadata recording the block ids and the sampler (steps, shifted timesteps,
//! no CFG), so `fastlightgen sample --model export/student.safetensors` needs nothing else.
//! `export/student.json` says the same for people and scripts.

use super::paths;
use crate::model::file;
use crate::model::params::total_param_count;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// Kept share of the transformer blocks' parameters (METHOD.md's "70%").
    pub block_param_share: f64,
    /// Kept share of all parameters (embeddings and head included).
    pub param_share: f64,
    pub sampler: file::SamplerSettings,
}

impl StudentInfo {
    /// One line for people: which blocks, what share, how many steps, where.
    pub fn summary(&self, run_dir: &Path) -> String {
        format!(
            "student: blocks {:?} ({:.1}% of block parameters, {} parameters), {} steps -> {}",
            self.block_ids,
            self.block_param_share * 100.0,
            self.params,
            self.sampler.timesteps.len(),
            paths::student(run_dir).display()
        )
    }

    pub fn read(path: &Path) -> Result<StudentInfo> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Reads the generator of a run directory and writes the export files. Returns their info.
pub fn export(run_dir: &Path) -> Result<StudentInfo> {
    let src = paths::generator(run_dir);
    if !src.exists() {
        anyhow::bail!(
            "{} is missing: it is written by the \"distill\" stage; run that stage first",
            src.display()
        );
    }
    let (model, meta) = file::load(&src, None)?;
    let meta = meta.with_context(|| format!("{}: no fastlightgen metadata", src.display()))?;
    let sampler = meta.sampler.clone().with_context(|| {
        format!(
            "{}: records no sampler settings; not a Stage III generator",
            src.display()
        )
    })?;
    let dims = &model.dims;
    let all = dims.num_blocks as usize;
    let removed: Vec<usize> = (0..all).filter(|b| !model.block_ids.contains(b)).collect();
    let full_params = total_param_count(dims);
    let params = model.param_count();
    let info = StudentInfo {
        source: src.display().to_string(),
        block_ids: model.block_ids.clone(),
        removed_blocks: removed,
        params,
        full_params,
        block_param_share: model.block_param_share(),
        param_share: params as f64 / full_params as f64,
        sampler,
    };
    let out = paths::student(run_dir);
    std::fs::create_dir_all(out.parent().expect("export dir"))?;
    file::save(&out, &model.named_tensors(), &meta)
        .with_context(|| format!("writing {}", out.display()))?;
    let info_path = paths::student_info(run_dir);
    std::fs::write(&info_path, serde_json::to_string_pretty(&info)?)
        .with_context(|| format!("writing {}", info_path.display()))?;
    Ok(info)
}
