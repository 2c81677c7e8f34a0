//! Test helper started under `mpirun`: each rank reads its share of a data directory through
//! the real loader, saves its position part-way, restores it in a fresh loader, and writes what
//! it saw to `OUT/rank-R.json` for the test to compare across ranks.

use clap::Parser;
use flg_core::config::Config;
use flg_worker::data::{DataSet, Loader};
use mpi::traits::CommunicatorCollectives;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    data: PathBuf,
    /// Batches read in the uninterrupted pass.
    #[arg(long)]
    steps: u64,
    /// Position saved after this many batches, then restored into a fresh loader.
    #[arg(long)]
    restore_at: u64,
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    let args = Args::parse();
    let config = Config::load(&args.config).unwrap_or_else(|e| {
        eprint!("{e}");
        std::process::exit(2)
    });
    let ranks = flg_worker::ranks::init(&config, &args.config).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(3)
    });
    let data = Arc::new(DataSet::open(&args.data).expect("data directory opens"));
    let batch = config.pretrain.batch_size;
    let seed = config.experiment.seed;
    let (rank, world) = (u64::from(ranks.rank), u64::from(ranks.world));

    let mut loader = Loader::new(data.clone(), seed, batch, rank, world).unwrap();
    let mut straight = Vec::new();
    let mut saved = None;
    for step in 0..args.steps {
        if step == args.restore_at {
            saved = Some(loader.position());
        }
        straight.push(loader.next_batch().indices);
    }
    let saved = saved.expect("restore_at < steps");
    let mut resumed_loader = Loader::new(data, seed, batch, rank, world).unwrap();
    resumed_loader.restore(saved);
    let resumed: Vec<Vec<u64>> = (args.restore_at..args.steps)
        .map(|_| resumed_loader.next_batch().indices)
        .collect();

    // The ranks agree on how many samples they served in total (a real collective).
    let mine = straight.iter().map(|b| b.len() as u64).sum::<u64>();
    let mut total = 0u64;
    ranks.universe.world().all_reduce_into(
        &mine,
        &mut total,
        mpi::collective::SystemOperation::sum(),
    );

    // Where MPI itself says this rank sits on its node (what a rank falls back to when
    // neither OpenMPI nor slurm says), beside what the launcher says.
    let split = flg_worker::collective::shared_memory_place(&ranks.universe);
    let chosen = flg_worker::collective::node_place(&ranks.universe);
    std::fs::create_dir_all(&args.out).unwrap();
    let report = serde_json::json!({
        "rank": rank, "world": world, "straight": straight, "resumed": resumed,
        "saved": saved, "total_served": total,
        "split_place": [split.local_rank, split.local_size],
        "node_place": [chosen.local_rank, chosen.local_size, chosen.source],
    });
    std::fs::write(
        args.out.join(format!("rank-{rank}.json")),
        report.to_string(),
    )
    .unwrap();
}
