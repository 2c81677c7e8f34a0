//! Teacher pretraining with flow matching (`train::flow_matching_backward`): AdamW with
//! warmup, global-norm clipping, and an EMA of the weights that becomes the teacher.
//!
//! Runs on the sharded engine (`shard.rs`) over any number of ranks; the random draws of a
//! sample depend only on `(seed, step, its place in the global batch)` (`train::draws`), so
//! W ranks train exactly what one rank trains with the same global batch.

use super::StageCtx;
use crate::data::Loader;
use crate::model::{file, Dit};
use crate::train::{stage_id, train_step, Role};
use crate::trainer::{StepOutput, TrainingStage};
use anyhow::Result;
use flg_core::Stage;
use std::path::PathBuf;

/// Pretraining's state: the model being trained and the loss window of the next log line.
pub struct PretrainStage {
    pub role: Role,
    steps: u64,
    batch_size: u64,
    log_every: u64,
    snapshot_every: u64,
    all_blocks: Vec<usize>,
    window: (f64, u64),
}

impl PretrainStage {
    /// From `model.weights` when given, else a fresh initialisation from the seed.
    pub fn new(ctx: &StageCtx, snapshot_every: u64) -> Result<PretrainStage> {
        let cfg = ctx.cfg;
        let p = &cfg.pretrain;
        let dims = cfg.model_dims();
        let full = match &cfg.model.weights {
            Some(w) => file::load(w, Some(&dims))?.0,
            None => Dit::init(&dims, cfg.experiment.seed),
        };
        let role = Role::new(ctx.shard(&full), &p.optim, p.steps, p.ema_decay, ctx.comm);
        if ctx.lead() {
            tracing::info!(
                params = full.param_count(),
                steps = p.steps,
                batch = p.batch_size,
                world = ctx.comm.world(),
                "pretraining the teacher"
            );
        }
        Ok(PretrainStage {
            role,
            steps: p.steps,
            batch_size: p.batch_size,
            log_every: p.log_every,
            snapshot_every,
            all_blocks: (0..dims.num_blocks as usize).collect(),
            window: (0.0, 0),
        })
    }

    pub fn loader(ctx: &StageCtx) -> Result<Loader> {
        Loader::new(
            ctx.data.clone(),
            ctx.cfg.experiment.seed,
            ctx.cfg.pretrain.batch_size,
            ctx.comm.rank() as u64,
            ctx.comm.world() as u64,
        )
        .map_err(anyhow::Error::from)
    }

    /// Rank 0 writes the EMA weights (or the raw weights without EMA) as the teacher.
    pub fn finish(&self, ctx: &StageCtx) -> Result<PathBuf> {
        let out = ctx.run_dir.pretrained_teacher();
        let model = self.role.averaged_dit(ctx.comm);
        ctx.save_model(&model, &out, None)?;
        ctx.comm.barrier();
        Ok(out)
    }
}

impl TrainingStage for PretrainStage {
    fn stage(&self) -> Stage {
        Stage::Pretrain
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn batch_size(&self) -> u64 {
        self.batch_size
    }

    fn step(&mut self, ctx: &StageCtx, loader: &mut Loader, step: u64) -> Result<StepOutput> {
        let p = &ctx.cfg.pretrain;
        let (loss, norm) = train_step(
            &mut self.role,
            ctx.comm,
            loader,
            &ctx.data,
            ctx.cfg.experiment.seed,
            stage_id::PRETRAIN,
            step,
            p.shift,
            p.cfg_dropout,
            &ctx.null_prompt,
            &self.all_blocks,
            ctx.cfg.cluster.micro_batch_size,
        );
        self.window.0 += loss;
        self.window.1 += 1;
        let done = step + 1;
        let mut out = StepOutput {
            values: vec![("loss", loss), ("grad_norm", norm)],
            line: None,
            message: None,
        };
        // A line every log_every steps, with the mean loss since the previous one.
        if done % self.log_every == 0 || done == self.steps {
            let avg = self.window.0 / self.window.1 as f64;
            out.message = Some(format!("pretrain {avg:.4}"));
            out.line = Some(serde_json::json!({
                "loss": avg, "last_loss": loss, "grad_norm": norm,
                "lr": self.role.opt.lr_at(step), "samples": done * self.batch_size,
                "world": ctx.comm.world(), "collective_s": ctx.comm.seconds_waiting(),
            }));
            self.window = (0.0, 0);
        }
        Ok(out)
    }

    /// Every `snapshot_every` steps, the EMA weights to `pretrain/snapshots/` (every rank
    /// joins the gather; rank 0 writes).
    fn after_step(&mut self, ctx: &StageCtx, done: u64) -> Result<()> {
        if self.snapshot_every > 0 && done % self.snapshot_every == 0 {
            let model = self.role.averaged_dit(ctx.comm);
            let dir = ctx.run_dir.stage_dir(Stage::Pretrain).join("snapshots");
            if ctx.lead() {
                std::fs::create_dir_all(&dir)?;
            }
            ctx.save_model(
                &model,
                &dir.join(format!("step-{done:07}.safetensors")),
                None,
            )?;
        }
        Ok(())
    }

    fn roles(&self) -> Vec<(&'static str, &Role)> {
        vec![("model", &self.role)]
    }

    fn roles_mut(&mut self) -> Vec<(&'static str, &mut Role)> {
        vec![("model", &mut self.role)]
    }
}

/// Trains the teacher, sharded over the ranks; rank 0 writes `pretrain/teacher.safetensors`.
pub fn run(ctx: &StageCtx, snapshot_every: u64) -> Result<PathBuf> {
    let mut stage = PretrainStage::new(ctx, snapshot_every)?;
    let mut loader = PretrainStage::loader(ctx)?;
    crate::trainer::train(ctx, &mut stage, &mut loader)?;
    stage.finish(ctx)
}
