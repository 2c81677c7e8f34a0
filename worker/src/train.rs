//! Pieces every training stage shares: a trainable sharded *role* (model, optimiser, EMA),
//! the per-sample random draws, the per-step skip mask, and the flow-matching step.
//!
//! Flow matching: a batch of videos x0 and prompts; the prompt replaced by the null prompt
//! with probability `cfg_dropout` (so the model can do CFG); t uniform then shifted; noise eps;
//! the network regresses the velocity `eps - x0` at `x_t`.
//!
//! Random draws are keyed by `(seed, stage, step, global sample index)`, so a sample gets the
//! same noise and timestep whichever rank holds it: W ranks compute exactly what one rank
//! computes with the same global batch, and a resumed run draws what the uninterrupted one drew.

use crate::collective::Collective;
use crate::data::{Batch, DataSet, Loader};
use crate::flow;
use crate::model::Dit;
use crate::optim::{clip_factor, AdamW, Ema};
use crate::rng::Rng;
use crate::shard::ShardedDit;
use flg_core::config::Optim;
use tch::{Device, Kind, Tensor};

/// Stream tags.
const SAMPLE_STREAM: u64 = 0x5341_4d50; // "SAMP"
const MASK_STREAM: u64 = 0x4d41_534b; // "MASK"

/// Stage numbers used in the random streams.
pub mod stage_id {
    pub const PRETRAIN: u64 = 0;
    pub const IMPORTANCE: u64 = 1;
    pub const PRUNING: u64 = 2;
    pub const DISTILL: u64 = 3;
}

/// Per-sample random draws of one step.
pub struct Draws {
    /// Uniform [0, 1) per sample, [b] (the flow-matching time before shift).
    pub u: Tensor,
    /// Uniform [0, 1) per sample, [b] (compared with the prompt-dropout probability).
    pub keep_u: Tensor,
    /// Standard normal noise, [b, ...shape].
    pub eps: Tensor,
}

impl Draws {
    /// The draws of items `offset..offset + n` (a micro-batch).
    pub fn narrow(&self, offset: usize, n: usize) -> Draws {
        let (o, n) = (offset as i64, n as i64);
        Draws {
            u: self.u.narrow(0, o, n),
            keep_u: self.keep_u.narrow(0, o, n),
            eps: self.eps.narrow(0, o, n),
        }
    }
}

/// One micro-batch of a rank's share: items `offset..offset + len`, `share` of the share
/// (what its mean losses and gradients weigh in the step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MicroBatch {
    pub offset: usize,
    pub len: usize,
    pub share: f64,
}

impl MicroBatch {
    /// This micro-batch's rows of a per-item tensor of the share.
    pub fn of(&self, t: &Tensor) -> Tensor {
        t.narrow(0, self.offset as i64, self.len as i64)
    }

    /// This micro-batch's draws.
    pub fn draws(&self, d: &Draws) -> Draws {
        d.narrow(self.offset, self.len)
    }
}

/// The micro-batches of a rank's share of `local` items, `micro` at a time
/// (`cluster.micro_batch_size`; 0, or not less than the share: the whole share at once, with
/// share 1 exactly, so that the step computes what it computes without accumulation).
pub fn micro_batches(local: usize, micro: u64) -> Vec<MicroBatch> {
    let m = micro as usize;
    if m == 0 || m >= local {
        return vec![MicroBatch {
            offset: 0,
            len: local,
            share: 1.0,
        }];
    }
    (0..local)
        .step_by(m)
        .map(|offset| {
            let len = m.min(local - offset);
            MicroBatch {
                offset,
                len,
                share: len as f64 / local as f64,
            }
        })
        .collect()
}

