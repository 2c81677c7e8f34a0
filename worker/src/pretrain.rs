//! Teacher pretraining with flow matching, in one process.
//!
//! Each step: a batch of videos x0 and prompts; the prompt replaced by the null prompt with
//! probability `cfg_dropout` (so the teacher can do CFG); t uniform then shifted; noise eps;
//! the network regresses the velocity `eps - x0` at `x_t`. AdamW with warmup, global-norm
//! clipping, and an EMA of the weights that becomes the teacher.
//!
//! All randomness of step `s` comes from libtorch's generator seeded with `(seed, s)`, so a run
//! resumed at step `s` draws exactly what an uninterrupted run draws.

use crate::data::{Batch, DataSet, Loader};
use crate::flow;
use crate::metrics::MetricsLog;
use crate::model::file::{self, ModelMeta, Prompts};
use crate::model::Dit;
use crate::optim::{clip_factor, grad_sq_sum, AdamW, Ema};
use crate::rng::Rng;
use anyhow::{Context, Result};
use flg_coordinator::config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Stream tag of the per-step torch seed.
const STEP_STREAM: u64 = 0x5354_4550; // "STEP"

/// Seeds libtorch's global generator for one step of one stage.
pub fn seed_step(seed: u64, stage: u64, step: u64) {
    tch::manual_seed((Rng::derive(seed, &[STEP_STREAM, stage, step]).next_u64() >> 1) as i64);
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

/// Replaces each sample's prompt by the null prompt (zeros) with probability `p`.
pub fn drop_text(text: &Tensor, p: f64) -> Tensor {
    if p <= 0.0 {
        return text.shallow_clone();
    }
    let keep = Tensor::rand([text.size()[0]], (Kind::Float, text.device()))
        .ge(p)
        .to_kind(Kind::Float);
    text * keep.view([-1, 1, 1])
}

/// The flow-matching loss of `model` on a batch, with the step's random draws.
pub fn flow_loss(
    velocity: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    x0: &Tensor,
    text: &Tensor,
    shift: f64,
    cfg_dropout: f64,
) -> Tensor {
    let b = x0.size()[0];
    let text = drop_text(text, cfg_dropout);
    let t = flow::shift_t(&Tensor::rand([b], (Kind::Float, x0.device())), shift);
    let eps = x0.randn_like();
    let xt = flow::noisy(x0, &eps, &t);
    let v = velocity(&xt, &t, &text);
    flow::mse(&v, &(eps - x0))
}

/// Where pretraining writes inside the run directory.
pub fn out_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("pretrain")
}

/// Trains the teacher. Writes `pretrain/teacher.safetensors` (the EMA weights, or the raw
/// weights without EMA), periodic EMA snapshots in `pretrain/snapshots/`, and one line per
/// logged step to `metrics.jsonl`.
pub fn run(
    cfg: &Config,
    run_dir: &Path,
    data: Arc<DataSet>,
    snapshot_every: u64,
) -> Result<PathBuf> {
    let p = &cfg.pretrain;
    let dims = cfg.model_dims();
    let device = Device::Cpu;
    let model = match &cfg.model.weights {
        Some(w) => file::load(w, Some(&dims))?.0,
        None => Dit::init(&dims, cfg.experiment.seed),
    };
    let params: Vec<Tensor> = model
        .parameters()
        .into_iter()
        .map(|t| t.set_requires_grad(true))
        .collect();
    let mut opt = AdamW::new(&p.optim, &params);
    let mut ema = (p.ema_decay > 0.0).then(|| Ema::new(p.ema_decay, &params));
    let mut loader = Loader::new(data.clone(), cfg.experiment.seed, p.batch_size, 0, 1)?;
    let dir = out_dir(run_dir);
    std::fs::create_dir_all(dir.join("snapshots"))?;
    let mut log = MetricsLog::open(&run_dir.join("metrics.jsonl"))?;
    let bar = crate::progress::bar(p.steps, "pretrain");
    let start = Instant::now();
    let (mut window_loss, mut window_n) = (0.0, 0u64);
    tracing::info!(
        params = model.param_count(),
        steps = p.steps,
        batch = p.batch_size,
        "pretraining the teacher"
    );
    for step in 0..p.steps {
        seed_step(cfg.experiment.seed, 0, step);
        let batch = loader.next_batch();
        let (x0, text) = batch_tensors(&batch, &data, device);
        let loss = flow_loss(
            |x, t, c| model.forward(x, t, c, None),
            &x0,
            &text,
            p.shift,
            p.cfg_dropout,
        );
        let grads = Tensor::run_backward(&[&loss], &params, false, false);
        let norm = grad_sq_sum(&grads).sqrt();
        opt.update(&params, &grads, clip_factor(norm, p.optim.grad_clip));
        if let Some(e) = ema.as_mut() {
            e.update(&params, step);
        }
        let l = loss.double_value(&[]);
        window_loss += l;
        window_n += 1;
        bar.inc(1);
        let done = step + 1;
        if done % p.log_every == 0 || done == p.steps {
            let elapsed = start.elapsed().as_secs_f64();
            let avg = window_loss / window_n as f64;
            bar.set_message(format!("pretrain {avg:.4}"));
            log.write(&serde_json::json!({
                "stage": "pretrain", "step": done, "loss": avg, "grad_norm": norm,
                "lr": opt.lr_at(step), "samples": done * p.batch_size,
                "samples_per_s": (done * p.batch_size) as f64 / elapsed, "elapsed_s": elapsed,
            }))?;
            (window_loss, window_n) = (0.0, 0);
        }
        if snapshot_every > 0 && done % snapshot_every == 0 {
            save_weights(
                &model,
                ema.as_ref(),
                &data,
                &dir.join(format!("snapshots/step-{done:07}.safetensors")),
            )?;
        }
    }
    bar.finish();
    let out = dir.join("teacher.safetensors");
    save_weights(&model, ema.as_ref(), &data, &out)?;
    tracing::info!(path = %out.display(), seconds = start.elapsed().as_secs_f64(), "teacher written");
    Ok(out)
}

/// Saves the EMA weights when there is an EMA, else the raw ones, with the model's metadata.
fn save_weights(model: &Dit, ema: Option<&Ema>, data: &DataSet, path: &Path) -> Result<()> {
    let named = model.named_tensors();
    let tensors: Vec<(String, Tensor)> = match ema {
        Some(e) => named
            .into_iter()
            .zip(&e.shadow)
            .map(|((n, _), s)| (n, s.shallow_clone()))
            .collect(),
        None => named,
    };
    file::save(path, &tensors, &model_meta(model, data))
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
