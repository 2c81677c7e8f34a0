//! How much memory a rank needs (`fastlightgen validate --estimate-memory`), from the config
//! alone: no model is built, no libtorch is linked.
//!
//! Per rank and per role (a sharded model: the trained student, a frozen teacher, the fake
//! score), for each training stage the config runs:
//! - state, sharded over the W ranks, always f32: parameters, gradients, AdamW's two
//!   moments, the EMA (roles that keep one);
//! - gathered units: a unit (the stem, or one block) all-gathered in the compute precision
//!   for the forward, two at once with prefetch; in the backward also its gradient (compute
//!   precision) and the flat f32 copy that is reduce-scattered; with no recompute every active
//!   block's gathered parameters stay alive until the backward;
//! - activations per token: with recompute (`cluster.activation_checkpoint = "full"`) each
//!   block's input plus one block's saved tensors while it is recomputed; without it, every
//!   block's saved tensors (see [`block_activations_per_token`]);
//! - the tensors of the loss at the model's input and output (latent-sized, f32);
//! - while a stage starts, the whole model in f32 on every rank (it is loaded, then sharded);
//! - the runtime itself: libtorch, OpenMPI (CPU) or the CUDA context and libraries (GPU).
//!
//! `bench memory` (worker) checks the estimate against the measured peak on the CPU.

use crate::config::{
    ActivationCheckpoint, Config, DataKind, Device, FakeScoreBlocks, ModelDims, Precision,
};
use crate::stage::Stage;

pub const GIB: f64 = (1u64 << 30) as f64;

/// Resident memory of a worker process before it builds any model: libtorch's CPU libraries,
/// OpenMPI after MPI_Init and the binary (`start_rss_bytes` of `flg-worker bench memory`:
/// 0.373-0.379 GiB on the 2-core CI machine, 2026-11-27).
pub const CPU_RUNTIME_BYTES: f64 = 0.38 * GIB;
/// A GPU rank's fixed cost: the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers (an
/// assumption, typical for PyTorch on Hopper; the GPU kit reports the measured figure).
pub const GPU_RUNTIME_BYTES: f64 = 1.0 * GIB;

/// Parameters of the stem (patch, text and time embeddings, the head).
pub fn stem_params(d: &ModelDims) -> i64 {
    let [pt, ph, pw] = d.patch;
    let dim = d.dim;
    let patch = dim * d.in_channels * pt * ph * pw + dim;
    let text = dim * d.text_dim + dim + dim * dim + dim;
    let time = dim * d.freq_dim + dim + dim * dim + dim + 6 * dim * dim + 6 * dim;
    let head = 2 * dim + d.out_channels * pt * ph * pw * dim + d.out_channels * pt * ph * pw;
    patch + text + time + head
}

/// Parameters of one transformer block.
pub fn block_params(d: &ModelDims) -> i64 {
    let (dim, ffn) = (d.dim, d.ffn_dim);
    let modulation = 6 * dim;
    let attention = 4 * (dim * dim + dim) + 2 * dim; // q, k, v, o and the two q/k norms
    let norm3 = 2 * dim;
    let mlp = ffn * dim + ffn + dim * ffn + dim;
    modulation + 2 * attention + norm3 + mlp
}

/// Elements autograd keeps per video token for one block's backward: self-attention 13 x D
/// (norm input and output, modulated input, q, k and their norms, v, rotated q and k, the
/// attention output and its reshaped copy, the projection), cross-attention 6 x D, the MLP
/// 5 x D + 2 x FFN (its two hidden activations), read off `dit::block_forward`.
pub fn block_activations_per_token(d: &ModelDims) -> f64 {
    (24 * d.dim + 2 * d.ffn_dim) as f64
}

/// One role of a stage.
#[derive(Clone, Debug)]
pub struct RoleEstimate {
    pub name: &'static str,
    /// Parameters of the whole role (all ranks).
    pub params: i64,
    /// Bytes on this rank: parameter, gradient, AdamW-moment and EMA shards.
    pub params_bytes: f64,
    pub grads_bytes: f64,
    pub moments_bytes: f64,
    pub ema_bytes: f64,
}

