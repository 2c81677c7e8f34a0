//! DMD2's GAN term for Stage III (`distill.gan`): a small classifier on the fake score's token
//! features, trained every step to tell noised training videos (real) from noised generator
//! samples (fake); on generator steps the generator gets `softplus(-D(features(x_t)))`, with
//! its gradient taken through the fake score (held fixed) back to the sample `x_t` is made of.
//!
//! The classifier reads the features after the fake score's first `feature_blocks` blocks
//! (layer-normalised, without affine parameters, so that their scale drifting with the fake
//! score's training does not move the logits), applies a per-token MLP `D -> D -> 1` and averages
//! the token logits: a patch classifier, as DMD2's head over the bottleneck's spatial map.
//! Its parameters are a role of their own (`gan_classifier`): sharded, AdamW, checkpointed and
//! resumed like the generator and the fake score.

use crate::collective::{all_reduce_mean, Collective};
use crate::model::params::ParamSpec;
use crate::shard::ShardedDit;
use crate::train::Role;
use anyhow::{bail, Result};
use flg_core::config::Gan;
use tch::{Kind, Tensor};

/// The classifier and the blocks its features come after.
pub struct GanClassifier {
    pub role: Role,
    /// The fake score's blocks run before the features are read (original indices).
    pub feature_ids: Vec<usize>,
}

/// What the classifier's update measured on one step (means over ranks).
#[derive(Clone, Copy, Debug)]
pub struct ClassifierReport {
    /// `mean softplus(-D(real)) + mean softplus(D(fake))`; ln 4 = 1.386 when it cannot tell.
    pub loss: f64,
    /// Share of the videos it classifies right (logit > 0 for real, < 0 for fake).
    pub accuracy: f64,
}

fn specs(dim: i64) -> Vec<ParamSpec> {
    let spec = |name: &'static str, shape: &[i64]| ParamSpec {
        name,
        shape: shape.to_vec(),
    };
    vec![
        spec("gan.hidden.weight", &[dim, dim]),
        spec("gan.hidden.bias", &[dim]),
        spec("gan.out.weight", &[1, dim]),
        spec("gan.out.bias", &[1]),
    ]
}

impl GanClassifier {
    /// A fresh classifier for a fake score with blocks `fake_ids` (the generator's), with the
    /// same weights on every rank (drawn from `seed`) and sharded like the fake score; it is
    /// updated `updates` times (every Stage III step).
    pub fn new(
        g: &Gan,
        fake: &ShardedDit,
        fake_ids: &[usize],
        seed: u64,
        updates: u64,
        comm: &dyn Collective,
    ) -> Result<GanClassifier> {
        let n = match g.feature_blocks as usize {
            0 => fake_ids.len().div_ceil(2),
            n => n,
        };
        if n > fake_ids.len() {
            bail!(
                "distill.gan.feature_blocks = {n}, but the fake score has {} blocks ({fake_ids:?})",
                fake_ids.len()
            );
        }
        let dim = fake.dims.dim;
        tch::manual_seed((seed ^ 0x4741_4e00) as i64 >> 1);
        let opts = (Kind::Float, tch::Device::Cpu);
        // Standard fan-in initialisation; the output layer starts small so that the first
        // logits are near 0 (the generator's first GAN gradients are not noise).
        let tensors = [
            Tensor::randn([dim, dim], opts) / (dim as f64).sqrt(),
            Tensor::zeros([dim], opts),
            Tensor::randn([1, dim], opts) * (0.01 / (dim as f64).sqrt()),
            Tensor::zeros([1], opts),
        ];
        let model = ShardedDit::single_unit(
            &fake.dims,
            specs(dim),
            &tensors,
            comm,
            fake.device,
            Kind::Float,
        );
        Ok(GanClassifier {
            role: Role::new(model, &g.classifier_optim, updates, 0.0, comm),
            feature_ids: fake_ids[..n].to_vec(),
        })
    }

