//! Flow matching (Wan/Hunyuan convention) and the Euler sampler.
//!
//! `x_t = (1 - t) x0 + t eps`, t in [0, 1] (1 = pure noise); the network predicts the velocity
//! `v = eps - x0`; the x0 estimate is `x_t - t v`. Timesteps are shifted with
//! `t' = s t / (1 + (s - 1) t)`; CFG is `v = v(x, null) + w (v(x, c) - v(x, null))`.

pub use flg_core::config::SamplerKind;
use tch::{Kind, Tensor};

/// The timestep shift `t' = s t / (1 + (s - 1) t)` (s > 1 spends more time at high noise).
pub fn shift_t(t: &Tensor, s: f64) -> Tensor {
    if s == 1.0 {
        return t.shallow_clone();
    }
    t * s / ((t * (s - 1.0)) + 1.0)
}

/// Scalar version of [`shift_t`].
pub fn shift_scalar(t: f64, s: f64) -> f64 {
    s * t / (1.0 + (s - 1.0) * t)
}

/// Broadcasts per-sample times [B] over a video batch [B, C, T, H, W].
pub fn per_sample(t: &Tensor) -> Tensor {
    t.view([-1, 1, 1, 1, 1])
}

/// The noisy input at time t.
pub fn noisy(x0: &Tensor, eps: &Tensor, t: &Tensor) -> Tensor {
    let tt = per_sample(t);
    x0 * (-&tt + 1.0) + eps * tt
}

/// The x0 (Tweedie) estimate from a velocity.
pub fn x0_from_v(xt: &Tensor, v: &Tensor, t: &Tensor) -> Tensor {
    xt - per_sample(t) * v
}

/// Mean squared error over all elements, as a scalar f32 tensor.
pub fn mse(a: &Tensor, b: &Tensor) -> Tensor {
    (a - b).pow_tensor_scalar(2).mean(Kind::Float)
}

/// The sampler's time grid: `steps + 1` points from 1 to 0, each shifted.
pub fn euler_times(steps: usize, shift: f64) -> Vec<f64> {
    (0..=steps)
        .map(|i| shift_scalar(1.0 - i as f64 / steps as f64, shift))
        .collect()
}

/// Network evaluations per video of `steps` sampler steps: two per step under CFG (the
/// conditional and the unconditional pass), one without.
pub fn nfe(steps: usize, cfg: f64) -> usize {
    steps * if cfg != 1.0 { 2 } else { 1 }
}

/// A velocity model as the sampler sees it: `(x, t [B], text [B, L, D]) -> v`.
pub type VelocityFn<'a> = dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor + 'a;

/// One sampler step from `x` at time `t` to `t_next` with the velocity `v`: Euler moves along
/// `v`; re-noising predicts `x0 = x - t v` and noises it to `t_next` with `fresh()` (asked only
/// when it is needed: re-noising to a time above 0).
pub fn step_to(
    kind: SamplerKind,
    x: &Tensor,
    v: &Tensor,
    t: f64,
    t_next: f64,
    fresh: impl FnOnce() -> Tensor,
) -> Tensor {
    match kind {
        SamplerKind::Euler => x + v * (t_next - t),
        SamplerKind::Renoise => {
            let x0 = x - v * t;
            if t_next > 0.0 {
                x0 * (1.0 - t_next) + fresh() * t_next
            } else {
                x0
            }
        }
    }
}

/// The prompt classifier-free guidance contrasts with and prompt dropout substitutes: zeros
/// (the moving-shapes teachers are trained so), or a fixed embedding [L, D] such as the
/// embedding of Wan's negative prompt, which is what the Wan teacher saw (`data.null_text`).
#[derive(Debug, Default)]
pub struct NullPrompt(Option<Tensor>);

impl Clone for NullPrompt {
    fn clone(&self) -> Self {
        NullPrompt(self.0.as_ref().map(|t| t.shallow_clone()))
    }
}

impl NullPrompt {
    /// The all-zeros prompt.
    pub fn zeros() -> NullPrompt {
        NullPrompt(None)
    }

    /// A fixed embedding [L, D] (or [1, L, D]).
    pub fn embedding(t: Tensor) -> NullPrompt {
        let t = if t.dim() == 3 { t.squeeze_dim(0) } else { t };
        NullPrompt(Some(t.to_kind(Kind::Float)))
    }

