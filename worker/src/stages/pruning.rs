//! Stage II: dynamic probabilistic pruning.
//!
//! From the teacher's weights, every step draws a skip mask over the Stage I candidates (each
//! skipped with probability `skip_prob`, the same mask on every rank because it is a function
//! of `(seed, step)` only) and runs the *same* weights twice on the same `(x_t, t, c)`: the
//! unpruned pass U (every block, no gradient) and the pruned pass P (the mask applied). Loss:
//! `alpha * |P - sg(U)|^2 + (1 - alpha) * |P - (eps - x0)|^2`. Both passes' flow losses are
//! logged so the pruned model can be seen catching up with the full one.

use super::{paths, StageCtx};
use crate::checkpoint::TrainState;
use crate::collective::{all_reduce_mean, Collective};
use crate::data::{DataSet, Loader};
use crate::flow;
use crate::pretrain::{batch_tensors, flow_inputs, next_batch_with_draws};
use crate::shard::ShardedDit;
use crate::stages::importance::ImportanceReport;
use crate::train::{active_blocks, check_same_blocks, draws, stage_id, Draws, Role};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;
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
}

/// Both passes on one local batch; backpropagates the Stage II loss into the shard gradients.
#[allow(clippy::too_many_arguments)]
pub fn pruning_backward(
    model: &mut ShardedDit,
    comm: &dyn Collective,
    x0: &Tensor,
    text: &Tensor,
    d: &Draws,
    shift: f64,
    cfg_dropout: f64,
    alpha: f64,
    active: &[usize],
) -> PruningLosses {
    let f = flow_inputs(x0, text, d, shift, cfg_dropout);
    let all = model.block_ids.clone();
    // U is a target (stop-gradient): its tape is dropped at once.
    let u = model.output(comm, &f.xt, &f.t, &f.text, &all);
    let (p, tape) = model.forward(comm, &f.xt, &f.t, &f.text, active);
    let n = p.numel() as f64;
    let grad = (&p - &u) * (2.0 * alpha / n) + (&p - &f.target) * (2.0 * (1.0 - alpha) / n);
    let gap = flow::mse(&p, &u).double_value(&[]);
    let flow_full = flow::mse(&u, &f.target).double_value(&[]);
    let flow_pruned = flow::mse(&p, &f.target).double_value(&[]);
    let loss = alpha * gap + (1.0 - alpha) * flow_pruned;
    model.backward(comm, tape, &grad);
    let m = all_reduce_mean(comm, &[loss, gap, flow_full, flow_pruned]);
    PruningLosses {
        loss: m[0],
        gap: m[1],
        flow_full: m[2],
        flow_pruned: m[3],
    }
}

/// `|P - U|^2` with every candidate removed, on a fixed held-out batch (the first
/// `batch` videos of the data set, fixed draws): the number Stage II exists to lower.
pub fn removed_gap(
    model: &ShardedDit,
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
    let f = flow_inputs(&x0, &text, &d, shift, 0.0);
    let u = model.output(comm, &f.xt, &f.t, &f.text, &model.block_ids.clone());
    let p = model.output(comm, &f.xt, &f.t, &f.text, kept);
    all_reduce_mean(comm, &[flow::mse(&p, &u).double_value(&[])])[0]
}

/// Draw stream of the held-out measurement.
const HELD_OUT: u64 = 0x484f_4c44; // "HOLD"

/// One Stage II step on the loader's next batch with the blocks `active` (the step's mask,
/// checked to be the same on every rank). Returns the losses and the gradient norm.
#[allow(clippy::too_many_arguments)]
pub fn step(
    role: &mut Role,
    comm: &dyn Collective,
    loader: &mut Loader,
    data: &DataSet,
    cfg: &flg_coordinator::config::Pruning,
    seed: u64,
    step: u64,
    active: &[usize],
) -> anyhow::Result<(PruningLosses, f64)> {
    check_same_blocks(comm, step, role.model.dims.num_blocks as usize, active)
        .map_err(anyhow::Error::msg)?;
    let (x0, text, d) = next_batch_with_draws(
        loader,
        data,
        comm,
        seed,
        stage_id::PRUNING,
        step,
        role.model.device,
    );
    let losses = pruning_backward(
        &mut role.model,
        comm,
        &x0,
        &text,
        &d,
        cfg.shift,
        cfg.cfg_dropout,
        cfg.alpha,
        active,
    );
    Ok((losses, role.step(comm)))
}