impl RoleEstimate {
    pub fn total(&self) -> f64 {
        self.params_bytes + self.grads_bytes + self.moments_bytes + self.ema_bytes
    }
}

/// One stage's memory on one rank.
#[derive(Clone, Debug)]
pub struct StageEstimate {
    pub stage: Stage,
    pub batch_per_rank: u64,
    pub tokens_per_video: i64,
    pub roles: Vec<RoleEstimate>,
    pub gathered_bytes: f64,
    pub activations_bytes: f64,
    /// Whether the stage trains (has a tape for a backward).
    pub trains: bool,
    /// The activations per token of the stage's training step with and without recompute.
    pub activation_bytes_per_token_full: f64,
    pub activation_bytes_per_token_none: f64,
    pub io_bytes: f64,
    /// The whole model in f32 while the stage loads and shards it.
    pub loading_bytes: f64,
    pub runtime_bytes: f64,
}

impl StageEstimate {
    pub fn state_bytes(&self) -> f64 {
        self.roles.iter().map(RoleEstimate::total).sum()
    }

    /// The stage's peak: its step, or its start (the model loaded whole) if that is larger.
    pub fn total(&self) -> f64 {
        let step =
            self.state_bytes() + self.gathered_bytes + self.activations_bytes + self.io_bytes;
        let start = self.state_bytes() + self.loading_bytes;
        self.runtime_bytes + step.max(start)
    }
}

/// What shapes a training step: the config's device, precision and memory choices.
#[derive(Clone, Debug)]
pub struct StepSetup {
    pub dims: ModelDims,
    pub world: u32,
    /// [C, T, H, W] of one latent video and the text tokens per video.
    pub latent: [i64; 4],
    pub text_len: i64,
    pub device: Device,
    pub precision: Precision,
    pub recompute: bool,
    pub prefetch: bool,
}

impl StepSetup {
    fn compute_bytes(&self) -> f64 {
        match self.precision {
            Precision::Bf16 => 2.0,
            Precision::Fp32 => 4.0,
        }
    }

    fn shard(&self, params: i64) -> f64 {
        4.0 * (params as f64 / self.world as f64).ceil()
    }

    fn role(&self, name: &'static str, params: i64, trained: bool, ema: bool) -> RoleEstimate {
        let s = self.shard(params);
        RoleEstimate {
            name,
            params,
            params_bytes: s,
            grads_bytes: if trained { s } else { 0.0 },
            // AdamW's two moments, and as much again for the update's temporaries.
            moments_bytes: if trained { 4.0 * s } else { 0.0 },
            ema_bytes: if ema { s } else { 0.0 },
        }
    }

    pub fn tokens_per_video(&self) -> i64 {
        let [_, t, h, w] = self.latent;
        let [pt, ph, pw] = self.dims.patch;
        (t / pt) * (h / ph) * (w / pw)
    }

    /// Bytes per video token of one training step's tape over `blocks` blocks.
    fn tape_per_token(&self, blocks: i64, recompute: bool) -> f64 {
        let k = self.compute_bytes();
        let d = self.dims.dim as f64;
        let block = block_activations_per_token(&self.dims);
        // The stem's tokens, time and text paths, and the running gradient: about 6 x D.
        let around = 6.0 * d;
        let per_token = if recompute {
            blocks as f64 * d + block + around
        } else {
            blocks as f64 * (block + d) + around
        };
        per_token * k
    }

