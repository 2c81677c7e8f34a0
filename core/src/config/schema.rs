//! The experiment file's schema: one struct per TOML section.
//!
//! Every section rejects unknown keys and fills missing ones from its `Default`, so a config
//! names only what differs from the defaults. Every `[choice]` of docs/method.md is a key here.
//! Range and cross-field checks live in `validate.rs`; this file only says what exists.

pub use crate::formats::student::SamplerKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole experiment. Sections appear in the file under these names; `load` reads them one
/// by one so that a mistake in one section does not hide the mistakes in the others.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Config {
    pub experiment: Experiment,
    pub cluster: Cluster,
    pub model: Model,
    pub data: Data,
    pub pretrain: Pretrain,
    pub importance: Importance,
    pub pruning: Pruning,
    pub distill: Distill,
    pub checkpoint: Checkpoint,
    pub eval: Eval,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    /// Run name; the run directory is `<output_dir>/<name>/`.
    pub name: String,
    /// Global seed: model init, data order, timesteps, the Stage II skip masks.
    pub seed: u64,
    pub output_dir: PathBuf,
    /// Which stages this experiment runs, a subset of [`crate::Stage::ALL`] in that order.
    pub stages: Vec<String>,
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment {
            name: String::new(),
            seed: 0,
            output_dir: PathBuf::from("runs"),
            stages: ["importance", "pruning", "distill", "export", "eval"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

/// Which library moves tensors between ranks. `Auto` is NCCL on CUDA, MPI on the CPU.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Mpi,
    Nccl,
}

/// Activation checkpointing of the transformer blocks (torchtitan's `activation_checkpoint`
/// modes): `full` keeps each block's input and recomputes the block in the backward (least
/// memory, about one more forward of compute); `none` keeps every block's autograd graph from
/// the forward (fastest, activations of all blocks in memory). Same numbers either way.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActivationCheckpoint {
    Full,
    None,
}

/// Unit prefetch: the next unit's all-gather runs while the current unit computes (FSDP's
/// forward and backward prefetch). `auto` is on with NCCL (a GPU moves data beside its
/// compute) and off with MPI: on a CPU the gather thread competes with the compute threads
/// for the cores, and measured slower (BENCHMARKS.md, "Unit prefetch").
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Prefetch {
    Auto,
    On,
    Off,
}

impl Prefetch {
    /// Whether units are prefetched on `device` (`auto`: on CUDA, where NCCL runs beside the
    /// compute; not on the CPU).
    pub fn enabled(self, device: Device) -> bool {
        match self {
            Prefetch::Auto => device == Device::Cuda,
            Prefetch::On => true,
            Prefetch::Off => false,
        }
    }
}

