//! The worker binary's command line. `fastlightgen` forwards its tensor-side commands here,
//! so the help texts speak of `fastlightgen`.

use clap::{Args, Parser, Subcommand};
use flg_core::Stage;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "fastlightgen",
    version,
    about = "fastlightgen's tensor-side commands (started as `fastlightgen <command>`, or by mpirun)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make, inspect and verify data directories (safetensors shards + dataset.json).
    #[command(subcommand)]
    Data(DataCommand),
    /// Show what this machine offers: libtorch, CUDA driver, GPUs, NCCL, MPI.
    Env,
    /// Generate videos with a model: videos.npy, labels.npy, a GIF per video and grid.png.
    ///
    /// `--steps` shifted steps with the step rule `--sampler` (Euler, or re-noising) and
    /// classifier-free guidance `--cfg` (1 = no guidance: one network evaluation per step
    /// instead of two). A distilled student records its own timesteps, step rule and guidance,
    /// used unless overridden. Video i starts from
    /// noise seeded by (--seed, i), so two models sampled with the same seed and labels get the
    /// same prompts and noise.
    Sample(SampleArgs),
    /// Score generated moving-shapes videos (DIR/videos.npy + DIR/labels.npy) against the
    /// data set's definition; writes DIR/eval.json.
    ///
    /// Scores in [0, 1]: prompt following (right colour and shape), frame quality (one clean
    /// object of the right size), background (dark outside the object), motion smoothness
    /// (constant velocity), subject consistency (same shape and colour throughout), dynamic
    /// degree (it moves); their average; and the Fréchet distance between per-video features
    /// of the generated videos and of real ones (lower is better).
    Eval(EvalArgs),
    /// Benchmarks; each compares against a reference measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Benchmarks that run as one rank of an mpirun job (see `bench scaling`).
    #[command(subcommand)]
    MpiBench(MpiBench),
    /// Draw a PNG line chart from a JSON spec: {"title", "x", "y", "series": [{"name", "points": [[x, y], ...]}]}.
    Plot(PlotArgs),
    /// Write a model file with fastlightgen metadata (dimensions, blocks, prompt table) from a
    /// file without it, e.g. a released checkpoint or an older run's weights.
    Annotate(AnnotateArgs),
    /// Convert a Wan transformer between forms: fastlightgen's file, a diffusers folder, the
    /// original Wan layout.
    ///
    /// SRC may be a fastlightgen .safetensors file, an original Wan checkpoint (one file, or a
    /// folder with config.json and shards), a diffusers WanTransformer3DModel folder
    /// (config.json, diffusion_pytorch_model*.safetensors, the index when sharded) or an
    /// *.index.json; the form is read from the key names. F32, BF16 and F16 tensors are read.
    /// Dimensions come from the file's metadata or config.json, else --preset.
    ///
    ///   fastlightgen convert Wan2.1-T2V-1.3B-Diffusers/transformer --out teacher.safetensors
    ///   fastlightgen convert runs/x/export/student.safetensors --out student-diffusers \
    ///       --format diffusers --dtype bf16
    ///
    /// `model.weights` reads every SRC form directly; conversion is for other tools and for
    /// looking. A pruned model's kept blocks are renumbered 0..n-1 in the diffusers and Wan
    /// forms (num_layers = n in config.json).
    Convert(ConvertArgs),
    /// A worker rank: started by `mpirun -np W flg-worker run --config CFG`, one per rank.
    ///
    /// Joins the MPI job, checks W against cluster.world_size, picks the collective backend
    /// (NCCL on CUDA, MPI on the CPU), shards every model across the ranks and runs the
    /// config's stages in order, data-parallel. A rank that fails aborts the whole job.
    Run(RunArgs),
    /// Write a run's Stage III generator (its EMA) as the unsharded student:
    /// `<run dir>/export/student.safetensors` (kept blocks only, original indices, sampler
    /// settings in its metadata) and `export/student.json`.
    Export(ExportArgs),
    /// Run a config's teacher pretraining in this one process (no coordinator, no MPI).
    ///
    /// Writes into the run directory `<output_dir>/<name>/`: the resolved `config.toml`,
    /// `metrics.jsonl`, `pretrain/teacher.safetensors` and EMA snapshots.
    ///
    /// It takes no checkpoints (they are the coordinator's job): a run that dies starts over.
    /// For a long run that should survive a kill, give the config a `[checkpoint]` section and
    /// start it with `fastlightgen run CFG` (stages = ["pretrain"]); that resumes from the last
    /// committed checkpoint.
    Train(TrainArgs),
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write the synthetic moving-shapes data set (docs/architecture.md) in the shard format.
    Shapes(ShapesArgs),
    /// Open a data directory, check every shard against dataset.json, and print a summary.
    Inspect(DataInspectArgs),
    /// Like inspect, and also print the sha256 of every shard (reads every byte).
    Verify(DataVerifyArgs),
    /// Encode videos and captions for a Wan model into a latent data set, or prompts into
    /// embeddings for `sample --text-embeddings` (runs tools/wan_encode.py with the project's
    /// Python: diffusers' AutoencoderKLWan, transformers' UMT5EncoderModel).
    ///
    ///   fastlightgen data encode data --captions clips/captions.jsonl \
    ///       --pipeline Wan2.1-T2V-1.3B-Diffusers --out data/wan [--frames 81 --height 480 --width 832]
    ///   fastlightgen data encode prompts --prompts prompts.txt --pipeline DIR --out text.safetensors
    ///
    /// `data` also writes DIR/null_text.safetensors (the negative prompt's embedding: set
    /// data.null_text to it) and is resumable; the result is verified as `data verify` does.
    /// `fastlightgen data encode data --help` lists every option.
    #[command(disable_help_flag = true)]
    Encode(DataEncodeArgs),
}

