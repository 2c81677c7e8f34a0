//! Benchmarks that compare this implementation with a reference in the same run.

use crate::model::Dit;
use crate::optim::{clip_factor, grad_sq_sum, AdamW};
use crate::pretrain::flow_loss;
use flg_coordinator::config::{ModelDims, Optim};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Training throughput of the Rust step: the pretraining step (flow-matching loss with 10%
/// prompt dropout, backward, global-norm clipping, AdamW) on fixed random data.
pub fn rust_train_step(
    dims: &ModelDims,
    frames: i64,
    size: i64,
    batch: i64,
    warmup: usize,
    steps: usize,
) -> f64 {
    tch::manual_seed(0);
    let model = Dit::init(dims, 0);
    let params: Vec<Tensor> = model
        .parameters()
        .into_iter()
        .map(|t| t.set_requires_grad(true))
        .collect();
    let mut opt = AdamW::new(
        &Optim {
            lr: 1e-3,
            ..Optim::default()
        },
        &params,
    );
    let opts = (Kind::Float, Device::Cpu);
    let x0 = Tensor::rand([batch, dims.in_channels, frames, size, size], opts) * 2.0 - 1.0;
    let text = Tensor::randn([batch, 4, dims.text_dim], opts);
    let mut step = || {
        let loss = flow_loss(|x, t, c| model.forward(x, t, c, None), &x0, &text, 1.0, 0.1);
        let g = Tensor::run_backward(&[&loss], &params, false, false);
        opt.update(
            &params,
            &crate::optim::all_present(&g),
            clip_factor(grad_sq_sum(&g).sqrt(), 1.0),
        );
    };
    for _ in 0..warmup {
        step();
    }
    let start = Instant::now();
    for _ in 0..steps {
        step();
    }
    (steps as i64 * batch) as f64 / start.elapsed().as_secs_f64()
}

/// The Python interpreter of the torch wheel this build links (its virtual environment).
pub fn venv_python() -> PathBuf {
    let lib = PathBuf::from(env!("FLG_LIBTORCH_DIR"));
    // <venv>/lib/python3.X/site-packages/torch/lib -> <venv>/bin/python
    lib.ancestors()
        .nth(5)
        .map(|v| v.join("bin/python"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "python3".into())
}

/// The plain-PyTorch reference script, shipped in the repository.
pub fn pytorch_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/pytorch_train_step.py")
}

/// Runs the PyTorch step with the same sizes; returns its JSON report.
pub fn pytorch_train_step(
    dims: &ModelDims,
    frames: i64,
    size: i64,
    batch: i64,
    warmup: usize,
    steps: usize,
) -> anyhow::Result<serde_json::Value> {
    let p = dims.patch;
    let out = std::process::Command::new(venv_python())
        .arg(pytorch_script())
        .args([
            "--dim",
            &dims.dim.to_string(),
            "--blocks",
            &dims.num_blocks.to_string(),
        ])
        .args([
            "--heads",
            &dims.num_heads.to_string(),
            "--ffn",
            &dims.ffn_dim.to_string(),
        ])
        .args([
            "--freq",
            &dims.freq_dim.to_string(),
            "--text-dim",
            &dims.text_dim.to_string(),
        ])
        .args([
            "--channels",
            &dims.in_channels.to_string(),
            "--frames",
            &frames.to_string(),
            "--size",
            &size.to_string(),
        ])
        .args([
            "--batch",
            &batch.to_string(),
            "--steps",
            &steps.to_string(),
            "--warmup",
            &warmup.to_string(),
        ])
        .args(["--threads", &tch::get_num_threads().to_string()])
        .arg("--patch")
        .args(p.iter().map(|v| v.to_string()))
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "the PyTorch reference failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(out.stdout.trim_ascii())?)
}
