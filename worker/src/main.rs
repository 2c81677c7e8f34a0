//! `flg-worker`: the worker binary. `fastlightgen` forwards its tensor-side commands here
//! (`data`, `env`), and `mpirun` starts one per rank for training.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use flg_coordinator::config::moving_shapes_geometry;
use flg_coordinator::config::Config;
use flg_worker::data::{self, shapes::ShapesSpec, DataSet};
use flg_worker::device::GpuEnv;
use flg_worker::sample;
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
    /// Generate videos with a model: videos.npy, labels.npy, a GIF per video and grid.png.
    ///
    /// Euler sampler over `--steps` shifted steps with classifier-free guidance `--cfg`
    /// (1 = no guidance: one network evaluation per step instead of two). A distilled student
    /// records its own timesteps and guidance, used unless overridden. Video i starts from
    /// noise seeded by (--seed, i), so two models sampled with the same seed and labels get the
    /// same prompts and noise.
    Sample {
        /// Weights file (fastlightgen safetensors, or a released checkpoint with --preset).
        #[arg(long)]
        model: PathBuf,
        /// Dimensions for a file without fastlightgen metadata (e.g. wan2.1-t2v-1.3b).
        #[arg(long)]
        preset: Option<String>,
        /// Take the prompt table from this moving-shapes data directory (for a file that does
        /// not record one).
        #[arg(long)]
        prompts_from: Option<PathBuf>,
        /// Euler steps [default: the model's recorded sampler, else 50].
        #[arg(long)]
        steps: Option<usize>,
        /// CFG scale [default: the model's recorded sampler, else 4].
        #[arg(long)]
        cfg: Option<f64>,
        /// Timestep shift of the Euler grid.
        #[arg(long, default_value_t = 1.0)]
        shift: f64,
        /// Number of videos.
        #[arg(long, default_value_t = 16)]
        num: usize,
        /// Class labels to cycle through, e.g. "0,5"; default all 8 classes in turn.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<i64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Videos per network batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Also score the videos (writes eval.json, as `fastlightgen eval`).
        #[arg(long)]
        eval: bool,
    },
    /// Score generated moving-shapes videos (DIR/videos.npy + DIR/labels.npy) against the
    /// data set's definition; writes DIR/eval.json.
    ///
    /// Scores in [0, 1]: prompt following (right colour and shape), frame quality (one clean
    /// object of the right size), background (dark outside the object), motion smoothness
    /// (constant velocity), subject consistency (same shape and colour throughout), dynamic
    /// degree (it moves); their average; and the Fréchet distance between per-video features
    /// of the generated videos and of real ones (lower is better).
    Eval { dir: PathBuf },
    /// Benchmarks; each compares against a reference measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Benchmarks that run as one rank of an mpirun job (see `bench scaling`).
    #[command(subcommand)]
    MpiBench(MpiBench),
    /// Draw a PNG line chart from a JSON spec: {"title", "x", "y", "series": [{"name", "points": [[x, y], ...]}]}.
    Plot { spec: PathBuf, out: PathBuf },
    /// Write a model file with fastlightgen metadata (dimensions, blocks, prompt table) from a
    /// file without it, e.g. a released checkpoint or an older run's weights.
    Annotate {
        #[arg(long)]
        model: PathBuf,
        /// The model's dimensions.
        #[arg(long)]
        preset: String,
        /// Moving-shapes data directory whose prompt table the model was trained with.
        #[arg(long)]
        prompts_from: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// A worker rank: started by `mpirun -np W flg-worker run --config CFG`, one per rank.
    ///
    /// Joins the MPI job, checks W against cluster.world_size, picks the collective backend
    /// (NCCL on CUDA, MPI on the CPU), shards every model across the ranks and runs the
    /// config's stages in order, data-parallel. A rank that fails aborts the whole job.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Also save an EMA snapshot every this many pretraining steps; 0: none.
        #[arg(long, default_value_t = 0)]
        snapshot_every: u64,
        /// Run only this stage of the config (repeatable); it reads the earlier stages'
        /// output from the run directory.
        #[arg(long = "stage")]
        stages: Vec<String>,
        /// The coordinator (e.g. http://head:50051): register, send heartbeats, follow its
        /// commands (pause, checkpoint, stop), write checkpoints, skip the stages it says are
        /// done and resume from the checkpoint it names. Without it the stages run straight
        /// through with no checkpoints.
        #[arg(long)]
        coordinator: Option<String>,
    },
    /// Write a run's report: `<run dir>/report.md` with the stage durations, loss curves,
    /// Stage I importance chart, quality table and samples side by side (images in
    /// `<run dir>/report/`); prints where it is and the three numbers that matter.
    Report {
        /// The run directory (runs/NAME), after its eval stage.
        dir: PathBuf,
    },
    /// Write a run's Stage III generator (its EMA) as the unsharded student:
    /// `<run dir>/export/student.safetensors` (kept blocks only, original indices, sampler
    /// settings in its metadata) and `export/student.json`.
    Export {
        /// The experiment file whose run directory holds distill/generator.safetensors.
        config: PathBuf,
    },
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

