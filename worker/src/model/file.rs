//! Model files: reading every form a Wan transformer comes in, and writing fastlightgen's own
//! file and the two public forms.
//!
//! fastlightgen's file is safetensors with Wan key names plus a `fastlightgen` metadata entry
//! (`flg_core::weights::meta`). [`load`] also reads an original Wan checkpoint (file or sharded
//! folder) and a diffusers `WanTransformer3DModel` folder (`flg_core::weights::source` finds
//! the files and names); F32, BF16 and F16 tensors load into f32. [`save_folder`] writes the
//! diffusers or the Wan form: kept blocks renumbered 0..n-1, a `config.json`, f32 or bf16,
//! sharded with an index above a size.

use super::Dit;
use anyhow::Context;
use flg_core::config::ModelDims;
pub use flg_core::formats::student::SamplerSettings;
pub use flg_core::weights::meta::{ModelMeta, Prompts, META_KEY};
use flg_core::weights::naming;
use flg_core::weights::source::WeightSource;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// The precision of written weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    Bf16,
}

impl SaveDtype {
    fn dtype(self) -> Dtype {
        match self {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::Bf16 => Dtype::BF16,
        }
    }

    fn bytes_per_element(self) -> u64 {
        match self {
            SaveDtype::F32 => 4,
            SaveDtype::Bf16 => 2,
        }
    }
}

impl std::str::FromStr for SaveDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(SaveDtype::F32),
            "bf16" => Ok(SaveDtype::Bf16),
            _ => Err(format!("{s:?}: expected f32 or bf16")),
        }
    }
}

/// One tensor's little-endian bytes in `dtype`.
fn tensor_bytes(t: &Tensor, dtype: SaveDtype) -> Vec<u8> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    match dtype {
        SaveDtype::F32 => {
            let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).view(-1)).expect("f32 tensor");
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        SaveDtype::Bf16 => {
            // bf16 bits through an int16 view (round to nearest even by libtorch's cast).
            let bits = t.to_kind(Kind::BFloat16).view(-1).view_dtype(Kind::Int16);
            let v = Vec::<i16>::try_from(bits).expect("int16 view");
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
    }
}

/// A tensor that becomes safetensors bytes only when the writer asks for them, one tensor at
/// a time: writing a model costs one tensor's buffer beyond the model, not a second model.
struct LazyView<'a> {
    tensor: &'a Tensor,
    dtype: SaveDtype,
    shape: Vec<usize>,
}

impl safetensors::View for LazyView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.dtype()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(tensor_bytes(self.tensor, self.dtype))
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bytes_per_element() as usize
    }
}

/// Lazy views of `named` in `dtype`, for safetensors' writers.
fn lazy_views(
    named: &[(String, Tensor)],
    dtype: SaveDtype,
) -> impl Iterator<Item = (&str, LazyView<'_>)> {
    named.iter().map(move |(n, t)| {
        let shape = t.size().iter().map(|&d| d as usize).collect();
        (
            n.as_str(),
            LazyView {
                tensor: t,
                dtype,
                shape,
            },
        )
    })
}

/// Writes named tensors in `dtype` as a safetensors file, streamed tensor by tensor to a
/// temporary file beside `path`, fsynced, then renamed into place.
fn write_safetensors(
    path: &Path,
    named: &[(String, Tensor)],
    info: Option<HashMap<String, String>>,
    dtype: SaveDtype,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = tmp_beside(path);
    safetensors::serialize_to_file(lazy_views(named, dtype), info, &tmp)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| anyhow::anyhow!("{}: cannot sync: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    flg_core::durable::sync_parent(path)?;
    Ok(())
}

use flg_core::durable::tmp_beside;

/// Named tensors (as f32) and string metadata as safetensors bytes (also the format of
/// checkpoint shards).
pub fn safetensors_bytes(
    named: &[(String, Tensor)],
    info: HashMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    safetensors::serialize(lazy_views(named, SaveDtype::F32), Some(info))
        .map_err(|e| anyhow::anyhow!("serialising: {e:?}"))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsynced, then renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = tmp_beside(path);
    let mut f = std::fs::File::create(&tmp)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    flg_core::durable::sync_parent(path)?;
    Ok(())
}

/// Writes named tensors (as f32) with `meta`, atomically (fsynced temporary file, then rename).
pub fn save(path: &Path, named: &[(String, Tensor)], meta: &ModelMeta) -> anyhow::Result<()> {
    let info = HashMap::from([(META_KEY.to_string(), serde_json::to_string(meta)?)]);
    write_safetensors(path, named, Some(info), SaveDtype::F32)
}

/// The string metadata entry `key` of a safetensors file (the header only is read, through
/// a memory map), if it has one.
pub fn metadata_entry(path: &Path, key: &str) -> anyhow::Result<Option<String>> {
    let (_, meta) = flg_core::weights::source::read_header(path)?;
    Ok(meta.and_then(|mut m| m.remove(key)))
}

/// Reads every tensor of `src` that is a model parameter, as f32, under its Wan name.
fn read_tensors(src: &WeightSource) -> anyhow::Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(src.tensors.len());
    for (i, path) in src.files.iter().enumerate() {
        let file = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", path.display()))?;
        // SAFETY: a read-only map of a file this process does not modify.
        let map = unsafe { memmap2::Mmap::map(&file) }?;
        let st = SafeTensors::deserialize(&map[..]).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display())
        })?;
        for h in src.tensors.iter().filter(|h| h.file == i) {
            let Some(name) = &h.wan_name else { continue };
            let view = st.tensor(&h.key)?;
            let kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::BF16 => Kind::BFloat16,
                Dtype::F16 => Kind::Half,
                d => anyhow::bail!(
                    "{}: tensor {}: dtype {d:?} is not a weight dtype",
                    path.display(),
                    h.key
                ),
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)
                .with_context(|| format!("{}: tensor {}", path.display(), h.key))?
                .to_kind(Kind::Float);
            out.push((name.clone(), t));
        }
    }
    Ok(out)
}

