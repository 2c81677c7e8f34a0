//! Checks and benchmarks of one device (a GPU, or the CPU for the kit's CPU half): the model
//! on the device against the CPU reference, and a full-size forward and backward pass with
//! seconds per step, peak device memory and model FLOP utilisation. `bench/gpu-check.sh` runs
//! them from the GPU kit.

use crate::model::Dit;
use flg_core::config::ModelDims;
use tch::{Device, Kind, Tensor};

/// Tolerances of the device forward against the CPU's f32 forward, as relative L2 error.
/// f32 on CUDA differs by reduction order and cuDNN's TF32 convolutions (about 1e-4 measured
/// on the H200); bf16 keeps 8 bits of mantissa, so a few 1e-3 per layer add up.
pub const F32_TOLERANCE: f64 = 2e-3;
pub const BF16_TOLERANCE: f64 = 5e-2;

/// `device` as a tch device: "cpu" or "cuda" (GPU 0).
pub fn parse_device(device: &str) -> anyhow::Result<Device> {
    match device {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            let env = crate::device::GpuEnv::detect();
            if let Some(e) = env.torch_cuda_error {
                anyhow::bail!("--device cuda: libtorch's CUDA part failed to load: {e}");
            }
            if env.torch_cuda_devices == 0 {
                anyhow::bail!("--device cuda: libtorch sees no GPU on this machine");
            }
            Ok(Device::Cuda(0))
        }
        other => anyhow::bail!("--device {other}: expected cpu or cuda"),
    }
}

/// ||a - b|| / ||b|| over all elements, in f64 on the CPU.
pub fn relative_l2(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(Device::Cpu).to_kind(Kind::Double);
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

/// Synchronises `device` so that wall-clock timings include the queued GPU work.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The model's forward on `device` in f32 and bf16 against its f32 forward on the CPU, on one
/// fixed random batch (noise, times, text). One JSON object; `pass` says whether both errors
/// are within the tolerances.
pub fn device_forward(
    model: &Dit,
    device: Device,
    batch: i64,
    frames: i64,
    size: i64,
) -> serde_json::Value {
    let d = &model.dims;
    tch::manual_seed(7);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([batch, d.in_channels, frames, size, size], opts);
    let t = Tensor::rand([batch], opts);
    let text = Tensor::randn([batch, 4, d.text_dim], opts);
    let reference = tch::no_grad(|| model.forward(&x, &t, &text, None));
    let run = |kind: Kind| {
        let m = model.to(device, kind);
        let on = |v: &Tensor| v.to_device(device).to_kind(kind);
        let out = tch::no_grad(|| m.forward(&on(&x), &on(&t), &on(&text), None));
        sync(device);
        out.to_kind(Kind::Float)
    };
    let f32_err = relative_l2(&run(Kind::Float), &reference);
    let bf16_err = relative_l2(&run(Kind::BFloat16), &reference);
    serde_json::json!({
        "check": "device_forward",
        "device": format!("{device:?}"),
        "batch": batch, "frames": frames, "size": size,
        "f32_rel_l2": f32_err, "f32_tolerance": F32_TOLERANCE,
        "bf16_rel_l2": bf16_err, "bf16_tolerance": BF16_TOLERANCE,
        "pass": f32_err <= F32_TOLERANCE && bf16_err <= BF16_TOLERANCE,
    })
}

/// The shape of a forward and backward benchmark: latent video [C, T, H, W] per sample.
#[derive(Clone, Debug)]
pub struct StepShape {
    pub batch: i64,
    pub frames: i64,
    pub height: i64,
    pub width: i64,
    pub text_len: i64,
}

/// Model FLOPs of one forward and backward pass (three forwards; see `throughput`).
pub fn step_flops(dims: &ModelDims, shape: &StepShape) -> f64 {
    let seq = crate::throughput::tokens_per_video(dims, &[shape.frames, shape.height, shape.width]);
    3.0 * crate::throughput::forward_flops(
        dims,
        shape.batch,
        seq,
        shape.text_len,
        dims.num_blocks as usize,
    )
}

/// Times forward + backward passes (loss = mean square error to a random target; no optimiser) of a
/// freshly initialised model of `dims` on `device` in `kind`. One JSON object with seconds
/// per step, samples/s, model TFLOP/s, MFU against `peak_tflops` and the device memory used.
pub fn model_step(
    dims: &ModelDims,
    shape: &StepShape,
    device: Device,
    kind: Kind,
    warmup: usize,
    steps: usize,
    peak_tflops: f64,
) -> serde_json::Value {
    let init = std::time::Instant::now();
    let model = Dit::init(dims, 0).to(device, kind);
    let params: Vec<Tensor> = model
        .parameters()
        .into_iter()
        .map(|p| p.set_requires_grad(true))
        .collect();
    let init_s = init.elapsed().as_secs_f64();
    let opts = (kind, device);
    let x = Tensor::randn(
        [
            shape.batch,
            dims.in_channels,
            shape.frames,
            shape.height,
            shape.width,
        ],
        opts,
    );
    let t = Tensor::rand([shape.batch], opts);
    let text = Tensor::randn([shape.batch, shape.text_len, dims.text_dim], opts);
    // A fresh model's output head is zero; a random target keeps every gradient non-zero.
    let target = x.randn_like();
    let step = || {
        let v = model.forward(&x, &t, &text, None);
        let loss = (v - &target)
            .to_kind(Kind::Float)
            .square()
            .mean(Kind::Float);
        let g = Tensor::run_backward(&[&loss], &params, false, false);
        drop(g);
    };
    for _ in 0..warmup {
        step();
    }
    sync(device);
    let start = std::time::Instant::now();
    for _ in 0..steps {
        step();
    }
    sync(device);
    let step_s = start.elapsed().as_secs_f64() / steps.max(1) as f64;
    let flops = step_flops(dims, shape);
    let tflops = flops / step_s / 1e12;
    serde_json::json!({
        "check": "model_step",
        "device": format!("{device:?}"),
        "kind": format!("{kind:?}"),
        "params": model.param_count(),
        "batch": shape.batch, "latent": [dims.in_channels, shape.frames, shape.height, shape.width],
        "text_len": shape.text_len,
        "init_s": init_s,
        "step_s": step_s,
        "samples_per_s": shape.batch as f64 / step_s,
        "model_tflop_per_step": flops / 1e12,
        "tflops": tflops,
        "mfu": tflops / peak_tflops,
        "peak_tflops": peak_tflops,
        "device_memory_used_gib": crate::device::device_memory_used(device).map(|b| b as f64 / (1u64 << 30) as f64),
        "peak_rss_gib": crate::device::peak_rss_bytes() as f64 / (1u64 << 30) as f64,
    })
}