/// Compute precision. Master weights, optimizer moments and reductions are always f32.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Number of worker ranks; must equal the `mpirun -np` the workers start with.
    pub world_size: u32,
    pub device: Device,
    pub backend: Backend,
    pub precision: Precision,
    /// `full` (recompute every block in the backward) or `none`; see [`ActivationCheckpoint`].
    pub activation_checkpoint: ActivationCheckpoint,
    /// `auto`, `on` or `off`; see [`Prefetch`].
    pub prefetch: Prefetch,
    /// Gradient accumulation: each rank runs its share of a training step's batch this many
    /// videos at a time, adding up the gradients before the one optimiser step (the same step
    /// as without, up to float rounding; memory for `micro_batch_size` videos' activations).
    /// Must divide every training stage's per-rank share; 0: the whole share at once.
    /// Like the world size, it does not define the run: a run may resume with another.
    pub micro_batch_size: u64,
    /// Address the coordinator's gRPC server listens on. Port 0 picks a free port.
    pub coordinator_addr: String,
    /// Address of the coordinator's read-only HTTP status page (`GET /`) and JSON
    /// (`GET /status`); port 0 picks a free port, `""` serves none. Loopback by default:
    /// to open it from another machine, bind an address others reach (it shows losses and
    /// host names, never the control token).
    pub http_addr: String,
    /// Ranks send a heartbeat this often.
    pub heartbeat_interval_s: f64,
    /// A rank silent for this long is declared dead and the workers are restarted.
    pub heartbeat_timeout_s: f64,
    /// How many times the launcher restarts dead workers before giving up.
    pub max_restarts: u32,
    /// Optional MPI hostfile for multi-node runs (`mpirun --hostfile`).
    pub hostfile: Option<PathBuf>,
    /// Extra arguments passed to `mpirun` as they are.
    pub mpirun_args: Vec<String>,
    /// Bearer token that pause/resume/checkpoint/stop calls must carry. Unset: taken from
    /// `$FLG_CONTROL_TOKEN`, else generated at start, printed, and written to
    /// `<run dir>/control-token` (readable by the owner only).
    pub control_token: Option<String>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            world_size: 1,
            device: Device::Cpu,
            backend: Backend::Auto,
            precision: Precision::Fp32,
            activation_checkpoint: ActivationCheckpoint::Full,
            prefetch: Prefetch::Auto,
            micro_batch_size: 0,
            coordinator_addr: "127.0.0.1:0".into(),
            http_addr: "127.0.0.1:0".into(),
            heartbeat_interval_s: 1.0,
            heartbeat_timeout_s: 30.0,
            max_restarts: 2,
            hostfile: None,
            mpirun_args: Vec::new(),
            control_token: None,
        }
    }
}

/// The model: a preset, optionally with some dimensions overridden, and where its weights are.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Model {
    /// `tiny`, `small-100m` or `wan2.1-t2v-1.3b`; `custom` takes every dimension from the file.
    pub preset: String,
    /// Teacher weights (safetensors, Wan 2.1 key names) the pipeline starts from.
    pub weights: Option<PathBuf>,
    pub dim: Option<i64>,
    pub num_blocks: Option<i64>,
    pub num_heads: Option<i64>,
    pub ffn_dim: Option<i64>,
    pub freq_dim: Option<i64>,
    pub text_dim: Option<i64>,
    pub text_len: Option<i64>,
    pub in_channels: Option<i64>,
    pub out_channels: Option<i64>,
    /// Patch size over (frames, height, width).
    pub patch: Option<[i64; 3]>,
    pub eps: Option<f64>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum DataKind {
    /// The synthetic data set of docs/architecture.md, generated on demand.
    #[serde(rename = "moving-shapes")]
    MovingShapes,
    /// Pre-encoded latents and text embeddings on disk.
    #[serde(rename = "latents")]
    Latents,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Data {
    pub kind: DataKind,
    /// Data directory (`dataset.json` + shards). For `moving-shapes` it is generated there if
    /// missing; when unset it goes to `<run dir>/data`. Required for `latents`.
    pub path: Option<PathBuf>,
    /// moving-shapes: number of videos to generate.
    pub num_samples: u64,
    /// moving-shapes: frames per video (T).
    pub frames: i64,
    /// moving-shapes: frame side in pixels (S).
    pub size: i64,
    /// moving-shapes: tokens per "prompt" embedding (L).
    pub text_len: i64,
    /// moving-shapes: width of the "prompt" embedding (D).
    pub text_dim: i64,
    /// moving-shapes: seed of the videos (directions, positions).
    pub seed: u64,
    /// moving-shapes: seed of the fixed class-embedding table.
    pub text_seed: u64,
    /// Videos per shard file when generating.
    pub shard_size: u64,
    /// The null prompt: a safetensors file whose `text` tensor [L, D] classifier-free guidance
    /// contrasts with and prompt dropout substitutes (the Stage III real score, the teacher's
    /// samples, Stage II's dropout). `fastlightgen data encode` writes the embedding of Wan's
    /// negative prompt as `<data dir>/null_text.safetensors`; a Wan teacher never saw zeros.
    /// Unset: all zeros (what the moving-shapes teachers are trained with).
    pub null_text: Option<PathBuf>,
}

impl Default for Data {
    fn default() -> Self {
        Data {
            kind: DataKind::MovingShapes,
            path: None,
            num_samples: 4096,
            frames: 8,
            size: 16,
            text_len: 4,
            text_dim: 32,
            seed: 0,
            text_seed: 20260301,
            shard_size: 1024,
            null_text: None,
        }
    }
}

/// Optimiser settings shared by the trained roles.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Optim {
    pub lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub grad_clip: f64,
    /// The learning rate after the warmup; see [`LrSchedule`].
    pub schedule: LrSchedule,
    /// With `schedule = "cosine"`: the learning rate at the role's last update, as a fraction
    /// of `lr`.
    pub final_lr_ratio: f64,
}

