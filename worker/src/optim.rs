//! AdamW, gradient clipping and EMA over plain lists of tensors.
//!
//! Written against lists rather than a `VarStore` so the same code runs on whole parameters
//! (one process) and on the flat local shards of the sharding layer, where the global gradient
//! norm is a sum of per-rank squares.

use flg_core::config::{LrSchedule, Optim};
use tch::{Kind, Tensor};

/// Decoupled-weight-decay Adam with linear warmup, then a constant or cosine learning rate
/// (`Optim::schedule`). Like PyTorch's, a parameter that gets no
/// gradient in a step is left alone (its moments and its own step count too).
pub struct AdamW {
    pub cfg: Optim,
    /// Optimiser steps taken so far (drives the warmup schedule).
    pub step: u64,
    /// Per parameter: updates it has received (drives its bias correction).
    counts: Vec<u64>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Per parameter: 1 where weight decay applies, 0 where not (a scalar or a mask).
    decay: Vec<Tensor>,
    /// The updates this optimiser takes in its stage: where a cosine schedule ends.
    pub horizon: u64,
}

impl AdamW {
    /// Weight decay on matrices and kernels (2-D and up), not on vectors.
    pub fn new(cfg: &Optim, params: &[Tensor]) -> AdamW {
        let masks = params
            .iter()
            .map(|p| Tensor::from(if p.dim() >= 2 { 1f32 } else { 0f32 }).to_device(p.device()))
            .collect();
        AdamW::with_decay_masks(cfg, params, masks)
    }

    /// With explicit weight-decay masks (for flat shards that mix matrices and vectors).
    pub fn with_decay_masks(cfg: &Optim, params: &[Tensor], decay: Vec<Tensor>) -> AdamW {
        assert_eq!(params.len(), decay.len());
        let zeros = |p: &Tensor| Tensor::zeros_like(p).to_kind(Kind::Float);
        AdamW {
            cfg: cfg.clone(),
            step: 0,
            counts: vec![0; params.len()],
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
            decay,
            horizon: 0,
        }
    }

    /// The same optimiser, told that it takes `updates` updates in its stage (a cosine
    /// schedule reaches its final rate at the last of them).
    pub fn over(mut self, updates: u64) -> AdamW {
        self.horizon = updates;
        self
    }

    /// The learning rate of update number `step` (0-based): linear warmup, then constant or
    /// half a cosine down to `lr * final_lr_ratio` at update `horizon - 1`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let (lr, w) = (self.cfg.lr, self.cfg.warmup_steps);
        if w > 0 && step < w {
            return lr * (step + 1) as f64 / w as f64;
        }
        match self.cfg.schedule {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => {
                let last = self.horizon.saturating_sub(1).max(w);
                let progress = if last > w {
                    (step - w).min(last - w) as f64 / (last - w) as f64
                } else {
                    1.0
                };
                let r = self.cfg.final_lr_ratio;
                lr * (r + (1.0 - r) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
            }
        }
    }

    /// One update of `params` in place from `grads` (each scaled by `scale`, the clipping
    /// factor); parameters whose gradient is `None` are skipped.
    pub fn update(&mut self, params: &[Tensor], grads: &[Option<Tensor>], scale: f64) {
        let _guard = tch::no_grad_guard();
        let lr = self.lr_at(self.step);
        self.step += 1;
        let (b1, b2, eps, wd) = (
            self.cfg.beta1,
            self.cfg.beta2,
            self.cfg.eps,
            self.cfg.weight_decay,
        );
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            self.counts[i] += 1;
            let n = self.counts[i] as i32;
            let (bc1, bc2) = (1.0 - b1.powi(n), 1.0 - b2.powi(n));
            let g = g.to_kind(Kind::Float) * scale;
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            let _ = m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
            let _ = v.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
            let step = (&*m / bc1) / ((&*v / bc2).sqrt() + eps) * lr;
            let mut p = p.shallow_clone();
            if wd > 0.0 {
                let _ = p.g_mul_(&(-(&self.decay[i] * (lr * wd)) + 1.0));
            }
            let _ = p.g_sub_(&step.to_kind(p.kind()));
        }
    }

    /// Optimizer state tensors (first and second moments), in parameter order.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Per-parameter update counts.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Restores moments and step counts (from a checkpoint).
    pub fn restore(&mut self, step: u64, counts: Vec<u64>, m: Vec<Tensor>, v: Vec<Tensor>) {
        assert_eq!(
            (m.len(), v.len(), counts.len()),
            (self.m.len(), self.v.len(), self.counts.len())
        );
        self.step = step;
        self.counts = counts;
        self.m = m;
        self.v = v;
    }
}

