//! The one training loop. Every training stage (pretraining, Stage II, Stage III) implements
//! [`TrainingStage`]: its step, its state, its result. [`train`] owns everything that happens
//! at step boundaries, the same for all of them:
//!
//! - resuming: the checkpoint the coordinator chose is opened (re-sharded when the world size
//!   changed) and restored into the stage's roles and the data loader;
//! - metrics: rank 0 appends the stage's step line to `metrics.jsonl` (with step rates), and
//!   reports its losses to the coordinator; a progress bar without a coordinator;
//! - control: at each boundary rank 0 asks the coordinator what to do and broadcasts it
//!   (continue, wait while paused, checkpoint, checkpoint and stop); the checkpoint is copied
//!   out and written by the writer thread into the directory the coordinator named;
//! - the end: the stage writes its output (`TrainingStage::finish`).
//!
//! Test programs drive this same loop (tests/src/bin/stage_probe.rs); no copy of it lives
//! elsewhere.

use crate::checkpoint::{self, Loaded, TrainState};
use crate::context::StageCtx;
use crate::control::Command;
use crate::data::Loader;
use crate::train::Role;
use anyhow::{Context, Result};
use flg_core::Stage;
use std::time::Instant;

/// What one step reports.
pub struct StepOutput {
    /// The losses the coordinator shows (`fastlightgen watch`, status); non-finite values are
    /// left out there.
    pub values: Vec<(&'static str, f64)>,
    /// The stage's fields of this step's metrics.jsonl line; `None` when the stage logs
    /// only every few steps and this is not one of them.
    pub line: Option<serde_json::Value>,
    /// The progress bar's message (kept until the next one).
    pub message: Option<String>,
}

/// A training stage as the loop sees it.
pub trait TrainingStage {
    fn stage(&self) -> Stage;

    /// Steps to take (the config's) and videos per step over all ranks.
    fn steps(&self) -> u64;
    fn batch_size(&self) -> u64;

    /// Step `step` (0-based) on the loader's next batch.
    fn step(&mut self, ctx: &StageCtx, loader: &mut Loader, step: u64) -> Result<StepOutput>;

    /// After `done` steps, before the boundary (e.g. pretraining's EMA snapshots).
    fn after_step(&mut self, _ctx: &StageCtx, _done: u64) -> Result<()> {
        Ok(())
    }