/// Draws for the samples `first..first + b` of the global batch at `step`.
pub fn draws(
    seed: u64,
    stage: u64,
    step: u64,
    first: usize,
    b: usize,
    shape: &[i64],
    device: Device,
) -> Draws {
    let (mut u, mut keep, mut eps) = (
        Vec::with_capacity(b),
        Vec::with_capacity(b),
        Vec::with_capacity(b),
    );
    for j in first..first + b {
        tch::manual_seed(
            (Rng::derive(seed, &[SAMPLE_STREAM, stage, step, j as u64]).next_u64() >> 1) as i64,
        );
        u.push(Tensor::rand([1], (Kind::Float, Device::Cpu)));
        keep.push(Tensor::rand([1], (Kind::Float, Device::Cpu)));
        eps.push(Tensor::randn(shape, (Kind::Float, Device::Cpu)));
    }
    Draws {
        u: Tensor::cat(&u, 0).to_device(device),
        keep_u: Tensor::cat(&keep, 0).to_device(device),
        eps: Tensor::stack(&eps, 0).to_device(device),
    }
}

/// The blocks that run at `step` when each of `candidates` is skipped with probability `p`:
/// every block not skipped, in order. A function of `(seed, step)` only, so all ranks agree.
pub fn active_blocks(
    seed: u64,
    step: u64,
    num_blocks: usize,
    candidates: &[usize],
    p: f64,
) -> Vec<usize> {
    let mut rng = Rng::derive(seed, &[MASK_STREAM, step]);
    let mut skipped = vec![false; num_blocks];
    for &c in candidates {
        skipped[c] = rng.uniform() < p;
    }
    (0..num_blocks).filter(|&b| !skipped[b]).collect()
}

/// Fails when any rank runs a different set of blocks than this one at `step`. A rank that
/// drew its own skip mask would gather other units than its peers and hang the job or silently
/// mix models; this check (one small all-gather per step) turns that into a clear error.
pub fn check_same_blocks(
    comm: &dyn Collective,
    step: u64,
    num_blocks: usize,
    active: &[usize],
) -> Result<(), String> {
    let mut mine = vec![0f32; num_blocks];
    for &b in active {
        mine[b] = 1.0;
    }
    let all = comm.all_gather(&Tensor::from_slice(&mine));
    let all = Vec::<f32>::try_from(all).expect("f32 mask");
    for (r, theirs) in all.chunks(num_blocks).enumerate() {
        if theirs != mine.as_slice() {
            let blocks: Vec<usize> = (0..num_blocks).filter(|&b| theirs[b] > 0.5).collect();
            return Err(format!(
                "step {step}: rank {} runs blocks {active:?} but rank {r} runs {blocks:?}; \
                 every rank must draw the same skip mask",
                comm.rank()
            ));
        }
    }
    Ok(())
}

/// A trainable sharded model with its optimiser, clipping and optional EMA.
pub struct Role {
    pub model: ShardedDit,
    pub opt: AdamW,
    pub ema: Option<Ema>,
    pub grad_clip: f64,
}

impl Role {
    /// `updates`: the optimiser updates the role takes in its stage (where a cosine learning
    /// rate ends).
    pub fn new(
        model: ShardedDit,
        optim: &Optim,
        updates: u64,
        ema_decay: f64,
        comm: &dyn Collective,
    ) -> Role {
        let shards = model.shards();
        let opt = AdamW::with_decay_masks(optim, &shards, model.decay_masks(comm)).over(updates);
        let ema = (ema_decay > 0.0).then(|| Ema::new(ema_decay, &shards));
        Role {
            model,
            opt,
            ema,
            grad_clip: optim.grad_clip,
        }
    }

    /// Clips by the global gradient norm, updates, updates the EMA, clears the gradients.
    /// Returns the gradient norm before clipping.
    pub fn step(&mut self, comm: &dyn Collective) -> f64 {
        let norm = self.model.grad_norm(comm);
        let shards = self.model.shards();
        self.opt.update(
            &shards,
            &self.model.grads(),
            clip_factor(norm, self.grad_clip),
        );
        if let Some(e) = self.ema.as_mut() {
            e.update(&shards, self.opt.step - 1);
        }
        self.model.zero_grad();
        norm
    }