    /// The step of a stage that trains `trained` blocks (the tape) with `roles`.
    fn stage(
        &self,
        stage: Stage,
        batch: u64,
        roles: Vec<RoleEstimate>,
        tape_blocks: Option<i64>,
        loaded_params: i64,
    ) -> StageEstimate {
        let k = self.compute_bytes();
        let b = (batch as f64 / self.world as f64).ceil();
        let tokens = self.tokens_per_video();
        let unit = block_params(&self.dims).max(stem_params(&self.dims)) as f64;
        let in_flight = if self.prefetch { 2.0 } else { 1.0 };
        let (gathered, activations) = match tape_blocks {
            Some(blocks) => {
                // Backward of a unit: gathered leaves, their gradient, the flat f32 copy.
                let backward = (2.0 * k + 4.0) * unit;
                let kept = if self.recompute {
                    0.0
                } else {
                    blocks as f64 * block_params(&self.dims) as f64 * k
                };
                (
                    in_flight * unit * k + backward + kept,
                    b * tokens as f64 * self.tape_per_token(blocks, self.recompute),
                )
            }
            // Inference: one block's working set.
            None => (
                in_flight * unit * k,
                b * tokens as f64 * block_activations_per_token(&self.dims) * k,
            ),
        };
        let [c, t, h, w] = self.latent;
        // Input, noise, target, output and their gradients: about 12 latent-sized f32 tensors;
        // the text embeddings twice.
        let io = b
            * (12.0 * (c * t * h * w) as f64 + 2.0 * (self.text_len * self.dims.text_dim) as f64)
            * 4.0;
        let blocks = tape_blocks.unwrap_or(self.dims.num_blocks);
        StageEstimate {
            stage,
            batch_per_rank: b as u64,
            tokens_per_video: tokens,
            roles,
            gathered_bytes: gathered,
            activations_bytes: activations,
            trains: tape_blocks.is_some(),
            activation_bytes_per_token_full: self.tape_per_token(blocks, true),
            activation_bytes_per_token_none: self.tape_per_token(blocks, false),
            io_bytes: io,
            loading_bytes: 4.0 * loaded_params as f64,
            runtime_bytes: match self.device {
                Device::Cpu => CPU_RUNTIME_BYTES,
                Device::Cuda => GPU_RUNTIME_BYTES,
            },
        }
    }

    /// A pretraining step (also what `bench memory` measures): the model trained with AdamW,
    /// with an EMA when `ema`.
    pub fn pretrain(&self, batch: u64, ema: bool) -> StageEstimate {
        let p = total_params(&self.dims, self.dims.num_blocks);
        let roles = vec![self.role("model", p, true, ema)];
        self.stage(Stage::Pretrain, batch, roles, Some(self.dims.num_blocks), p)
    }
}

/// Parameters of a model with `blocks` blocks.
pub fn total_params(d: &ModelDims, blocks: i64) -> i64 {
    stem_params(d) + blocks * block_params(d)
}

/// The estimate for every stage of a config that holds models on the ranks.
pub struct Estimate {
    pub setup: StepSetup,
    pub stages: Vec<StageEstimate>,
    /// Where the latent shape came from (the data set, or an assumption).
    pub latent_source: String,
}

impl Estimate {
    pub fn peak(&self) -> Option<&StageEstimate> {
        self.stages
            .iter()
            .max_by(|a, b| a.total().total_cmp(&b.total()))
    }
}

/// The setup of a config's run on `world` ranks, with the latent video shape.
pub fn setup(cfg: &Config, world: u32, latent: [i64; 4], text_len: i64) -> StepSetup {
    let prefetch = cfg.cluster.prefetch.enabled(cfg.cluster.device);
    StepSetup {
        dims: cfg.model_dims(),
        world,
        latent,
        text_len,
        device: cfg.cluster.device,
        precision: cfg.cluster.precision,
        recompute: cfg.cluster.activation_checkpoint == ActivationCheckpoint::Full,
        prefetch,
    }
}

