//! The DiT's parameters: their names and shapes are flg-core's (`flg_core::weights::keys`,
//! re-exported here); this module adds their initialisation.

pub use flg_core::weights::keys::*;
use tch::{Kind, Tensor};

/// A freshly initialised value for a parameter, following Wan's initialisation: Xavier-uniform
/// linear and patch weights, zero biases, N(0, 0.02) embedding MLPs, unit norm weights,
/// N(0, 1/D) modulation, and a zero output head (the untrained model predicts 0).
pub fn init_param(name: &str, shape: &[i64], dim: i64) -> Tensor {
    let opts = (Kind::Float, tch::Device::Cpu);
    let last = name.rsplit('.').next().unwrap_or("");
    if name.ends_with("modulation") {
        return Tensor::randn(shape, opts) / (dim as f64).sqrt();
    }
    if name.contains("norm") {
        return if last == "bias" {
            Tensor::zeros(shape, opts)
        } else {
            Tensor::ones(shape, opts)
        };
    }
    if last == "bias" {
        return Tensor::zeros(shape, opts);
    }
    if name.starts_with("head.head") {
        return Tensor::zeros(shape, opts);
    }
    if name.starts_with("text_embedding") || name.starts_with("time_embedding") {
        return Tensor::randn(shape, opts) * 0.02;
    }
    // Xavier uniform over (fan_out, fan_in * receptive field).
    let fan_out = shape[0];
    let fan_in: i64 = shape[1..].iter().product();
    let receptive: i64 = shape.get(2..).map(|r| r.iter().product()).unwrap_or(1);
    let bound = (6.0 / ((fan_in + fan_out * receptive) as f64)).sqrt();
    Tensor::rand(shape, opts) * (2.0 * bound) - bound
}