/// Runs Stage II from the teacher; rank 0 writes `pruning/model.safetensors`.
pub fn run(ctx: &StageCtx) -> Result<PathBuf> {
    let p = &ctx.cfg.pruning;
    let seed = ctx.cfg.experiment.seed;
    let report_path = paths::importance(&ctx.run_dir);
    let report = ImportanceReport::read(&report_path).with_context(|| {
        format!(
            "Stage II needs Stage I's candidates in {}; run the importance stage first",
            report_path.display()
        )
    })?;
    let teacher = ctx.load_input(&ctx.teacher, "pretrain")?;
    let mut role = Role::new(ctx.shard(&teacher), &p.optim, 0.0, ctx.comm);
    drop(teacher);
    let mut loader = Loader::new(
        ctx.data.clone(),
        seed ^ stage_id::PRUNING,
        p.batch_size,
        ctx.comm.rank() as u64,
        ctx.comm.world() as u64,
    )?;
    let mut log = ctx.metrics()?;
    let kept = super::kept_blocks(&role.model.block_ids, &report.candidates);
    let gap =
        |m: &ShardedDit| removed_gap(m, ctx.comm, &ctx.data, p.batch_size, p.shift, seed, &kept);
    // A resumed launch continues from its checkpoint: weights, optimizer, data position.
    let (first, gap_before) = match ctx.resume_for("pruning")? {
        Some(ck) => (
            ck.restore(vec![("model", &mut role)], &mut loader)?,
            ck.extra("gap_before").unwrap_or(f64::NAN),
        ),
        None => (0, gap(&role.model)),
    };
    let bar = ctx.bar(p.steps, "pruning");
    bar.set_position(first);
    let start = Instant::now();
    if ctx.lead() {
        tracing::info!(candidates = ?report.candidates, steps = p.steps, alpha = p.alpha, skip_prob = p.skip_prob, "Stage II: dynamic probabilistic pruning");
    }
    let num_blocks = role.model.dims.num_blocks as usize;
    let mut meter = crate::throughput::StepMeter::new(ctx.device);
    for s in first..p.steps {
        let active = active_blocks(seed, s, num_blocks, &report.candidates, p.skip_prob);
        let (l, norm) = step(
            &mut role,
            ctx.comm,
            &mut loader,
            &ctx.data,
            p,
            seed,
            s,
            &active,
        )?;
        let skipped: Vec<usize> = (0..num_blocks).filter(|b| !active.contains(b)).collect();
        bar.inc(1);
        let done = s + 1;
        bar.set_message(format!("pruning {:.4}", l.loss));
        if let Some(log) = log.as_mut() {
            // Rank 0 measures and logs (its rates stand for every rank's step).
            let rates = meter.step(p.batch_size);
            let mut line = serde_json::json!({
                "stage": "pruning", "step": done, "skipped": skipped, "loss": l.loss, "gap": l.gap,
                "flow_full": l.flow_full, "flow_pruned": l.flow_pruned, "grad_norm": norm,
                "lr": role.opt.lr_at(s), "elapsed_s": start.elapsed().as_secs_f64(),
            });
            rates.insert_into(&mut line);
            log.write(&line)?;
        }
        ctx.after_step(
            "pruning",
            done,
            &[
                ("loss", l.loss),
                ("gap", l.gap),
                ("flow_full", l.flow_full),
                ("flow_pruned", l.flow_pruned),
            ],
            &TrainState {
                roles: vec![("model", &role)],
                data: Some(loader.position()),
                extra: vec![("gap_before", gap_before)],
            },
        )?;
    }
    bar.finish();
    let gap_after = gap(&role.model);
    if let Some(log) = log.as_mut() {
        log.write(&serde_json::json!({
            "stage": "pruning", "event": "held_out", "removed": report.candidates,
            "gap_before": gap_before, "gap_after": gap_after,
        }))?;
        println!(
            "pruning: |P - U|^2 with {:?} removed, held-out batch: {gap_before:.4} -> {gap_after:.4}",
            report.candidates
        );
    }
    let out = paths::pruned_model(&ctx.run_dir);
    let model = role.model.to_dit(ctx.comm);
    ctx.save_model(&model, &out, None)?;
    if ctx.lead() {
        tracing::info!(path = %out.display(), seconds = start.elapsed().as_secs_f64(), "Stage II model written");
    }
    ctx.comm.barrier();
    Ok(out)
}