/// The latent shape of a config's data: moving-shapes from the config, latents from the data
/// set's dataset.json when it can be read, else `fallback`.
pub fn latent_shape(cfg: &Config, fallback: ([i64; 4], i64)) -> (([i64; 4], i64), String) {
    let d = &cfg.data;
    match d.kind {
        DataKind::MovingShapes => (
            (
                [cfg.model_dims().in_channels, d.frames, d.size, d.size],
                d.text_len,
            ),
            "moving-shapes settings".into(),
        ),
        DataKind::Latents => {
            let from_file = d
                .path
                .as_ref()
                .and_then(|p| crate::dataset::DatasetManifest::read(p).ok())
                .map(|m| (m.latent_shape, m.text_shape[0]));
            match from_file {
                Some(shape) => (shape, "the data set's dataset.json".into()),
                None => (fallback, "assumed (the data set could not be read)".into()),
            }
        }
    }
}

/// Every stage of `cfg` on `world` ranks.
pub fn estimate(
    cfg: &Config,
    world: u32,
    latent: [i64; 4],
    text_len: i64,
    source: String,
) -> Estimate {
    let s = setup(cfg, world, latent, text_len);
    let d = &s.dims;
    let full = total_params(d, d.num_blocks);
    let removed =
        ((cfg.importance.prune_ratio * d.num_blocks as f64).round() as i64).min(d.num_blocks - 1);
    // Plain DMD2 (`distill.prune_generator = false`) keeps every block in the generator.
    let generator_blocks = if cfg.distill.prune_generator {
        d.num_blocks - removed
    } else {
        d.num_blocks
    };
    let student = total_params(d, generator_blocks);
    let mut stages = Vec::new();
    for stage in cfg.stages() {
        match stage {
            Stage::Pretrain => {
                stages.push(s.pretrain(cfg.pretrain.batch_size, cfg.pretrain.ema_decay > 0.0))
            }
            Stage::Importance => stages.push(s.stage(
                Stage::Importance,
                cfg.importance.batch_size,
                vec![s.role("teacher", full, false, false)],
                None,
                full,
            )),
            Stage::Pruning => stages.push(s.stage(
                Stage::Pruning,
                cfg.pruning.batch_size,
                vec![s.role("model", full, true, false)],
                Some(d.num_blocks),
                full,
            )),
            Stage::Distill => stages.push(s.stage(
                Stage::Distill,
                cfg.distill.batch_size,
                vec![
                    s.role("generator", student, true, cfg.distill.ema_decay > 0.0),
                    s.role(
                        "fake score",
                        match cfg.distill.fake_score {
                            FakeScoreBlocks::Generator => student,
                            FakeScoreBlocks::Full => full,
                        },
                        true,
                        false,
                    ),
                    s.role("teacher", full, false, false),
                ],
                Some(generator_blocks),
                full,
            )),
            _ => {} // export and eval hold one unsharded model; the training stages dominate
        }
    }
    Estimate {
        setup: s,
        stages,
        latent_source: source,
    }
}

fn gib(b: f64) -> String {
    format!("{:.2}", b / GIB)
}