    /// The EMA weights (or the raw ones without EMA) as a whole model on every rank.
    pub fn averaged_dit(&self, comm: &dyn Collective) -> Dit {
        match &self.ema {
            Some(e) => self
                .model
                .with_shards(e.shadow.iter().map(|t| t.shallow_clone()).collect())
                .to_dit(comm),
            None => self.model.to_dit(comm),
        }
    }
}

/// A batch as tensors: x0 [b, C, T, H, W] and text [b, L, D].
pub fn batch_tensors(batch: &Batch, data: &DataSet, device: Device) -> (Tensor, Tensor) {
    let b = batch.len() as i64;
    let [c, t, h, w] = data.latent_shape();
    let [l, d] = data.text_shape();
    let x0 = Tensor::from_slice(&batch.latents)
        .view([b, c, t, h, w])
        .to_device(device);
    let text = Tensor::from_slice(&batch.text)
        .view([b, l, d])
        .to_device(device);
    (x0, text)
}

/// The inputs and target of one flow-matching step built from a batch and its draws: the
/// shifted times, the prompts with dropped ones replaced by the null prompt, the noisy
/// input `x_t` and the velocity target `eps - x0`.
pub struct FlowInputs {
    pub t: Tensor,
    pub text: Tensor,
    pub xt: Tensor,
    pub target: Tensor,
}

pub fn flow_inputs(
    x0: &Tensor,
    text: &Tensor,
    d: &Draws,
    shift: f64,
    cfg_dropout: f64,
    null: &flow::NullPrompt,
) -> FlowInputs {
    let t = flow::shift_t(&d.u, shift);
    let keep = d
        .keep_u
        .ge(cfg_dropout)
        .to_kind(Kind::Float)
        .view([-1, 1, 1]);
    let text = if null.is_zeros() {
        text * keep
    } else {
        text * &keep + null.like(text) * (1.0 - keep)
    };
    let xt = flow::noisy(x0, &d.eps, &t);
    FlowInputs {
        t,
        text,
        xt,
        target: &d.eps - x0,
    }
}

/// The flow-matching loss of a plain (unsharded) velocity function, as a graph for autograd.
pub fn flow_loss(
    velocity: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    x0: &Tensor,
    text: &Tensor,
    d: &Draws,
    shift: f64,
    cfg_dropout: f64,
    null: &flow::NullPrompt,
) -> Tensor {
    let f = flow_inputs(x0, text, d, shift, cfg_dropout, null);
    flow::mse(&velocity(&f.xt, &f.t, &f.text), &f.target)
}

/// The flow-matching loss of a sharded model on a local batch, backpropagated into its shard
/// gradients; returns the loss averaged over all ranks. `d` holds this batch's draws; only the
/// `active` blocks run.
#[allow(clippy::too_many_arguments)]
pub fn flow_matching_backward(
    model: &mut ShardedDit,
    comm: &dyn Collective,
    x0: &Tensor,
    text: &Tensor,
    d: &Draws,
    shift: f64,
    cfg_dropout: f64,
    null: &flow::NullPrompt,
    active: &[usize],
) -> f64 {
    let f = flow_inputs(x0, text, d, shift, cfg_dropout, null);
    let (out, tape) = model.forward(comm, &f.xt, &f.t, &f.text, active);
    let local = flow::mse(&out, &f.target).double_value(&[]);
    let grad_out = (&out - &f.target) * (2.0 / out.numel() as f64);
    model.backward(comm, tape, &grad_out);
    crate::collective::all_reduce_mean(comm, &[local])[0]
}

/// This rank's share of the loader's next global batch, as tensors, with its per-sample draws.
#[allow(clippy::too_many_arguments)]
pub fn next_batch_with_draws(
    loader: &mut Loader,
    data: &DataSet,
    comm: &dyn Collective,
    seed: u64,
    stage: u64,
    step: u64,
    device: Device,
) -> (Tensor, Tensor, Draws) {
    let batch = loader.next_batch();
    let (x0, text) = batch_tensors(&batch, data, device);
    let b = loader.local_batch() as usize;
    let d = draws(
        seed,
        stage,
        step,
        comm.rank() * b,
        b,
        &x0.size()[1..],
        device,
    );
    (x0, text, d)
}

