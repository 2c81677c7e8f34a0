//! The sharded model against the plain one: same outputs, same gradients, any world.

use super::*;
use crate::collective::Solo;
use flg_core::config::preset;

/// A tiny model with a non-zero head (seed `model_seed`) and a random batch of two videos
/// (seed `data_seed`): (model, x, t, text, target).
fn model_and_batch(model_seed: u64, data_seed: i64) -> (Dit, Tensor, Tensor, Tensor, Tensor) {
    let d = preset("tiny").unwrap();
    let m = Dit::init(&d, model_seed);
    let _ = m
        .stem
        .p("head.head.weight")
        .shallow_clone()
        .normal_(0.0, 0.05);
    tch::manual_seed(data_seed);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([2, 3, 8, 16, 16], opts);
    let t = Tensor::rand([2], opts);
    let text = Tensor::randn([2, 4, 32], opts);
    let target = Tensor::randn([2, 3, 8, 16, 16], opts);
    (m, x, t, text, target)
}

#[test]
fn sharded_backward_matches_plain_autograd() {
    let (m, x, t, text, target) = model_and_batch(5, 2);
    let active = [0usize, 2, 3, 5, 6, 9];

    // Plain autograd on the whole model.
    let params: Vec<Tensor> = m
        .parameters()
        .into_iter()
        .map(|p| p.set_requires_grad(true))
        .collect();
    let loss = crate::flow::mse(&m.forward(&x, &t, &text, Some(&active)), &target);
    let want = Tensor::run_backward(&[&loss], &params, false, false);

    // The sharded path with one rank.
    let mut s = ShardedDit::from_dit(&m, &Solo, Device::Cpu, Kind::Float);
    let (out, tape) = s.forward(&Solo, &x, &t, &text, &active);
    assert!(out.allclose(
        &m.forward(&x, &t, &text, Some(&active)).detach(),
        1e-5,
        1e-5,
        false
    ));
    let n = out.numel() as f64;
    let grad_out = (&out - &target) * (2.0 / n);
    s.backward(&Solo, tape, &grad_out);

    // Compare unit by unit (flattened in the same order as the layouts).
    let stem_n = s.units[0].layout.specs.len();
    let per_block = s.units[1].layout.specs.len();
    let mut k = 0;
    for (ui, u) in s.units.iter().enumerate() {
        let count = if ui == 0 { stem_n } else { per_block };
        let want_flat = u.layout.flatten(
            &want[k..k + count]
                .iter()
                .map(|g| {
                    if g.defined() {
                        g.shallow_clone()
                    } else {
                        Tensor::zeros([1], (Kind::Float, Device::Cpu))
                    }
                })
                .collect::<Vec<_>>(),
            1,
        );
        k += count;
        let block_id = if ui == 0 { None } else { Some(ui - 1) };
        match (&u.grad, block_id) {
            (Some(g), _) => {
                let diff = (g - &want_flat).abs().max().double_value(&[]);
                let scale = want_flat.abs().max().double_value(&[]).max(1e-8);
                assert!(
                    diff / scale < 1e-4,
                    "unit {ui}: max diff {diff} (scale {scale})"
                );
            }
            (None, Some(b)) => {
                assert!(!active.contains(&b), "active block {b} got no gradient")
            }
            (None, None) => panic!("the stem got no gradient"),
        }
    }
}

/// The bf16 compute path (cluster.precision = "bf16", the Wan config's setting) runs end
/// to end on the sharded model and tracks the f32 path: forward output and gradients
/// within bf16's precision. Runs on the CPU, so every CI run covers it.
#[test]
fn sharded_bf16_step_tracks_f32() {
    let (m, x, t, text, target) = model_and_batch(5, 3);
    let active = [0usize, 1, 4, 7, 9];
    let grads = |kind: Kind| {
        let mut s = ShardedDit::from_dit(&m, &Solo, Device::Cpu, kind);
        let (out, tape) = s.forward(&Solo, &x, &t, &text, &active);
        assert_eq!(out.kind(), Kind::Float, "the sharded forward returns f32");
        let grad_out = (&out - &target) * (2.0 / out.numel() as f64);
        s.backward(&Solo, tape, &grad_out);
        let g: Vec<Tensor> = s
            .units
            .iter()
            .filter_map(|u| u.grad.as_ref().map(|g| g.to_kind(Kind::Float)))
            .collect();
        (out, Tensor::cat(&g, 0))
    };
    let (out32, g32) = grads(Kind::Float);
    let (out16, g16) = grads(Kind::BFloat16);
    let rel =
        |a: &Tensor, b: &Tensor| (a - b).norm().double_value(&[]) / b.norm().double_value(&[]);
    let (eo, eg) = (rel(&out16, &out32), rel(&g16, &g32));
    assert!(
        eo < 3e-2,
        "bf16 forward differs from f32 by {eo} (relative L2)"
    );
    assert!(
        eg < 1e-1,
        "bf16 gradients differ from f32 by {eg} (relative L2)"
    );
    assert!(eo > 0.0, "the bf16 run computed in f32");
}