/// Loads a model in any form (see the module's doc). Dimensions come from fastlightgen's
/// metadata, else the folder's `config.json` (checked against `configured` where given), else
/// `configured`. The headers are checked against the model before any tensor is read, so a
/// file that does not fit costs no memory; every offending key is named.
pub fn load(
    path: &Path,
    configured: Option<&ModelDims>,
) -> anyhow::Result<(Dit, Option<ModelMeta>)> {
    let src = WeightSource::open(path)?;
    let (dims, blocks) = src.dims(configured)?;
    let problems = flg_core::weights::check::check(&src, &dims, &blocks);
    if !problems.is_empty() {
        anyhow::bail!(
            "{}: does not fit the model (read as {:?} key names):\n{}",
            path.display(),
            src.naming,
            flg_core::weights::check::summarise(&problems, 12)
        );
    }
    let named = read_tensors(&src)?;
    let model = Dit::from_named(&dims, blocks, named, &path.display().to_string())?;
    Ok((model, src.meta))
}

/// The public forms [`save_folder`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FolderForm {
    /// diffusers' `WanTransformer3DModel.from_pretrained` folder.
    Diffusers,
    /// The original Wan checkpoint layout (Wan key names, Wan's `config.json`).
    Wan,
}

/// Writes `model` as a folder of the public `form`: kept blocks renumbered 0..n-1,
/// `config.json` with `num_layers = n`, tensors in `dtype`, one file up to `max_shard_bytes`
/// and `diffusion_pytorch_model-0000k-of-0000N.safetensors` shards with an index above it.
/// Files are written beside and renamed into place; stale shards of an earlier write go.
/// Returns the files written.
pub fn save_folder(
    dir: &Path,
    model: &Dit,
    form: FolderForm,
    dtype: SaveDtype,
    max_shard_bytes: u64,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let position: HashMap<usize, usize> = model
        .block_ids
        .iter()
        .enumerate()
        .map(|(k, &b)| (b, k))
        .collect();
    let named: Vec<(String, Tensor)> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| {
            let n = naming::renumber_block(&n, |b| position[&b]);
            let n = match form {
                FolderForm::Wan => n,
                FolderForm::Diffusers => {
                    naming::wan_to_diffusers(&n).expect("every parameter has a diffusers name")
                }
            };
            (n, t)
        })
        .collect();
    let elem = dtype.bytes_per_element();
    // Greedy shards in parameter order (stem first, then blocks), as diffusers does.
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0u64;
    for (i, (_, t)) in named.iter().enumerate() {
        let b = t.numel() as u64 * elem;
        if size > 0 && size + b > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        shards.last_mut().expect("one shard").push(i);
        size += b;
    }
    let base = "diffusion_pytorch_model";
    let index_path = dir.join(format!("{base}.safetensors.index.json"));
    let n = shards.len();
    let mut written = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let total: u64 = named.iter().map(|(_, t)| t.numel() as u64 * elem).sum();
    for (k, idx) in shards.iter().enumerate() {
        let name = if n == 1 {
            format!("{base}.safetensors")
        } else {
            format!("{base}-{:05}-of-{:05}.safetensors", k + 1, n)
        };
        let part: Vec<(String, Tensor)> = idx
            .iter()
            .map(|&i| (named[i].0.clone(), named[i].1.shallow_clone()))
            .collect();
        let info = HashMap::from([("format".to_string(), "pt".to_string())]);
        for (key, _) in &part {
            weight_map.insert(key.clone(), name.clone().into());
        }
        let path = dir.join(&name);
        write_safetensors(&path, &part, Some(info), dtype)?;
        written.push(path);
    }
    // Remove what an earlier write left that this one does not have (other shard counts).
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let f = p
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("")
            .to_string();
        if f.starts_with(base) && f.ends_with(".safetensors") && !written.contains(&p) {
            std::fs::remove_file(&p)?;
        }
    }
    if n > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_atomic(
            &index_path,
            serde_json::to_string_pretty(&index)?.as_bytes(),
        )?;
        written.push(index_path);
    } else if index_path.exists() {
        std::fs::remove_file(&index_path)?;
    }
    let layers = model.block_ids.len();
    let config = match form {
        FolderForm::Diffusers => naming::diffusers_config(&model.dims, layers),
        FolderForm::Wan => naming::wan_config(&model.dims, layers),
    };
    let config_path = dir.join("config.json");
    write_atomic(
        &config_path,
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    written.push(config_path);
    Ok(written)
}