#[derive(Args)]
pub struct DataEncodeArgs {
    /// Passed to tools/wan_encode.py.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// One device: the model there against the CPU, and a full-size forward and backward
    /// pass (the GPU kit's checks, bench/gpu-check.sh).
    #[command(subcommand)]
    Device(DeviceBench),
    /// The sharded training step at W = 1 without block recompute (cluster.
    /// activation_checkpoint = "none") and with it ("full"), against plain autograd on the
    /// whole model: samples/s of each and their ratios (median over alternating rounds, one
    /// run), and how far the first step's gradients are apart.
    Recompute(RecomputeArgs),
    /// Sharded training step for several world sizes, each an mpirun job: step time, time in
    /// collectives (the exposed part: blocking calls and waits for prefetched gathers),
    /// per-rank state bytes and peak memory. Prints one JSON line per rank.
    Scaling(ScalingArgs),
    /// `validate --estimate-memory`'s model against the measured peak: for each preset and
    /// world size an mpirun job of sharded training steps (AdamW, no EMA, moving-shapes
    /// 8x16x16 videos) reports every rank's peak resident memory (VmHWM), printed beside the
    /// estimate of the same step and their ratio.
    Memory(MemoryArgs),
    /// Collective bandwidth with 2 ranks (an mpirun job) next to memory-copy bandwidth.
    Collectives(BenchCollectivesArgs),
    /// What a checkpoint costs one rank: the time the training step waits (the copy out of
    /// the model) next to the step time and the writer thread's time (serialise, write,
    /// fsync, sha256), and the file size. Pretraining state: parameters, AdamW moments, EMA.
    Checkpoint(CheckpointArgs),
    /// Training throughput (samples/s) of the pretraining step in Rust and the same step in
    /// plain PyTorch (bench/pytorch_train_step.py, same libtorch, same sizes), one after the
    /// other, and their ratio.
    TrainStep(TrainStepArgs),
}

