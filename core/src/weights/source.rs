//! Where a model's tensors are and what they are called, from headers alone.
//!
//! A weights path (`model.weights`, `convert SRC`, `sample --model`) may be:
//! - a safetensors file: fastlightgen's own (with its metadata), an original Wan checkpoint,
//!   or a diffusers transformer saved as one file;
//! - a folder: a diffusers transformer (`config.json`, `diffusion_pytorch_model*.safetensors`,
//!   the `*.safetensors.index.json` when sharded) or an original Wan checkpoint folder (its
//!   `config.json` has `dim`, `num_heads`, ...); the index lists the shards, without one every
//!   `*.safetensors` file of the folder is read;
//! - an `*.index.json` file: the shards it lists, with the `config.json` beside it.
//! The key naming is read from the keys themselves (see [`naming::detect`]).

use super::meta::{ModelMeta, META_KEY};
use super::naming::{self, KeyNaming, StatedDims};
use crate::config::ModelDims;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// One tensor as its file's header describes it.
#[derive(Clone, Debug)]
pub struct TensorHeader {
    /// The key in the file.
    pub key: String,
    /// fastlightgen's (Wan's) name for it; `None` for a key that is no parameter of the model.
    pub wan_name: Option<String>,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Index into [`WeightSource::files`].
    pub file: usize,
}

/// A model's weight files, their naming, and what their `config.json` and metadata say.
#[derive(Clone, Debug)]
pub struct WeightSource {
    /// The path as given.
    pub path: PathBuf,
    pub files: Vec<PathBuf>,
    pub naming: KeyNaming,
    /// The `config.json` read, and the dimensions it states.
    pub config: Option<(PathBuf, StatedDims)>,
    /// fastlightgen's metadata, from the first file that has it.
    pub meta: Option<ModelMeta>,
    pub tensors: Vec<TensorHeader>,
}

/// The dtypes fastlightgen reads (into f32 master weights).
pub const READABLE: [Dtype; 3] = [Dtype::F32, Dtype::BF16, Dtype::F16];

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", path.display()))
}

/// The shard files an index names (`weight_map` values), in order, each checked to exist.
fn index_files(index: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let v = read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: field weight_map: missing or not an object",
                index.display()
            )
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names = BTreeSet::new();
    for (k, f) in map {
        let f = f.as_str().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: field weight_map.{k}: expected a file name",
                index.display()
            )
        })?;
        // Shards live beside the index: a name with a separator or `..` could point anywhere.
        anyhow::ensure!(
            !f.is_empty() && !f.contains('/') && !f.contains('\\') && f != ".." && f != ".",
            "{}: field weight_map.{k}: {f:?} is not a file name in the index's folder",
            index.display()
        );
        names.insert(f.to_string());
    }
    anyhow::ensure!(
        !names.is_empty(),
        "{}: field weight_map: empty",
        index.display()
    );
    let files: Vec<PathBuf> = names.into_iter().map(|n| dir.join(n)).collect();
    for f in &files {
        anyhow::ensure!(
            f.is_file(),
            "{}: names {}, which does not exist",
            index.display(),
            f.display()
        );
    }
    Ok(files)
}

fn files_of(path: &Path) -> anyhow::Result<(Vec<PathBuf>, Option<PathBuf>)> {
    if path.is_dir() {
        let mut indexes = Vec::new();
        let mut shards = Vec::new();
        for e in std::fs::read_dir(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", path.display()))?
        {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".safetensors.index.json") {
                indexes.push(p);
            } else if name.ends_with(".safetensors") && p.is_file() {
                shards.push(p);
            }
        }
        let config = Some(path.join("config.json")).filter(|c| c.is_file());
        let files = match indexes.len() {
            0 => {
                anyhow::ensure!(
                    !shards.is_empty(),
                    "{}: a folder without .safetensors files (expected a diffusers transformer folder or an original Wan checkpoint)",
                    path.display()
                );
                shards.sort();
                shards
            }
            1 => index_files(&indexes[0])?,
            _ => anyhow::bail!(
                "{}: more than one *.safetensors.index.json; name the one to use",
                path.display()
            ),
        };
        Ok((files, config))
    } else if path.is_file() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") {
            let config = path
                .parent()
                .map(|d| d.join("config.json"))
                .filter(|c| c.is_file());
            Ok((index_files(path)?, config))
        } else {
            Ok((vec![path.to_path_buf()], None))
        }
    } else {
        anyhow::bail!("{}: no such file or folder", path.display())
    }
}

