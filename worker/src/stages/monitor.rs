//! Stage III's collapse monitor: every `distill.monitor_every` steps, what the generator does
//! now, logged by rank 0 as the step line's `monitor` object (drawn as curves in report.md).
//!
//! - `diversity`: for each of a few fixed prompts, the spread (standard deviation over noises,
//!   mean over elements) of the generator's first-step prediction `x0 = x - t0 G(x, t0)` from
//!   a fixed set of noises, averaged over the prompts. A generator that maps every noise to its
//!   prompt's mean video, the start of mode collapse, has 0.
//! - a small eval (moving-shapes): `distill.monitor_videos` videos from the generator's EMA
//!   (what export writes) with the student's sampler, the same noise every time, scored like
//!   the eval stage: the six scores, their average, the Fréchet distance and the motion
//!   directions per class.

use super::evaluate::sample_split;
use super::StageCtx;
use crate::data::Batch;
use crate::model::Dit;
use crate::sample;
use crate::shard::ShardedDit;
use crate::train::{batch_tensors, draws};
use tch::{Kind, Tensor};

/// Prompts and noises per prompt of the diversity probe.
const PROBE_PROMPTS: usize = 8;
const PROBE_NOISES: usize = 4;
/// Stream tag of the probe's noise (a stage number of `draws`).
const PROBE_NOISE: u64 = 0x5052_4f42; // "PROB"

pub struct Monitor {
    every: u64,
    /// Probe inputs: noise [P * M, ...] and prompts [P * M, L, D], prompt-major.
    noise: Tensor,
    text: Tensor,
}

impl Monitor {
    /// The probe's prompts are those of the first P data samples (for moving-shapes, one of
    /// each class); its noises are fixed by the seed.
    pub fn new(ctx: &StageCtx) -> Option<Monitor> {
        let every = ctx.cfg.distill.monitor_every;
        if every == 0 {
            return None;
        }
        let len = ctx.data.len();
        let idx: Vec<u64> = (0..PROBE_PROMPTS as u64)
            .flat_map(|i| std::iter::repeat_n(i % len, PROBE_NOISES))
            .collect();
        let (_, text) = batch_tensors(&Batch::gather(&ctx.data, &idx), &ctx.data, ctx.device);
        let shape = ctx.data.latent_shape();
        let noise = draws(
            ctx.cfg.experiment.seed,
            PROBE_NOISE,
            0,
            0,
            idx.len(),
            &shape,
            ctx.device,
        )
        .eps;
        Some(Monitor { every, noise, text })
    }

    /// Whether step `done` (1-based) is monitored: the first and every `every`-th.
    pub fn due(&self, done: u64) -> bool {
        done == 1 || done % self.every == 0
    }

    /// The generator's diversity over noise (every rank computes it; collective).
    pub fn diversity(
        &self,
        ctx: &StageCtx,
        generator: &ShardedDit,
        t0: f64,
        blocks: &[usize],
    ) -> f64 {
        let n = self.noise.size()[0];
        let t = Tensor::full([n], t0, (Kind::Float, self.noise.device()));
        let v = generator.output(ctx.comm, &self.noise, &t, &self.text, blocks);
        let x0 = &self.noise - v * t0;
        x0.view([PROBE_PROMPTS as i64, PROBE_NOISES as i64, -1])
            .std_dim(&[1i64][..], false, false)
            .mean(Kind::Float)
            .double_value(&[])
    }

    /// The small eval of `model` (collective; rank 0 gets the report, moving-shapes only).
    pub fn eval(
        &self,
        ctx: &StageCtx,
        model: &Dit,
        how: &sample::Sampling,
    ) -> Option<crate::eval::EvalReport> {
        let prompts = super::model_meta(model, &ctx.data).prompts?;
        let labels = sample::labels_for(ctx.cfg.distill.monitor_videos as usize, &[]);
        let (pixels, shape, _) = sample_split(ctx, model, &prompts, &labels, how, false);
        ctx.lead()
            .then(|| crate::eval::evaluate(&pixels, &labels, shape[1], shape[2]))
    }
}
