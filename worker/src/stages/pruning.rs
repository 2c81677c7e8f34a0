//! Stage II: dynamic probabilistic pruning.
//!
//! From the teacher's weights, every step draws a skip mask over the Stage I candidates (each
//! skipped with probability `skip_prob`, the same mask on every rank because it is a function
//! of `(seed, step)` only) and runs the *same* weights twice on the same `(x_t, t, c)`: the
//! unpruned pass U (every block, no gradient) and the pruned pass P (the mask applied). Loss:
//! `alpha * |P - sg(U)|^2 + (1 - alpha) * |P - (eps - x0)|^2`. Both passes' flow losses are
//! logged so the pruned model can be seen catching up with the full one.
//!
//! `pruning.target` picks U's weights: the live ones (`self`, the paper's), a frozen copy of
//! the teacher (`frozen`), or an EMA of the live ones (`ema`).

use super::StageCtx;
use crate::checkpoint::Loaded;
use crate::collective::{all_reduce_mean, Collective};
use crate::data::{DataSet, Loader};
use crate::flow;
use crate::flow::NullPrompt;
use crate::shard::ShardedDit;
use crate::train::{
    active_blocks, batch_tensors, check_same_blocks, draws, flow_inputs, micro_batches,
    next_batch_with_draws, stage_id, Draws, Role,
};
use crate::trainer::{StepOutput, TrainingStage};
use anyhow::{Context, Result};
use flg_core::config::{Pruning, PruningTarget};
use flg_core::formats::importance::ImportanceReport;
use flg_core::Stage;
use std::path::PathBuf;
use tch::Tensor;

/// The losses of one Stage II step, each the mean over ranks.
#[derive(Clone, Copy, Debug)]
pub struct PruningLosses {
    /// The trained objective.
    pub loss: f64,
    /// `|P - U|^2`: how far the pruned pass is from the full one.
    pub gap: f64,
    /// Flow-matching loss of the unpruned pass.
    pub flow_full: f64,
    /// Flow-matching loss of the pruned pass.
    pub flow_pruned: f64,
    /// The feature loss (`pruning.feature_weight`); NaN when off.
    pub feature: f64,
}

/// Both passes on one local batch; backpropagates the Stage II loss into the shard gradients.
/// U comes from `target`'s weights when given, else from `model`'s own. With a separate
/// target, the trained model's own unpruned pass serves only the `flow_full` diagnostic and
/// costs a forward of every block, so it runs only when `measure_full` is set (`flow_full` is
/// NaN otherwise); with U from the live weights it is U itself and always measured.
#[allow(clippy::too_many_arguments)]
pub fn pruning_backward(
    model: &mut ShardedDit,
    target: Option<&ShardedDit>,
    measure_full: bool,
    comm: &dyn Collective,
    x0: &Tensor,
    text: &Tensor,
    d: &Draws,
    p: &Pruning,
    null: &NullPrompt,
    active: &[usize],
) -> PruningLosses {
    let f = flow_inputs(x0, text, d, p.shift, p.cfg_dropout, null);
    let all = model.block_ids.clone();
    // U is a target (stop-gradient): no tape. Its token states only for the feature loss.
    let u_model = target.unwrap_or(model);
    let (u, u_states) = if p.feature_weight > 0.0 {
        let (u, states) = u_model.output_and_states(comm, &f.xt, &f.t, &f.text, &all);
        (u, Some(states))
    } else {
        (u_model.output(comm, &f.xt, &f.t, &f.text, &all), None)
    };
    // The flow loss of the trained model's own unpruned pass (what `flow_full` reports) is U's
    // only when U comes from the live weights.
    let own_full = match target {
        None => Some(u.shallow_clone()),
        Some(_) if measure_full => Some(model.output(comm, &f.xt, &f.t, &f.text, &all)),
        Some(_) => None,
    };
    let (pred, tape) = model.forward(comm, &f.xt, &f.t, &f.text, active);
    let n = pred.numel() as f64;
    let alpha = p.alpha;
    let grad = (&pred - &u) * (2.0 * alpha / n) + (&pred - &f.target) * (2.0 * (1.0 - alpha) / n);
    let gap = flow::mse(&pred, &u).double_value(&[]);
    let flow_full = own_full.map_or(f64::NAN, |v| flow::mse(&v, &f.target).double_value(&[]));
    let flow_pruned = flow::mse(&pred, &f.target).double_value(&[]);
    let (feature, state_grads) = match &u_states {
        Some(states) => feature_loss(
            comm,
            tape.block_outputs(),
            states,
            active,
            &all,
            p.feature_weight,
        ),
        None => (f64::NAN, Vec::new()),
    };
    let loss = alpha * gap
        + (1.0 - alpha) * flow_pruned
        + if feature.is_finite() {
            p.feature_weight * feature
        } else {
            0.0
        };
    model.backward_with_states(comm, tape, &grad, &state_grads);
    let m = all_reduce_mean(comm, &[loss, gap, flow_full, flow_pruned, feature]);
    PruningLosses {
        loss: m[0],
        gap: m[1],
        flow_full: m[2],
        flow_pruned: m[3],
        feature: m[4],
    }
}