/// Without recompute (every block's graph kept from the forward) the sharded step gives
/// the same output and gradients as with it.
#[test]
fn kept_block_graphs_give_the_recomputed_gradients() {
    let (m, x, t, text, target) = model_and_batch(6, 4);
    let active = [0usize, 2, 3, 6, 8, 9];
    let run = |recompute: bool| {
        let mut s =
            ShardedDit::from_dit(&m, &Solo, Device::Cpu, Kind::Float).with_recompute(recompute);
        let (out, tape) = s.forward(&Solo, &x, &t, &text, &active);
        let grad_out = (&out - &target) * (2.0 / out.numel() as f64);
        s.backward(&Solo, tape, &grad_out);
        let grads: Vec<Option<Tensor>> = s.grads();
        (out, grads)
    };
    let (out_r, g_r) = run(true);
    let (out_k, g_k) = run(false);
    assert!(out_k.allclose(&out_r, 1e-6, 1e-6, false));
    for (i, (a, b)) in g_k.iter().zip(&g_r).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                let diff = (a - b).abs().max().double_value(&[]);
                let scale = b.abs().max().double_value(&[]).max(1e-8);
                assert!(
                    diff / scale < 1e-5,
                    "unit {i}: max diff {diff} (scale {scale})"
                );
            }
            (None, None) => {}
            _ => panic!("unit {i}: a gradient in one mode only"),
        }
    }
}

/// A loss that reads the token states after some blocks (Stage II's feature loss) gets the
/// gradient a central finite difference of the same loss gives, along a random direction in
/// the parameters (f64 compute; the recompute path and the kept-graph path alike).
#[test]
fn gradients_of_a_loss_on_block_states_match_a_finite_difference() {
    let (m, x, t, text, _) = model_and_batch(7, 5);
    let active = [0usize, 2, 3, 6, 9];
    for recompute in [true, false] {
        let mut s =
            ShardedDit::from_dit(&m, &Solo, Device::Cpu, Kind::Double).with_recompute(recompute);
        let (out, tape) = s.forward(&Solo, &x, &t, &text, &active);
        assert_eq!(tape.block_outputs().len(), active.len());
        tch::manual_seed(11);
        // Weights on the output, on the states after the second block and after the last.
        let g_out = out.randn_like();
        let g1 = tape.block_outputs()[1].randn_like();
        let g4 = tape.block_outputs()[4].randn_like();
        let loss = |o: &Tensor, st: &[Tensor]| {
            let dot = |a: &Tensor, b: &Tensor| {
                (a.to_kind(Kind::Double) * b.to_kind(Kind::Double))
                    .sum(Kind::Double)
                    .double_value(&[])
            };
            dot(o, &g_out) + dot(&st[1], &g1) + dot(&st[4], &g4)
        };
        s.backward_with_states(
            &Solo,
            tape,
            &g_out,
            &[(1, g1.shallow_clone()), (4, g4.shallow_clone())],
        );
        let dir: Vec<Tensor> = s.shards().iter().map(|p| p.randn_like()).collect();
        // The gradients' directional derivative along `dir`.
        let along = |s: &ShardedDit| -> f64 {
            s.grads()
                .iter()
                .zip(&dir)
                .filter_map(|(g, d)| {
                    g.as_ref()
                        .map(|g| (g * d).sum(Kind::Double).double_value(&[]))
                })
                .sum()
        };
        let analytic = along(&s);
        let at = |step: f64| {
            let shards = s
                .shards()
                .iter()
                .zip(&dir)
                .map(|(p, d)| p.to_kind(Kind::Double) + d.to_kind(Kind::Double) * step)
                .collect();
            let (o, st) = s
                .with_shards(shards)
                .output_and_states(&Solo, &x, &t, &text, &active);
            loss(&o, &st)
        };
        // Central differences at h and h/2, extrapolated (Richardson) to cancel the h^2 term:
        // the pass returns its output in f32, so a step small enough to need no extrapolation
        // drowns in rounding.
        let central = |h: f64| (at(h) - at(-h)) / (2.0 * h);
        let h = 1e-3;
        let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
        let rel = (analytic - numeric).abs() / numeric.abs().max(1e-12);
        assert!(
            rel < 1e-4,
            "recompute {recompute}: analytic {analytic}, numeric {numeric}"
        );
        // The states' terms matter: without them the directional derivative differs.
        s.zero_grad();
        let (out, tape) = s.forward(&Solo, &x, &t, &text, &active);
        s.backward(&Solo, tape, &(out.zeros_like() + &g_out));
        let without = along(&s);
        assert!(
            (without - analytic).abs() > 1e-3 * analytic.abs(),
            "{without} {analytic}"
        );
    }
}
