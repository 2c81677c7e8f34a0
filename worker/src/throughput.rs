//! Per-step throughput for metrics.jsonl and the report: samples/s, achieved model TFLOP/s
//! per rank, and peak memory.
//!
//! Model FLOPs are counted as torchtitan counts them: 2 per parameter and token for each
//! matrix product in the forward (6 with the backward), plus the attention scores and their
//! weighted sums (4 x width x context length per token and block forward); embeddings, norms
//! and recompute are left out, so the figure is comparable across activation-checkpointing
//! modes. Every sharded forward and backward adds its FLOPs to a process-wide counter
//! (`count`, per thread); a [`StepMeter`] turns the counter into per-step rates.

use flg_core::config::ModelDims;
use std::cell::Cell;
use std::time::Instant;
use tch::Device;

thread_local! {
    /// FLOPs counted on this thread since the last `take` (a rank trains on one thread).
    static FLOPS: Cell<f64> = const { Cell::new(0.0) };
}

/// Adds `flops` to this thread's counter.
pub fn count(flops: f64) {
    FLOPS.with(|f| f.set(f.get() + flops));
}

/// The FLOPs counted on this thread since the last call, and resets the counter.
pub fn take() -> f64 {
    FLOPS.with(|f| f.replace(0.0))
}

/// Model FLOPs of one forward pass of `blocks` transformer blocks over `batch` videos of
/// `seq` tokens each, with `text_len` text tokens (cross-attention context).
pub fn forward_flops(dims: &ModelDims, batch: i64, seq: i64, text_len: i64, blocks: usize) -> f64 {
    let per_block_params = crate::model::params::block_param_count(dims) as f64;
    let tokens = (batch * seq) as f64;
    let matmuls = 2.0 * per_block_params * tokens;
    let attention = 4.0 * dims.dim as f64 * (seq + text_len) as f64 * tokens;
    blocks as f64 * (matmuls + attention)
}

/// Tokens per video of a latent video [.., T, H, W] after the patch embedding.
pub fn tokens_per_video(dims: &ModelDims, video: &[i64]) -> i64 {
    let n = video.len();
    let [pt, ph, pw] = dims.patch;
    (video[n - 3] / pt) * (video[n - 2] / ph) * (video[n - 1] / pw)
}

/// Peak memory of this rank in bytes: on a GPU what the CUDA driver reports in use on the
/// device (libtorch's caching allocator keeps what it took, so this is its high-water mark,
/// plus the CUDA context); on the CPU the process's peak resident set (VmHWM).
pub fn peak_memory_bytes(device: Device) -> u64 {
    match device {
        Device::Cuda(_) => crate::device::device_memory_used(device).unwrap_or(0),
        _ => crate::device::peak_rss_bytes(),
    }
}

/// Rates of consecutive training steps.
pub struct StepMeter {
    last: Instant,
    device: Device,
}

/// What one step achieved.
#[derive(Clone, Copy, Debug)]
pub struct StepRates {
    /// Global samples per second (every rank's batch).
    pub samples_per_s: f64,
    /// Model TFLOP/s of this rank.
    pub tflops: f64,
    pub peak_memory_gib: f64,
}

impl StepRates {
    /// The fields a metrics.jsonl step line carries.
    pub fn insert_into(&self, line: &mut serde_json::Value) {
        line["samples_per_s"] = self.samples_per_s.into();
        line["tflops"] = self.tflops.into();
        line["peak_memory_gib"] = self.peak_memory_gib.into();
    }
}

impl StepMeter {
    /// Starts measuring; the FLOPs counted so far are not this meter's.
    pub fn new(device: Device) -> StepMeter {
        take();
        StepMeter {
            last: Instant::now(),
            device,
        }
    }

    /// The rates of the step that just ended, which trained on `samples` videos in all.
    pub fn step(&mut self, samples: u64) -> StepRates {
        let now = Instant::now();
        let seconds = now.duration_since(self.last).as_secs_f64().max(1e-9);
        self.last = now;
        StepRates {
            samples_per_s: samples as f64 / seconds,
            tflops: take() / seconds / 1e12,
            peak_memory_gib: peak_memory_bytes(self.device) as f64 / (1u64 << 30) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;
    use crate::shard::ShardedDit;
    use flg_core::config::preset;
    use tch::{Kind, Tensor};

    /// A sharded forward + backward counts 3x the forward FLOPs of its active blocks.
    #[test]
    fn a_sharded_step_counts_three_forwards_of_its_active_blocks() {
        let d = preset("tiny").unwrap();
        let m = crate::model::Dit::init(&d, 1);
        let mut s = ShardedDit::from_dit(&m, &Solo, Device::Cpu, Kind::Float);
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 3, 8, 16, 16], opts);
        let t = Tensor::rand([2], opts);
        let text = Tensor::randn([2, 4, 32], opts);
        let active = [0usize, 3, 5];
        take();
        let (out, tape) = s.forward(&Solo, &x, &t, &text, &active);
        let fwd = take();
        s.backward(&Solo, tape, &out.ones_like());
        let bwd = take();
        let seq = tokens_per_video(&d, &x.size());
        assert_eq!(seq, 8 * 4 * 4);
        let want = forward_flops(&d, 2, seq, 4, 3);
        assert!((fwd - want).abs() < 1e-6 * want, "forward {fwd} vs {want}");
        assert!(
            (bwd - 2.0 * want).abs() < 1e-6 * want,
            "backward {bwd} vs {}",
            2.0 * want
        );
    }
}
