//! Test helper started under `mpirun`: runs a few steps of Stage II or Stage III through the
//! library's training loop (`trainer::train`, the loop production runs) over the job's ranks,
//! starting from `model.weights` (the shipped teacher), and writes the final parameters and
//! per-step losses (rank 0) so a test can compare world sizes and see each stage lower its
//! loss.
//!
//! `pruning --rank-own-mask` makes every rank draw its own skip mask (the bug the per-step
//! agreement check exists for): the run must stop with an error naming the step and ranks.

use clap::{Parser, Subcommand};
use flg_core::config::Config;
use flg_worker::checkpoint::Loaded;
use flg_worker::collective::{Collective, MpiCollective};
use flg_worker::data::{self, Loader};
use flg_worker::model::file;
use flg_worker::shard::ShardedDit;
use flg_worker::stages::distill::{self, DistillStage};
use flg_worker::stages::pruning::PruningStage;
use flg_worker::stages::StageCtx;
use flg_worker::train::{batch_tensors, Role};
use flg_worker::trainer::{self, StepOutput, TrainingStage};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    config: PathBuf,
    /// Blocks Stage I would have chosen.
    #[arg(long, value_delimiter = ',')]
    candidates: Vec<usize>,
    #[arg(long)]
    out: PathBuf,
    /// Intra-op threads per rank (a different count sums in another order).
    #[arg(long, default_value_t = 1)]
    threads: i32,
    #[command(subcommand)]
    stage: Stage,
}

#[derive(Subcommand)]
enum Stage {
    /// Stage II steps (config section [pruning]).
    Pruning {
        #[arg(long)]
        rank_own_mask: bool,
    },
    /// Stage III steps (config section [distill]); also writes both roles' gradients of the
    /// first step (before any optimizer step) as `<role>-grads.safetensors`.
    Distill,
}

/// A training stage run by the library's loop, with every step's report kept.
struct Recorded<'s, S: TrainingStage> {
    inner: &'s mut S,
    steps: Vec<(Vec<(&'static str, f64)>, serde_json::Value)>,
}

impl<S: TrainingStage> TrainingStage for Recorded<'_, S> {
    fn stage(&self) -> flg_core::Stage {
        self.inner.stage()
    }
    fn steps(&self) -> u64 {
        self.inner.steps()
    }
    fn batch_size(&self) -> u64 {
        self.inner.batch_size()
    }
    fn step(
        &mut self,
        ctx: &StageCtx,
        loader: &mut Loader,
        step: u64,
    ) -> anyhow::Result<StepOutput> {
        let out = self.inner.step(ctx, loader, step)?;
        self.steps
            .push((out.values.clone(), out.line.clone().unwrap_or_default()));
        Ok(out)
    }
    fn after_step(&mut self, ctx: &StageCtx, done: u64) -> anyhow::Result<()> {
        self.inner.after_step(ctx, done)
    }
    fn roles(&self) -> Vec<(&'static str, &Role)> {
        self.inner.roles()
    }
    fn roles_mut(&mut self) -> Vec<(&'static str, &mut Role)> {
        self.inner.roles_mut()
    }
    fn extra(&self) -> Vec<(&'static str, f64)> {
        self.inner.extra()
    }
    fn restored(&mut self, checkpoint: &Loaded) {
        self.inner.restored(checkpoint)
    }
    fn fresh_start(&mut self, ctx: &StageCtx) -> anyhow::Result<()> {
        self.inner.fresh_start(ctx)
    }
}