/// The feature loss and its gradients: after each block `active[k]` of the pruned pass, its
/// token states `pruned[k]` against U's after the same block (`full[j]`, `all[j]` that block),
/// as `mean((h_P - h_U)^2) / mean(h_U^2)`, averaged over the blocks. The normaliser is U's
/// mean square over every rank's batch (a constant of the step), so that each block counts
/// alike whatever its scale and the loss is the same on any number of ranks. Returns the
/// local loss and `(k, weight * d loss / d pruned[k])`.
fn feature_loss(
    comm: &dyn Collective,
    pruned: &[Tensor],
    full: &[Tensor],
    active: &[usize],
    all: &[usize],
    weight: f64,
) -> (f64, Vec<(usize, Tensor)>) {
    use tch::Kind;
    let pairs: Vec<(Tensor, Tensor)> = active
        .iter()
        .enumerate()
        .map(|(k, id)| {
            let j = all
                .iter()
                .position(|b| b == id)
                .expect("the pruned pass runs blocks of the full one");
            (pruned[k].to_kind(Kind::Float), full[j].to_kind(Kind::Float))
        })
        .collect();
    let local_sq: Vec<f64> = pairs
        .iter()
        .map(|(_, u)| u.square().mean(Kind::Float).double_value(&[]))
        .collect();
    let scale = all_reduce_mean(comm, &local_sq);
    let blocks = pairs.len() as f64;
    let mut loss = 0.0;
    let mut grads = Vec::with_capacity(pairs.len());
    for (k, ((p, u), s)) in pairs.iter().zip(&scale).enumerate() {
        let s = s.max(1e-12);
        let diff = p - u;
        loss += diff.square().mean(Kind::Float).double_value(&[]) / (s * blocks);
        grads.push((k, diff * (2.0 * weight / (s * blocks * p.numel() as f64))));
    }
    (loss, grads)
}

/// `|P - U|^2` with every candidate removed, on a fixed held-out batch (the first
/// `batch` videos of the data set, fixed draws): the number Stage II exists to lower. U comes
/// from `target`'s weights when given (a frozen target), else from `model`'s.
#[allow(clippy::too_many_arguments)]
pub fn removed_gap(
    model: &ShardedDit,
    target: Option<&ShardedDit>,
    comm: &dyn Collective,
    data: &DataSet,
    batch: u64,
    shift: f64,
    seed: u64,
    kept: &[usize],
) -> f64 {
    let local = (batch as usize / comm.world()).max(1);
    let first = comm.rank() * local;
    let items: Vec<u64> = (0..local as u64)
        .map(|i| (first as u64 + i) % data.len())
        .collect();
    let b = crate::data::Batch::gather(data, &items);
    let (x0, text) = batch_tensors(&b, data, model.device);
    let d = draws(
        seed,
        HELD_OUT,
        0,
        first,
        local,
        &x0.size()[1..],
        model.device,
    );
    let f = flow_inputs(&x0, &text, &d, shift, 0.0, &NullPrompt::zeros());
    let u = target
        .unwrap_or(model)
        .output(comm, &f.xt, &f.t, &f.text, &model.block_ids.clone());
    let p = model.output(comm, &f.xt, &f.t, &f.text, kept);
    all_reduce_mean(comm, &[flow::mse(&p, &u).double_value(&[])])[0]
}

/// With a separate target (frozen or EMA), the trained model's own unpruned pass is measured
/// (`flow_full`) on every this many steps and the last one; on the demo's config that pass was
/// a fifth of the step's time, spent on a number only the loss curve shows.
pub const FULL_PASS_EVERY: u64 = 10;

/// Draw stream of the held-out measurement.
const HELD_OUT: u64 = 0x484f_4c44; // "HOLD"

