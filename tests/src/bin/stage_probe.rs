//! Test helper started under `mpirun`: runs a few steps of Stage II or Stage III with the real
//! step functions over the job's ranks, starting from `model.weights` (the shipped teacher),
//! and writes the final parameters and per-step losses (rank 0) so a test can compare world
//! sizes and see each stage lower its loss.
//!
//! `pruning --rank-own-mask` makes every rank draw its own skip mask (the bug the per-step
//! agreement check exists for): the run must stop with an error naming the step and ranks.

use clap::{Parser, Subcommand};
use flg_coordinator::config::Config;
use flg_worker::collective::{Collective, MpiCollective};
use flg_worker::data::{self, Loader};
use flg_worker::model::file;
use flg_worker::pretrain::batch_tensors;
use flg_worker::shard::ShardedDit;
use flg_worker::stages::{distill, pruning};
use flg_worker::train::{active_blocks, stage_id, Role};
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
    let (rank, world) = (ranks.rank as usize, ranks.world as usize);
    let seed = cfg.experiment.seed;
    let data = Arc::new(data::DataSet::open(cfg.data.path.as_ref().unwrap())?);
    let (teacher, _) = file::load(cfg.model.weights.as_ref().unwrap(), None)?;
    std::fs::create_dir_all(&args.out)?;
    let mut losses = Vec::new();
    match args.stage {
        Stage::Pruning { rank_own_mask } => {
            let p = &cfg.pruning;
            let model = ShardedDit::from_dit(&teacher, &comm, Device::Cpu, Kind::Float);
            let mut role = Role::new(model, &p.optim, 0.0, &comm);
            let mut loader =
                Loader::new(data.clone(), seed, p.batch_size, rank as u64, world as u64)?;
            let kept = flg_worker::stages::kept_blocks(&teacher.block_ids, &args.candidates);
            let gap =
                |m: &ShardedDit| pruning::removed_gap(m, &comm, &data, 8, p.shift, seed, &kept);
            let before = gap(&role.model);
            let mut masks = Vec::new();
            for step in 0..p.steps {
                let mask_seed = if rank_own_mask {
                    seed + rank as u64
                } else {
                    seed
                };
                let active = active_blocks(
                    mask_seed,
                    step,
                    teacher.dims.num_blocks as usize,
                    &args.candidates,
                    p.skip_prob,
                );
                let (l, _) =
                    pruning::step(&mut role, &comm, &mut loader, &data, p, seed, step, &active)?;
                losses.push(serde_json::json!({"loss": l.loss, "gap": l.gap, "flow_full": l.flow_full, "flow_pruned": l.flow_pruned}));
                masks.push(active);
            }
            let after = gap(&role.model);
            // Every rank reports the masks it used, so the test sees that they agree.
            std::fs::write(
                args.out.join(format!("masks-{rank}.json")),
                serde_json::to_string(&masks)?,
            )?;
            std::fs::write(
                args.out.join("held-out.json"),
                serde_json::to_string(&[before, after])?,
            )?;
            save(&args.out.join("params.safetensors"), &role.model, &comm)?;
        }
        Stage::Distill => {
            let d = &cfg.distill;
            let mut roles = distill::Roles::new(&teacher, &args.candidates, d, &comm, |m| {
                ShardedDit::from_dit(m, &comm, Device::Cpu, Kind::Float)
            });
            let mut loader = Loader::new(
                data.clone(),
                seed ^ stage_id::DISTILL,
                d.batch_size,
                rank as u64,
                world as u64,
            )?;
            for step in 0..d.steps {
                let batch = loader.next_batch();
                let (x0, text) = batch_tensors(&batch, &data, Device::Cpu);
                let r = if step == 0 {
                    let r = distill::gradients(&mut roles, &comm, d, seed, step, &x0, &text);
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
                    roles.generator.step(&comm);
                    roles.fake.step(&comm);
                    r
                } else {
                    distill::step(&mut roles, &comm, d, seed, step, &x0, &text)
                };
                losses.push(serde_json::json!({"fake_loss": r.fake_loss, "generator_loss": r.generator.map(|g| g.0), "k": r.draw.k}));
            }
            save(
                &args.out.join("generator.safetensors"),
                &roles.generator.model,
                &comm,
            )?;
            save(&args.out.join("fake.safetensors"), &roles.fake.model, &comm)?;
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