/// The estimate as a table per stage, and the peak against `device_gib` per rank.
pub fn render(e: &Estimate, device_gib: f64) -> String {
    use std::fmt::Write;
    let s = &e.setup;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "memory per rank, {} rank(s) on {:?}, {:?} compute, activation checkpoint {}, prefetch {}",
        s.world,
        s.device,
        s.precision,
        if s.recompute { "full" } else { "none" },
        if s.prefetch { "on" } else { "off" },
    );
    let [c, t, h, w] = s.latent;
    let _ = writeln!(
        out,
        "  latent video [C, T, H, W] = [{c}, {t}, {h}, {w}] ({} tokens), {} text tokens: {}",
        s.tokens_per_video(),
        s.text_len,
        e.latent_source
    );
    for st in &e.stages {
        let _ = writeln!(
            out,
            "  {} (batch {} per rank):",
            st.stage, st.batch_per_rank
        );
        for r in &st.roles {
            let _ = writeln!(
                out,
                "    {:<11} {:>6.1}M params: params {} + grads {} + AdamW {} + EMA {} = {} GiB",
                r.name,
                r.params as f64 / 1e6,
                gib(r.params_bytes),
                gib(r.grads_bytes),
                gib(r.moments_bytes),
                gib(r.ema_bytes),
                gib(r.total())
            );
        }
        let per_token = if st.trains {
            format!(
                " ({:.0} B/token with recompute, {:.0} without)",
                st.activation_bytes_per_token_full, st.activation_bytes_per_token_none
            )
        } else {
            " (inference)".to_string()
        };
        let _ = writeln!(
            out,
            "    gathered units {} GiB; activations {} GiB{per_token}; loss tensors {} GiB; loading the f32 model {} GiB; runtime {} GiB",
            gib(st.gathered_bytes),
            gib(st.activations_bytes),
            gib(st.io_bytes),
            gib(st.loading_bytes),
            gib(st.runtime_bytes),
        );
        let _ = writeln!(out, "    total {} GiB", gib(st.total()));
    }
    if let Some(p) = e.peak() {
        let verdict = if p.total() <= device_gib * GIB {
            "fits"
        } else {
            "does NOT fit"
        };
        let _ = writeln!(
            out,
            "  peak: {} GiB in {} of {device_gib:.0} GiB per rank: {verdict}",
            gib(p.total()),
            p.stage
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset;

    #[test]
    fn parameter_counts_of_the_presets() {
        // Wan 2.1 T2V 1.3B: 1.42B parameters (the released checkpoint's count).
        let wan = preset("wan2.1-t2v-1.3b").unwrap();
        let p = total_params(&wan, wan.num_blocks);
        assert!((1.40e9..1.45e9).contains(&(p as f64)), "{p}");
        let tiny = preset("tiny").unwrap();
        assert_eq!(
            total_params(&tiny, tiny.num_blocks),
            1_592_016,
            "bench device step prints it"
        );
    }

    #[test]
    fn the_generator_is_sized_as_the_config_prunes_it() {
        let text = "[experiment]\nname = \"t\"\nstages = [\"pretrain\", \"importance\", \"pruning\", \"distill\"]\n[model]\npreset = \"tiny\"\n";
        let options = crate::config::LoadOptions { check_files: false };
        let mut cfg = Config::parse(text, std::path::Path::new("t.toml"), options).unwrap();
        let generator = |cfg: &Config| {
            let e = estimate(cfg, 2, [3, 4, 8, 8], 4, "test".into());
            let distill = e.stages.iter().find(|s| s.stage == Stage::Distill).unwrap();
            let role = |name| {
                distill
                    .roles
                    .iter()
                    .find(|r| r.name == name)
                    .unwrap()
                    .params
            };
            (role("generator"), role("fake score"), role("teacher"))
        };
        let (pruned, pruned_fake, teacher) = generator(&cfg);
        assert!(pruned < teacher, "{pruned} vs {teacher}");
        assert_eq!(
            pruned_fake, pruned,
            "the fake score starts as the generator"
        );
        cfg.distill.prune_generator = false;
        let (full, full_fake, _) = generator(&cfg);
        assert_eq!(full, teacher, "plain DMD2's generator keeps every block");
        assert_eq!(full_fake, teacher);
    }

    #[test]
    fn sharding_divides_the_state_and_recompute_saves_activations() {
        let dims = preset("small-100m").unwrap();
        let setup = |world, recompute| StepSetup {
            dims: dims.clone(),
            world,
            latent: [3, 8, 16, 16],
            text_len: 4,
            device: Device::Cpu,
            precision: Precision::Fp32,
            recompute,
            prefetch: false,
        };
        let one = setup(1, true).pretrain(8, false);
        let two = setup(2, true).pretrain(8, false);
        let ratio = one.state_bytes() / two.state_bytes();
        assert!((ratio - 2.0).abs() < 1e-3, "{ratio}");
        assert!((one.activations_bytes / two.activations_bytes - 2.0).abs() < 1e-9);
        let none = setup(1, false).pretrain(8, false);
        assert!(none.activations_bytes > 5.0 * one.activations_bytes);
        assert!(none.gathered_bytes > one.gathered_bytes);
    }
}

/// This machine's memory (`MemTotal` of /proc/meminfo), `None` where it cannot be read.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
