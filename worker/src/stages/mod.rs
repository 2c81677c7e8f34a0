//! The FastLightGen stages (METHOD.md). Each reads the previous stage's output from the run
//! directory and writes its own there, so any stage can be rerun alone:
//!
//! | stage      | reads                                   | writes                          |
//! |------------|-----------------------------------------|---------------------------------|
//! | importance | the teacher                             | `importance.json`, `.png`       |
//! | pruning    | the teacher, `importance.json`          | `pruning/model.safetensors`     |
//! | distill    | `pruning/model.safetensors` (or the teacher when the run has no pruning stage), `importance.json` | `distill/generator.safetensors` |
//! | export     | `distill/generator.safetensors`         | `export/student.{safetensors,json}` |
//! | eval       | the teacher, `export/student.safetensors` | `samples/*`, `eval.json`      |

pub mod distill;
pub mod evaluate;
pub mod export;
pub mod importance;
pub mod pruning;

use crate::collective::Collective;
use crate::data::DataSet;
use crate::metrics::MetricsLog;
use crate::model::file;
use crate::model::Dit;
use anyhow::{Context, Result};
use flg_coordinator::config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind};

/// Where each stage's output lives inside the run directory.
pub mod paths {
    use std::path::{Path, PathBuf};

    pub fn importance(run_dir: &Path) -> PathBuf {
        run_dir.join("importance.json")
    }
    pub fn pruned_model(run_dir: &Path) -> PathBuf {
        run_dir.join("pruning").join("model.safetensors")
    }
    pub fn generator(run_dir: &Path) -> PathBuf {
        run_dir.join("distill").join("generator.safetensors")
    }
    pub fn student(run_dir: &Path) -> PathBuf {
        run_dir.join("export").join("student.safetensors")
    }
    pub fn student_info(run_dir: &Path) -> PathBuf {
        run_dir.join("export").join("student.json")
    }
    pub fn eval_report(run_dir: &Path) -> PathBuf {
        run_dir.join("eval.json")
    }
    pub fn samples(run_dir: &Path, name: &str) -> PathBuf {
        run_dir.join("samples").join(name)
    }
}

/// What every stage of a rank works with.
pub struct StageCtx<'a> {
    pub cfg: &'a Config,
    pub run_dir: PathBuf,
    pub data: Arc<DataSet>,
    pub comm: &'a dyn Collective,
    pub device: Device,
    /// The kind gathered parameters compute in (f32, or bf16 on CUDA).
    pub kind: Kind,
    /// The teacher the run starts from (model.weights, or the run's own pretraining output).
    pub teacher: PathBuf,
    /// Every stage the config lists, also when only some run now (`--stage`): a rerun stage
    /// still knows whether an earlier stage's output is part of this run.
    pub all_stages: Vec<String>,
}

impl StageCtx<'_> {
    pub fn lead(&self) -> bool {
        self.comm.rank() == 0
    }

    pub fn has_stage(&self, s: &str) -> bool {
        self.all_stages.iter().any(|x| x == s)
    }

    /// Rank 0's metrics log (`metrics.jsonl`); `None` on the other ranks.
    pub fn metrics(&self) -> Result<Option<MetricsLog>> {
        if !self.lead() {
            return Ok(None);
        }
        let path = self.run_dir.join("metrics.jsonl");
        Ok(Some(
            MetricsLog::open(&path).with_context(|| format!("opening {}", path.display()))?,
        ))
    }

    /// A progress bar on rank 0, hidden elsewhere.
    pub fn bar(&self, total: u64, what: &str) -> indicatif::ProgressBar {
        if self.lead() {
            crate::progress::bar(total, what)
        } else {
            indicatif::ProgressBar::hidden()
        }
    }

    /// Loads a whole model file that an earlier stage wrote, naming the stage to run when the
    /// file is missing.
    pub fn load_input(&self, path: &Path, made_by: &str) -> Result<Dit> {
        if !path.exists() {
            anyhow::bail!(
                "{} is missing: it is written by the {made_by:?} stage; run that stage first \
                 (fastlightgen workers CFG --stage {made_by})",
                path.display()
            );
        }
        Ok(file::load(path, Some(&self.cfg.model_dims()))?.0)
    }

    /// Rank 0 writes a whole model with the run's metadata (and `sampler` when given).
    pub fn save_model(
        &self,
        model: &Dit,
        path: &Path,
        sampler: Option<file::SamplerSettings>,
    ) -> Result<()> {
        if self.lead() {
            let mut meta = crate::pretrain::model_meta(model, &self.data);
            meta.sampler = sampler;
            file::save(path, &model.named_tensors(), &meta)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// The blocks of `all` that are not `removed`, in order.
pub fn kept_blocks(all: &[usize], removed: &[usize]) -> Vec<usize> {
    all.iter()
        .copied()
        .filter(|b| !removed.contains(b))
        .collect()
}