/// The learning rate after the warmup: `constant` at `lr`, or `cosine`: half a cosine from
/// `lr` down to `lr * final_lr_ratio` at the role's last update of the stage (the stage's
/// steps; for Stage III's generator, its `steps / generator_every` updates).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    Cosine,
}

impl Default for Optim {
    fn default() -> Self {
        Optim {
            lr: 1e-4,
            warmup_steps: 0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: 1.0,
            schedule: LrSchedule::Constant,
            final_lr_ratio: 0.0,
        }
    }
}

/// Teacher pretraining with flow matching.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pretrain {
    pub steps: u64,
    /// Global batch, split evenly over the ranks.
    pub batch_size: u64,
    pub optim: Optim,
    /// Probability of replacing the prompt with the null prompt (for CFG).
    pub cfg_dropout: f64,
    /// EMA decay of the weights; 0 disables the EMA.
    pub ema_decay: f64,
    /// Timestep shift `s` in `t' = s t / (1 + (s - 1) t)`.
    pub shift: f64,
    pub log_every: u64,
}

impl Default for Pretrain {
    fn default() -> Self {
        Pretrain {
            steps: 1000,
            batch_size: 32,
            optim: Optim {
                lr: 1e-3,
                warmup_steps: 100,
                weight_decay: 0.0,
                ..Optim::default()
            },
            cfg_dropout: 0.1,
            ema_decay: 0.999,
            shift: 1.0,
            log_every: 10,
        }
    }
}

/// Stage I: block importance and the candidate set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Importance {
    /// Calibration videos drawn (seeded) from the training data.
    pub calibration_samples: u64,
    /// Timesteps drawn per calibration video. [choice] uniform after shift.
    pub timesteps_per_sample: u64,
    pub shift: f64,
    /// Share of the blocks' parameters to remove, in (0, 1). [choice] 0.3.
    pub prune_ratio: f64,
    pub batch_size: u64,
    /// How the removed set is chosen from the calibration errors (see [`CandidateSelection`]).
    pub selection: CandidateSelection,
}

/// How Stage I turns block errors into the set of blocks to remove.
///
/// `single` (the paper's): rank the blocks by the error each causes when skipped alone and take
/// the least important first. Blocks that are idle one at a time can still carry the same work
/// between them, so their joint removal can cost far more than the sum of their scores.
/// `greedy`: take the least important block, then re-measure every remaining block with the
/// chosen ones already removed and take the one whose removal adds the least error; each round
/// costs one forward per remaining block over the calibration set.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CandidateSelection {
    Single,
    Greedy,
}

impl CandidateSelection {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            CandidateSelection::Single => "single",
            CandidateSelection::Greedy => "greedy",
        }
    }
}

impl Default for Importance {
    fn default() -> Self {
        Importance {
            calibration_samples: 256,
            timesteps_per_sample: 4,
            shift: 1.0,
            prune_ratio: 0.3,
            batch_size: 32,
            selection: CandidateSelection::Single,
        }
    }
}