    /// The trained roles, by name, as a checkpoint stores them.
    fn roles(&self) -> Vec<(&'static str, &Role)>;
    fn roles_mut(&mut self) -> Vec<(&'static str, &mut Role)>;

    /// Numbers a checkpoint keeps besides the roles (e.g. Stage II's gap before training).
    fn extra(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// Called after a checkpoint was restored, to take back what `extra` saved.
    fn restored(&mut self, _checkpoint: &Loaded) {}

    /// Called before the first step of a fresh (not resumed) stage.
    fn fresh_start(&mut self, _ctx: &StageCtx) -> Result<()> {
        Ok(())
    }
}

/// Runs `stage` from its first step (or the resumed one) to its last, on every rank. The
/// caller then asks the stage for its output.
pub fn train(ctx: &StageCtx, stage: &mut dyn TrainingStage, loader: &mut Loader) -> Result<()> {
    let which = stage.stage();
    let total = stage.steps();
    let first = match resume_point(ctx, which)? {
        Some(ck) => {
            let step = ck.restore(stage.roles_mut(), loader)?;
            stage.restored(&ck);
            step
        }
        None => {
            stage.fresh_start(ctx)?;
            0
        }
    };
    let mut log = ctx.metrics()?;
    let mut bar = ctx.bar(total, which.name());
    bar.set_position(first);
    let start = Instant::now();
    let mut meter = crate::throughput::StepMeter::new(ctx.device);
    let mut since_line = 0u64;
    for s in first..total {
        let out = stage.step(ctx, loader, s)?;
        let done = s + 1;
        bar.inc(1);
        if let Some(m) = out.message {
            bar.set_message(m);
        }
        since_line += 1;
        if let Some(mut line) = out.line {
            if let Some(log) = log.as_mut() {
                // Rank 0 measures and logs (its rates stand for every rank's step); the rates
                // cover the steps since the previous line.
                let rates = meter.step(since_line * stage.batch_size());
                line["stage"] = which.name().into();
                line["step"] = done.into();
                line["elapsed_s"] = start.elapsed().as_secs_f64().into();
                rates.insert_into(&mut line);
                log.write(&line)?;
            }
            since_line = 0;
        }
        stage.after_step(ctx, done)?;
        let state = TrainState {
            roles: stage.roles(),
            data: Some(loader.position()),
            extra: stage.extra(),
        };
        boundary(ctx, which, done, total, &out.values, &state)?;
    }
    bar.finish();
    Ok(())
}

/// The checkpoint this launch resumes `stage` from, opened (re-sharded when the world size
/// changed); `None` to start the stage fresh.
fn resume_point(ctx: &StageCtx, stage: Stage) -> Result<Option<Loaded>> {
    let Some(r) = ctx.control.as_ref().and_then(|c| c.resume.as_ref()) else {
        return Ok(None);
    };
    if r.stage != stage.name() {
        return Ok(None);
    }
    let loaded = Loaded::open(&r.dir, ctx.comm.rank(), ctx.comm.world())
        .with_context(|| format!("resuming {stage} from {}", r.dir.display()))?;
    if ctx.lead() {
        tracing::info!(checkpoint = %r.dir.display(), step = loaded.meta.step, "resuming {stage}");
    }
    Ok(Some(loaded))
}

/// A stage ended early because the coordinator asked the run to stop (after its final
/// checkpoint was committed).
#[derive(Debug)]
pub struct Stopped {
    pub stage: Stage,
    pub step: u64,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped at {} step {} on request", self.stage, self.step)
    }
}

impl std::error::Error for Stopped {}

/// The step boundary after `done` steps of `stage`: reports `values` to the coordinator,
/// then does what it says, on every rank at the same step (rank 0 fetches the command and
/// broadcasts it): continue, wait while paused, checkpoint `state`, or checkpoint and stop
/// (returned as a [`Stopped`] error once the checkpoint is committed). Without a coordinator
/// there is nothing to do.
fn boundary(
    ctx: &StageCtx,
    stage: Stage,
    done: u64,
    total: u64,
    values: &[(&str, f64)],
    state: &TrainState,
) -> Result<()> {
    let Some(ctl) = &ctx.control else {
        return Ok(());
    };
    ctl.set_progress(stage.name(), done);
    crate::faults::at_boundary(ctl.rank, ctl.generation, stage.name(), done);
    if let Some(e) = ctx.writer.as_ref().and_then(|w| w.take_error()) {
        anyhow::bail!("writing a checkpoint: {e}");
    }
    if ctx.lead() {
        ctl.report_metrics(stage.name(), done, total, values)?;
    }
    // Until told to continue: a paused run waits here (rank 0 polls, the others wait in the
    // broadcast), a checkpoint is taken and the coordinator asked again (so a checkpoint
    // asked for during a pause does not let a step through).
    loop {
        let command = if ctx.lead() {
            Some(ctl.next_command(stage.name(), done)?)
        } else {
            None
        };
        match Command::broadcast(command, ctx.comm, ctx.device)? {
            Command::Continue => return Ok(()),
            Command::Pause => {
                if ctx.lead() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
            Command::Checkpoint(target) => save_checkpoint(ctx, stage, done, state, target),
            Command::Stop(target) => {
                save_checkpoint(ctx, stage, done, state, target);
                if let Some(w) = &ctx.writer {
                    w.flush()?;
                }
                // Every rank's report acknowledged: the coordinator has committed it.
                ctx.comm.barrier();
                return Err(Stopped { stage, step: done }.into());
            }
        }
    }
}

/// Copies this rank's state out and hands it to the writer thread, for the checkpoint the
/// coordinator named.
fn save_checkpoint(
    ctx: &StageCtx,
    stage: Stage,
    done: u64,
    state: &TrainState,
    target: crate::control::CheckpointTarget,
) {
    let (Some(ctl), Some(writer)) = (&ctx.control, &ctx.writer) else {
        return;
    };
    // A second request at the same boundary (a stop right after a periodic checkpoint)
    // reuses the first.
    if ctx.last_saved.get() == Some(target.global_step) {
        return;
    }
    ctx.last_saved.set(Some(target.global_step));
    let snap = checkpoint::snapshot(
        state,
        stage.name(),
        done,
        target.global_step,
        ctl.rank,
        ctx.comm.world() as u32,
        ctx.cfg.experiment.seed,
    );
    writer.submit(snap, target.tmp_dir);
}
