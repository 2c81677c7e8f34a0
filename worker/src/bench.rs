//! Benchmarks that compare this implementation with a reference in the same run.

use crate::model::Dit;
use crate::optim::{clip_factor, grad_sq_sum, AdamW};
use crate::train::flow_loss;
use flg_core::config::{ModelDims, Optim};
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
        // Fresh draws from libtorch's generator each step, as the PyTorch reference does.
        let d = crate::train::Draws {
            u: Tensor::rand([batch], opts),
            keep_u: Tensor::rand([batch], opts),
            eps: x0.randn_like(),
        };
        plain_flow_step(&model, &params, &mut opt, &x0, &text, &d);
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

/// Runs `flg-worker ARGS` (this binary) as an mpirun job of `np` ranks on this node and
/// returns the JSON lines it printed.
pub fn run_mpi_job(np: u32, args: &[std::ffi::OsString]) -> anyhow::Result<Vec<serde_json::Value>> {
    let exe = std::env::current_exe()?;
    let out = flg_core::launch::MpiLaunch::single_node(np)
        .command(&exe, args)
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "mpirun -np {np} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The gradients of the flow-matching loss (no shift, 10% prompt dropout) of a whole model
/// with plain autograd, for `params` (the model's, requiring grad).
pub fn plain_flow_grads(
    model: &Dit,
    params: &[Tensor],
    x0: &Tensor,
    text: &Tensor,
    d: &crate::train::Draws,
) -> Vec<Tensor> {
    let loss = flow_loss(
        |x, t, c| model.forward(x, t, c, None),
        x0,
        text,
        d,
        1.0,
        0.1,
        &crate::flow::NullPrompt::zeros(),
    );
    Tensor::run_backward(&[&loss], params, false, false)
}

/// One plain-autograd pretraining step of a whole model: flow-matching loss (no shift, 10%
/// prompt dropout), backward into `params` (the model's, requiring grad), clipping at 1, AdamW.
pub fn plain_flow_step(
    model: &Dit,
    params: &[Tensor],
    opt: &mut AdamW,
    x0: &Tensor,
    text: &Tensor,
    d: &crate::train::Draws,
) {
    let g = plain_flow_grads(model, params, x0, text, d);
    opt.update(
        params,
        &crate::optim::all_present(&g),
        clip_factor(grad_sq_sum(&g).sqrt(), 1.0),
    );
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
    let flags = [
        ("--dim", dims.dim),
        ("--blocks", dims.num_blocks),
        ("--heads", dims.num_heads),
        ("--ffn", dims.ffn_dim),
        ("--freq", dims.freq_dim),
        ("--text-dim", dims.text_dim),
        ("--channels", dims.in_channels),
        ("--frames", frames),
        ("--size", size),
        ("--batch", batch),
        ("--steps", steps as i64),
        ("--warmup", warmup as i64),
        ("--threads", tch::get_num_threads() as i64),
    ];
    let out = std::process::Command::new(venv_python())
        .arg(pytorch_script())
        .args(
            flags
                .iter()
                .flat_map(|(f, v)| [f.to_string(), v.to_string()]),
        )
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

use crate::device::{peak_rss_bytes, rss_bytes};

/// One rank's share of a sharded training-step benchmark.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepReport {
    pub rank: usize,
    pub world: usize,
    pub params: i64,
    /// Seconds per step (after warm-up), and the part of it spent inside collectives.
    pub step_s: f64,
    pub collective_s: f64,
    /// Bytes of parameter, gradient and AdamW-moment shards this rank holds.
    pub state_bytes: i64,
    pub peak_rss_bytes: u64,
    /// Resident memory before the model was built (libtorch, OpenMPI, the binary).
    pub start_rss_bytes: u64,
    /// Whether the next unit's all-gather overlapped the current unit's compute.
    pub prefetch_active: bool,
}

/// One flow-matching backward pass of every block on a random local batch of `local[0]`
/// videos (the first at global index `local[1]`), `video = [frames, size]`.
fn random_flow_backward(
    model: &mut crate::shard::ShardedDit,
    comm: &dyn crate::collective::Collective,
    dims: &ModelDims,
    local: [usize; 2],
    video: [i64; 2],
    step: u64,
) {
    let opts = (Kind::Float, Device::Cpu);
    let [b, first] = local;
    let [frames, size] = video;
    let x0 = Tensor::rand([b as i64, dims.in_channels, frames, size, size], opts) * 2.0 - 1.0;
    let text = Tensor::randn([b as i64, 4, dims.text_dim], opts);
    let d = crate::train::draws(0, 0, step, first, b, &x0.size()[1..], Device::Cpu);
    let active: Vec<usize> = (0..dims.num_blocks as usize).collect();
    crate::train::flow_matching_backward(
        model,
        comm,
        &x0,
        &text,
        &d,
        1.0,
        0.1,
        &crate::flow::NullPrompt::zeros(),
        &active,
    );
}

/// Times sharded pretraining steps (random data, fixed draws) on this rank.
pub fn sharded_step(
    dims: &ModelDims,
    comm: &dyn crate::collective::Collective,
    frames: i64,
    size: i64,
    global_batch: usize,
    warmup: usize,
    steps: usize,
) -> StepReport {
    use crate::shard::ShardedDit;
    use crate::train::Role;
    let (rank, world) = (comm.rank(), comm.world());
    let start_rss_bytes = rss_bytes();
    comm.set_timing(true);
    let full = Dit::init(dims, 0);
    let params = full.param_count();
    let model = ShardedDit::from_dit(&full, comm, Device::Cpu, Kind::Float);
    drop(full);
    let mut role = Role::new(
        model,
        &Optim {
            lr: 1e-4,
            ..Optim::default()
        },
        0, // constant learning rate: no horizon
        0.0,
        comm,
    );
    let b = global_batch / world;
    let mut one = |step: u64| {
        random_flow_backward(
            &mut role.model,
            comm,
            dims,
            [b, rank * b],
            [frames, size],
            step,
        );
        role.step(comm);
    };
    for s in 0..warmup {
        one(s as u64);
    }
    comm.barrier();
    let (waited0, start) = (comm.seconds_waiting(), Instant::now());
    for s in 0..steps {
        one((warmup + s) as u64);
    }
    comm.barrier();
    let elapsed = start.elapsed().as_secs_f64();
    let (m, v) = role.opt.moments();
    let moments: i64 = m.iter().chain(v).map(|t| t.numel() as i64 * 4).sum();
    // Gradients are cleared after each update; during a step each parameter shard has one.
    let grads: i64 = role
        .model
        .shards()
        .iter()
        .map(|t| t.numel() as i64 * 4)
        .sum();
    let shards: i64 = role
        .model
        .shards()
        .iter()
        .map(|t| t.numel() as i64 * 4)
        .sum();
    StepReport {
        rank,
        world,
        params,
        step_s: elapsed / steps as f64,
        collective_s: (comm.seconds_waiting() - waited0) / steps as f64,
        state_bytes: shards + grads + moments,
        peak_rss_bytes: peak_rss_bytes(),
        start_rss_bytes,
        prefetch_active: comm.overlaps_gathers(),
    }
}

/// Bus bandwidth of all-gather and reduce-scatter for each message size (bytes of the full
/// buffer), NCCL-tests convention: `(W - 1) / W * size / time`; plus a plain memory-copy
/// bandwidth of the same size measured in the same run.
pub fn collectives(
    comm: &dyn crate::collective::Collective,
    sizes_bytes: &[usize],
    iters: usize,
) -> Vec<serde_json::Value> {
    let w = comm.world();
    let mut rows = Vec::new();
    for &size in sizes_bytes {
        let n = (size / 4 / w) as i64;
        let shard = Tensor::ones([n], (Kind::Float, Device::Cpu));
        let full = Tensor::ones([n * w as i64], (Kind::Float, Device::Cpu));
        let time = |f: &dyn Fn()| {
            f();
            comm.barrier();
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            comm.barrier();
            start.elapsed().as_secs_f64() / iters as f64
        };
        let ag = time(&|| {
            let _ = comm.all_gather(&shard);
        });
        let rs = time(&|| {
            let _ = comm.reduce_scatter_mean(&full);
        });
        let dst = Tensor::empty_like(&full);
        let cp = time(&|| {
            let _ = dst.shallow_clone().copy_(&full);
        });
        let bytes = (n * w as i64 * 4) as f64;
        let bus = |t: f64| (w as f64 - 1.0) / w as f64 * bytes / t / 1e9;
        rows.push(serde_json::json!({
            "bytes": bytes, "world": w,
            "all_gather_s": ag, "all_gather_bus_gbps": bus(ag),
            "reduce_scatter_s": rs, "reduce_scatter_bus_gbps": bus(rs),
            "memcpy_s": cp, "memcpy_gbps": bytes / cp / 1e9,
        }));
    }
    rows
}

/// What a checkpoint costs one rank (`bench checkpoint`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckpointCost {
    pub preset: String,
    pub params: i64,
    /// Seconds per training step (pretraining step with EMA, the batch given), for scale.
    pub step_s: f64,
    /// Seconds the training step waits: copying the shards, moments and EMA out (median).
    pub wait_s: f64,
    /// Seconds the writer thread then works: serialise, write, fsync, sha256 (median).
    pub write_s: f64,
    pub file_bytes: u64,
}

