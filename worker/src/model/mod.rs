//! The Wan 2.1-style video DiT: parameters (`params`), the forward pass (`dit`), 3-D RoPE
//! (`rope`), and [`Dit`], a whole unsharded model that owns its tensors (loading, saving,
//! pruning). The sharded roles of the distributed workers feed the same `dit::forward`.

pub mod dit;
pub mod file;
pub mod params;
pub mod rope;

use dit::{Unit, UnitSource};
use flg_core::config::ModelDims;
use params::{block_specs, init_param, stem_specs};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A whole model in one process. `block_ids` are the original indices of the blocks it holds:
/// all of `0..num_blocks` for a full model, the kept ones for a pruned student.
pub struct Dit {
    pub dims: ModelDims,
    pub block_ids: Vec<usize>,
    pub stem: Unit,
    pub blocks: Vec<Unit>,
}

/// A weights file that does not fit the model, with every offending key named.
#[derive(Debug, thiserror::Error)]
#[error("{file}: does not fit the model:\n{}", problems.join("\n"))]
pub struct LoadError {
    pub file: String,
    pub problems: Vec<String>,
}

impl UnitSource for Dit {
    fn stem(&self) -> Cow<'_, Unit> {
        Cow::Borrowed(&self.stem)
    }

    fn block(&self, id: usize) -> Cow<'_, Unit> {
        let k = self
            .block_ids
            .iter()
            .position(|&b| b == id)
            .unwrap_or_else(|| {
                panic!(
                    "block {id} is not in this model (it holds {:?})",
                    self.block_ids
                )
            });
        Cow::Borrowed(&self.blocks[k])
    }
}

impl Dit {
    /// A freshly initialised full model on the CPU, seeded through libtorch's generator.
    pub fn init(dims: &ModelDims, seed: u64) -> Dit {
        tch::manual_seed(seed as i64);
        let (ss, bs) = (stem_specs(dims), block_specs(dims));
        let mk = |specs: &[params::ParamSpec]| {
            Unit::from_specs(
                specs,
                specs
                    .iter()
                    .map(|s| init_param(s.name, &s.shape, dims.dim))
                    .collect(),
            )
        };
        Dit {
            dims: dims.clone(),
            block_ids: (0..dims.num_blocks as usize).collect(),
            stem: mk(&ss),
            blocks: (0..dims.num_blocks).map(|_| mk(&bs)).collect(),
        }
    }

