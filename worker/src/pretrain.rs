//! Teacher pretraining with flow matching, in one process.
//!
//! Each step: a batch of videos x0 and prompts; the prompt replaced by the null prompt with
//! probability `cfg_dropout` (so the teacher can do CFG); t uniform then shifted; noise eps;
//! the network regresses the velocity `eps - x0` at `x_t`. AdamW with warmup, global-norm
//! clipping, and an EMA of the weights that becomes the teacher.
//!
//! Runs on the sharded engine (`shard.rs`) over any number of ranks; the random draws of a
//! sample depend only on `(seed, step, its place in the global batch)` (`train::draws`), so
//! W ranks train exactly what one rank trains with the same global batch.

use crate::collective::Collective;
use crate::data::{Batch, DataSet, Loader};
use crate::flow;
use crate::metrics::MetricsLog;
use crate::model::file::{self, ModelMeta, Prompts};
use crate::model::Dit;
use crate::shard::ShardedDit;
use crate::train::{draws, stage_id, Draws, Role};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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
/// shifted times, the prompts with dropped ones replaced by the null prompt (zeros), the noisy
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
) -> FlowInputs {
    let t = flow::shift_t(&d.u, shift);
    let text = text
        * d.keep_u
            .ge(cfg_dropout)
            .to_kind(Kind::Float)
            .view([-1, 1, 1]);
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
) -> Tensor {
    let f = flow_inputs(x0, text, d, shift, cfg_dropout);
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
    active: &[usize],
) -> f64 {
    let f = flow_inputs(x0, text, d, shift, cfg_dropout);
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
    active: &[usize],
) -> (f64, f64) {
    let (x0, text, d) =
        next_batch_with_draws(loader, data, comm, seed, stage, step, role.model.device);
    let loss = flow_matching_backward(
        &mut role.model,
        comm,
        &x0,
        &text,
        &d,
        shift,
        cfg_dropout,
        active,
    );
    (loss, role.step(comm))
}

/// Where pretraining writes inside the run directory.
pub fn out_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("pretrain")
}

/// Trains the teacher, sharded over the ranks of `comm` (a `Solo` world of one works too).
/// Rank 0 writes `pretrain/teacher.safetensors` (the EMA weights, or the raw weights without
/// EMA), periodic EMA snapshots in `pretrain/snapshots/`, and one line per logged step to
/// `metrics.jsonl`.
pub fn run(ctx: &crate::stages::StageCtx, snapshot_every: u64) -> Result<PathBuf> {
    let (cfg, run_dir, comm) = (ctx.cfg, ctx.run_dir.as_path(), ctx.comm);
    let data = ctx.data.clone();
    let p = &cfg.pretrain;
    let dims = cfg.model_dims();
    let (rank, world) = (comm.rank(), comm.world());
    let lead = rank == 0;
    let full = match &cfg.model.weights {
        Some(w) => file::load(w, Some(&dims))?.0,
        None => Dit::init(&dims, cfg.experiment.seed),
    };
    let mut role = Role::new(ctx.shard(&full), &p.optim, p.ema_decay, comm);
    let param_count = full.param_count();
    drop(full);
    let mut loader = Loader::new(
        data.clone(),
        cfg.experiment.seed,
        p.batch_size,
        rank as u64,
        world as u64,
    )?;
    let mut first = 0;
    if let Some(ck) = ctx.resume_for("pretrain")? {
        first = ck.restore(vec![("model", &mut role)], &mut loader)?;
    }
    let all_blocks: Vec<usize> = (0..dims.num_blocks as usize).collect();
    let dir = out_dir(run_dir);
    let mut log = None;
    if lead {
        std::fs::create_dir_all(dir.join("snapshots"))?;
        log = Some(MetricsLog::open(&run_dir.join("metrics.jsonl"))?);
    }
    let bar = ctx.bar(p.steps, "pretrain");
    bar.set_position(first);
    let start = Instant::now();
    let (mut window_loss, mut window_n) = (0.0, 0u64);
    let mut meter = crate::throughput::StepMeter::new(ctx.device);
    if lead {
        tracing::info!(
            params = param_count,
            steps = p.steps,
            batch = p.batch_size,
            world,
            "pretraining the teacher"
        );
    }
    for step in first..p.steps {
        let (loss, norm) = train_step(
            &mut role,
            comm,
            &mut loader,
            &data,
            cfg.experiment.seed,
            stage_id::PRETRAIN,
            step,
            p.shift,
            p.cfg_dropout,
            &all_blocks,
        );
        window_loss += loss;
        window_n += 1;
        bar.inc(1);
        let done = step + 1;
        if let Some(log) = log
            .as_mut()
            .filter(|_| done % p.log_every == 0 || done == p.steps)
        {
            let elapsed = start.elapsed().as_secs_f64();
            let avg = window_loss / window_n as f64;
            bar.set_message(format!("pretrain {avg:.4}"));
            // Rates over the steps since the previous line.
            let rates = meter.step(window_n * p.batch_size);
            let mut line = serde_json::json!({
                "stage": "pretrain", "step": done, "loss": avg, "last_loss": loss, "grad_norm": norm,
                "lr": role.opt.lr_at(step), "samples": done * p.batch_size, "world": world,
                "elapsed_s": elapsed, "collective_s": comm.seconds_waiting(),
            });
            rates.insert_into(&mut line);
            log.write(&line)?;
        }
        if done % p.log_every == 0 || done == p.steps {
            (window_loss, window_n) = (0.0, 0);
        }
        if snapshot_every > 0 && done % snapshot_every == 0 {
            // Every rank joins the gather; rank 0 writes.
            let model = role.averaged_dit(comm);
            if lead {
                save_model(
                    &model,
                    &data,
                    &dir.join(format!("snapshots/step-{done:07}.safetensors")),
                )?;
            }
        }
        ctx.after_step(
            "pretrain",
            done,
            &[("loss", loss), ("grad_norm", norm)],
            &crate::checkpoint::TrainState {
                roles: vec![("model", &role)],
                data: Some(loader.position()),
                extra: Vec::new(),
            },
        )?;
    }
    bar.finish();
    let out = dir.join("teacher.safetensors");
    let model = role.averaged_dit(comm);
    if lead {
        save_model(&model, &data, &out)?;
        tracing::info!(path = %out.display(), seconds = start.elapsed().as_secs_f64(), "teacher written");
    }
    comm.barrier();
    Ok(out)
}

/// Saves a whole model with its metadata.
fn save_model(model: &Dit, data: &DataSet, path: &Path) -> Result<()> {
    file::save(path, &model.named_tensors(), &model_meta(model, data))
        .with_context(|| format!("writing {}", path.display()))
}

/// Metadata for a model trained on `data`: its dimensions, blocks, and (moving-shapes) prompts.
pub fn model_meta(model: &Dit, data: &DataSet) -> ModelMeta {
    let m = &data.manifest;
    ModelMeta {
        dims: model.dims.clone(),
        block_ids: model.block_ids.clone(),
        prompts: m.moving_shapes.clone().map(|shapes| Prompts {
            text_len: m.text_shape[0],
            text_dim: m.text_shape[1],
            shapes,
        }),
        sampler: None,
    }
}