/// The header of one safetensors file (through a memory map: no tensor data is read):
/// its tensors (key, dtype, shape) and metadata. Offsets are checked against the file size.
pub fn read_header(
    path: &Path,
) -> anyhow::Result<(
    Vec<(String, Dtype, Vec<usize>)>,
    Option<HashMap<String, String>>,
)> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", path.display()))?;
    // SAFETY: a read-only map of a file this process does not modify.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| anyhow::anyhow!("{}: cannot map: {e}", path.display()))?;
    // read_metadata also checks every offset against the file's size.
    let (_, meta) = SafeTensors::read_metadata(&map[..])
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let mut out: Vec<(String, Dtype, Vec<usize>)> = meta
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype, v.shape.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, meta.metadata().clone()))
}

impl WeightSource {
    /// Finds the files of `path` and reads their headers, `config.json` and metadata.
    pub fn open(path: &Path) -> anyhow::Result<WeightSource> {
        let (files, config_path) = files_of(path)?;
        let mut tensors = Vec::new();
        let mut meta = None;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let (ts, m) = read_header(f)?;
            if meta.is_none() {
                if let Some(s) = m.as_ref().and_then(|m| m.get(META_KEY)) {
                    meta = Some(serde_json::from_str::<ModelMeta>(s).map_err(|e| {
                        anyhow::anyhow!("{}: metadata {META_KEY}: {e}", f.display())
                    })?);
                }
            }
            for (key, dtype, shape) in ts {
                if let Some(&j) = seen.get(&key) {
                    anyhow::bail!(
                        "tensor {key} is in both {} and {}",
                        files[j].display(),
                        f.display()
                    );
                }
                seen.insert(key.clone(), i);
                tensors.push(TensorHeader {
                    key,
                    wan_name: None,
                    dtype,
                    shape,
                    file: i,
                });
            }
        }
        let naming = naming::detect(tensors.iter().map(|t| t.key.as_str()));
        for t in &mut tensors {
            t.wan_name = match naming {
                KeyNaming::Wan => Some(t.key.clone()),
                KeyNaming::Diffusers => naming::diffusers_to_wan(&t.key),
            };
        }
        let config = match config_path {
            None => None,
            Some(c) => {
                let v = read_json(&c)?;
                let (_, stated) =
                    naming::stated_dims(&v).map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
                Some((c, stated))
            }
        };
        Ok(WeightSource {
            path: path.to_path_buf(),
            files,
            naming,
            config,
            meta,
            tensors,
        })
    }

    /// The model's dimensions and the original block indices the files hold: fastlightgen's
    /// metadata first, else `config.json` (which must agree with `configured` where given),
    /// else `configured` with every block.
    pub fn dims(&self, configured: Option<&ModelDims>) -> anyhow::Result<(ModelDims, Vec<usize>)> {
        if let Some(m) = &self.meta {
            let problems = m.problems();
            anyhow::ensure!(
                problems.is_empty(),
                "{}: metadata {META_KEY} describes no usable model:\n  {}",
                self.path.display(),
                problems.join("\n  ")
            );
            return Ok((m.dims.clone(), m.block_ids.clone()));
        }
        let dims = match (&self.config, configured) {
            (Some((c, stated)), Some(d)) => {
                let bad = stated.mismatches(d);
                anyhow::ensure!(
                    bad.is_empty(),
                    "{}: does not describe the configured model (model.preset and its overrides):\n  {}",
                    c.display(),
                    bad.join("\n  ")
                );
                stated.over(d)?
            }
            (Some((c, stated)), None) => {
                // Fields a diffusers config leaves out: the text length its pipeline pads to.
                let base = crate::config::preset("wan2.1-t2v-1.3b").expect("preset");
                stated.over(&base).map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?
            }
            (None, Some(d)) => d.clone(),
            (None, None) => anyhow::bail!(
                "{}: has neither fastlightgen metadata nor a config.json; say which model it is (e.g. --preset wan2.1-t2v-1.3b)",
                self.path.display()
            ),
        };
        let source = match &self.config {
            Some((c, _)) => c.display().to_string(),
            None => self.path.display().to_string(),
        };
        dims.check(&source)?;
        let blocks = (0..dims.num_blocks as usize).collect();
        Ok((dims, blocks))
    }
}
