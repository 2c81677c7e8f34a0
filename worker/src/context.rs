//! What every stage of a rank works with (`StageCtx`): the config, the run directory, the
//! data, the collectives, the device, and the coordinator link when there is one.

use crate::checkpoint::Writer;
use crate::collective::Collective;
use crate::control::Control;
use crate::data::DataSet;
use crate::flow::NullPrompt;
use crate::metrics::MetricsLog;
use crate::model::file::{self, ModelMeta, Prompts};
use crate::model::Dit;
use anyhow::{Context, Result};
use flg_core::config::Config;
use flg_core::{RunDir, Stage};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind};

/// What every stage of a rank works with.
pub struct StageCtx<'a> {
    pub cfg: &'a Config,
    pub run_dir: RunDir,
    pub data: Arc<DataSet>,
    pub comm: &'a dyn Collective,
    pub device: Device,
    /// The kind gathered parameters compute in (f32, or bf16 on CUDA).
    pub kind: Kind,
    /// The teacher the run starts from (model.weights, or the run's own pretraining output).
    pub teacher: PathBuf,
    /// The prompt CFG contrasts with and prompt dropout substitutes (`data.null_text`).
    pub null_prompt: NullPrompt,
    /// Every stage the config lists, also when only some run now (`--stage`): a rerun stage
    /// still knows whether an earlier stage's output is part of this run.
    pub all_stages: Vec<Stage>,
    /// The coordinator link and checkpoint writer, when started under a coordinator
    /// (`--coordinator URL`); without one, stages run straight through with no checkpoints.
    pub control: Option<Arc<Control>>,
    pub writer: Option<Writer>,
    /// The global step of the last checkpoint handed to the writer (a second request at the
    /// same boundary, e.g. a stop right after a periodic checkpoint, reuses it).
    pub last_saved: std::cell::Cell<Option<u64>>,
}

impl StageCtx<'_> {
    pub fn lead(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Shards a whole model across the ranks on this rank's device, computing in the run's
    /// precision, with the run's activation checkpointing (cluster.activation_checkpoint).
    pub fn shard(&self, model: &Dit) -> crate::shard::ShardedDit {
        use flg_core::config::ActivationCheckpoint;
        crate::shard::ShardedDit::from_dit(model, self.comm, self.device, self.kind)
            .with_recompute(self.cfg.cluster.activation_checkpoint == ActivationCheckpoint::Full)
    }

    pub fn has_stage(&self, s: Stage) -> bool {
        self.all_stages.contains(&s)
    }

    /// Rank 0's metrics log (`metrics.jsonl`); `None` on the other ranks.
    pub fn metrics(&self) -> Result<Option<MetricsLog>> {
        if !self.lead() {
            return Ok(None);
        }
        let path = self.run_dir.metrics();
        Ok(Some(
            MetricsLog::open(&path, &self.run_dir.tensorboard())
                .with_context(|| format!("opening {}", path.display()))?,
        ))
    }

    /// A progress bar on rank 0, hidden elsewhere (and under a coordinator, whose launcher
    /// draws the bars from the event stream).
    pub fn bar(&self, total: u64, what: &str) -> crate::progress::Progress {
        crate::progress::Progress::on_lead(self.lead() && self.control.is_none(), total, what)
    }

    /// Loads a whole model file that an earlier stage wrote, naming the stage to run when the
    /// file is missing.
    pub fn load_input(&self, path: &Path, made_by: Stage) -> Result<Dit> {
        if !path.exists() {
            anyhow::bail!(
                "{} is missing: it is written by the \"{made_by}\" stage; run that stage first \
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
            let mut meta = model_meta(model, &self.data);
            meta.sampler = sampler;
            file::save(path, &model.named_tensors(), &meta)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Waits for checkpoints still being written (at the end of a stage).
    pub fn flush_checkpoints(&self) -> Result<()> {
        match &self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// The run's null prompt: `data.null_text`, checked against the data's prompt shape, else zeros.
pub fn null_prompt(cfg: &Config, data: &DataSet) -> Result<NullPrompt> {
    match &cfg.data.null_text {
        None => Ok(NullPrompt::zeros()),
        Some(p) => NullPrompt::load(p, data.text_shape()).context("data.null_text"),
    }
}

/// Metadata for a model trained on `data`: its dimensions, blocks, and (moving-shapes) prompts.
pub fn model_meta(model: &Dit, data: &DataSet) -> ModelMeta {
    let m = &data.manifest;
    ModelMeta {
        dims: model.dims.clone(),
        block_ids: model.block_ids.clone(),
        prompts: m.moving_shapes.clone().map(|shapes| Prompts {
            text_len: m.text_shape[0],
            text_dim: m.text_shape[1],
            shapes,
        }),
        sampler: None,
    }
}