/// The reported values of each step, as a JSON object.
fn values(steps: &[(Vec<(&'static str, f64)>, serde_json::Value)]) -> Vec<serde_json::Value> {
    steps
        .iter()
        .map(|(v, line)| {
            let mut o: serde_json::Map<String, serde_json::Value> = v
                .iter()
                .map(|(k, x)| (k.to_string(), (*x).into()))
                .collect();
            if let Some(k) = line.get("k") {
                o.insert("k".into(), k.clone());
            }
            o.into()
        })
        .collect()
}

/// Writes a role's gathered gradients (zeros for units without one).
fn save_grads(path: &Path, m: &ShardedDit, comm: &dyn Collective) -> anyhow::Result<()> {
    let grads = m
        .grads()
        .into_iter()
        .zip(m.shards())
        .map(|(g, p)| g.unwrap_or_else(|| p.zeros_like()))
        .collect();
    save(path, &m.with_shards(grads), comm)
}

fn save(path: &Path, m: &ShardedDit, comm: &dyn Collective) -> anyhow::Result<()> {
    let full = m.to_dit(comm);
    if comm.rank() == 0 {
        Tensor::write_safetensors(&full.named_tensors(), path)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ranks = flg_worker::ranks::init(&cfg, &args.config)?;
    let comm = MpiCollective::new(&ranks.universe, false);
    tch::set_num_threads(args.threads);
    let rank = ranks.rank as usize;
    let data = Arc::new(data::DataSet::open(cfg.data.path.as_ref().unwrap())?);
    let teacher_path = cfg.model.weights.clone().unwrap();
    let (teacher, _) = file::load(&teacher_path, None)?;
    std::fs::create_dir_all(&args.out)?;
    // The stages' own files (metrics.jsonl, the outputs) go to the output directory.
    let ctx = StageCtx {
        cfg: &cfg,
        run_dir: flg_core::RunDir::new(&args.out),
        data: data.clone(),
        comm: &comm,
        device: Device::Cpu,
        kind: Kind::Float,
        teacher: teacher_path,
        null_prompt: flg_worker::context::null_prompt(&cfg, &data)?,
        all_stages: cfg.stages(),
        control: None,
        writer: None,
        last_saved: Default::default(),
    };
    let losses;
    match args.stage {
        Stage::Pruning { rank_own_mask } => {
            let mut stage = PruningStage::new(&ctx, &teacher, args.candidates.clone());
            if rank_own_mask {
                stage.mask_seed += rank as u64;
            }
            let mut loader = PruningStage::loader(&ctx)?;
            let mut rec = Recorded {
                inner: &mut stage,
                steps: Vec::new(),
            };
            trainer::train(&ctx, &mut rec, &mut loader)?;
            let num_blocks = teacher.dims.num_blocks as usize;
            let masks: Vec<Vec<usize>> = rec
                .steps
                .iter()
                .map(|(_, line)| {
                    let skipped: Vec<usize> =
                        serde_json::from_value(line["skipped"].clone()).unwrap_or_default();
                    (0..num_blocks).filter(|b| !skipped.contains(b)).collect()
                })
                .collect();
            losses = values(&rec.steps);
            let after = stage.gap(&ctx);
            // Every rank reports the masks it used, so the test sees that they agree.
            std::fs::write(
                args.out.join(format!("masks-{rank}.json")),
                serde_json::to_string(&masks)?,
            )?;
            std::fs::write(
                args.out.join("held-out.json"),
                serde_json::to_string(&[stage.gap_before, after])?,
            )?;
            save(
                &args.out.join("params.safetensors"),
                &stage.role.model,
                &comm,
            )?;
        }
        Stage::Distill => {
            let mut stage = DistillStage::new(&ctx, &teacher, &args.candidates)?;
            // The first step's gradients, before any update: the same batch and draws the
            // loop's first step uses; then cleared so the loop starts from the same state.
            {
                let batch = DistillStage::loader(&ctx)?.next_batch();
                let (x0, text) = batch_tensors(&batch, &data, Device::Cpu);
                let roles = &mut stage.roles;
                distill::gradients(
                    roles,
                    &comm,
                    &cfg.distill,
                    cfg.experiment.seed,
                    0,
                    &x0,
                    &text,
                    stage.pairs.as_ref(),
                    comm.rank() * x0.size()[0] as usize,
                );
                save_grads(
                    &args.out.join("generator-grads.safetensors"),
                    &roles.generator.model,
                    &comm,
                )?;
                save_grads(
                    &args.out.join("fake-grads.safetensors"),
                    &roles.fake.model,
                    &comm,
                )?;
                roles.generator.model.zero_grad();
                roles.fake.model.zero_grad();
                if let Some(c) = roles.gan.as_mut() {
                    c.role.model.zero_grad();
                }
            }
            let mut loader = DistillStage::loader(&ctx)?;
            let mut rec = Recorded {
                inner: &mut stage,
                steps: Vec::new(),
            };
            trainer::train(&ctx, &mut rec, &mut loader)?;
            losses = values(&rec.steps);
            save(
                &args.out.join("generator.safetensors"),
                &stage.roles.generator.model,
                &comm,
            )?;
            save(
                &args.out.join("fake.safetensors"),
                &stage.roles.fake.model,
                &comm,
            )?;
        }
    }
    if rank == 0 {
        std::fs::write(
            args.out.join("losses.json"),
            serde_json::to_string(&losses)?,
        )?;
    }
    Ok(())
}
