//! `flg-worker bench ...` and `flg-worker mpi-bench ...`: each benchmark compares against a
//! reference measured in the same run; the mpirun ones start their own jobs.

use crate::args::*;
use crate::commands::preset_dims;
use anyhow::{bail, Result};
use std::path::PathBuf;

pub fn train_step(a: TrainStepArgs) -> Result<()> {
    let TrainStepArgs {
        preset,
        batch,
        frames,
        size,
        warmup,
        steps,
        rounds,
        out,
    } = a;
    let dims = preset_dims(&preset)?;
    let mut rows = Vec::new();
    for round in 0..rounds.max(1) {
        let rust = flg_worker::bench::rust_train_step(&dims, frames, size, batch, warmup, steps);
        let py = flg_worker::bench::pytorch_train_step(&dims, frames, size, batch, warmup, steps)?;
        let pys = py["samples_per_s"].as_f64().unwrap_or(f64::NAN);
        println!(
            "round {round}: rust {rust:.1} samples/s, pytorch {pys:.1} samples/s, ratio {:.3}",
            rust / pys
        );
        rows.push(
            serde_json::json!({"rust_samples_per_s": rust, "pytorch": py, "ratio": rust / pys}),
        );
    }
    let mut ratios: Vec<f64> = rows.iter().map(|r| r["ratio"].as_f64().unwrap()).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "median rust/pytorch throughput ratio: {median:.3} ({} threads)",
        tch::get_num_threads()
    );
    if let Some(out) = out {
        let v = serde_json::json!({"preset": preset, "batch": batch, "rounds": rows, "median_ratio": median});
        std::fs::write(out, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

pub fn memory(a: MemoryArgs) -> Result<()> {
    let MemoryArgs {
        presets,
        worlds,
        batch,
        tolerance,
        out,
    } = a;
    let dims: Vec<_> = presets
        .iter()
        .map(|p| Ok((p.clone(), preset_dims(p)?)))
        .collect::<Result<_>>()?;
    flg_worker::bench_memory::check(&dims, &worlds, batch, tolerance, out.as_deref())?;
    Ok(())
}

pub fn scaling(a: ScalingArgs) -> Result<()> {
    let ScalingArgs {
        preset,
        worlds,
        batch,
        steps,
        warmup,
        prefetch,
        out,
    } = a;
    let settings: &[bool] = match prefetch.as_str() {
        "on" => &[true],
        "off" => &[false],
        "both" => &[false, true],
        other => bail!("--prefetch {other}: expected on, off or both"),
    };
    let mut lines = Vec::new();
    for (w, &on) in worlds
        .iter()
        .flat_map(|&w| settings.iter().map(move |on| (w, on)))
    {
        let args: Vec<std::ffi::OsString> = [
            "mpi-bench",
            "step",
            "--preset",
            &preset,
            "--batch",
            &batch.to_string(),
            "--warmup",
            &warmup.to_string(),
            "--steps",
            &steps.to_string(),
        ]
        .iter()
        .map(|s| s.into())
        .collect();
        let mut args = args;
        args.extend(["--prefetch".into(), if on { "on" } else { "off" }.into()]);
        for mut l in flg_worker::bench::run_mpi_job(w, &args)? {
            l["prefetch"] = on.into();
            lines.push(l);
        }
    }
    finish_bench(&lines, out)?;
    Ok(())
}

pub fn device_forward(a: DeviceForwardArgs) -> Result<()> {
    let DeviceForwardArgs {
        model,
        device,
        batch,
        frames,
        size,
    } = a;
    use flg_worker::bench_device;
    let device = bench_device::parse_device(&device)?;
    let (m, _) = flg_worker::model::file::load(&model, None)?;
    let report = bench_device::device_forward(&m, device, batch, frames, size);
    println!("{report}");
    if report["pass"] != serde_json::Value::Bool(true) {
        bail!("the forward on {device:?} differs from the CPU's beyond the tolerance: {report}");
    }
    Ok(())
}

pub fn device_step(a: DeviceStepArgs) -> Result<()> {
    let DeviceStepArgs {
        preset,
        device,
        precision,
        batch,
        frames,
        height,
        width,
        text_len,
        warmup,
        steps,
        peak_tflops,
    } = a;
    use flg_worker::bench_device;
    let dims = preset_dims(&preset)?;
    let kind = match precision.as_str() {
        "bf16" => tch::Kind::BFloat16,
        "fp32" => tch::Kind::Float,
        other => bail!("--precision {other}: expected bf16 or fp32"),
    };
    let device = bench_device::parse_device(&device)?;
    let shape = bench_device::StepShape {
        batch,
        frames,
        height,
        width,
        text_len,
    };
    let report = bench_device::model_step(&dims, &shape, device, kind, warmup, steps, peak_tflops);
    println!("{report}");
    Ok(())
}

pub fn recompute(a: RecomputeArgs) -> Result<()> {
    let dims = preset_dims(&a.preset)?;
    let r = flg_worker::bench_recompute::run(
        &a.preset,
        &dims,
        [a.frames, a.size],
        a.batch,
        a.warmup,
        a.steps,
        a.rounds,
    );
    let json = serde_json::to_string(&r)?;
    println!("{json}");
    eprintln!(
        "sharded step, W = 1: no recompute {:.1} samples/s ({:.3}x plain), recompute {:.1} ({:.3}x); plain autograd {:.1}; gradients vs plain {:.1e}",
        r.sharded_none_samples_per_s,
        r.none_over_plain,
        r.sharded_full_samples_per_s,
        r.full_over_plain,
        r.plain_samples_per_s,
        r.max_rel_grad_diff_none_vs_plain
    );
    if let Some(out) = a.out {
        std::fs::write(&out, json + "\n")?;
    }
    Ok(())
}

pub fn collectives(a: BenchCollectivesArgs) -> Result<()> {
    let BenchCollectivesArgs { world, out } = a;
    let lines = flg_worker::bench::run_mpi_job(world, &["mpi-bench".into(), "collectives".into()])?;
    finish_bench(&lines, out)?;
    Ok(())
}

pub fn checkpoint(a: CheckpointArgs) -> Result<()> {
    let CheckpointArgs {
        presets,
        batch,
        steps,
        repeats,
        dir,
        out,
    } = a;
    let mut lines = Vec::new();
    for p in presets {
        let dims = preset_dims(&p)?;
        let c = flg_worker::bench::checkpoint_cost(&p, &dims, batch, steps, repeats, &dir)?;
        println!(
            "{p}: {} parameters, step {:.3} s, the step waits {:.4} s for a checkpoint ({:.1}% of a step), \
             the writer thread then takes {:.3} s; {:.1} MB per rank-file",
            c.params,
            c.step_s,
            c.wait_s,
            100.0 * c.wait_s / c.step_s,
            c.write_s,
            c.file_bytes as f64 / 1e6
        );
        lines.push(serde_json::to_value(&c)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    finish_bench(&lines, out)?;
    Ok(())
}

/// Prints a benchmark's JSON lines, and writes them to `out` when given.
fn finish_bench(lines: &[serde_json::Value], out: Option<PathBuf>) -> Result<()> {
    for l in lines {
        println!("{l}");
    }
    if let Some(out) = out {
        std::fs::write(out, serde_json::to_string_pretty(lines)?)?;
    }
    Ok(())
}

/// One rank of a benchmark job: prints JSON lines (every rank for `step`, rank 0 otherwise).
pub fn mpi_bench(b: MpiBench) -> Result<()> {
    let universe = flg_worker::ranks::init_mpi()
        .ok_or_else(|| anyhow::anyhow!("MPI could not be initialised"))?;
    let prefetch = matches!(&b, MpiBench::Step(a) if a.prefetch == "on");
    let comm = flg_worker::collective::MpiCollective::new(&universe, prefetch);
    use flg_worker::collective::Collective;
    flg_worker::collective::share_cores_among_local_ranks(&flg_worker::collective::node_place(
        &universe,
    ));
    match b {
        MpiBench::Step(MpiStepArgs {
            preset,
            batch,
            warmup,
            steps,
            prefetch: _,
        }) => {
            let dims = preset_dims(&preset)?;
            let r = flg_worker::bench::sharded_step(&dims, &comm, 8, 16, batch, warmup, steps);
            let mut v = serde_json::to_value(&r)?;
            v["preset"] = preset.into();
            v["batch"] = batch.into();
            // One rank at a time, so lines do not interleave.
            for k in 0..comm.world() {
                if k == comm.rank() {
                    println!("{v}");
                }
                comm.barrier();
            }
        }
        MpiBench::Collectives(MpiCollectivesArgs { sizes_mib, iters }) => {
            let sizes: Vec<usize> = sizes_mib.iter().map(|m| m << 20).collect();
            let rows = flg_worker::bench::collectives(&comm, &sizes, iters);
            if comm.rank() == 0 {
                for r in rows {
                    println!("{r}");
                }
            }
        }
    }
    Ok(())
}
