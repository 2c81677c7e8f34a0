//! `bench recompute`: the sharded training step at W = 1 with and without block recompute
//! against plain autograd on the whole model, on the same batch and draws, in one run.

use crate::collective::Solo;
use crate::flow::NullPrompt;
use crate::model::Dit;
use crate::optim::AdamW;
use crate::shard::ShardedDit;
use crate::train::flow_matching_backward;
use crate::train::{draws, Draws};
use flg_core::config::{ModelDims, Optim};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Samples/s of the three steps and how far their gradients are apart.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecomputeReport {
    pub preset: String,
    pub batch: usize,
    /// Median over rounds of samples/s: plain autograd, sharded without and with recompute.
    pub plain_samples_per_s: f64,
    pub sharded_none_samples_per_s: f64,
    pub sharded_full_samples_per_s: f64,
    /// sharded (no recompute) / plain, and sharded (recompute) / plain, median over rounds.
    pub none_over_plain: f64,
    pub full_over_plain: f64,
    /// Largest |difference| of a first-step gradient (per unit, relative to the unit's largest
    /// gradient) between the sharded step without recompute and plain autograd, and between
    /// the sharded step's two modes.
    pub max_rel_grad_diff_none_vs_plain: f64,
    pub max_rel_grad_diff_none_vs_full: f64,
    pub peak_rss_bytes: u64,
}

fn optim() -> Optim {
    Optim {
        lr: 1e-4,
        ..Optim::default()
    }
}

/// The first-step gradients of each way, flattened per unit in the sharded layout's order.
fn first_step_gradients(model: &Dit, x0: &Tensor, text: &Tensor, d: &Draws) -> [Vec<Tensor>; 3] {
    let params: Vec<Tensor> = model
        .parameters()
        .into_iter()
        .map(|p| p.set_requires_grad(true))
        .collect();
    let plain = crate::bench::plain_flow_grads(model, &params, x0, text, d);
    let active: Vec<usize> = model.block_ids.clone();
    let sharded = |recompute: bool| {
        let mut s =
            ShardedDit::from_dit(model, &Solo, Device::Cpu, Kind::Float).with_recompute(recompute);
        flow_matching_backward(
            &mut s,
            &Solo,
            x0,
            text,
            d,
            1.0,
            0.1,
            &NullPrompt::zeros(),
            &active,
        );
        s.grads()
            .into_iter()
            .map(|g| g.expect("every unit gets a gradient"))
            .collect()
    };
    let none: Vec<Tensor> = sharded(false);
    let full: Vec<Tensor> = sharded(true);
    // Plain gradients in the same per-unit flat layout.
    let s = ShardedDit::from_dit(model, &Solo, Device::Cpu, Kind::Float);
    let mut k = 0;
    let plain_flat = s
        .units
        .iter()
        .map(|u| {
            let n = u.layout.specs.len();
            let f = u.layout.flatten(&plain[k..k + n], 1);
            k += n;
            f
        })
        .collect();
    [plain_flat, none, full]
}

fn max_rel_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| {
            let scale = b.abs().max().double_value(&[]).max(1e-12);
            (a - b).abs().max().double_value(&[]) / scale
        })
        .fold(0.0, f64::max)
}

/// Runs `rounds` rounds, each timing `steps` steps (after `warmup`) of plain autograd, the
/// sharded step without recompute and the sharded step with it, all with AdamW and clipping
/// on the same fixed batch and draws.
pub fn run(
    preset: &str,
    dims: &ModelDims,
    video: [i64; 2],
    batch: usize,
    warmup: usize,
    steps: usize,
    rounds: usize,
) -> RecomputeReport {
    let [frames, size] = video;
    let model = Dit::init(dims, 0);
    let _ = model
        .stem
        .p("head.head.weight")
        .shallow_clone()
        .normal_(0.0, 0.02);
    tch::manual_seed(1);
    let opts = (Kind::Float, Device::Cpu);
    let x0 = Tensor::rand([batch as i64, dims.in_channels, frames, size, size], opts) * 2.0 - 1.0;
    let text = Tensor::randn([batch as i64, 4, dims.text_dim], opts);
    let d = draws(0, 0, 0, 0, batch, &x0.size()[1..], Device::Cpu);

    let [plain_g, none_g, full_g] = first_step_gradients(&model, &x0, &text, &d);
    let none_vs_plain = max_rel_diff(&none_g, &plain_g);
    let none_vs_full = max_rel_diff(&none_g, &full_g);

    let time = |step: &mut dyn FnMut()| {
        for _ in 0..warmup {
            step();
        }
        let start = Instant::now();
        for _ in 0..steps {
            step();
        }
        (steps * batch) as f64 / start.elapsed().as_secs_f64()
    };
    let plain_model = model.to(Device::Cpu, Kind::Float);
    let params: Vec<Tensor> = plain_model
        .parameters()
        .into_iter()
        .map(|p| p.set_requires_grad(true))
        .collect();
    let mut plain_opt = AdamW::new(&optim(), &params);
    let active: Vec<usize> = model.block_ids.clone();
    let sharded_role = |recompute: bool| {
        crate::train::Role::new(
            ShardedDit::from_dit(&model, &Solo, Device::Cpu, Kind::Float).with_recompute(recompute),
            &optim(),
            0, // constant learning rate: no horizon
            0.0,
            &Solo,
        )
    };
    let sharded_step = |role: &mut crate::train::Role| {
        flow_matching_backward(
            &mut role.model,
            &Solo,
            &x0,
            &text,
            &d,
            1.0,
            0.1,
            &NullPrompt::zeros(),
            &active,
        );
        role.step(&Solo);
    };
    let (mut none_role, mut full_role) = (sharded_role(false), sharded_role(true));
    let (mut p, mut n, mut f) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        p.push(time(&mut || {
            crate::bench::plain_flow_step(&plain_model, &params, &mut plain_opt, &x0, &text, &d)
        }));
        n.push(time(&mut || sharded_step(&mut none_role)));
        f.push(time(&mut || sharded_step(&mut full_role)));
    }
    let median = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(a, b)| a / b).collect());
    RecomputeReport {
        preset: preset.into(),
        batch,
        none_over_plain: ratio(&n, &p),
        full_over_plain: ratio(&f, &p),
        plain_samples_per_s: median(p),
        sharded_none_samples_per_s: median(n),
        sharded_full_samples_per_s: median(f),
        max_rel_grad_diff_none_vs_plain: none_vs_plain,
        max_rel_grad_diff_none_vs_full: none_vs_full,
        peak_rss_bytes: crate::device::peak_rss_bytes(),
    }
}