/// Which weights give Stage II's unpruned target U.
///
/// `self` is the paper's: the live weights, the same ones being trained (U moves with P, so
/// pure self-distillation can drift towards a solution where both agree on something bland);
/// `frozen`: the teacher Stage II started from, never trained; `ema`: an exponential moving
/// average of the live weights (`pruning.target_ema_decay`), which moves slowly.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PruningTarget {
    #[serde(rename = "self")]
    Live,
    Frozen,
    Ema,
}

/// Stage II: dynamic probabilistic pruning.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pruning {
    pub steps: u64,
    pub batch_size: u64,
    pub optim: Optim,
    /// Probability that each candidate block is skipped at a step (paper: 0.5).
    pub skip_prob: f64,
    /// Weight of the self-distillation term; `1 - alpha` weights the flow loss (paper: 1).
    pub alpha: f64,
    pub shift: f64,
    pub cfg_dropout: f64,
    /// Where the self-distillation target U comes from: `self`, `frozen` or `ema` (see
    /// [`PruningTarget`]).
    pub target: PruningTarget,
    /// EMA decay of the `ema` target.
    pub target_ema_decay: f64,
    /// Weight of a feature loss beside the output one (BK-SDM's feature distillation): after
    /// each block the pruned pass runs, its token states against U's after the same block, as
    /// a squared error relative to U's mean square, averaged over those blocks. 0: off.
    pub feature_weight: f64,
}

impl Default for Pruning {
    fn default() -> Self {
        Pruning {
            steps: 500,
            batch_size: 32,
            optim: Optim {
                lr: 1e-4,
                warmup_steps: 20,
                ..Optim::default()
            },
            skip_prob: 0.5,
            alpha: 1.0,
            shift: 1.0,
            cfg_dropout: 0.1,
            target: PruningTarget::Live,
            target_ema_decay: 0.99,
            feature_weight: 0.0,
        }
    }
}

/// Which weights give Stage III's unpruned pass U: the real score's intra guidance
/// `b2 (U(c) - P(c))` and the teacher ODE trajectories of the regression term.
///
/// `base` is the paper's: the weights Stage III starts from with every block (Stage II's
/// output, whose full pass Stage II keeps close to the teacher while it trains random subsets).
/// `teacher`: the teacher the run started from, frozen, as one more sharded model in Stage III.
/// It is the one that makes sense after a Stage II that trains only the pruned pass
/// (`pruning.skip_prob = 1`): there the blocks that Stage III removes are never trained while
/// the others adapt to their absence, so the full pass is no model of anything.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnprunedSource {
    Base,
    Teacher,
}

impl UnprunedSource {
    /// The config's spelling, for logs.
    pub fn name(self) -> &'static str {
        match self {
            UnprunedSource::Base => "base",
            UnprunedSource::Teacher => "teacher",
        }
    }
}

/// Which pass of the real score gives its text guidance (`distill.guidance`): the real
/// velocity is `S(null) + b1 (S(c) - S(null)) + b2 (U(c) - P(c))` with S the pruned pass P
/// (`pruned`, the paper's well-guided teacher) or the unpruned pass U (`unpruned`: the
/// teacher's own CFG, as plain DMD2's real score, plus the same intra guidance).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GuidancePass {
    Pruned,
    Unpruned,
}

impl GuidancePass {
    /// The config's spelling, for logs.
    pub fn name(self) -> &'static str {
        match self {
            GuidancePass::Pruned => "pruned",
            GuidancePass::Unpruned => "unpruned",
        }
    }
}

/// Which blocks the fake score F has (`distill.fake_score`). `generator`: the generator's own
/// (DMD2's choice: F starts as a copy of G). `full`: every block of the Stage II model, so that
/// a pruned generator is judged by a critic of the teacher's size; DMD2's fake score is the
/// teacher's size because its generator is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FakeScoreBlocks {
    Generator,
    Full,
}

impl FakeScoreBlocks {
    /// The config's spelling, for logs.
    pub fn name(self) -> &'static str {
        match self {
            FakeScoreBlocks::Generator => "generator",
            FakeScoreBlocks::Full => "full",
        }
    }
}