/// Measures the training-step wait and the background write of a one-rank checkpoint.
pub fn checkpoint_cost(
    preset: &str,
    dims: &ModelDims,
    batch: usize,
    steps: usize,
    repeats: usize,
    dir: &std::path::Path,
) -> anyhow::Result<CheckpointCost> {
    use crate::checkpoint::{snapshot, write_shard, TrainState};
    use crate::collective::Solo;
    use crate::shard::ShardedDit;
    use crate::train::Role;
    let full = Dit::init(dims, 0);
    let params = full.param_count();
    let mut role = Role::new(
        ShardedDit::from_dit(&full, &Solo, Device::Cpu, Kind::Float),
        &Optim {
            lr: 1e-4,
            ..Optim::default()
        },
        0, // constant learning rate: no horizon
        0.999,
        &Solo,
    );
    drop(full);
    let mut one = |step: u64| {
        random_flow_backward(&mut role.model, &Solo, dims, [batch, 0], [8, 16], step);
        role.step(&Solo);
    };
    one(0);
    let start = Instant::now();
    for s in 0..steps {
        one(1 + s as u64);
    }
    let step_s = start.elapsed().as_secs_f64() / steps.max(1) as f64;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut waits, mut writes, mut bytes) = (Vec::new(), Vec::new(), 0);
    for r in 0..repeats.max(1) {
        let state = TrainState {
            roles: vec![("model", &role)],
            data: None,
            extra: Vec::new(),
        };
        let t = Instant::now();
        let snap = snapshot(&state, "pretrain", r as u64, r as u64, 0, 1, 0);
        waits.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let f = write_shard(&dir.join(format!("tmp-{r}")), &snap, u32::MAX)?;
        writes.push(t.elapsed().as_secs_f64());
        bytes = f.bytes;
        std::fs::remove_dir_all(dir.join(format!("tmp-{r}")))?;
    }
    Ok(CheckpointCost {
        preset: preset.into(),
        params,
        step_s,
        wait_s: median(waits),
        write_s: median(writes),
        file_bytes: bytes,
    })
}