/// Stage II's state: the model trained with skips, and what it measures itself by.
pub struct PruningStage {
    pub role: Role,
    /// The teacher, unchanged, as U's weights (`pruning.target = "frozen"`).
    frozen: Option<ShardedDit>,
    cfg: flg_core::config::Pruning,
    seed: u64,
    /// The seed of the per-step skip masks: the run's seed. Only the probe that shows the
    /// per-step agreement check at work changes it on one rank.
    pub mask_seed: u64,
    pub candidates: Vec<usize>,
    kept: Vec<usize>,
    /// The held-out gap with every candidate removed, before training.
    pub gap_before: f64,
    /// The latest measured `flow_full` (see [`FULL_PASS_EVERY`]), which the coordinator keeps
    /// showing between measurements.
    last_flow_full: f64,
}

impl PruningStage {
    /// From the teacher's weights, with Stage I's `candidates`.
    pub fn new(
        ctx: &StageCtx,
        teacher: &crate::model::Dit,
        candidates: Vec<usize>,
    ) -> PruningStage {
        let p = &ctx.cfg.pruning;
        let ema_decay = match p.target {
            PruningTarget::Ema => p.target_ema_decay,
            PruningTarget::Live | PruningTarget::Frozen => 0.0,
        };
        let role = Role::new(ctx.shard(teacher), &p.optim, p.steps, ema_decay, ctx.comm);
        let frozen = (p.target == PruningTarget::Frozen).then(|| ctx.shard(teacher));
        let kept = super::kept_blocks(&role.model.block_ids, &candidates);
        if ctx.lead() {
            tracing::info!(candidates = ?candidates, steps = p.steps, alpha = p.alpha, skip_prob = p.skip_prob, "Stage II: dynamic probabilistic pruning");
        }
        PruningStage {
            role,
            frozen,
            cfg: p.clone(),
            seed: ctx.cfg.experiment.seed,
            mask_seed: ctx.cfg.experiment.seed,
            candidates,
            kept,
            gap_before: f64::NAN,
            last_flow_full: f64::NAN,
        }
    }

    pub fn loader(ctx: &StageCtx) -> Result<Loader> {
        Loader::new(
            ctx.data.clone(),
            ctx.cfg.experiment.seed ^ stage_id::PRUNING,
            ctx.cfg.pruning.batch_size,
            ctx.comm.rank() as u64,
            ctx.comm.world() as u64,
        )
        .map_err(anyhow::Error::from)
    }

    /// `|P - U|^2` with every candidate removed, on the held-out batch (U: the frozen target
    /// when there is one, else the live weights; an EMA target is not used here, so that the
    /// gap after is the gap of the model Stage II writes).
    pub fn gap(&self, ctx: &StageCtx) -> f64 {
        let p = &self.cfg;
        removed_gap(
            &self.role.model,
            self.frozen.as_ref(),
            ctx.comm,
            &ctx.data,
            p.batch_size,
            p.shift,
            self.seed,
            &self.kept,
        )
    }

    /// Measures the held-out gap again, logs both, and rank 0 writes the model.
    pub fn finish(&self, ctx: &StageCtx) -> Result<PathBuf> {
        let gap_after = self.gap(ctx);
        if let Some(mut log) = ctx.metrics()? {
            log.write(&serde_json::json!({
                "stage": Stage::Pruning.name(), "event": "held_out", "removed": self.candidates,
                "gap_before": self.gap_before, "gap_after": gap_after,
            }))?;
            println!(
                "pruning: |P - U|^2 with {:?} removed, held-out batch: {:.4} -> {gap_after:.4}",
                self.candidates, self.gap_before
            );
        }
        let out = ctx.run_dir.pruned_model();
        let model = self.role.model.to_dit(ctx.comm);
        ctx.save_model(&model, &out, None)?;
        ctx.comm.barrier();
        Ok(out)
    }
}

impl TrainingStage for PruningStage {
    fn stage(&self) -> Stage {
        Stage::Pruning
    }

    fn steps(&self) -> u64 {
        self.cfg.steps
    }

    fn batch_size(&self) -> u64 {
        self.cfg.batch_size
    }

