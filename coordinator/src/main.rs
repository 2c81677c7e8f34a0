//! `fastlightgen`: the one command users call.
//!
//! Control-plane commands run here (this binary never links libtorch); tensor-side commands
//! (`data`, `env`) are handed to the `flg-worker` binary installed next to it.

use clap::{Parser, Subcommand};
use flg_core::config::{Config, LoadOptions};
use flg_core::launch::worker_binary;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fastlightgen",
    version,
    about = "Distil a video diffusion transformer into a 4-step, ~70%-parameter generator (FastLightGen)",
    long_about = "Distil a video diffusion transformer into a 4-step, ~70%-parameter generator with the \
three FastLightGen stages: find the non-critical blocks, train with them stochastically skipped, then \
distribution-matching distillation against a well-guided teacher.\n\n\
Every experiment is a TOML file (see cluster-configs/). Start with:\n  \
fastlightgen validate cluster-configs/demo-cpu.toml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the control client finds the coordinator.
#[derive(clap::Args)]
struct Target {
    /// The coordinator's URL (printed when it starts, e.g. http://127.0.0.1:43117), or the
    /// run directory (runs/NAME) of a run started on this machine.
    #[arg(long, env = "FLG_COORDINATOR")]
    coordinator: String,
}

/// What `run` and `coordinator` take besides the config.
#[derive(clap::Args)]
struct LaunchArgs {
    /// Change one config key for this run, checked like the file and recorded at the top of
    /// <run dir>/config.toml (repeatable; a later one wins), e.g. `--set distill.steps=600
    /// --set cluster.world_size=16`. The value is TOML (numbers, true, "text", [1, 2]); a
    /// bare word is a string. A run-defining setting that differs from the run directory's
    /// is refused as with an edited file.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = flg_core::config::Override::parse)]
    set: Vec<flg_core::config::Override>,
    /// Seconds between plain progress lines when stderr is not a terminal (a log file).
    #[arg(long, env = "FLG_LOG_EVERY", default_value = "30", value_parser = flg_core::logging::parse_period)]
    log_every: std::time::Duration,
}

impl LaunchArgs {
    fn options(self) -> flg_coordinator::supervise::Options {
        flg_coordinator::supervise::Options {
            overrides: self.set,
            log_every: self.log_every,
        }
    }
}