#[derive(Subcommand)]
pub enum DeviceBench {
    /// A model's forward on the device in f32 and bf16 against its f32 forward on the CPU
    /// (one fixed random batch); prints one JSON line and exits 1 when an error is over its
    /// tolerance (relative L2: f32 2e-3, bf16 5e-2).
    Forward(DeviceForwardArgs),
    /// Forward and backward passes of a freshly initialised preset model (loss: mean square
    /// error to a random target, no optimiser): seconds per step, samples/s, model TFLOP/s
    /// (torchtitan's count: 6 per parameter and token plus attention), MFU against
    /// --peak-tflops, and device memory in use after the steps. Prints one JSON line.
    Step(DeviceStepArgs),
}

#[derive(Subcommand)]
pub enum MpiBench {
    /// (under mpirun) Timed sharded training steps of a preset on random data: seconds per
    /// step, seconds in collectives, state bytes and peak memory of every rank.
    Step(MpiStepArgs),
    /// (under mpirun) All-gather and reduce-scatter bus bandwidth per message size, next to
    /// a memory-copy bandwidth of the same sizes.
    Collectives(MpiCollectivesArgs),
}

#[derive(Args)]
pub struct SampleArgs {
    /// Weights file (fastlightgen safetensors, or a released checkpoint with --preset).
    #[arg(long)]
    pub model: PathBuf,
    /// Dimensions for a file without fastlightgen metadata (e.g. wan2.1-t2v-1.3b).
    #[arg(long)]
    pub preset: Option<String>,
    /// Take the prompt table from this moving-shapes data directory (for a file that does
    /// not record one).
    #[arg(long)]
    pub prompts_from: Option<PathBuf>,
    /// Sampler steps [default: the model's recorded sampler, else 50]. With --steps the grid is
    /// uniform in time, shifted by --shift.
    #[arg(long)]
    pub steps: Option<usize>,
    /// CFG scale [default: the model's recorded sampler, else 4].
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Step rule: `euler` (follow the velocity) or `renoise` (predict the clean video, then
    /// noise it afresh to the next time; DMD2's few-step sampler) [default: the model's
    /// recorded sampler, else euler].
    #[arg(long)]
    pub sampler: Option<flg_worker::flow::SamplerKind>,
    /// Timestep shift of the sampler's grid.
    #[arg(long, default_value_t = 1.0)]
    pub shift: f64,
    /// Number of videos [default: 16; with --text-embeddings, one per row].
    #[arg(long)]
    pub num: Option<usize>,
    /// Class labels to cycle through, e.g. "0,5"; default all 8 classes in turn.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<i64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Videos per network batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Also score the videos (writes eval.json, as `fastlightgen eval`).
    #[arg(long)]
    pub eval: bool,
    /// Prompt embeddings for a latent model (e.g. Wan): a safetensors file whose `text`
    /// tensor is [N, L, D] (`fastlightgen data encode --prompts` writes one). One video per
    /// row (cycled up to --num when --num is given); writes OUT/latents.safetensors
    /// (`latents` [N, C, T, H, W], the initial `noise`, `text`) for tools/wan_decode.py
    /// instead of pixels.
    #[arg(long)]
    pub text_embeddings: Option<PathBuf>,
    /// The null prompt CFG contrasts with (a safetensors file with `text` [L, D], e.g. the
    /// data encoder's null_text.safetensors) [default: zeros].
    #[arg(long)]
    pub null_text: Option<PathBuf>,
    /// Latent shape C,T,H,W of each video with --text-embeddings [default: the model's
    /// channels with 21,60,104: Wan 2.1's 81 frames at 480x832].
    #[arg(long, value_delimiter = ',')]
    pub latent: Vec<i64>,
    /// Where to run: cpu or cuda (bf16 is not used here: sampling runs in f32).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The sample directory (as `fastlightgen sample --out DIR` writes it).
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct PlotArgs {
    /// The chart's JSON spec.
    pub spec: PathBuf,
    /// The PNG to write.
    pub out: PathBuf,
}

#[derive(Args)]
pub struct AnnotateArgs {
    /// The weights file without fastlightgen metadata.
    #[arg(long)]
    pub model: PathBuf,
    /// The model's dimensions.
    #[arg(long)]
    pub preset: String,
    /// Moving-shapes data directory whose prompt table the model was trained with.
    #[arg(long)]
    pub prompts_from: Option<PathBuf>,
    /// The annotated model file to write.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ConvertFormat {
    /// One .safetensors file with Wan key names and fastlightgen's metadata (f32).
    Fastlightgen,
    /// A folder that diffusers' WanTransformer3DModel.from_pretrained loads.
    Diffusers,
    /// A folder in the original Wan layout (Wan key names, Wan's config.json).
    Wan,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The model: a file, a folder or an *.index.json (see above).
    pub src: PathBuf,
    /// Where to write: a .safetensors file for --format fastlightgen, else a folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "fastlightgen")]
    pub format: ConvertFormat,
    /// Precision of the written tensors (diffusers and wan forms; fastlightgen files are f32).
    #[arg(long, default_value = "f32")]
    pub dtype: flg_worker::model::file::SaveDtype,
    /// The largest shard before the weights are split into shards with an index: bytes, or
    /// a number with KB, MB or GB (powers of 1000, as diffusers' max_shard_size).
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    pub max_shard_size: u64,
    /// The model's dimensions when SRC records none (no metadata, no config.json).
    #[arg(long)]
    pub preset: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Also save an EMA snapshot every this many pretraining steps; 0: none.
    #[arg(long, default_value_t = 0)]
    pub snapshot_every: u64,
    /// Run only this stage of the config (repeatable); it reads the earlier stages'
    /// output from the run directory.
    #[arg(long = "stage")]
    pub stages: Vec<Stage>,
    /// The coordinator (e.g. http://head:50051): register, send heartbeats, follow its
    /// commands (pause, checkpoint, stop), write checkpoints, skip the stages it says are
    /// done and resume from the checkpoint it names. Without it the stages run straight
    /// through with no checkpoints.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Change one config key (section.key=value, repeatable), as `fastlightgen run --set`
    /// does; every rank must be given the same.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = flg_core::config::Override::parse)]
    pub set: Vec<flg_core::config::Override>,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The experiment file whose run directory holds distill/generator.safetensors.
    pub config: PathBuf,
}

#[derive(Args)]
pub struct TrainArgs {
    /// The experiment file, e.g. cluster-configs/teacher-cpu.toml.
    pub config: PathBuf,
    /// Also save an EMA snapshot every this many steps (for quality-vs-time curves); 0: none.
    #[arg(long, default_value_t = 0)]
    pub snapshot_every: u64,
}

#[derive(Args)]
pub struct ShapesArgs {
    /// Output directory; created if missing. An older data set there is replaced.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of videos.
    #[arg(long, default_value_t = 4096)]
    pub num: u64,
    /// Frames per video (T).
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// Frame side in pixels (S, a multiple of 4).
    #[arg(long, default_value_t = 16)]
    pub size: usize,
    /// Seed of the videos (directions, positions).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens (L) and width (D) of the class "prompt" embeddings.
    #[arg(long, default_value_t = 4)]
    pub text_len: usize,
    #[arg(long, default_value_t = 32)]
    pub text_dim: usize,
    /// Seed of the fixed class-embedding table.
    #[arg(long, default_value_t = 20260301)]
    pub text_seed: u64,
    /// Videos per shard file.
    #[arg(long, default_value_t = 1024)]
    pub shard_size: u64,
}

#[derive(Args)]
pub struct DataInspectArgs {
    /// The data directory (shards + dataset.json).
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct DataVerifyArgs {
    /// The data directory (shards + dataset.json).
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct RecomputeArgs {
    /// Model dimensions: tiny, small-100m or wan2.1-t2v-1.3b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Global batch per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Video frames.
    #[arg(long, default_value_t = 8)]
    pub frames: i64,
    /// Frame side in pixels.
    #[arg(long, default_value_t = 16)]
    pub size: i64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Alternating rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ScalingArgs {
    /// Model dimensions: tiny, small-100m or wan2.1-t2v-1.3b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// World sizes (ranks), one mpirun job each.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub worlds: Vec<u32>,
    /// Global batch per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Unit prefetch (the next unit's all-gather overlapping the current unit's compute):
    /// on, off, or both (each world size twice, off then on, for a before/after).
    #[arg(long, default_value = "off")]
    pub prefetch: String,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct MemoryArgs {
    /// Presets, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tiny,small-100m")]
    pub presets: Vec<String>,
    /// World sizes (ranks), one mpirun job each.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub worlds: Vec<u32>,
    /// Global batch per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// The estimate must be within this share of the measured peak; else exit 1.
    #[arg(long, default_value_t = 0.2)]
    pub tolerance: f64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchCollectivesArgs {
    /// Ranks.
    #[arg(long, default_value_t = 2)]
    pub world: u32,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct CheckpointArgs {
    /// Presets, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tiny,small-100m")]
    pub presets: Vec<String>,
    /// Global batch per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Checkpoints taken per preset.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Where the checkpoint files are written (removed after).
    #[arg(long, default_value = "target/bench-checkpoint")]
    pub dir: PathBuf,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct TrainStepArgs {
    /// Model dimensions: tiny, small-100m or wan2.1-t2v-1.3b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Global batch per step.
    #[arg(long, default_value_t = 32)]
    pub batch: i64,
    /// Video frames.
    #[arg(long, default_value_t = 8)]
    pub frames: i64,
    /// Frame side in pixels.
    #[arg(long, default_value_t = 16)]
    pub size: i64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Repeat the pair this many times (alternating) and report the median ratio.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct DeviceForwardArgs {
    /// Weights file with fastlightgen metadata (e.g. the shipped tiny teacher).
    #[arg(long, default_value = "teacher/tiny-teacher.safetensors")]
    pub model: PathBuf,
    /// cpu or cuda.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Global batch per step.
    #[arg(long, default_value_t = 4)]
    pub batch: i64,
    /// Video frames and side of the random input (the data the model was trained on).
    #[arg(long, default_value_t = 8)]
    pub frames: i64,
    /// Frame side in pixels.
    #[arg(long, default_value_t = 16)]
    pub size: i64,
}

#[derive(Args)]
pub struct DeviceStepArgs {
    /// Model dimensions: tiny, small-100m or wan2.1-t2v-1.3b.
    #[arg(long, default_value = "wan2.1-t2v-1.3b")]
    pub preset: String,
    /// cpu or cuda.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// bf16 or fp32.
    #[arg(long, default_value = "bf16")]
    pub precision: String,
    /// Global batch per step.
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    /// Latent frames, height and width (Wan 2.1 at 480x832, 81 frames: 21 x 60 x 104).
    #[arg(long, default_value_t = 21)]
    pub frames: i64,
    #[arg(long, default_value_t = 60)]
    pub height: i64,
    #[arg(long, default_value_t = 104)]
    pub width: i64,
    /// Text tokens per sample (Wan's umT5 context: 512).
    #[arg(long, default_value_t = 512)]
    pub text_len: i64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// The device's dense bf16 peak in TFLOP/s for the MFU (H100 and H200 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    pub peak_tflops: f64,
}

#[derive(Args)]
pub struct MpiStepArgs {
    /// Model dimensions: tiny, small-100m or wan2.1-t2v-1.3b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Global batch per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Unit prefetch on the gather thread: on or off.
    #[arg(long, default_value = "off")]
    pub prefetch: String,
}

#[derive(Args)]
pub struct MpiCollectivesArgs {
    /// Full-buffer sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    pub sizes_mib: Vec<usize>,
    /// Repetitions per size.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
}

/// "5GB", "200MB", "50KB" or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let (num, mult) = [("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1.0)]
        .iter()
        .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim().to_string(), *m)))
        .unwrap_or((t.clone(), 1.0));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 5GB, 200MB or 50KB"))?;
    if !(n.is_finite() && n * mult >= 1.0) {
        return Err(format!("{s:?}: must be at least one byte"));
    }
    Ok((n * mult) as u64)
}
