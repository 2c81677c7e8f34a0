//! Test helper started under `mpirun`: trains the tiny model sharded over the job's ranks for
//! a few steps with the Stage II rule (each candidate block skipped with probability p, the
//! mask drawn from the seed and the step), then writes the final parameters and the per-step
//! losses (rank 0) so the test can compare world sizes.

use clap::Parser;
use flg_coordinator::config::Config;
use flg_worker::collective::MpiCollective;
use flg_worker::data::{self, Loader};
use flg_worker::model::Dit;
use flg_worker::pretrain::train_step;
use flg_worker::shard::ShardedDit;
use flg_worker::train::{active_blocks, stage_id, Role};
use std::path::PathBuf;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    config: PathBuf,
    /// Blocks that may be skipped.
    #[arg(long, value_delimiter = ',')]
    candidates: Vec<usize>,
    #[arg(long, default_value_t = 0.5)]
    skip_prob: f64,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ranks = flg_worker::ranks::init(&cfg, &args.config)?;
    let comm = MpiCollective::new(&ranks.universe);
    tch::set_num_threads(1);
    let (rank, world) = (ranks.rank as usize, ranks.world as usize);
    let dims = cfg.model_dims();
    let p = &cfg.pretrain;
    let data = Arc::new(data::DataSet::open(cfg.data.path.as_ref().unwrap())?);
    let mut loader = Loader::new(
        data.clone(),
        cfg.experiment.seed,
        p.batch_size,
        rank as u64,
        world as u64,
    )?;
    let model = ShardedDit::from_dit(
        &Dit::init(&dims, cfg.experiment.seed),
        &comm,
        Device::Cpu,
        Kind::Float,
    );
    let mut role = Role::new(model, &p.optim, 0.0, &comm);
    let mut losses = Vec::new();
    let mut masks = Vec::new();
    for step in 0..p.steps {
        let active = active_blocks(
            cfg.experiment.seed,
            step,
            dims.num_blocks as usize,
            &args.candidates,
            args.skip_prob,
        );
        let (loss, _) = train_step(
            &mut role,
            &comm,
            &mut loader,
            &data,
            cfg.experiment.seed,
            stage_id::PRUNING,
            step,
            p.shift,
            p.cfg_dropout,
            &active,
        );
        losses.push(loss);
        masks.push(active);
    }
    let full = role.model.to_dit(&comm);
    std::fs::create_dir_all(&args.out)?;
    // Every rank reports the masks it used, so the test sees that they agree.
    std::fs::write(
        args.out.join(format!("masks-{rank}.json")),
        serde_json::to_string(&masks)?,
    )?;
    if rank == 0 {
        Tensor::write_safetensors(&full.named_tensors(), args.out.join("params.safetensors"))?;
        std::fs::write(
            args.out.join("losses.json"),
            serde_json::to_string(&losses)?,
        )?;
    }
    Ok(())
}