/// Mutating control calls: the target and the token.
#[derive(clap::Args)]
struct Mutation {
    #[command(flatten)]
    target: Target,
    /// The run's control token [default: $FLG_CONTROL_TOKEN, else <run dir>/control-token
    /// when --coordinator is a run directory].
    #[arg(long)]
    token: Option<String>,
    /// Why (recorded in events.jsonl).
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment end to end: the coordinator plus `mpirun` workers, with progress bars.
    ///
    /// Starts the coordinator (gRPC on cluster.coordinator_addr; port 0 picks one), then
    /// `mpirun -np cluster.world_size flg-worker run --config CFG --coordinator URL`. The ranks
    /// run experiment.stages in order, writing a checkpoint every checkpoint.interval_steps
    /// steps (two-phase: committed only when every rank's shards are on disk). When a rank
    /// dies or sends no heartbeat for cluster.heartbeat_timeout_s, the workers are ended and
    /// started again from the last committed checkpoint, up to cluster.max_restarts times.
    ///
    /// Running it again on a stopped or crashed run continues it (stages already done are
    /// skipped); a run directory made with other settings is refused, naming them.
    ///
    /// Ctrl-C stops cleanly with a final checkpoint; a second Ctrl-C kills the workers.
    /// Meanwhile: `fastlightgen status|watch|pause|resume|checkpoint|stop --coordinator URL`.
    ///
    /// Progress: bars on a terminal; in a log file (stderr not a terminal: sbatch, nohup,
    /// `> log`) one plain line every --log-every seconds. The status page is served on
    /// cluster.http_addr (its URL is printed at start); TensorBoard reads <run dir>/tensorboard.
    Run {
        /// The experiment file, e.g. cluster-configs/demo-cpu.toml.
        config: PathBuf,
        #[command(flatten)]
        launch: LaunchArgs,
    },
    /// Run only the coordinator, for clusters where the workers are started separately.
    ///
    /// Prints its URL and the mpirun line for the workers (`flg-worker run --config CFG
    /// --coordinator URL`). Lost ranks are reported; start the workers again (same line) and
    /// they resume from the last committed checkpoint. Ends when the run finishes or stops.
    Coordinator {
        /// The experiment file; the workers must be started with the same one (and the same
        /// --set, which the printed line repeats).
        config: PathBuf,
        #[command(flatten)]
        launch: LaunchArgs,
    },
    /// Show a running experiment: stage, step, losses, throughput, ETA, ranks, checkpoint.
    Status {
        #[command(flatten)]
        target: Target,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follow a running experiment with progress bars until it ends.
    ///
    /// The rate and ETA are the coordinator's (the ones `status` shows). On a terminal it
    /// draws bars; otherwise it prints a plain line every --log-every seconds.
    Watch {
        #[command(flatten)]
        target: Target,
        /// Replay the run's history (events.jsonl) first.
        #[arg(long)]
        from_start: bool,
        /// Seconds between plain progress lines when stderr is not a terminal.
        #[arg(long, env = "FLG_LOG_EVERY", default_value = "30", value_parser = flg_core::logging::parse_period)]
        log_every: std::time::Duration,
    },
    /// Pause the ranks at the next step boundary (needs the control token).
    Pause(Mutation),
    /// Continue a paused run (needs the control token).
    Resume(Mutation),
    /// Commit a checkpoint at the next step boundary (needs the control token).
    Checkpoint(Mutation),
    /// Stop the run cleanly with a final checkpoint (needs the control token); `run` on the
    /// same config continues it later.
    Stop(Mutation),
    /// Check an experiment file without starting anything (no MPI, no GPU needed).
    ///
    /// Reports every problem found, each with the file, the key and what was expected, and
    /// exits with status 1 if there is any. Relative paths are taken from the current directory.
    Validate {
        /// The experiment file, e.g. cluster-configs/demo-cpu.toml.
        config: PathBuf,
        /// Also check that the config matches this number of ranks (the mpirun -np you plan).
        #[arg(long)]
        world_size: Option<u32>,
        /// Check values only, not the files the config names (weights, data, hostfile): for a
        /// config meant for another machine, e.g. a cluster config checked on a laptop.
        #[arg(long)]
        skip_files: bool,
        /// Also estimate each rank's memory for every training stage (parameters, gradients,
        /// AdamW moments and EMA over W, gathered units, activations with and without
        /// recompute, the runtime) and compare the peak with --device-memory-gib.
        #[arg(long)]
        estimate_memory: bool,
        /// With --estimate-memory: estimate for this many ranks instead of cluster.world_size
        /// (e.g. 1 to see whether one GPU holds a run planned for 8).
        #[arg(long)]
        ranks: Option<u32>,
        /// Memory of one device (GPU) or node share (CPU) in GiB for the comparison
        /// [default: 80 for cuda (an H100), 24 for cpu].
        #[arg(long)]
        device_memory_gib: Option<f64>,
        /// With --estimate-memory: the latent video C,T,H,W per sample, for a `latents` data
        /// set that cannot be read here, or to ask about other videos [default: the data set's,
        /// else 16,21,60,104: Wan 2.1 at 480x832, 81 frames].
        #[arg(long, value_name = "C,T,H,W", value_delimiter = ',')]
        latent: Option<Vec<i64>>,
        /// With --estimate-memory: text tokens per sample [default: the data set's, else 512].
        #[arg(long)]
        text_len: Option<i64>,
        /// Print only the run directory (<output_dir>/<name>) of a valid config, for scripts.
        #[arg(long, conflicts_with = "estimate_memory")]
        print_run_dir: bool,
        /// Check the config with this key changed, as `run --set` would run it (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = flg_core::config::Override::parse)]
        set: Vec<flg_core::config::Override>,
    },
    /// Start the config's worker ranks with mpirun (cluster.world_size of them), without a
    /// coordinator, and wait for them.
    ///
    /// Runs experiment.stages in order: pretrain, importance (Stage I), pruning (Stage II),
    /// distill (Stage III), export, eval. Each stage reads the previous stages' files from the
    /// run directory <output_dir>/<name>/ and writes its own there (importance.json,
    /// pruning/model.safetensors, distill/generator.safetensors, export/student.*, eval.json,
    /// samples/), so `--stage S` (repeatable) reruns just that stage.
    ///
    /// Adds the flags OpenMPI needs on one node (--oversubscribe, and --allow-run-as-root as
    /// root) or uses cluster.hostfile.
    Workers {
        /// The experiment file, e.g. cluster-configs/demo-cpu.toml.
        config: PathBuf,
        /// Run only this stage of experiment.stages (repeatable).
        #[arg(long = "stage")]
        stages: Vec<String>,
    },
    /// Write a run's Stage III generator as export/student.safetensors + student.json; see
    /// --help. (The export stage of `workers` does the same.)
    #[command(disable_help_flag = true)]
    Export {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Make, inspect and verify data directories: `fastlightgen data shapes --out DIR --num N`.
    #[command(disable_help_flag = true)]
    Data {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Show what this machine offers: libtorch, CUDA driver, GPUs, NCCL.
    Env,
    /// (Re)write a run's report.md and print its three headline numbers.
    ///
    /// report.md holds the stage durations, loss curves, throughput, the Stage I importance
    /// chart, the quality table and the samples side by side (images in <run dir>/report/,
    /// the headline in report/summary.json). `fastlightgen run` writes it when a run with an
    /// eval stage finishes.
    Report {
        /// The run directory (<output_dir>/<name>, e.g. runs/demo-cpu), after its eval stage.
        dir: PathBuf,
        /// Print the report's numbers as one JSON object instead (eval rows with their scores
        /// and table cells, speedups, stage seconds, Stage II's held-out gap, Stage I's
        /// candidates, throughput per stage), for scripts; writes nothing.
        #[arg(long)]
        json: bool,
    },
    /// Generate videos with a model (videos.npy, labels.npy, GIFs, grid.png); see --help.
    #[command(disable_help_flag = true)]
    Sample {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Score generated moving-shapes videos in DIR; writes DIR/eval.json; see --help.
    #[command(disable_help_flag = true)]
    Eval {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Benchmarks against references measured in the same run; see --help.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Write a model file with fastlightgen metadata (dimensions, blocks, prompts); see --help.
    #[command(disable_help_flag = true)]
    Annotate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Convert a Wan transformer between fastlightgen's file, a diffusers folder and the
    /// original Wan layout (e.g. a student for diffusers' WanPipeline); see --help.
    #[command(disable_help_flag = true)]
    Convert {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Draw a PNG line chart from a small JSON spec; see --help.
    #[command(disable_help_flag = true)]
    Plot {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Train a config's teacher (stage "pretrain") in this one process; see --help.
    #[command(disable_help_flag = true)]
    Train {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    flg_core::init_logging();
    match Cli::parse().command {
        Command::Validate {
            config,
            world_size,
            skip_files,
            estimate_memory,
            ranks,
            device_memory_gib,
            latent,
            text_len,
            print_run_dir,
            set,
        } => validate(
            config,
            world_size,
            LoadOptions {
                check_files: !skip_files,
            },
            &set,
            estimate_memory.then(|| MemoryArgs {
                ranks,
                device_gib: device_memory_gib,
                latent,
                text_len,
            }),
            print_run_dir,
        ),
        Command::Run { config, launch } => flg_coordinator::supervise::main(
            &config,
            flg_coordinator::supervise::Mode::LaunchWorkers,
            &launch.options(),
        ),
        Command::Coordinator { config, launch } => flg_coordinator::supervise::main(
            &config,
            flg_coordinator::supervise::Mode::CoordinatorOnly,
            &launch.options(),
        ),
        Command::Status { target, json } => with_target(&target.coordinator, None, |t| {
            flg_coordinator::client::status(t, json)
        }),
        Command::Watch {
            target,
            from_start,
            log_every,
        } => with_target(&target.coordinator, None, |t| {
            flg_coordinator::client::watch(t, from_start, log_every)
        }),
        Command::Pause(m) => mutate("pause", m),
        Command::Resume(m) => mutate("resume", m),
        Command::Checkpoint(m) => mutate("checkpoint", m),
        Command::Stop(m) => mutate("stop", m),
        Command::Data { args } => forward("data", args),
        Command::Workers { config, stages } => workers(config, stages),
        Command::Env => forward("env", Vec::new()),
        Command::Report { dir, json } => report(&dir, json),
        Command::Sample { args } => forward("sample", args),
        Command::Export { args } => forward("export", args),
        Command::Eval { args } => forward("eval", args),
        Command::Train { args } => forward("train", args),
        Command::Bench { args } => forward("bench", args),
        Command::Plot { args } => forward("plot", args),
        Command::Annotate { args } => forward("annotate", args),
        Command::Convert { args } => forward("convert", args),
    }
}

fn with_target(
    coordinator: &str,
    token: Option<String>,
    f: impl FnOnce(&flg_coordinator::client::Target) -> ExitCode,
) -> ExitCode {
    match flg_coordinator::client::resolve(coordinator, token) {
        Ok(t) => f(&t),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mutate(action: &str, m: Mutation) -> ExitCode {
    with_target(&m.target.coordinator, m.token, |t| {
        flg_coordinator::client::control(t, action, &m.reason)
    })
}

/// `validate --estimate-memory`'s settings.
struct MemoryArgs {
    ranks: Option<u32>,
    device_gib: Option<f64>,
    latent: Option<Vec<i64>>,
    text_len: Option<i64>,
}

fn validate(
    path: PathBuf,
    world_size: Option<u32>,
    options: LoadOptions,
    overrides: &[flg_core::config::Override],
    memory: Option<MemoryArgs>,
    run_dir_only: bool,
) -> ExitCode {
    let result = Config::load_overridden(&path, options, overrides).and_then(|c| {
        if let Some(w) = world_size {
            c.check_world_size(&path, w)?;
        }
        Ok(c)
    });
    match result {
        Ok(c) if run_dir_only => {
            println!("{}", c.run_dir().path().display());
            ExitCode::SUCCESS
        }
        Ok(c) => {
            let d = c.model_dims();
            println!("{}: ok", path.display());
            println!(
                "  experiment {:?}, run directory {}",
                c.experiment.name,
                c.run_dir().path().display()
            );
            println!("  stages: {}", c.experiment.stages.join(" -> "));
            println!(
                "  cluster: {} rank(s), {:?}, backend {:?}, {:?}, activation checkpoint {:?}, prefetch {:?}",
                c.cluster.world_size,
                c.cluster.device,
                c.cluster.backend,
                c.cluster.precision,
                c.cluster.activation_checkpoint,
                c.cluster.prefetch
            );
            println!(
                "  model: {} (dim {}, {} blocks, {} heads, patch {:?})",
                c.model.preset, d.dim, d.num_blocks, d.num_heads, d.patch
            );
            if let Some(m) = memory {
                use flg_core::memory;
                let latent = match m.latent.as_deref() {
                    None => None,
                    Some(&[c, t, h, w]) => Some([c, t, h, w]),
                    Some(v) => {
                        eprintln!("error: --latent takes C,T,H,W (4 numbers), got {v:?}");
                        return ExitCode::FAILURE;
                    }
                };
                let fallback = (
                    latent.unwrap_or([16, 21, 60, 104]),
                    m.text_len.unwrap_or(512),
                );
                let ((latent, text_len), source) = match latent {
                    Some(l) => (
                        (l, m.text_len.unwrap_or(d.text_len)),
                        "--latent".to_string(),
                    ),
                    None => memory::latent_shape(&c, fallback),
                };
                let world = m.ranks.or(world_size).unwrap_or(c.cluster.world_size);
                let device_gib = m.device_gib.unwrap_or(match c.cluster.device {
                    flg_core::config::Device::Cuda => 80.0,
                    flg_core::config::Device::Cpu => 24.0,
                });
                let e = memory::estimate(&c, world, latent, text_len, source);
                print!("{}", memory::render(&e, device_gib));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `fastlightgen report DIR [--json]`.
fn report(dir: &std::path::Path, json: bool) -> ExitCode {
    let run_dir = flg_core::RunDir::new(dir);
    let result = if json {
        flg_report::Summary::read(&run_dir)
            .and_then(|s| Ok(println!("{}", serde_json::to_string_pretty(&s)?)))
    } else {
        flg_report::write(&run_dir).map(|h| h.print())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Replaces this process with `flg-worker <subcommand> args...`.
fn forward(subcommand: &str, args: Vec<OsString>) -> ExitCode {
    let bin = match worker_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let err = std::process::Command::new(&bin)
        .arg(subcommand)
        .args(args)
        .exec();
    eprintln!("error: cannot start {}: {err}", bin.display());
    ExitCode::FAILURE
}

/// Runs `mpirun -np W flg-worker run --config CFG` and waits.
fn workers(path: PathBuf, stages: Vec<String>) -> ExitCode {
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let bin = match worker_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let launch = flg_core::launch::MpiLaunch {
        np: cfg.cluster.world_size,
        hostfile: cfg.cluster.hostfile.clone(),
        extra_args: cfg.cluster.mpirun_args.clone(),
        env: Vec::new(),
    };
    let mut args: Vec<OsString> = vec!["run".into(), "--config".into(), path.into()];
    for s in stages {
        args.extend(["--stage".into(), s.into()]);
    }
    match launch.command(&bin, &args).status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("error: the workers failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "error: cannot start mpirun: {e} (is OpenMPI installed? `make setup` installs it)"
            );
            ExitCode::FAILURE
        }
    }
}