#[derive(Subcommand)]
enum BenchCommand {
    /// One device: the model there against the CPU, and a full-size forward and backward
    /// pass (the GPU kit's checks, bench/gpu-check.sh).
    #[command(subcommand)]
    Device(DeviceBench),
    /// The sharded training step at W = 1 without block recompute (cluster.
    /// activation_checkpoint = "none") and with it ("full"), against plain autograd on the
    /// whole model: samples/s of each and their ratios (median over alternating rounds, one
    /// run), and how far the first step's gradients are apart.
    Recompute {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        frames: i64,
        #[arg(long, default_value_t = 16)]
        size: i64,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Also write the result as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sharded training step for several world sizes, each an mpirun job: step time, time in
    /// collectives (the exposed part: blocking calls and waits for prefetched gathers),
    /// per-rank state bytes and peak memory. Prints one JSON line per rank.
    Scaling {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        worlds: Vec<u32>,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Unit prefetch (the next unit's all-gather overlapping the current unit's compute):
        /// on, off, or both (each world size twice, off then on, for a before/after).
        #[arg(long, default_value = "off")]
        prefetch: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// `validate --estimate-memory`'s model against the measured peak: for each preset and
    /// world size an mpirun job of sharded training steps (AdamW, no EMA, moving-shapes
    /// 8x16x16 videos) reports every rank's peak resident memory (VmHWM), printed beside the
    /// estimate of the same step and their ratio.
    Memory {
        #[arg(long, value_delimiter = ',', default_value = "tiny,small-100m")]
        presets: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        worlds: Vec<u32>,
        /// Global batch per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// The estimate must be within this share of the measured peak; else exit 1.
        #[arg(long, default_value_t = 0.2)]
        tolerance: f64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Collective bandwidth with 2 ranks (an mpirun job) next to memory-copy bandwidth.
    Collectives {
        #[arg(long, default_value_t = 2)]
        world: u32,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What a checkpoint costs one rank: the time the training step waits (the copy out of
    /// the model) next to the step time and the writer thread's time (serialise, write,
    /// fsync, sha256), and the file size. Pretraining state: parameters, AdamW moments, EMA.
    Checkpoint {
        #[arg(long, value_delimiter = ',', default_value = "tiny,small-100m")]
        presets: Vec<String>,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Where the checkpoint files are written (removed after).
        #[arg(long, default_value = "target/bench-checkpoint")]
        dir: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Training throughput (samples/s) of the pretraining step in Rust and the same step in
    /// plain PyTorch (bench/pytorch_train_step.py, same libtorch, same sizes), one after the
    /// other, and their ratio.
    TrainStep {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, default_value_t = 32)]
        batch: i64,
        #[arg(long, default_value_t = 8)]
        frames: i64,
        #[arg(long, default_value_t = 16)]
        size: i64,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 40)]
        steps: usize,
        /// Repeat the pair this many times (alternating) and report the median ratio.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DeviceBench {
    /// A model's forward on the device in f32 and bf16 against its f32 forward on the CPU
    /// (one fixed random batch); prints one JSON line and exits 1 when an error is over its
    /// tolerance (relative L2: f32 2e-3, bf16 5e-2).
    Forward {
        /// Weights file with fastlightgen metadata (e.g. the shipped tiny teacher).
        #[arg(long, default_value = "teacher/tiny-teacher.safetensors")]
        model: PathBuf,
        /// cpu or cuda.
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value_t = 4)]
        batch: i64,
        /// Video frames and side of the random input (the data the model was trained on).
        #[arg(long, default_value_t = 8)]
        frames: i64,
        #[arg(long, default_value_t = 16)]
        size: i64,
    },
    /// Forward and backward passes of a freshly initialised preset model (loss: mean square
    /// error to a random target, no optimiser): seconds per step, samples/s, model TFLOP/s
    /// (torchtitan's count: 6 per parameter and token plus attention), MFU against
    /// --peak-tflops, and device memory in use after the steps. Prints one JSON line.
    Step {
        /// Model dimensions: tiny, small-100m or wan2.1-t2v-1.3b.
        #[arg(long, default_value = "wan2.1-t2v-1.3b")]
        preset: String,
        /// cpu or cuda.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// bf16 or fp32.
        #[arg(long, default_value = "bf16")]
        precision: String,
        #[arg(long, default_value_t = 1)]
        batch: i64,
        /// Latent frames, height and width (Wan 2.1 at 480x832, 81 frames: 21 x 60 x 104).
        #[arg(long, default_value_t = 21)]
        frames: i64,
        #[arg(long, default_value_t = 60)]
        height: i64,
        #[arg(long, default_value_t = 104)]
        width: i64,
        /// Text tokens per sample (Wan's umT5 context: 512).
        #[arg(long, default_value_t = 512)]
        text_len: i64,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// The device's dense bf16 peak in TFLOP/s for the MFU (H100 and H200 SXM: 989).
        #[arg(long, default_value_t = 989.0)]
        peak_tflops: f64,
    },
}

#[derive(Subcommand)]
enum MpiBench {
    /// (under mpirun) Timed sharded training steps of a preset on random data: seconds per
    /// step, seconds in collectives, state bytes and peak memory of every rank.
    Step {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Unit prefetch on the gather thread: on or off.
        #[arg(long, default_value = "off")]
        prefetch: String,
    },
    /// (under mpirun) All-gather and reduce-scatter bus bandwidth per message size, next to
    /// a memory-copy bandwidth of the same sizes.
    Collectives {
        /// Full-buffer sizes in MiB.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
        sizes_mib: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
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
            let solo = flg_worker::shard::Solo;
            let ctx = flg_worker::stages::StageCtx {
                cfg: &cfg,
                run_dir: run_dir.clone(),
                data,
                comm: &solo,
                device: tch::Device::Cpu,
                kind: tch::Kind::Float,
                teacher: teacher_path(&cfg, &run_dir),
                all_stages: cfg.experiment.stages.clone(),
                control: None,
                writer: None,
                last_saved: Default::default(),
            };
            let out = flg_worker::pretrain::run(&ctx, snapshot_every)?;
            println!("teacher written to {}", out.display());
        }
        Command::Sample {
            model,
            preset,
            prompts_from,
            steps,
            cfg,
            shift,
            num,
            labels,
            seed,
            batch,
            out,
            eval,
        } => {
            let (m, meta) = load_model(&model, preset.as_deref())?;
            let prompts = match (&prompts_from, meta.as_ref().and_then(|m| m.prompts.clone())) {
                (Some(dir), _) => prompts_of(dir)?,
                (None, Some(p)) => p,
                (None, None) => bail!(
                    "{}: records no prompt table; give the moving-shapes data it was trained on with --prompts-from DIR",
                    model.display()
                ),
            };
            let recorded = meta.as_ref().and_then(|m| m.sampler.clone());
            let times = match (steps, &recorded) {
                (None, Some(r)) => r.timesteps.iter().copied().chain([0.0]).collect(),
                _ => flg_worker::flow::euler_times(steps.unwrap_or(50), shift),
            };
            let cfg = cfg.or(recorded.as_ref().map(|r| r.cfg)).unwrap_or(4.0);
            let labels = sample::labels_for(num, &labels);
            let text = sample::class_text(&prompts, &labels);
            let shape = [
                m.dims.in_channels,
                prompts.shapes.frames,
                prompts.shapes.size,
                prompts.shapes.size,
            ];
            let noise = sample::initial_noise(num, shape, seed);
            let (latents, seconds) = sample::generate(&m, &noise, &text, &times, cfg, batch.max(1));
            let (pixels, vshape) = sample::to_pixels(&latents);
            sample::write_samples(&out, &pixels, vshape, &labels)?;
            let nfe = flg_worker::flow::nfe(times.len() - 1, cfg);
            let info = serde_json::json!({
                "model": model, "steps": times.len() - 1, "timesteps": times, "cfg": cfg, "nfe": nfe,
                "num": num, "seed": seed, "seconds": seconds, "seconds_per_video": seconds / num as f64,
                "params": m.param_count(),
            });
            std::fs::write(
                out.join("sample.json"),
                serde_json::to_string_pretty(&info)?,
            )?;
            println!(
                "{num} videos ({} steps, cfg {cfg}, {nfe} NFE) in {seconds:.2}s -> {}",
                times.len() - 1,
                out.display()
            );
            if eval {
                print_eval(&eval_dir(&out)?);
            }
        }
        Command::Export { config } => {
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let run_dir = cfg.run_dir();
            let info = flg_worker::stages::export::export(&run_dir)?;
            println!("{}", info.summary(&run_dir));
        }
        Command::Annotate {
            model,
            preset,
            prompts_from,
            out,
        } => {
            let (m, _) = load_model(&model, Some(&preset))?;
            let meta = flg_worker::model::file::ModelMeta {
                dims: m.dims.clone(),
                block_ids: m.block_ids.clone(),
                prompts: prompts_from.as_deref().map(prompts_of).transpose()?,
                sampler: None,
            };
            flg_worker::model::file::save(&out, &m.named_tensors(), &meta)?;
            println!("wrote {}", out.display());
        }
        Command::Bench(BenchCommand::TrainStep {
            preset,
            batch,
            frames,
            size,
            warmup,
            steps,
            rounds,
            out,
        }) => {
            let dims = preset_dims(&preset)?;
            let mut rows = Vec::new();
            for round in 0..rounds.max(1) {
                let rust =
                    flg_worker::bench::rust_train_step(&dims, frames, size, batch, warmup, steps);
                let py = flg_worker::bench::pytorch_train_step(
                    &dims, frames, size, batch, warmup, steps,
                )?;
                let pys = py["samples_per_s"].as_f64().unwrap_or(f64::NAN);
                println!("round {round}: rust {rust:.1} samples/s, pytorch {pys:.1} samples/s, ratio {:.3}", rust / pys);
                rows.push(serde_json::json!({"rust_samples_per_s": rust, "pytorch": py, "ratio": rust / pys}));
            }
            let mut ratios: Vec<f64> = rows.iter().map(|r| r["ratio"].as_f64().unwrap()).collect();
            ratios.sort_by(f64::total_cmp);
            let median = ratios[ratios.len() / 2];
            println!(
                "median rust/pytorch throughput ratio: {median:.3} ({} threads)",
                tch::get_num_threads()
            );
            if let Some(out) = out {
                let v = serde_json::json!({"preset": preset, "batch": batch, "rounds": rows, "median_ratio": median});
                std::fs::write(out, serde_json::to_string_pretty(&v)?)?;
            }
        }
        Command::Bench(BenchCommand::Memory {
            presets,
            worlds,
            batch,
            tolerance,
            out,
        }) => {
            let dims: Vec<_> = presets
                .iter()
                .map(|p| Ok((p.clone(), preset_dims(p)?)))
                .collect::<Result<_>>()?;
            flg_worker::bench_memory::check(&dims, &worlds, batch, tolerance, out.as_deref())?;
        }
        Command::Bench(BenchCommand::Scaling {
            preset,
            worlds,
            batch,
            steps,
            warmup,
            prefetch,
            out,
        }) => {
            let settings: &[bool] = match prefetch.as_str() {
                "on" => &[true],
                "off" => &[false],
                "both" => &[false, true],
                other => bail!("--prefetch {other}: expected on, off or both"),
            };
            let mut lines = Vec::new();
            for (w, &on) in worlds
                .iter()
                .flat_map(|&w| settings.iter().map(move |on| (w, on)))
            {
                let args: Vec<std::ffi::OsString> = [
                    "mpi-bench",
                    "step",
                    "--preset",
                    &preset,
                    "--batch",
                    &batch.to_string(),
                    "--warmup",
                    &warmup.to_string(),
                    "--steps",
                    &steps.to_string(),
                ]
                .iter()
                .map(|s| s.into())
                .collect();
                let mut args = args;
                args.extend(["--prefetch".into(), if on { "on" } else { "off" }.into()]);
                for mut l in flg_worker::bench::run_mpi_job(w, &args)? {
                    l["prefetch"] = on.into();
                    lines.push(l);
                }
            }
            finish_bench(&lines, out)?;
        }
        Command::Bench(BenchCommand::Device(DeviceBench::Forward {
            model,
            device,
            batch,
            frames,
            size,
        })) => {
            use flg_worker::bench_device;
            let device = bench_device::parse_device(&device)?;
            let (m, _) = flg_worker::model::file::load(&model, None)?;
            let report = bench_device::device_forward(&m, device, batch, frames, size);
            println!("{report}");
            if report["pass"] != serde_json::Value::Bool(true) {
                bail!(
                    "the forward on {device:?} differs from the CPU's beyond the tolerance: {report}"
                );
            }
        }
        Command::Bench(BenchCommand::Device(DeviceBench::Step {
            preset,
            device,
            precision,
            batch,
            frames,
            height,
            width,
            text_len,
            warmup,
            steps,
            peak_tflops,
        })) => {
            use flg_worker::bench_device;
            let dims = preset_dims(&preset)?;
            let kind = match precision.as_str() {
                "bf16" => tch::Kind::BFloat16,
                "fp32" => tch::Kind::Float,
                other => bail!("--precision {other}: expected bf16 or fp32"),
            };
            let device = bench_device::parse_device(&device)?;
            let shape = bench_device::StepShape {
                batch,
                frames,
                height,
                width,
                text_len,
            };
            let report =
                bench_device::model_step(&dims, &shape, device, kind, warmup, steps, peak_tflops);
            println!("{report}");
        }
        Command::Bench(BenchCommand::Recompute {
            preset,
            batch,
            frames,
            size,
            warmup,
            steps,
            rounds,
            out,
        }) => {
            let dims = preset_dims(&preset)?;
            let r = flg_worker::bench_recompute::run(
                &preset,
                &dims,
                [frames, size],
                batch,
                warmup,
                steps,
                rounds,
            );
            let json = serde_json::to_string(&r)?;
            println!("{json}");
            eprintln!(
                "sharded step, W = 1: no recompute {:.1} samples/s ({:.3}x plain), recompute {:.1} ({:.3}x); plain autograd {:.1}; gradients vs plain {:.1e}",
                r.sharded_none_samples_per_s,
                r.none_over_plain,
                r.sharded_full_samples_per_s,
                r.full_over_plain,
                r.plain_samples_per_s,
                r.max_rel_grad_diff_none_vs_plain
            );
            if let Some(out) = out {
                std::fs::write(&out, json + "\n")?;
            }
        }
        Command::Bench(BenchCommand::Collectives { world, out }) => {
            let lines =
                flg_worker::bench::run_mpi_job(world, &["mpi-bench".into(), "collectives".into()])?;
            finish_bench(&lines, out)?;
        }
        Command::Bench(BenchCommand::Checkpoint {
            presets,
            batch,
            steps,
            repeats,
            dir,
            out,
        }) => {
            let mut lines = Vec::new();
            for p in presets {
                let dims = preset_dims(&p)?;
                let c = flg_worker::bench::checkpoint_cost(&p, &dims, batch, steps, repeats, &dir)?;
                println!(
                    "{p}: {} parameters, step {:.3} s, the step waits {:.4} s for a checkpoint ({:.1}% of a step), \
                     the writer thread then takes {:.3} s; {:.1} MB per rank-file",
                    c.params,
                    c.step_s,
                    c.wait_s,
                    100.0 * c.wait_s / c.step_s,
                    c.write_s,
                    c.file_bytes as f64 / 1e6
                );
                lines.push(serde_json::to_value(&c)?);
            }
            let _ = std::fs::remove_dir_all(&dir);
            finish_bench(&lines, out)?;
        }
        Command::MpiBench(b) => mpi_bench(b)?,
        Command::Report { dir } => flg_worker::report::write(&dir)?.print(),
        Command::Plot { spec, out } => {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec)?)
                .with_context(|| format!("{}: not JSON", spec.display()))?;
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            let series: Vec<(String, Vec<(f64, f64)>)> = v["series"]
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("{}: no \"series\" list", spec.display()))?
                .iter()
                .map(|e| {
                    let pts = e["points"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                            .collect()
                    });
                    (
                        e["name"].as_str().unwrap_or("").to_string(),
                        pts.unwrap_or_default(),
                    )
                })
                .collect();
            flg_worker::plot::line_chart(&out, &s("title"), &s("x"), &s("y"), &series)?;
        }
        Command::Eval { dir } => print_eval(&eval_dir(&dir)?),
        Command::Run {
            config,
            snapshot_every,
            stages,
            coordinator,
        } => run_rank(&config, snapshot_every, &stages, coordinator.as_deref())?,
        Command::Env => {
            let env = GpuEnv::detect();
            let torch = flg_worker::device::loaded_library("libtorch_cpu.so");
            println!(
                "libtorch:        {}",
                torch.as_deref().unwrap_or(env!("FLG_LIBTORCH_DIR"))
            );
            println!(
                "libtorch CUDA:   {}",
                match (
                    &env.torch_cuda_error,
                    flg_worker::device::loaded_library("libtorch_cuda.so")
                ) {
                    (Some(e), _) => format!("present but failed to load: {e}"),
                    (None, Some(p)) => format!("loaded ({p})"),
                    (None, None) => "none (a CPU-only libtorch)".to_string(),
                }
            );
            println!(
                "MPI:             {}",
                mpi::environment::library_version()
                    .unwrap_or_else(|_| "?".into())
                    .lines()
                    .next()
                    .unwrap_or("")
            );
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

/// The dimensions of a `--preset` (tiny, small-100m, wan2.1-t2v-1.3b).
fn preset_dims(name: &str) -> Result<flg_coordinator::config::ModelDims> {
    flg_coordinator::config::preset(name).with_context(|| {
        format!(
            "preset {name:?}: not a preset with dimensions (one of {:?})",
            &flg_coordinator::config::PRESETS[..3]
        )
    })
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

/// Scores DIR/videos.npy against DIR/labels.npy and writes DIR/eval.json.
fn eval_dir(dir: &std::path::Path) -> Result<flg_worker::eval::EvalReport> {
    use flg_worker::media::npy;
    let (shape, pixels) = npy::read_u8(&dir.join("videos.npy")).map_err(anyhow::Error::msg)?;
    let labels = npy::read_i64(&dir.join("labels.npy")).map_err(anyhow::Error::msg)?;
    if shape.len() != 5 || shape[4] != 3 || shape[2] != shape[3] || shape[0] != labels.len() {
        bail!(
            "{}: expected videos [N, T, S, S, 3] with N = {} labels, got {shape:?}",
            dir.join("videos.npy").display(),
            labels.len()
        );
    }
    if shape[2] % 4 != 0 || shape[2] < 8 {
        bail!(
            "{}: frame side {} is not a moving-shapes size (a multiple of 4, at least 8)",
            dir.display(),
            shape[2]
        );
    }
    let report = flg_worker::eval::evaluate(&pixels, &labels, shape[1], shape[2]);
    std::fs::write(
        dir.join("eval.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}

fn print_eval(r: &flg_worker::eval::EvalReport) {
    println!(
        "{} videos of {} frames, {}x{}:",
        r.num_videos, r.frames, r.size, r.size
    );
    for (name, v) in flg_worker::eval::SCORE_NAMES.iter().zip(r.scores.values()) {
        println!("  {name:<20} {v:.3}");
    }
    println!("  {:<20} {:.3}", "average", r.average);
    println!("  {:<20} {:.4}", "frechet_distance", r.frechet_distance);
}

/// Loads a model file, with a preset's dimensions when the file records none.
fn load_model(
    path: &std::path::Path,
    preset: Option<&str>,
) -> Result<(
    flg_worker::model::Dit,
    Option<flg_worker::model::file::ModelMeta>,
)> {
    let fallback = match preset {
        Some(p) => Some(preset_dims(p)?),
        None => None,
    };
    flg_worker::model::file::load(path, fallback.as_ref())
}

/// The prompt table of a moving-shapes data directory.
fn prompts_of(dir: &std::path::Path) -> Result<flg_worker::model::file::Prompts> {
    let m = flg_coordinator::dataset::DatasetManifest::read(dir)?;
    let shapes = m
        .moving_shapes
        .ok_or_else(|| anyhow::anyhow!("{}: not a moving-shapes data set", dir.display()))?;
    Ok(flg_worker::model::file::Prompts {
        text_len: m.text_shape[0],
        text_dim: m.text_shape[1],
        shapes,
    })
}

/// One rank of an `mpirun` job.
fn run_rank(
    path: &std::path::Path,
    snapshot_every: u64,
    only: &[String],
    coordinator: Option<&str>,
) -> Result<()> {
    let mut cfg = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let all_stages = cfg.experiment.stages.clone();
    if !only.is_empty() {
        if let Some(s) = only.iter().find(|s| !cfg.runs_stage(s)) {
            bail!(
                "--stage {s}: {} does not list it in experiment.stages {:?}",
                path.display(),
                cfg.experiment.stages
            );
        }
        // The run's teacher still comes from pretraining when the config pretrains.
        let pretrains = cfg.runs_stage("pretrain");
        cfg.experiment.stages.retain(|s| only.contains(s));
        if pretrains && !cfg.runs_stage("pretrain") && cfg.model.weights.is_none() {
            cfg.model.weights =
                Some(flg_worker::pretrain::out_dir(&cfg.run_dir()).join("teacher.safetensors"));
        }
    }
    let ranks = flg_worker::ranks::init(&cfg, path)?;
    let control = match coordinator {
        Some(url) => {
            match flg_worker::control::Control::connect(url, &cfg, ranks.rank, ranks.world) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    use mpi::traits::Communicator;
                    eprintln!("error (rank {} of {}): {e:#}", ranks.rank, ranks.world);
                    ranks.universe.world().abort(1);
                }
            }
        }
        None => None,
    };
    match run_stages(
        &cfg,
        path,
        &ranks,
        all_stages,
        snapshot_every,
        control.clone(),
    ) {
        Ok(()) => {}
        Err(e) if e.downcast_ref::<flg_worker::stages::Stopped>().is_some() => {
            if ranks.rank == 0 {
                println!("{e}; the run continues from its last checkpoint when started again");
            }
        }
        Err(e) => {
            // The other ranks may be waiting in a collective for this one: end the whole job
            // instead of leaving them hanging. An error is not cured by a restart: say so to
            // the coordinator first, so that it does not relaunch.
            use mpi::traits::Communicator;
            eprintln!("error (rank {} of {}): {e:#}", ranks.rank, ranks.world);
            if let Some(c) = &control {
                // The stage that failed (or the first, for an error before any stage).
                let stage = Some(c.stage())
                    .filter(|s| !s.is_empty())
                    .or_else(|| cfg.experiment.stages.first().cloned())
                    .unwrap_or_default();
                if ranks.rank == 0 {
                    let _ = c.report_stage(&stage, "failed", 0.0, &format!("{e:#}"));
                }
            }
            ranks.universe.world().abort(1);
        }
    }
    Ok(())
}

/// This rank's share of every stage the config lists, in order.
fn run_stages(
    cfg: &Config,
    path: &std::path::Path,
    ranks: &flg_worker::ranks::Ranks,
    all_stages: Vec<String>,
    snapshot_every: u64,
    control: Option<Arc<flg_worker::control::Control>>,
) -> Result<()> {
    use flg_coordinator::config::Precision;
    use flg_worker::{collective, device};
    let backend = device::select_backend(
        cfg.cluster.device,
        cfg.cluster.backend,
        &device::GpuEnv::detect(),
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let local = collective::local_rank();
    let prefetch = cfg.cluster.prefetch.enabled(cfg.cluster.device);
    let comm = collective::connect(backend, &ranks.universe, local, prefetch)
        .map_err(anyhow::Error::msg)?;
    collective::share_cores_among_local_ranks();
    let device = device::tch_device(cfg.cluster.device, local);
    let kind = if cfg.cluster.precision == Precision::Bf16 {
        tch::Kind::BFloat16
    } else {
        tch::Kind::Float
    };
    let run_dir = cfg.run_dir();
    if ranks.rank == 0 {
        std::fs::create_dir_all(&run_dir)?;
        // The run's config, with every stage it lists (also when `--stage` runs only some).
        let mut resolved = cfg.clone();
        resolved.experiment.stages = all_stages.clone();
        std::fs::write(run_dir.join("config.toml"), resolved.to_toml())?;
        data::open_or_generate(cfg, &run_dir)?; // generated once, by rank 0
    }
    comm.barrier();
    let data = Arc::new(data::open_or_generate(cfg, &run_dir)?);
    let writer = control
        .as_ref()
        .map(|c| flg_worker::checkpoint::Writer::start(c.clone(), run_dir.join("checkpoints")));
    let ctx = flg_worker::stages::StageCtx {
        cfg,
        run_dir: run_dir.clone(),
        data: data.clone(),
        comm: comm.as_ref(),
        device,
        kind,
        teacher: teacher_path(cfg, &run_dir),
        all_stages,
        control: control.clone(),
        writer,
        last_saved: Default::default(),
    };
    use flg_worker::stages;
    let done_before = control
        .as_ref()
        .map(|c| c.completed_stages.clone())
        .unwrap_or_default();
    for stage in cfg.experiment.stages.clone() {
        if done_before.contains(&stage) {
            if ranks.rank == 0 {
                println!("{stage}: done in an earlier launch, skipped");
            }
            continue;
        }
        let started = std::time::Instant::now();
        if let (Some(c), 0) = (&control, ranks.rank) {
            c.report_stage(&stage, "started", 0.0, "")?;
        }
        if let Some(c) = &control {
            c.set_progress(&stage, 0);
        }
        let result = run_stage(&ctx, &stage, snapshot_every, path);
        if let Err(e) = &result {
            if let (Some(stop), Some(c), 0) =
                (e.downcast_ref::<stages::Stopped>(), &control, ranks.rank)
            {
                c.report_stage(
                    &stage,
                    "stopped",
                    started.elapsed().as_secs_f64(),
                    &stop.to_string(),
                )?;
            }
        }
        result?;
        ctx.flush_checkpoints()?;
        // The next stage reads what rank 0 just wrote.
        comm.barrier();
        let seconds = started.elapsed().as_secs_f64();
        if ranks.rank == 0 {
            let line =
                serde_json::json!({"stage": stage, "event": "stage_done", "seconds": seconds});
            flg_worker::metrics::MetricsLog::open(&run_dir.join("metrics.jsonl"))?.write(&line)?;
            if let Some(c) = &control {
                c.report_stage(&stage, "done", seconds, "")?;
            }
        }
    }
    Ok(())
}

/// One stage of this rank.
fn run_stage(
    ctx: &flg_worker::stages::StageCtx,
    stage: &str,
    snapshot_every: u64,
    path: &std::path::Path,
) -> Result<()> {
    use flg_worker::stages;
    let lead = ctx.lead();
    match stage {
        "pretrain" => {
            flg_worker::pretrain::run(ctx, snapshot_every)?;
        }
        "importance" => {
            let full = ctx.load_input(&ctx.teacher, "pretrain")?;
            let model = ctx.shard(&full);
            drop(full);
            let report = stages::importance::measure(
                &model,
                ctx.comm,
                &ctx.data,
                &ctx.cfg.importance,
                ctx.cfg.experiment.seed,
            );
            if lead {
                report.write(&ctx.run_dir)?;
                println!(
                    "importance: candidates {:?} ({:.0}% of block parameters) -> {}",
                    report.candidates,
                    report.removed_share * 100.0,
                    stages::paths::importance(&ctx.run_dir).display()
                );
            }
        }
        "pruning" => {
            let out = stages::pruning::run(ctx)?;
            if lead {
                println!("pruning: Stage II model -> {}", out.display());
            }
        }
        "distill" => {
            let out = stages::distill::run(ctx)?;
            if lead {
                println!("distill: generator (EMA) -> {}", out.display());
            }
        }
        "export" => {
            if lead {
                let info = stages::export::export(&ctx.run_dir)?;
                println!("export: {}", info.summary(&ctx.run_dir));
            }
        }
        "eval" => {
            stages::evaluate::run(ctx)?;
        }
        other => bail!("{}: unknown stage {other:?}", path.display()),
    }
    Ok(())
}

/// Runs `flg-worker <args>` as an mpirun job of `np` ranks; returns the JSON lines it printed.
fn finish_bench(lines: &[serde_json::Value], out: Option<PathBuf>) -> Result<()> {
    for l in lines {
        println!("{l}");
    }
    if let Some(out) = out {
        std::fs::write(out, serde_json::to_string_pretty(lines)?)?;
    }
    Ok(())
}

/// One rank of a benchmark job: prints JSON lines (every rank for `step`, rank 0 otherwise).
fn mpi_bench(b: MpiBench) -> Result<()> {
    let universe = flg_worker::ranks::init_mpi()
        .ok_or_else(|| anyhow::anyhow!("MPI could not be initialised"))?;
    let prefetch = matches!(&b, MpiBench::Step { prefetch, .. } if prefetch == "on");
    let comm = flg_worker::collective::MpiCollective::new(&universe, prefetch);
    use flg_worker::collective::Collective;
    flg_worker::collective::share_cores_among_local_ranks();
    match b {
        MpiBench::Step {
            preset,
            batch,
            warmup,
            steps,
            prefetch: _,
        } => {
            let dims = preset_dims(&preset)?;
            let r = flg_worker::bench::sharded_step(&dims, &comm, 8, 16, batch, warmup, steps);
            let mut v = serde_json::to_value(&r)?;
            v["preset"] = preset.into();
            v["batch"] = batch.into();
            // One rank at a time, so lines do not interleave.
            for k in 0..comm.world() {
                if k == comm.rank() {
                    println!("{v}");
                }
                comm.barrier();
            }
        }
        MpiBench::Collectives { sizes_mib, iters } => {
            let sizes: Vec<usize> = sizes_mib.iter().map(|m| m << 20).collect();
            let rows = flg_worker::bench::collectives(&comm, &sizes, iters);
            if comm.rank() == 0 {
                for r in rows {
                    println!("{r}");
                }
            }
        }
    }
    Ok(())
}

/// The teacher a run starts from: its own pretraining output if it pretrains, else model.weights.
fn teacher_path(cfg: &Config, run_dir: &std::path::Path) -> PathBuf {
    if cfg.runs_stage("pretrain") || cfg.model.weights.is_none() {
        flg_worker::pretrain::out_dir(run_dir).join("teacher.safetensors")
    } else {
        cfg.model.weights.clone().expect("checked")
    }
}