    /// The classifier's full parameters on every rank.
    fn params(&self, comm: &dyn Collective) -> Vec<Tensor> {
        self.role.model.gather_unit(0, comm)
    }

    /// One logit per video from features [B, N, D]: the mean of the per-token logits.
    fn logits(params: &[Tensor], features: &Tensor) -> Tensor {
        let dim = *features.size().last().expect("features [B, N, D]");
        let h = features.layer_norm([dim], None::<Tensor>, None::<Tensor>, 1e-6, false);
        let h = h.linear(&params[0], Some(&params[1])).silu();
        h.linear(&params[2], Some(&params[3]))
            .mean_dim(&[1i64, 2][..], false, Kind::Float)
    }

    /// The classifier's loss on noised real videos `real_xt` and noised generator samples
    /// `fake_xt` (same times `t`), backpropagated into its shard gradients.
    pub fn classifier_backward(
        &mut self,
        comm: &dyn Collective,
        fake: &ShardedDit,
        real_xt: &Tensor,
        fake_xt: &Tensor,
        t: &Tensor,
        text: &Tensor,
    ) -> ClassifierReport {
        let b = real_xt.size()[0];
        let both = fake.features(
            comm,
            &Tensor::cat(&[real_xt, fake_xt], 0),
            &Tensor::cat(&[t, t], 0),
            &Tensor::cat(&[text, text], 0),
            &self.feature_ids,
        );
        let params: Vec<Tensor> = self
            .params(comm)
            .iter()
            .map(|p| p.to_kind(Kind::Float).set_requires_grad(true))
            .collect();
        let (loss, accuracy, grads) = tch::with_grad(|| {
            let z = Self::logits(&params, &both);
            let (zr, zf) = (z.narrow(0, 0, b), z.narrow(0, b, b));
            let loss = (-&zr).softplus().mean(Kind::Float) + zf.softplus().mean(Kind::Float);
            let right = zr.gt(0.0).to_kind(Kind::Float).sum(Kind::Float)
                + zf.lt(0.0).to_kind(Kind::Float).sum(Kind::Float);
            let accuracy = right.double_value(&[]) / (2 * b) as f64;
            let grads = Tensor::run_backward(&[&loss], &params, false, false);
            (loss.double_value(&[]), accuracy, grads)
        });
        self.role.model.add_unit_grad(0, &grads, comm);
        let m = all_reduce_mean(comm, &[loss, accuracy]);
        ClassifierReport {
            loss: m[0],
            accuracy: m[1],
        }
    }

