//! `bench memory`: `validate --estimate-memory`'s model (core/src/memory.rs) against
//! the measured peak of real sharded training steps on the CPU.

use flg_core::config::ModelDims;
use std::path::Path;

/// For each preset and world size, an mpirun job of sharded training steps (AdamW, no EMA,
/// moving-shapes 8x16x16 videos, global batch `batch`) reports every rank's peak resident
/// memory; printed beside the estimate of the same step. Fails when the estimate is further
/// than `tolerance` (a share) from a measured peak.
pub fn check(
    presets: &[(String, ModelDims)],
    worlds: &[u32],
    batch: usize,
    tolerance: f64,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    use flg_core::config::{Device, Precision};
    use flg_core::memory::StepSetup;
    let mut rows = Vec::new();
    let mut worst: f64 = 0.0;
    for (preset, dims) in presets {
        for &w in worlds {
            let args: Vec<std::ffi::OsString> = [
                "mpi-bench",
                "step",
                "--preset",
                preset,
                "--batch",
                &batch.to_string(),
                "--warmup",
                "1",
                "--steps",
                "2",
            ]
            .iter()
            .map(|s| s.into())
            .collect();
            let lines = crate::bench::run_mpi_job(w, &args)?;
            let setup = StepSetup {
                dims: dims.clone(),
                world: w,
                latent: [dims.in_channels, 8, 16, 16],
                text_len: 4,
                device: Device::Cpu,
                precision: Precision::Fp32,
                recompute: true,
                prefetch: false,
            };
            let estimate = setup.pretrain(batch as u64, false).total();
            let measured = lines
                .iter()
                .filter_map(|l| l["peak_rss_bytes"].as_f64())
                .fold(0.0, f64::max);
            let start = lines
                .iter()
                .filter_map(|l| l["start_rss_bytes"].as_f64())
                .fold(0.0, f64::max);
            let error = estimate / measured - 1.0;
            worst = worst.max(error.abs());
            let gib = |b: f64| b / (1u64 << 30) as f64;
            println!(
                "{preset} W={w} batch {batch}: measured peak {:.3} GiB (runtime {:.3}), estimate {:.3} GiB ({:+.1}%)",
                gib(measured),
                gib(start),
                gib(estimate),
                100.0 * error
            );
            rows.push(serde_json::json!({
                "preset": preset, "world": w, "batch": batch,
                "measured_peak_bytes": measured, "start_rss_bytes": start,
                "estimate_bytes": estimate, "relative_error": error,
            }));
        }
    }
    if let Some(out) = out {
        std::fs::write(out, serde_json::to_string_pretty(&rows)?)?;
    }
    if worst > tolerance {
        anyhow::bail!(
            "the estimate is {:.0}% off the measured peak (tolerance {:.0}%)",
            100.0 * worst,
            100.0 * tolerance
        );
    }
    Ok(())
}