    /// One Stage II step on the loader's next batch with the step's skip mask (checked to be
    /// the same on every rank).
    fn step(&mut self, ctx: &StageCtx, loader: &mut Loader, s: u64) -> Result<StepOutput> {
        let p = &self.cfg;
        let num_blocks = self.role.model.dims.num_blocks as usize;
        let active = active_blocks(self.mask_seed, s, num_blocks, &self.candidates, p.skip_prob);
        check_same_blocks(ctx.comm, s, num_blocks, &active).map_err(anyhow::Error::msg)?;
        let (x0, text, d) = next_batch_with_draws(
            loader,
            &ctx.data,
            ctx.comm,
            self.seed,
            stage_id::PRUNING,
            s,
            self.role.model.device,
        );
        // The EMA target: the live model's layout with the EMA's shards.
        let ema = match (&self.role.ema, p.target) {
            (Some(e), PruningTarget::Ema) => Some(
                self.role
                    .model
                    .with_shards(e.shadow.iter().map(|t| t.shallow_clone()).collect()),
            ),
            _ => None,
        };
        let measure_full = s % FULL_PASS_EVERY == 0 || s + 1 == p.steps;
        // Gradient accumulation: each micro-batch adds its share of the gradients.
        let local = x0.size()[0] as usize;
        let mut sums = [0.0; 5];
        for mb in micro_batches(local, ctx.cfg.cluster.micro_batch_size) {
            self.role.model.grad_scale = mb.share;
            let l = pruning_backward(
                &mut self.role.model,
                self.frozen.as_ref().or(ema.as_ref()),
                measure_full,
                ctx.comm,
                &mb.of(&x0),
                &mb.of(&text),
                &mb.draws(&d),
                p,
                &ctx.null_prompt,
                &active,
            );
            for (s, v) in
                sums.iter_mut()
                    .zip([l.loss, l.gap, l.flow_full, l.flow_pruned, l.feature])
            {
                *s += mb.share * v;
            }
        }
        self.role.model.grad_scale = 1.0;
        let l = PruningLosses {
            loss: sums[0],
            gap: sums[1],
            flow_full: sums[2],
            flow_pruned: sums[3],
            feature: sums[4],
        };
        let norm = self.role.step(ctx.comm);
        let skipped: Vec<usize> = (0..num_blocks).filter(|b| !active.contains(b)).collect();
        let mut line = serde_json::json!({
            "skipped": skipped, "loss": l.loss, "gap": l.gap,
            "flow_pruned": l.flow_pruned, "grad_norm": norm, "lr": self.role.opt.lr_at(s),
        });
        if l.flow_full.is_finite() {
            self.last_flow_full = l.flow_full;
            line["flow_full"] = l.flow_full.into();
        }
        if l.feature.is_finite() {
            line["feature"] = l.feature.into();
        }
        Ok(StepOutput {
            values: vec![
                ("loss", l.loss),
                ("gap", l.gap),
                ("flow_full", self.last_flow_full),
                ("flow_pruned", l.flow_pruned),
                ("feature", l.feature),
            ],
            line: Some(line),
            message: Some(format!("pruning {:.4}", l.loss)),
        })
    }

    fn roles(&self) -> Vec<(&'static str, &Role)> {
        vec![("model", &self.role)]
    }

    fn roles_mut(&mut self) -> Vec<(&'static str, &mut Role)> {
        vec![("model", &mut self.role)]
    }

    fn extra(&self) -> Vec<(&'static str, f64)> {
        vec![("gap_before", self.gap_before)]
    }

    fn restored(&mut self, checkpoint: &Loaded) {
        self.gap_before = checkpoint.extra("gap_before").unwrap_or(f64::NAN);
    }

    fn fresh_start(&mut self, ctx: &StageCtx) -> Result<()> {
        self.gap_before = self.gap(ctx);
        Ok(())
    }
}