/// Sum of squares of the gradients (the caller all-reduces it across ranks when sharded).
pub fn grad_sq_sum(grads: &[Tensor]) -> f64 {
    grads
        .iter()
        .map(|g| {
            g.to_kind(Kind::Double)
                .square()
                .sum(Kind::Double)
                .double_value(&[])
        })
        .sum()
}

/// Wraps every gradient as present (for `AdamW::update`).
pub fn all_present(grads: &[Tensor]) -> Vec<Option<Tensor>> {
    grads.iter().map(|g| Some(g.shallow_clone())).collect()
}

/// The factor that scales gradients of global norm `norm` down to `max_norm` (1 if below, or
/// if clipping is off).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Exponential moving average of parameters.
pub struct Ema {
    pub decay: f64,
    pub shadow: Vec<Tensor>,
}

impl Ema {
    pub fn new(decay: f64, params: &[Tensor]) -> Ema {
        let _guard = tch::no_grad_guard();
        Ema {
            decay,
            shadow: params.iter().map(|p| p.detach().copy()).collect(),
        }
    }

    /// `shadow = decay * shadow + (1 - decay) * params`. The decay ramps up as
    /// `min(decay, (1 + n) / (10 + n))` so early averages are not dominated by the random init.
    pub fn update(&mut self, params: &[Tensor], updates_so_far: u64) {
        let _guard = tch::no_grad_guard();
        let n = updates_so_far as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        for (s, p) in self.shadow.iter_mut().zip(params) {
            let _ = s.g_mul_scalar_(d).g_add_(&(p.detach() * (1.0 - d)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_minimises_a_quadratic() {
        let p = Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true);
        let cfg = Optim {
            lr: 0.1,
            warmup_steps: 5,
            ..Optim::default()
        };
        let mut opt = AdamW::new(&cfg, std::slice::from_ref(&p));
        for _ in 0..300 {
            let loss = p.square().sum(Kind::Float);
            let g = Tensor::run_backward(&[loss], std::slice::from_ref(&p), false, false);
            opt.update(std::slice::from_ref(&p), &[Some(g[0].shallow_clone())], 1.0);
        }
        assert!(p.abs().max().double_value(&[]) < 0.05, "{p}");
        assert!((opt.lr_at(0) - 0.02).abs() < 1e-12);
    }

    #[test]
    fn a_cosine_schedule_warms_up_then_falls_to_its_final_rate_at_the_last_update() {
        let cfg = Optim {
            lr: 1.0,
            warmup_steps: 10,
            schedule: LrSchedule::Cosine,
            final_lr_ratio: 0.1,
            ..Optim::default()
        };
        let opt = AdamW::new(&cfg, &[Tensor::from_slice(&[0.0f32])]).over(111);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(opt.lr_at(0), 0.1) && close(opt.lr_at(9), 1.0));
        assert!(close(opt.lr_at(10), 1.0));
        // The decay runs over updates 10..=110: halfway, the mean of the start and the end.
        assert!(close(opt.lr_at(60), 0.55), "{}", opt.lr_at(60));
        assert!(close(opt.lr_at(110), 0.1));
        // Past the horizon (a resumed run that was lengthened) it stays at the end.
        assert!(close(opt.lr_at(500), 0.1));
        let falling: Vec<f64> = (10..=110).map(|s| opt.lr_at(s)).collect();
        assert!(falling.windows(2).all(|w| w[1] < w[0]));
        // A constant schedule ignores the horizon.
        let constant = AdamW::new(
            &Optim {
                schedule: LrSchedule::Constant,
                ..cfg
            },
            &[],
        )
        .over(110);
        assert!(close(constant.lr_at(110), 1.0));
    }

    #[test]
    fn clipping_and_ema() {
        let g = [Tensor::from_slice(&[3.0f32, 4.0])];
        let n = grad_sq_sum(&g).sqrt();
        assert!((n - 5.0).abs() < 1e-9);
        assert!((clip_factor(n, 1.0) * n - 1.0).abs() < 1e-5);
        assert_eq!(clip_factor(n, 10.0), 1.0);
        let p = [Tensor::from_slice(&[0.0f32])];
        let mut ema = Ema::new(0.5, &p);
        let _ = p[0].shallow_clone().fill_(2.0);
        ema.update(&p, 1000);
        assert!((ema.shadow[0].double_value(&[0]) - 1.0).abs() < 1e-6);
    }
}