    /// Reads the `text` tensor of a safetensors file (what `fastlightgen data encode` writes
    /// as `null_text.safetensors`); `text_shape` [L, D] is what the data's prompts have.
    pub fn load(path: &std::path::Path, text_shape: [i64; 2]) -> anyhow::Result<NullPrompt> {
        let named = Tensor::read_safetensors(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        let t = named
            .into_iter()
            .find(|(k, _)| k == "text")
            .map(|(_, t)| t)
            .ok_or_else(|| anyhow::anyhow!("{}: has no `text` tensor", path.display()))?;
        let n = NullPrompt::embedding(t);
        let shape = n.0.as_ref().expect("embedding").size();
        anyhow::ensure!(
            shape == text_shape,
            "{}: the null prompt is {shape:?}, the data's prompts are {text_shape:?}",
            path.display()
        );
        Ok(n)
    }

    pub fn is_zeros(&self) -> bool {
        self.0.is_none()
    }

    /// The null prompt for every row of `text` [B, L, D], on its device and in its kind.
    pub fn like(&self, text: &Tensor) -> Tensor {
        match &self.0 {
            None => text.zeros_like(),
            Some(e) => e
                .to_device(text.device())
                .to_kind(text.kind())
                .unsqueeze(0)
                .expand_as(text)
                .contiguous(),
        }
    }
}

/// Euler sampling from noise `x1` along the grid `times` (from 1 towards 0), with CFG scale
/// `cfg` against `null` when `cfg` != 1.
pub fn euler_sample(
    model: &VelocityFn,
    x1: &Tensor,
    text: &Tensor,
    null: &NullPrompt,
    times: &[f64],
    cfg: f64,
) -> Tensor {
    sample(
        model,
        x1,
        text,
        null,
        times,
        cfg,
        SamplerKind::Euler,
        &|_| unreachable!("Euler steps take no fresh noise"),
    )
}

/// Samples from noise `x1` along the grid `times` (from 1 towards 0) with the step rule `kind`,
/// with CFG scale `cfg` against `null` when `cfg` != 1. Conditional and
/// unconditional passes go through the network as one batch. `fresh(j)` is the noise
/// re-noising puts on the prediction of step `j` (shaped like `x1`).
#[allow(clippy::too_many_arguments)]
pub fn sample(
    model: &VelocityFn,
    x1: &Tensor,
    text: &Tensor,
    null: &NullPrompt,
    times: &[f64],
    cfg: f64,
    kind: SamplerKind,
    fresh: &dyn Fn(usize) -> Tensor,
) -> Tensor {
    let _guard = tch::no_grad_guard();
    let b = x1.size()[0];
    let guided = cfg != 1.0;
    let both_text = if guided {
        Tensor::cat(&[text, &null.like(text)], 0)
    } else {
        text.shallow_clone()
    };
    let mut x = x1.shallow_clone();
    for (j, w) in times.windows(2).enumerate() {
        let (t, t_next) = (w[0], w[1]);
        let v = if guided {
            let tb = Tensor::full([2 * b], t, (Kind::Float, x.device()));
            let out = model(&Tensor::cat(&[&x, &x], 0), &tb, &both_text);
            let parts = out.chunk(2, 0);
            &parts[1] + (&parts[0] - &parts[1]) * cfg
        } else {
            let tb = Tensor::full([b], t, (Kind::Float, x.device()));
            model(&x, &tb, &both_text)
        };
        x = step_to(kind, &x, &v, t, t_next, || fresh(j));
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_keeps_the_ends_and_pushes_towards_noise() {
        assert_eq!(shift_scalar(0.0, 5.0), 0.0);
        assert_eq!(shift_scalar(1.0, 5.0), 1.0);
        assert!(shift_scalar(0.5, 5.0) > 0.8);
        let t = Tensor::from_slice(&[0.25f32, 0.5]);
        let s = shift_t(&t, 3.0);
        assert!((s.double_value(&[0]) - shift_scalar(0.25, 3.0)).abs() < 1e-6);
    }

    #[test]
    fn euler_with_the_true_velocity_recovers_the_data() {
        // For a single data point x0, the exact velocity field is (x - x0) / t.
        let x0 = Tensor::from_slice(&[0.5f32, -0.25, 1.0, 0.0]).view([1, 1, 1, 2, 2]);
        let x1 = Tensor::from_slice(&[1.0f32, 2.0, -1.0, 0.3]).view([1, 1, 1, 2, 2]);
        let text = Tensor::zeros([1, 1, 1], (Kind::Float, tch::Device::Cpu));
        let v = |x: &Tensor, t: &Tensor, _: &Tensor| (x - &x0) / per_sample(t);
        let out = euler_sample(
            &v,
            &x1,
            &text,
            &NullPrompt::zeros(),
            &euler_times(4, 3.0),
            1.0,
        );
        assert!((out - &x0).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn guidance_contrasts_with_the_null_prompt_it_is_given() {
        // v = mean of the prompt: one Euler step from t = 1 to 0 moves x by -v_guided, where
        // v_guided = v_null + cfg (v_cond - v_null).
        let x1 = Tensor::zeros([1, 1, 1, 1, 1], (Kind::Float, tch::Device::Cpu));
        let text = Tensor::full([1, 2, 3], 1.0, (Kind::Float, tch::Device::Cpu));
        let v = |x: &Tensor, _: &Tensor, c: &Tensor| {
            x.zeros_like()
                + c.mean_dim([1i64, 2].as_slice(), true, Kind::Float)
                    .view([-1, 1, 1, 1, 1])
        };
        let run = |null: &NullPrompt| {
            euler_sample(&v, &x1, &text, null, &[1.0, 0.0], 4.0).double_value(&[0, 0, 0, 0, 0])
        };
        assert!((run(&NullPrompt::zeros()) - -4.0).abs() < 1e-6);
        let neg = NullPrompt::embedding(Tensor::full([2, 3], 0.5, (Kind::Float, tch::Device::Cpu)));
        // 0.5 + 4 (1 - 0.5) = 2.5
        assert!((run(&neg) - -2.5).abs() < 1e-6);
        // Prompt dropout substitutes the same embedding.
        assert_eq!(neg.like(&text).size(), vec![1, 2, 3]);
        assert!(neg
            .like(&text)
            .allclose(&(text.ones_like() * 0.5), 0.0, 0.0, false));
    }

    #[test]
    fn renoising_puts_fresh_noise_on_each_prediction() {
        // A model that always predicts x0 = 0.5 (v = (x - 0.5) / t): Euler lands on 0.5 and
        // keeps none of the fresh noise; re-noising lands on 0.5 too, and each intermediate
        // input is (1 - t') 0.5 + t' eps_j with the noise of step j.
        let x1 = Tensor::from_slice(&[2.0f32, -1.0]).view([1, 1, 1, 1, 2]);
        let text = Tensor::zeros([1, 1, 1], (Kind::Float, tch::Device::Cpu));
        let seen = std::cell::RefCell::new(Vec::new());
        let v = |x: &Tensor, t: &Tensor, _: &Tensor| {
            seen.borrow_mut().push(x.copy());
            (x - 0.5) / per_sample(t)
        };
        let times = [1.0, 0.5, 0.25, 0.0];
        let fresh = |j: usize| {
            Tensor::full(
                [1, 1, 1, 1, 2],
                j as f64 + 10.0,
                (Kind::Float, tch::Device::Cpu),
            )
        };
        let out = sample(
            &v,
            &x1,
            &text,
            &NullPrompt::zeros(),
            &times,
            1.0,
            SamplerKind::Renoise,
            &fresh,
        );
        assert!((out - 0.5).abs().max().double_value(&[]) < 1e-6);
        {
            let inputs = seen.borrow();
            assert_eq!(inputs.len(), 3);
            // Step 1's input: 0.5 * 0.5 + 0.5 * 10; step 2's: 0.75 * 0.5 + 0.25 * 11.
            assert!((inputs[1].double_value(&[0, 0, 0, 0, 0]) - 5.25).abs() < 1e-5);
            assert!((inputs[2].double_value(&[0, 0, 0, 0, 1]) - 3.125).abs() < 1e-5);
        }
        let euler = euler_sample(&v, &x1, &text, &NullPrompt::zeros(), &times, 1.0);
        assert!((euler - 0.5).abs().max().double_value(&[]) < 1e-5);
    }
}