/// Runs Stage II from the teacher with Stage I's candidates; rank 0 writes
/// `pruning/model.safetensors`.
pub fn run(ctx: &StageCtx) -> Result<PathBuf> {
    let report_path = ctx.run_dir.importance();
    let report = ImportanceReport::read(&report_path).with_context(|| {
        format!(
            "Stage II needs Stage I's candidates in {}; run the importance stage first",
            report_path.display()
        )
    })?;
    let teacher = ctx.load_input(&ctx.teacher, Stage::Pretrain)?;
    let mut stage = PruningStage::new(ctx, &teacher, report.candidates);
    drop(teacher);
    let mut loader = PruningStage::loader(ctx)?;
    crate::trainer::train(ctx, &mut stage, &mut loader)?;
    stage.finish(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;
    use crate::model::Dit;
    use tch::{Device, Kind};

    /// A 4-block tiny teacher sharded twice (the frozen target, the live model) and a batch of
    /// two videos with their Stage II draws (random seed `seed`).
    fn teacher_and_batch(seed: i64) -> (ShardedDit, ShardedDit, Tensor, Tensor, Draws) {
        let mut dims = flg_core::config::preset("tiny").unwrap();
        dims.num_blocks = 4;
        let teacher = Dit::init(&dims, 3);
        let shard = |m: &Dit| ShardedDit::from_dit(m, &Solo, Device::Cpu, Kind::Float);
        tch::manual_seed(seed);
        let x0 = Tensor::randn([2, 3, 8, 16, 16], (Kind::Float, Device::Cpu));
        let text = Tensor::randn([2, 4, 32], (Kind::Float, Device::Cpu));
        let d = draws(0, stage_id::PRUNING, 0, 0, 2, &x0.size()[1..], Device::Cpu);
        (shard(&teacher), shard(&teacher), x0, text, d)
    }

    #[test]
    fn a_frozen_target_stays_the_teacher_while_the_live_one_moves_with_training() {
        let (frozen, mut live, x0, text, d) = teacher_and_batch(1);
        // The live weights after some training: moved away from the teacher.
        {
            let _g = tch::no_grad_guard();
            for t in live.shards() {
                let _ = t.shallow_clone().g_add_(&(t.randn_like() * 0.02));
            }
        }
        let active = [0usize, 1, 3];
        // One step's losses and the gradients it left.
        let mut run = |target: Option<&ShardedDit>, measure_full: bool| {
            let l = pruning_backward(
                &mut live,
                target,
                measure_full,
                &Solo,
                &x0,
                &text,
                &d,
                &Pruning {
                    shift: 1.0,
                    cfg_dropout: 0.0,
                    alpha: 1.0,
                    ..Pruning::default()
                },
                &NullPrompt::zeros(),
                &active,
            );
            let grads: Vec<Tensor> = live.grads().into_iter().flatten().collect();
            live.zero_grad();
            (l, grads)
        };
        let (with_frozen, frozen_grads) = run(Some(&frozen), true);
        let (with_self, _) = run(None, false);
        // Without the diagnostic full pass: the same loss and gradients, no `flow_full`.
        let (unmeasured, unmeasured_grads) = run(Some(&frozen), false);
        assert!(unmeasured.flow_full.is_nan());
        assert_eq!(
            (unmeasured.loss, unmeasured.gap, unmeasured.flow_pruned),
            (with_frozen.loss, with_frozen.gap, with_frozen.flow_pruned)
        );
        assert!(!frozen_grads.is_empty());
        for (a, b) in frozen_grads.iter().zip(&unmeasured_grads) {
            assert!(a.equal(b));
        }
        // From the live weights U is the full pass, so `flow_full` is always there.
        assert!(with_self.flow_full.is_finite());
        let f = flow_inputs(&x0, &text, &d, 1.0, 0.0, &NullPrompt::zeros());
        let all = [0usize, 1, 2, 3];
        let p = live.output(&Solo, &f.xt, &f.t, &f.text, &active);
        let u_teacher = frozen.output(&Solo, &f.xt, &f.t, &f.text, &all);
        let u_live = live.output(&Solo, &f.xt, &f.t, &f.text, &all);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-9);
        assert!(close(
            with_frozen.gap,
            flow::mse(&p, &u_teacher).double_value(&[])
        ));
        assert!(close(
            with_self.gap,
            flow::mse(&p, &u_live).double_value(&[])
        ));
        assert!(
            !close(with_frozen.gap, with_self.gap),
            "the two targets differ"
        );
        // `flow_full` is the trained model's own unpruned pass in both cases.
        assert!(close(with_frozen.flow_full, with_self.flow_full));
    }

    #[test]
    fn the_feature_loss_is_zero_for_the_teachers_own_blocks_and_adds_to_the_objective() {
        let (frozen, mut live, x0, text, d) = teacher_and_batch(2);
        let cfg = |feature_weight: f64| Pruning {
            shift: 1.0,
            cfg_dropout: 0.0,
            alpha: 1.0,
            feature_weight,
            ..Pruning::default()
        };
        let mut run = |p: &Pruning, active: &[usize]| {
            let l = pruning_backward(
                &mut live,
                Some(&frozen),
                false,
                &Solo,
                &x0,
                &text,
                &d,
                p,
                &NullPrompt::zeros(),
                active,
            );
            live.zero_grad();
            l
        };
        // Every block, the teacher's weights: the states are U's.
        let same = run(&cfg(1.0), &[0, 1, 2, 3]);
        assert!(same.feature.abs() < 1e-10, "{}", same.feature);
        // Block 1 removed: the states after blocks 2 and 3 differ from U's.
        let off = run(&cfg(0.0), &[0, 2, 3]);
        let on = run(&cfg(0.5), &[0, 2, 3]);
        assert!(off.feature.is_nan());
        assert!(on.feature > 1e-4, "{}", on.feature);
        assert!((on.loss - (on.gap + 0.5 * on.feature)).abs() < 1e-9);
        assert_eq!(on.gap, off.gap);
    }
}