/// Stage III: distribution matching with the well-guided teacher (DMD2 style).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Distill {
    pub steps: u64,
    pub batch_size: u64,
    pub generator_optim: Optim,
    pub fake_optim: Optim,
    /// The generator is updated once every `generator_every` fake-score updates (DMD2: 5).
    pub generator_every: u64,
    /// The student's timesteps, after shift, from noise to data. [choice] [1, .75, .5, .25].
    pub timesteps: Vec<f64>,
    pub shift: f64,
    /// Later steps take the generator's own rollout as input. [choice] true.
    pub backward_simulation: bool,
    /// Range of the text-CFG scale b1, drawn uniformly per step. [choice] [3, 4].
    pub b1_range: [f64; 2],
    /// Range of the intra (full-vs-pruned) guidance b2, drawn uniformly per step. [choice] [0, 0.5].
    pub b2_range: [f64; 2],
    /// Range of the noise level used to compare the scores.
    pub t_range: [f64; 2],
    /// Remove the Stage I candidates from the generator (false: a full-size generator).
    pub prune_generator: bool,
    pub ema_decay: f64,
    /// How the few-step sampler moves between `timesteps`: `euler` or `renoise` (see
    /// [`SamplerKind`]). The Stage III rollout, the exported student, `sample` and the eval
    /// stage all use this one choice.
    pub sampler: SamplerKind,
    /// Regression of the generator's steps onto the teacher's own ODE trajectories.
    pub regression: Regression,
    /// Where the unpruned pass U (b2's guidance and the regression trajectories) comes from:
    /// `base` or `teacher` (see [`UnprunedSource`]).
    pub unpruned: UnprunedSource,
    /// The fake score's blocks: `generator` or `full` (see [`FakeScoreBlocks`]).
    pub fake_score: FakeScoreBlocks,
    /// The pass whose text guidance the real score takes: `pruned` or `unpruned` (see
    /// [`GuidancePass`]).
    pub guidance: GuidancePass,
    /// Weight of the data-forcing term (0: off): on generator steps, training videos noised to
    /// the trained sampler step's time, and the generator's clean-video prediction there pulled
    /// towards the well-guided real score's (mean squared error). It keeps the generator a
    /// faithful guided denoiser of real (moving) videos while DMD trains it on its own samples.
    pub data_forcing: f64,
    /// DMD2's GAN term: a classifier on the fake score's features (see [`Gan`]).
    pub gan: Gan,
    /// Every this many steps, rank 0 logs the generator's diversity over noise and a small
    /// eval of its EMA (moving-shapes only); 0: never.
    pub monitor_every: u64,
    /// Videos sampled by each monitor eval.
    pub monitor_videos: u64,
}

/// DMD's anchor against mode collapse, for every sampler step: trajectories of the teacher's
/// ODE from noise, with its states at the student's times, made once at the start of Stage III
/// and kept in the run directory; on a generator step that trains sampler step k, the
/// generator's clean-video prediction from the ODE state at `t_k` is pulled towards the video
/// the ODE reaches (mean squared error times the weight, beside the DMD loss).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Regression {
    /// Weight of the regression loss; 0 turns the term (and the pairs) off.
    pub weight: f64,
    /// Number of trajectories.
    pub pairs: u64,
    /// The teacher's sampler for them: Euler steps in all (split over the student's intervals
    /// by length) and CFG scale (against the null prompt).
    pub teacher_steps: u64,
    pub teacher_cfg: f64,
}

impl Default for Regression {
    fn default() -> Self {
        Regression {
            weight: 0.0,
            pairs: 256,
            teacher_steps: 25,
            teacher_cfg: 4.0,
        }
    }
}

