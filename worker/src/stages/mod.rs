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

use crate::checkpoint::{self, Loaded, TrainState, Writer};
use crate::collective::Collective;
use crate::control::{Command, Control};
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
    /// The coordinator link and checkpoint writer, when started under a coordinator
    /// (`--coordinator URL`); without one, stages run straight through with no checkpoints.
    pub control: Option<Arc<Control>>,
    pub writer: Option<Writer>,
    /// The global step of the last checkpoint handed to the writer (a second request at the
    /// same boundary, e.g. a stop right after a periodic checkpoint, reuses it).
    pub last_saved: std::cell::Cell<Option<u64>>,
}

/// A stage ended early because the coordinator asked the run to stop (after its final
/// checkpoint was committed).
#[derive(Debug)]
pub struct Stopped {
    pub stage: String,
    pub step: u64,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped at {} step {} on request", self.stage, self.step)
    }
}

impl std::error::Error for Stopped {}

impl StageCtx<'_> {
    pub fn lead(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Shards a whole model across the ranks on this rank's device, computing in the run's
    /// precision, with the run's activation checkpointing (cluster.activation_checkpoint).
    pub fn shard(&self, model: &crate::model::Dit) -> crate::shard::ShardedDit {
        use flg_coordinator::config::ActivationCheckpoint;
        crate::shard::ShardedDit::from_dit(model, self.comm, self.device, self.kind)
            .with_recompute(self.cfg.cluster.activation_checkpoint == ActivationCheckpoint::Full)
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

    /// A progress bar on rank 0, hidden elsewhere (and under a coordinator, whose launcher
    /// draws the bars from the event stream).
    pub fn bar(&self, total: u64, what: &str) -> indicatif::ProgressBar {
        if self.lead() && self.control.is_none() {
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

impl StageCtx<'_> {
    /// The checkpoint this launch resumes `stage` from, opened (re-sharded when the world
    /// size changed), with the number of steps it had done; `None` to start the stage fresh.
    pub fn resume_for(&self, stage: &str) -> Result<Option<Loaded>> {
        let Some(r) = self.control.as_ref().and_then(|c| c.resume.as_ref()) else {
            return Ok(None);
        };
        if r.stage != stage {
            return Ok(None);
        }
        let loaded = Loaded::open(&r.dir, self.comm.rank(), self.comm.world())
            .with_context(|| format!("resuming {stage} from {}", r.dir.display()))?;
        if self.lead() {
            tracing::info!(checkpoint = %r.dir.display(), step = loaded.meta.step, "resuming {stage}");
        }
        Ok(Some(loaded))
    }

    /// The step boundary after `done` steps of `stage`: reports `values` to the coordinator,
    /// then does what it says, on every rank at the same step (rank 0 fetches the command
    /// and broadcasts it): continue, wait while paused, checkpoint `state`, or checkpoint and
    /// stop (returned as a [`Stopped`] error once the checkpoint is committed).
    pub fn after_step(
        &self,
        stage: &str,
        done: u64,
        values: &[(&str, f64)],
        state: &TrainState,
    ) -> Result<()> {
        let Some(ctl) = &self.control else {
            return Ok(());
        };
        ctl.set_progress(stage, done);
        crate::faults::at_boundary(ctl.rank, ctl.generation, stage, done);
        if let Some(e) = self.writer.as_ref().and_then(|w| w.take_error()) {
            anyhow::bail!("writing a checkpoint: {e}");
        }
        let total = flg_coordinator::run::state::stage_steps(self.cfg, stage);
        if self.lead() {
            ctl.report_metrics(stage, done, total, values)?;
        }
        // Until told to continue: a paused run waits here (rank 0 polls, the others wait in
        // the broadcast), a checkpoint is taken and the coordinator asked again (so a
        // checkpoint asked for during a pause does not let a step through).
        loop {
            let code = if self.lead() {
                ctl.next_command(stage, done)?.code()
            } else {
                0
            };
            let shared = self
                .comm
                .broadcast(
                    &tch::Tensor::from_slice(&[code as f32]).to_device(self.device),
                    0,
                )
                .double_value(&[0]) as i32;
            match Command::from_code(shared) {
                Command::Continue => return Ok(()),
                Command::Pause => {
                    if self.lead() {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
                Command::Checkpoint => self.save_checkpoint(stage, done, state),
                Command::Stop => {
                    self.save_checkpoint(stage, done, state);
                    if let Some(w) = &self.writer {
                        w.flush()?;
                    }
                    // Every rank's report acknowledged: the coordinator has committed it.
                    self.comm.barrier();
                    return Err(Stopped {
                        stage: stage.into(),
                        step: done,
                    }
                    .into());
                }
            }
        }
    }

    /// Copies this rank's state out and hands it to the writer thread.
    fn save_checkpoint(&self, stage: &str, done: u64, state: &TrainState) {
        let (Some(ctl), Some(writer)) = (&self.control, &self.writer) else {
            return;
        };
        let global = flg_coordinator::run::state::stage_offset(self.cfg, stage) + done;
        if self.last_saved.get() == Some(global) {
            return;
        }
        self.last_saved.set(Some(global));
        let snap = checkpoint::snapshot(
            state,
            stage,
            done,
            global,
            ctl.rank,
            self.comm.world() as u32,
            self.cfg.experiment.seed,
        );
        writer.submit(
            snap,
            flg_coordinator::run::checkpoints::tmp_dir_name(global, ctl.generation),
        );
    }

    /// Waits for checkpoints still being written (at the end of a stage).
    pub fn flush_checkpoints(&self) -> Result<()> {
        match &self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// The blocks of `all` that are not `removed`, in order.
pub fn kept_blocks(all: &[usize], removed: &[usize]) -> Vec<usize> {
    all.iter()
        .copied()
        .filter(|b| !removed.contains(b))
        .collect()
}