    /// The generator's GAN loss `mean softplus(-D(features(xt)))` on noised generator samples
    /// `xt` and its gradient with respect to `xt` (the fake score and the classifier held
    /// fixed). Returns (the loss, the mean over ranks; the gradient, this rank's items).
    pub fn generator_loss_grad(
        &self,
        comm: &dyn Collective,
        fake: &ShardedDit,
        xt: &Tensor,
        t: &Tensor,
        text: &Tensor,
    ) -> (f64, Tensor) {
        let params: Vec<Tensor> = self
            .params(comm)
            .iter()
            .map(|p| p.to_kind(Kind::Float))
            .collect();
        let x = xt.detach().set_requires_grad(true);
        let features = fake.features(comm, &x, t, text, &self.feature_ids);
        let (loss, grad) = tch::with_grad(|| {
            let loss = (-Self::logits(&params, &features))
                .softplus()
                .mean(Kind::Float);
            let g = Tensor::run_backward(&[&loss], &[&x], false, false);
            (loss.double_value(&[]), g[0].shallow_clone())
        });
        (all_reduce_mean(comm, &[loss])[0], grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;
    use crate::model::Dit;
    use tch::Device;

    fn fake_score() -> ShardedDit {
        let mut dims = flg_core::config::preset("tiny").unwrap();
        dims.num_blocks = 4;
        ShardedDit::from_dit(&Dit::init(&dims, 5), &Solo, Device::Cpu, Kind::Float)
    }

    #[test]
    fn the_features_input_gradient_matches_finite_differences() {
        // The generator's GAN gradient is d/dx of a loss on the fake score's features with the
        // parameters fixed: check it along a random direction against a central difference.
        let fake = fake_score();
        let c = GanClassifier::new(&Gan::default(), &fake, &fake.block_ids, 0, 1, &Solo).unwrap();
        assert_eq!(c.feature_ids, vec![0, 1], "half of 4 blocks by default");
        tch::manual_seed(3);
        let opts = (Kind::Double, Device::Cpu);
        let xt = Tensor::randn([2, 3, 8, 16, 16], opts).to_kind(Kind::Float);
        let t = Tensor::from_slice(&[0.6f32, 0.3]);
        let text = Tensor::randn([2, 4, 32], (Kind::Float, Device::Cpu));
        let (_, grad) = c.generator_loss_grad(&Solo, &fake, &xt, &t, &text);
        assert!(grad.abs().max().double_value(&[]) > 0.0);
        let dir = Tensor::randn([2, 3, 8, 16, 16], (Kind::Float, Device::Cpu));
        let h = 1e-2;
        let loss = |x: &Tensor| c.generator_loss_grad(&Solo, &fake, x, &t, &text).0;
        let numeric = (loss(&(&xt + &dir * h)) - loss(&(&xt - &dir * h))) / (2.0 * h);
        let analytic = (&grad * &dir).sum(Kind::Double).double_value(&[]);
        let rel = (numeric - analytic).abs() / analytic.abs().max(1e-12);
        assert!(
            rel < 2e-2,
            "directional derivative {analytic:e} vs finite difference {numeric:e}"
        );
    }

    #[test]
    fn the_classifier_learns_to_tell_real_from_fake() {
        // Real: noise with a bright band across rows 4..8; fake: plain noise. A few updates of the
        // classifier alone take its loss well below ln 4 (chance) and its accuracy to 1.
        let fake = fake_score();
        let g = Gan {
            weight: 1.0,
            classifier_optim: flg_core::config::Optim {
                lr: 3e-3,
                ..Gan::default().classifier_optim
            },
            ..Gan::default()
        };
        let mut c = GanClassifier::new(&g, &fake, &fake.block_ids, 0, 1, &Solo).unwrap();
        tch::manual_seed(4);
        let o = (Kind::Float, Device::Cpu);
        let text = Tensor::randn([4, 4, 32], o);
        let t = Tensor::full([4], 0.3, o);
        let mut first = None;
        let mut last = None;
        for _ in 0..40 {
            let noise = Tensor::randn([4, 3, 8, 16, 16], o);
            let real = Tensor::randn([4, 3, 8, 16, 16], o).index_fill(
                3,
                &Tensor::arange_start(4, 8, (Kind::Int64, Device::Cpu)),
                2.0,
            );
            let r = c.classifier_backward(&Solo, &fake, &real, &noise, &t, &text);
            c.role.step(&Solo);
            first.get_or_insert(r);
            last = Some(r);
        }
        let (first, last) = (first.unwrap(), last.unwrap());
        assert!(
            (first.loss - 4f64.ln()).abs() < 0.05,
            "starts at chance: {}",
            first.loss
        );
        assert!(
            last.loss < 0.5 && last.accuracy == 1.0,
            "after 40 updates: loss {}, accuracy {}",
            last.loss,
            last.accuracy
        );
    }

    #[test]
    fn too_many_feature_blocks_is_a_clear_error() {
        let fake = fake_score();
        let g = Gan {
            feature_blocks: 5,
            ..Gan::default()
        };
        let err = GanClassifier::new(&g, &fake, &fake.block_ids, 0, 1, &Solo)
            .err()
            .expect("5 of 4 blocks");
        assert!(
            err.to_string().contains("distill.gan.feature_blocks = 5"),
            "{err}"
        );
    }
}
