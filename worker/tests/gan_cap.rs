//! The GAN term's cap on its gradient (`distill.gan.max_grad_ratio`), checked by comparing the
//! generator's gradients of separate calls. It is a test binary of its own: torch's random
//! generator is process-wide, and the library's unit tests, run in parallel threads, reseed it
//! between another test's seeding and its draws.

use flg_core::config::{Distill, Gan};
use flg_worker::collective::Solo;
use flg_worker::flow::NullPrompt;
use flg_worker::shard::ShardedDit;
use flg_worker::stages::distill::{gradients, Roles};
use flg_worker::stages::gan::GanClassifier;
use flg_worker::testing::live_model;
use tch::{Device, Kind, Tensor};

/// The generator's gradients (flat) and the GAN ratio of one generator step with b1 = 4,
/// b2 = 0 and, with `cap`, DMD2's GAN term of weight 1 capped at it (0: no cap).
fn gan_step(cap: Option<f64>) -> (Tensor, Option<f64>) {
    let base = live_model();
    let d = Distill {
        steps: 1,
        batch_size: 2,
        generator_every: 1,
        b1_range: [4.0, 4.0],
        b2_range: [0.0, 0.0],
        gan: Gan {
            weight: 1.0,
            max_grad_ratio: cap.unwrap_or(0.0),
            ..Gan::default()
        },
        ..Distill::default()
    };
    let mut roles = Roles::new(&base, None, &[1], &d, NullPrompt::zeros(), &Solo, |m| {
        ShardedDit::from_dit(m, &Solo, Device::Cpu, Kind::Float)
    });
    if cap.is_some() {
        let c = GanClassifier::new(
            &d.gan,
            &roles.fake.model,
            &roles.pruned_ids,
            0,
            d.steps,
            &Solo,
        );
        roles.gan = Some(c.unwrap());
    }
    tch::manual_seed(0);
    let x0 = Tensor::randn([2, 3, 8, 16, 16], (Kind::Float, Device::Cpu));
    let text = Tensor::randn([2, 4, 32], (Kind::Float, Device::Cpu));
    let r = gradients(&mut roles, &Solo, &d, 0, 0, &x0, &text, None, 0);
    let grads: Vec<Tensor> = roles
        .generator
        .model
        .grads()
        .into_iter()
        .map(|g| g.expect("a generator step").reshape([-1]))
        .collect();
    (
        Tensor::cat(&grads, 0),
        r.gan_generator.map(|g| g.grad_ratio),
    )
}

#[test]
fn the_gan_gradient_adds_to_dmds_scaled_down_to_its_cap() {
    // The generator's backward is linear in the gradient on its sample, so the GAN term's
    // share of the parameter gradient is exactly proportional to the factor it was scaled by:
    // capped at c it is c / ratio of the uncapped one.
    let (none, _) = gan_step(None);
    let (again, _) = gan_step(None);
    assert!(none.equal(&again), "a step is deterministic");
    let (free, ratio) = gan_step(Some(0.0));
    let ratio = ratio.expect("a GAN ratio on a generator step");
    assert!(ratio > 1e-3, "the fresh classifier already pushes: {ratio}");
    let (capped, same) = gan_step(Some(1e-4));
    assert_eq!(same, Some(ratio), "the ratio is reported before the cap");
    let norm = |t: &Tensor| t.norm().double_value(&[]);
    let (full, part) = (&free - &none, &capped - &none);
    assert!(
        norm(&full) > 1e-3 * norm(&none),
        "the GAN term moves the gradient"
    );
    let want = &full * (1e-4 / ratio);
    // The rest is float rounding of the DMD part (about 1e-7 of it) against a share 1e-4 / ratio
    // of a GAN part ~ratio of it.
    let err = norm(&(&part - &want)) / norm(&want);
    assert!(err < 1e-2, "capped share off by {err:e} (relative)");
}
