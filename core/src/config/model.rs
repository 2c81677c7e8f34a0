//! Model presets and the resolved dimensions the worker builds its DiT from.
//!
//! Only numbers live here (the coordinator never builds a model); the worker turns
//! [`ModelDims`] into tensors.

use serde::{Deserialize, Serialize};

/// Every dimension of the Wan 2.1-style video DiT, after applying the file's overrides to a preset.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelDims {
    pub dim: i64,
    pub num_blocks: i64,
    pub num_heads: i64,
    pub ffn_dim: i64,
    /// Width of the sinusoidal timestep features fed to the time-embedding MLP.
    pub freq_dim: i64,
    pub text_dim: i64,
    pub text_len: i64,
    pub in_channels: i64,
    pub out_channels: i64,
    pub patch: [i64; 3],
    pub eps: f64,
}

/// Names accepted by `model.preset`.
pub const PRESETS: [&str; 4] = ["tiny", "small-100m", "wan2.1-t2v-1.3b", "custom"];

/// The dimensions of a named preset, `None` for `custom` or an unknown name.
pub fn preset(name: &str) -> Option<ModelDims> {
    match name {
        // The CPU preset: 10 blocks so that pruning 30% removes 3 of them; patch 1x4x4 keeps a
        // 8x16x16 video at 128 tokens (1x2x2 would be 512 tokens and 6x slower per sample on a
        // 2-core CPU: 16 vs 99 samples/s at dim 64, measured). Width 96 is the recipe of
        // cluster-configs/teacher-cpu.toml (BENCHMARKS.md).
        "tiny" => Some(ModelDims {
            dim: 96,
            num_blocks: 10,
            num_heads: 4,
            ffn_dim: 384,
            freq_dim: 64,
            text_dim: 32,
            text_len: 4,
            in_channels: 3,
            out_channels: 3,
            patch: [1, 4, 4],
            eps: 1e-6,
        }),
        // About 100M parameters: big enough that parameters, gradients and optimizer state
        // dominate memory (the sharding benchmarks use it).
        "small-100m" => Some(ModelDims {
            dim: 768,
            num_blocks: 12,
            num_heads: 12,
            ffn_dim: 3072,
            freq_dim: 256,
            text_dim: 32,
            text_len: 4,
            in_channels: 3,
            out_channels: 3,
            patch: [1, 2, 2],
            eps: 1e-6,
        }),
        // The public Wan 2.1 T2V 1.3B checkpoint.
        "wan2.1-t2v-1.3b" => Some(ModelDims {
            dim: 1536,
            num_blocks: 30,
            num_heads: 12,
            ffn_dim: 8960,
            freq_dim: 256,
            text_dim: 4096,
            text_len: 512,
            in_channels: 16,
            out_channels: 16,
            patch: [1, 2, 2],
            eps: 1e-6,
        }),
        _ => None,
    }
}
