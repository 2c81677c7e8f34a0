//! `flg-worker`: the worker binary. `fastlightgen` forwards its tensor-side commands here
//! (`data`, `env`), and `mpirun` starts one per rank for training.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use flg_coordinator::config::moving_shapes_geometry;
use flg_coordinator::config::Config;
use flg_worker::data::{self, shapes::ShapesSpec, DataSet};
use flg_worker::device::GpuEnv;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "fastlightgen",
    version,
    about = "fastlightgen worker-side commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make, inspect and verify data directories (safetensors shards + dataset.json).
    #[command(subcommand)]
    Data(DataCommand),
    /// Show what this machine offers: libtorch, CUDA driver, GPUs, NCCL, MPI.
    Env,
    /// Run a config's teacher pretraining in this one process (no coordinator, no MPI).
    ///
    /// Writes into the run directory `<output_dir>/<name>/`: the resolved `config.toml`,
    /// `metrics.jsonl`, `pretrain/teacher.safetensors` and EMA snapshots.
    Train {
        /// The experiment file, e.g. cluster-configs/teacher-cpu.toml.
        config: PathBuf,
        /// Also save an EMA snapshot every this many steps (for quality-vs-time curves); 0: none.
        #[arg(long, default_value_t = 0)]
        snapshot_every: u64,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write the synthetic moving-shapes data set (ARCHITECTURE.md) in the shard format.
    Shapes {
        /// Output directory; created if missing. An older data set there is replaced.
        #[arg(long)]
        out: PathBuf,
        /// Number of videos.
        #[arg(long, default_value_t = 4096)]
        num: u64,
        /// Frames per video (T).
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Frame side in pixels (S, a multiple of 4).
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Seed of the videos (directions, positions).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Tokens (L) and width (D) of the class "prompt" embeddings.
        #[arg(long, default_value_t = 4)]
        text_len: usize,
        #[arg(long, default_value_t = 32)]
        text_dim: usize,
        /// Seed of the fixed class-embedding table.
        #[arg(long, default_value_t = 20260301)]
        text_seed: u64,
        /// Videos per shard file.
        #[arg(long, default_value_t = 1024)]
        shard_size: u64,
    },
    /// Open a data directory, check every shard against dataset.json, and print a summary.
    Inspect { dir: PathBuf },
    /// Like inspect, and also print the sha256 of every shard (reads every byte).
    Verify { dir: PathBuf },
}

fn main() {
    flg_coordinator::init_logging();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(DataCommand::Shapes {
            out,
            num,
            frames,
            size,
            seed,
            text_len,
            text_dim,
            text_seed,
            shard_size,
        }) => {
            // The same geometry rules as the config's [data] section.
            if let Some((key, msg)) = moving_shapes_geometry(frames as i64, size as i64)
                .into_iter()
                .next()
            {
                bail!("--{key}: {msg}");
            }
            if num == 0 || shard_size == 0 || text_len == 0 || text_dim == 0 {
                bail!("--num, --shard-size, --text-len and --text-dim must be at least 1");
            }
            let spec = ShapesSpec {
                frames,
                size,
                text_len,
                text_dim,
                seed,
                text_seed,
            };
            let m = data::write_moving_shapes(&out, &spec, num, shard_size, true)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} videos in {} shards to {}",
                m.num_samples,
                m.shards.len(),
                out.display()
            );
        }
        Command::Data(DataCommand::Inspect { dir }) => print_summary(&DataSet::open(&dir)?),
        Command::Data(DataCommand::Verify { dir }) => {
            let ds = DataSet::open(&dir)?;
            print_summary(&ds);
            for (file, sha) in ds.sha256_of_shards() {
                println!("  {sha}  {file}");
            }
        }
        Command::Train {
            config,
            snapshot_every,
        } => {
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !cfg.runs_stage("pretrain") {
                bail!(
                    "{}: experiment.stages has no \"pretrain\"; nothing to train in one process",
                    config.display()
                );
            }
            let run_dir = cfg.run_dir();
            std::fs::create_dir_all(&run_dir)?;
            std::fs::write(run_dir.join("config.toml"), cfg.to_toml())?;
            let data = Arc::new(data::open_or_generate(&cfg, &run_dir)?);
            let out = flg_worker::pretrain::run(&cfg, &run_dir, data, snapshot_every)?;
            println!("teacher written to {}", out.display());
        }
        Command::Env => {
            let env = GpuEnv::detect();
            println!("libtorch:        {}", env!("FLG_LIBTORCH_DIR"));
            println!(
                "CUDA driver:     {}",
                if env.cuda_driver {
                    "found"
                } else {
                    "not found"
                }
            );
            println!("GPUs (libtorch): {}", env.torch_cuda_devices);
            println!(
                "NCCL:            {}",
                if env.nccl {
                    "found (libnccl.so)"
                } else {
                    "not found (libnccl.so)"
                }
            );
            println!("CPU threads:     {}", tch::get_num_threads());
        }
    }
    Ok(())
}

fn print_summary(ds: &DataSet) {
    let m = &ds.manifest;
    println!(
        "{}: {} ({} samples in {} shards)",
        ds.dir.display(),
        m.kind,
        m.num_samples,
        m.shards.len()
    );
    println!("  latents [C, T, H, W] = {:?}", m.latent_shape);
    println!("  text    [L, D]       = {:?}", m.text_shape);
    println!("  labels: {}", if m.has_labels { "yes" } else { "no" });
    if let Some(p) = &m.moving_shapes {
        println!(
            "  moving-shapes: frames {} size {} seed {} text_seed {}",
            p.frames, p.size, p.seed, p.text_seed
        );
    }
}