/// One flow-matching training step of a role on the loader's next batch: draws, forward,
/// backward, clipped update. Returns the loss (mean over ranks) and the gradient norm.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    role: &mut Role,
    comm: &dyn Collective,
    loader: &mut Loader,
    data: &DataSet,
    seed: u64,
    stage: u64,
    step: u64,
    shift: f64,
    cfg_dropout: f64,
    null: &flow::NullPrompt,
    active: &[usize],
    micro: u64,
) -> (f64, f64) {
    let (x0, text, d) =
        next_batch_with_draws(loader, data, comm, seed, stage, step, role.model.device);
    let local = x0.size()[0] as usize;
    let mut loss = 0.0;
    for mb in micro_batches(local, micro) {
        role.model.grad_scale = mb.share;
        loss += mb.share
            * flow_matching_backward(
                &mut role.model,
                comm,
                &mb.of(&x0),
                &mb.of(&text),
                &mb.draws(&d),
                shift,
                cfg_dropout,
                null,
                active,
            );
    }
    role.model.grad_scale = 1.0;
    (loss, role.step(comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_cover_the_share() {
        let parts = |local, micro| -> Vec<(usize, usize, f64)> {
            micro_batches(local, micro)
                .iter()
                .map(|m| (m.offset, m.len, m.share))
                .collect()
        };
        assert_eq!(parts(8, 0), vec![(0, 8, 1.0)]);
        assert_eq!(parts(8, 8), vec![(0, 8, 1.0)]);
        assert_eq!(parts(8, 16), vec![(0, 8, 1.0)]);
        assert_eq!(
            parts(8, 2),
            vec![(0, 2, 0.25), (2, 2, 0.25), (4, 2, 0.25), (6, 2, 0.25)]
        );
        let d = draws(3, 0, 7, 0, 4, &[2, 3], Device::Cpu);
        assert!(d
            .narrow(2, 2)
            .eps
            .equal(&draws(3, 0, 7, 2, 2, &[2, 3], Device::Cpu).eps));
    }

    #[test]
    fn draws_do_not_depend_on_how_the_batch_is_split() {
        let whole = draws(3, 0, 7, 0, 4, &[2, 3], Device::Cpu);
        let a = draws(3, 0, 7, 0, 2, &[2, 3], Device::Cpu);
        let b = draws(3, 0, 7, 2, 2, &[2, 3], Device::Cpu);
        assert!(whole.eps.equal(&Tensor::cat(&[a.eps, b.eps], 0)));
        assert!(whole.u.equal(&Tensor::cat(&[a.u, b.u], 0)));
        let other_step = draws(3, 0, 8, 0, 4, &[2, 3], Device::Cpu);
        assert!(!whole.eps.equal(&other_step.eps));
    }

    #[test]
    fn skip_masks_depend_on_the_step_only() {
        let cands = [3usize, 4, 5];
        let masks: Vec<Vec<usize>> = (0..200)
            .map(|s| active_blocks(1, s, 10, &cands, 0.5))
            .collect();
        assert_eq!(
            masks,
            (0..200)
                .map(|s| active_blocks(1, s, 10, &cands, 0.5))
                .collect::<Vec<_>>()
        );
        // Non-candidates always run; each candidate is skipped about half the time.
        assert!(masks
            .iter()
            .all(|m| [0, 1, 2, 6, 7, 8, 9].iter().all(|b| m.contains(b))));
        for c in cands {
            let skipped = masks.iter().filter(|m| !m.contains(&c)).count();
            assert!(
                (70..130).contains(&skipped),
                "block {c} skipped {skipped}/200"
            );
        }
    }
}