/// DMD2's GAN term. A small classifier reads the fake score's token features after its first
/// `feature_blocks` blocks and is trained every step to tell noised training videos (real) from
/// noised generator samples (fake); on generator steps the generator also gets
/// `weight * softplus(-D(features(noised sample)))`, its gradient taken through the fake score
/// (held fixed) back to the sample. Real data is the anchor DMD lacks: the classifier sees the
/// motion and variety of the training videos, which the teacher's score alone lets collapse.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Gan {
    /// Weight of the generator's GAN loss; 0 (the default) turns the term and its classifier
    /// off. On moving-shapes it costs the demo's student 0.02 (BENCHMARKS.md).
    pub weight: f64,
    /// The fake score's blocks the features come after; 0: half of the generator's blocks
    /// (rounded up), the middle of the network as in DMD2's bottleneck features.
    pub feature_blocks: u64,
    /// The classifier's optimizer (a checkpointed fourth role, `gan_classifier`).
    pub classifier_optim: Optim,
    /// Cap on the GAN gradient's norm (on the generator's sample, after the weight) as a
    /// multiple of the DMD gradient's, over the batch; 0: no cap. Default 0.2. As the classifier sharpens
    /// its gradient grows without bound (measured: from 0.3x DMD's to 50x in 450 steps at
    /// weight 1) and takes the generator over; the cap keeps DMD in charge, as VQGAN's adaptive
    /// weight balances its GAN and reconstruction gradients.
    pub max_grad_ratio: f64,
}

impl Default for Gan {
    fn default() -> Self {
        Gan {
            weight: 0.0,
            feature_blocks: 0,
            // The settings measured on moving-shapes (BENCHMARKS.md, "DMD2's GAN term").
            classifier_optim: Optim {
                lr: 1e-3,
                beta1: 0.0,
                ..Optim::default()
            },
            max_grad_ratio: 0.2,
        }
    }
}

impl Default for Distill {
    fn default() -> Self {
        Distill {
            steps: 500,
            batch_size: 16,
            generator_optim: Optim {
                lr: 5e-7,
                ..Optim::default()
            },
            fake_optim: Optim {
                lr: 1e-5,
                ..Optim::default()
            },
            generator_every: 5,
            timesteps: vec![1.0, 0.75, 0.5, 0.25],
            shift: 1.0,
            backward_simulation: true,
            b1_range: [3.0, 4.0],
            b2_range: [0.0, 0.5],
            t_range: [0.02, 0.98],
            prune_generator: true,
            ema_decay: 0.99,
            sampler: SamplerKind::Euler,
            regression: Regression::default(),
            unpruned: UnprunedSource::Base,
            fake_score: FakeScoreBlocks::Generator,
            guidance: GuidancePass::Pruned,
            data_forcing: 0.0,
            gan: Gan::default(),
            monitor_every: 0,
            monitor_videos: 32,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Checkpoint {
    /// Commit a checkpoint every this many steps of a training stage; 0: only at stage ends.
    pub interval_steps: u64,
    /// Keep the newest this many committed checkpoints.
    pub keep_last: u32,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            interval_steps: 100,
            keep_last: 2,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Eval {
    /// Videos generated per model evaluated.
    pub num_samples: u64,
    /// The teacher's reference sampler: Euler steps and CFG scale.
    pub teacher_steps: u64,
    pub teacher_cfg: f64,
    pub shift: f64,
    /// Also sample and score the teacher (reference sampler, and at the student's step
    /// count); baseline runs that only need their student's row turn it off.
    pub compare_teacher: bool,
    /// Videos per network call while sampling.
    pub batch_size: u64,
    /// A sampler that finishes faster is run again until this many seconds have passed, and
    /// its time is the mean (timer noise is large on a one-second run); 0: time one run.
    pub min_timed_seconds: f64,
}

impl Default for Eval {
    fn default() -> Self {
        Eval {
            num_samples: 64,
            teacher_steps: 50,
            teacher_cfg: 4.0,
            shift: 1.0,
            compare_teacher: true,
            batch_size: 32,
            min_timed_seconds: 5.0,
        }
    }
}
