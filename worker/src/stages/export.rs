//! Export: the Stage III generator (its EMA) as a plain, unsharded student file.
//!
//! `export/student.safetensors` holds only the kept blocks under their original Wan key
//! indices, with metadata recording the block ids and the sampler (steps, shifted timesteps,
//! no CFG), so `fastlightgen sample --model export/student.safetensors` needs nothing else.
//! `export/student.json` says the same for people and scripts.
//!
//! `export/diffusers/` holds the same student for diffusers' `WanTransformer3DModel`
//! (kept blocks renumbered 0..n-1, `config.json` with `num_layers = n`, f32 like Wan-AI's own
//! diffusers weights, sharded above 5 GB) and `sampler.json`, the few-step sampler in terms any
//! inference stack can follow (tools/wan_student_pipeline.py runs it in `WanPipeline`).
//! `fastlightgen convert --format diffusers --dtype bf16` writes a half-size copy.

use crate::model::file::{self, FolderForm, SaveDtype};
use crate::model::params::total_param_count;
use anyhow::{Context, Result};
use flg_core::formats::student::PortableSampler;
pub use flg_core::formats::student::StudentInfo;
use flg_core::RunDir;

/// Reads the generator of a run directory and writes the export files. Returns their info.
pub fn export(run_dir: &RunDir) -> Result<StudentInfo> {
    let src = run_dir.generator();
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
    let out = run_dir.student();
    std::fs::create_dir_all(out.parent().expect("export dir"))?;
    file::save(&out, &model.named_tensors(), &meta)
        .with_context(|| format!("writing {}", out.display()))?;
    let folder = run_dir.student_diffusers();
    file::save_folder(
        &folder,
        &model,
        FolderForm::Diffusers,
        SaveDtype::F32,
        5_000_000_000,
    )
    .with_context(|| format!("writing {}", folder.display()))?;
    let portable = PortableSampler::new(&info.sampler);
    let sampler_path = folder.join("sampler.json");
    flg_core::durable::write_file(
        &sampler_path,
        serde_json::to_string_pretty(&portable)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", sampler_path.display()))?;
    let info_path = run_dir.student_info();
    flg_core::durable::write_file(&info_path, serde_json::to_string_pretty(&info)?.as_bytes())
        .with_context(|| format!("writing {}", info_path.display()))?;
    Ok(info)
}