    /// Velocity for `x` at `t` with `text`, running `active` blocks (all held blocks when `None`).
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        text: &Tensor,
        active: Option<&[usize]>,
    ) -> Tensor {
        dit::forward(
            self,
            &self.dims,
            x,
            t,
            text,
            active.unwrap_or(&self.block_ids),
        )
    }

    /// Every parameter with its checkpoint name, stem first then blocks in order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = stem_specs(&self.dims)
            .iter()
            .map(|s| (s.name.to_string(), self.stem.p(s.name).shallow_clone()))
            .collect();
        let bs = block_specs(&self.dims);
        for (id, u) in self.block_ids.iter().zip(&self.blocks) {
            out.extend(bs.iter().map(|s| {
                (
                    format!("blocks.{id}.{}", s.name),
                    u.p(s.name).shallow_clone(),
                )
            }));
        }
        out
    }

    /// All parameters in `named_tensors` order.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.named_tensors().into_iter().map(|(_, t)| t).collect()
    }

    pub fn param_count(&self) -> i64 {
        self.parameters().iter().map(|t| t.numel() as i64).sum()
    }

    /// Writes the model as safetensors with Wan key names (f32).
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let named = self.named_tensors();
        let named: Vec<(String, Tensor)> = named
            .into_iter()
            .map(|(n, t)| (n, t.to_device(Device::Cpu).to_kind(Kind::Float)))
            .collect();
        Tensor::write_safetensors(&named, path)
    }

    /// Loads a full model, or a pruned one holding `block_ids`, from named tensors. Missing,
    /// unexpected and mis-shaped keys are all reported by name.
    pub fn from_named(
        dims: &ModelDims,
        block_ids: Vec<usize>,
        named: Vec<(String, Tensor)>,
        file: &str,
    ) -> Result<Dit, LoadError> {
        let mut by_name: HashMap<String, Tensor> = named.into_iter().collect();
        let mut problems = Vec::new();
        let mut take = |name: String, shape: &[i64]| -> Tensor {
            match by_name.remove(&name) {
                Some(t) if t.size() == shape => t.to_kind(Kind::Float),
                Some(t) => {
                    problems.push(format!(
                        "  mis-shaped: {name}: file has {:?}, the model needs {shape:?}",
                        t.size()
                    ));
                    Tensor::zeros(shape, (Kind::Float, Device::Cpu))
                }
                None => {
                    problems.push(format!("  missing: {name} {shape:?}"));
                    Tensor::zeros(shape, (Kind::Float, Device::Cpu))
                }
            }
        };
        let ss = stem_specs(dims);
        let stem = Unit::from_specs(
            &ss,
            ss.iter()
                .map(|s| take(s.name.to_string(), &s.shape))
                .collect(),
        );
        let bs = block_specs(dims);
        let blocks: Vec<Unit> = block_ids
            .iter()
            .map(|id| {
                Unit::from_specs(
                    &bs,
                    bs.iter()
                        .map(|s| take(format!("blocks.{id}.{}", s.name), &s.shape))
                        .collect(),
                )
            })
            .collect();
        let mut extra: Vec<String> = by_name.into_keys().collect();
        extra.sort();
        problems.extend(extra.into_iter().map(|k| format!("  unexpected: {k}")));
        if !problems.is_empty() {
            return Err(LoadError {
                file: file.to_string(),
                problems,
            });
        }
        Ok(Dit {
            dims: dims.clone(),
            block_ids,
            stem,
            blocks,
        })
    }

    /// Loads a full model from a safetensors file with Wan key names.
    pub fn load(dims: &ModelDims, path: &Path) -> anyhow::Result<Dit> {
        let named = Tensor::read_safetensors(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read weights: {e}", path.display()))?;
        Ok(Dit::from_named(
            dims,
            (0..dims.num_blocks as usize).collect(),
            named,
            &path.display().to_string(),
        )?)
    }

    /// The share of the transformer blocks' parameters this model holds (blocks are all the
    /// same size, so the share of blocks).
    pub fn block_param_share(&self) -> f64 {
        self.block_ids.len() as f64 / self.dims.num_blocks as f64
    }

    /// A copy holding only the blocks in `keep` (original indices): the pruned student.
    pub fn pruned(&self, keep: &[usize]) -> Dit {
        let blocks = keep.iter().map(|&id| self.block(id).into_owned()).collect();
        Dit {
            dims: self.dims.clone(),
            block_ids: keep.to_vec(),
            stem: self.stem.clone(),
            blocks,
        }
    }

    /// A copy with every parameter on `device` as `kind`, e.g. for sampling on a GPU.
    pub fn to(&self, device: Device, kind: Kind) -> Dit {
        let f = |t: &Tensor| t.to_device(device).to_kind(kind);
        Dit {
            dims: self.dims.clone(),
            block_ids: self.block_ids.clone(),
            stem: Unit::new(self.stem.clone_map(f)),
            blocks: self
                .blocks
                .iter()
                .map(|u| Unit::new(u.clone_map(f)))
                .collect(),
        }
    }
}

impl Unit {
    /// A new map of this unit's tensors with `f` applied.
    pub fn clone_map(&self, f: impl Fn(&Tensor) -> Tensor) -> HashMap<&'static str, Tensor> {
        self.iter().map(|(k, v)| (k, f(v))).collect()
    }
}

#[cfg(test)]
mod tests;
