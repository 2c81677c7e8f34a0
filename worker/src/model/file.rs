//! Model files: safetensors with Wan key names, plus a `fastlightgen` metadata entry that
//! says what the file is (dimensions, which original blocks it holds, what data its prompts
//! mean, and for a distilled student its sampler), so `sample` and `eval` need no config.
//! A released Wan checkpoint has no such entry; it loads with a preset's dimensions.

use super::Dit;
use flg_core::config::ModelDims;
use flg_core::dataset::MovingShapesParams;
pub use flg_core::formats::student::SamplerSettings;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// The metadata key fastlightgen writes.
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

/// Named tensors (as f32) and string metadata as safetensors bytes (also the format of
/// checkpoint shards).
pub fn safetensors_bytes(
    named: &[(String, Tensor)],
    info: HashMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    let bufs: Vec<(String, Vec<i64>, Vec<u8>)> = named
        .iter()
        .map(|(n, t)| {
            let t = t
                .detach()
                .to_device(tch::Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let v = Vec::<f32>::try_from(t.view(-1)).expect("f32 tensor");
            (
                n.clone(),
                t.size(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| {
            let shape = s.iter().map(|&d| d as usize).collect();
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape, b).expect("sizes match"),
            )
        })
        .collect();
    safetensors::serialize(views, Some(info)).map_err(|e| anyhow::anyhow!("serialising: {e:?}"))
}

/// Writes named tensors (as f32) with `meta`, atomically (temporary file, then rename).
pub fn save(path: &Path, named: &[(String, Tensor)], meta: &ModelMeta) -> anyhow::Result<()> {
    let info = HashMap::from([(META_KEY.to_string(), serde_json::to_string(meta)?)]);
    let bytes = safetensors_bytes(named, info)?;
    let tmp = path.with_extension("safetensors.tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&tmp, bytes)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The string metadata entry `key` of a safetensors file (the header only is read, through
/// a memory map), if it has one.
pub fn metadata_entry(path: &Path, key: &str) -> anyhow::Result<Option<String>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", path.display()))?;
    // SAFETY: read-only map of a file we do not modify.
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    let (_, meta) = SafeTensors::read_metadata(&map[..])
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e:?}", path.display()))?;
    Ok(meta.metadata().as_ref().and_then(|m| m.get(key)).cloned())
}

/// The fastlightgen metadata of a weights file, if it has any.
pub fn read_meta(path: &Path) -> anyhow::Result<Option<ModelMeta>> {
    match metadata_entry(path, META_KEY)? {
        None => Ok(None),
        Some(s) => Ok(Some(serde_json::from_str(&s).map_err(|e| {
            anyhow::anyhow!("{}: bad {META_KEY} metadata: {e}", path.display())
        })?)),
    }
}

/// Loads a model file: its own metadata says the dimensions and blocks; without metadata
/// (a released checkpoint) `fallback` gives the dimensions of a full model.
pub fn load(path: &Path, fallback: Option<&ModelDims>) -> anyhow::Result<(Dit, Option<ModelMeta>)> {
    let meta = read_meta(path)?;
    let (dims, blocks) = match (&meta, fallback) {
        (Some(m), _) => (m.dims.clone(), m.block_ids.clone()),
        (None, Some(d)) => (d.clone(), (0..d.num_blocks as usize).collect()),
        (None, None) => anyhow::bail!(
            "{}: has no fastlightgen metadata; say which model it is with --preset (e.g. wan2.1-t2v-1.3b)",
            path.display()
        ),
    };
    let named = Tensor::read_safetensors(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let model = Dit::from_named(&dims, blocks, named, &path.display().to_string())?;
    Ok((model, meta))
}
