//! The Wan 2.1-style video DiT as plain functions over explicit parameters.
//!
//! The model does not own its parameters: `forward` asks a [`UnitSource`] for each unit just
//! before using it. An unsharded model hands out its tensors; the sharding layer gathers a
//! unit's shards into full tensors at that moment and frees them afterwards. The set of
//! blocks to run is an argument: a skipped block is the identity on the residual stream.

use super::params::{block_specs, stem_specs, ParamSpec};
use super::rope::Rope;
use flg_core::config::ModelDims;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// The parameters of one unit, by name relative to the unit (e.g. `self_attn.q.weight`).
#[derive(Debug)]
pub struct Unit {
    tensors: HashMap<&'static str, Tensor>,
}

impl Unit {
    pub fn new(tensors: HashMap<&'static str, Tensor>) -> Unit {
        Unit { tensors }
    }

    /// Builds a unit from tensors in the order of `specs`.
    pub fn from_specs(specs: &[ParamSpec], tensors: Vec<Tensor>) -> Unit {
        assert_eq!(specs.len(), tensors.len());
        Unit {
            tensors: specs.iter().map(|s| s.name).zip(tensors).collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (*k, v))
    }

    pub fn p(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("unit has no parameter {name}"))
    }
}

/// Where `forward` gets each unit's parameters from.
pub trait UnitSource {
    /// The stem: embeddings, time projection and head.
    fn stem(&self) -> std::borrow::Cow<'_, Unit>;
    /// Block `id` (its index in the original, unpruned model).
    fn block(&self, id: usize) -> std::borrow::Cow<'_, Unit>;
}

impl Clone for Unit {
    fn clone(&self) -> Unit {
        Unit {
            tensors: self
                .tensors
                .iter()
                .map(|(k, v)| (*k, v.shallow_clone()))
                .collect(),
        }
    }
}

/// Per-call values every block needs.
pub struct BlockInputs<'a> {
    /// The six adaLN vectors from the timestep, [B, 6, D].
    pub e0: &'a Tensor,
    /// Text tokens after the text embedding, [B, L, D].
    pub context: &'a Tensor,
    pub rope: &'a Rope,
}

fn linear(x: &Tensor, u: &Unit, name: &str) -> Tensor {
    x.linear(
        u.p(&format!("{name}.weight")),
        Some(u.p(&format!("{name}.bias"))),
    )
}

/// RMSNorm over the last dimension with a learned scale (Wan's `WanRMSNorm`): the statistic
/// in f32, the result back in x's kind (bf16 stays bf16, as in Wan's `type_as`).
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    (x * (var + eps).rsqrt()).to_kind(x.kind()) * weight
}

/// LayerNorm over the last dimension, without or with an affine part.
fn layer_norm(x: &Tensor, dim: i64, affine: Option<(&Tensor, &Tensor)>, eps: f64) -> Tensor {
    x.layer_norm([dim], affine.map(|a| a.0), affine.map(|a| a.1), eps, false)
}

/// Sinusoidal features of the timesteps (scaled to [0, 1000] as Wan does): cos then sin.
pub fn timestep_features(t: &Tensor, freq_dim: i64) -> Tensor {
    let half = freq_dim / 2;
    let device = t.device();
    let exponent = Tensor::arange(half, (Kind::Double, device)) / half as f64;
    let freqs = (exponent * -(10000f64.ln())).exp();
    let args = (t.to_kind(Kind::Double) * 1000.0).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.cos(), args.sin()], 1).to_kind(Kind::Float)
}

/// Multi-head attention with q/k RMSNorm; `rope` rotates q and k for self-attention.
fn attention(
    x: &Tensor,
    kv: &Tensor,
    u: &Unit,
    prefix: &str,
    heads: i64,
    eps: f64,
    rope: Option<&Rope>,
) -> Tensor {
    let (b, s, dim) = x.size3().unwrap();
    let hd = dim / heads;
    let q = rms_norm(
        &linear(x, u, &format!("{prefix}.q")),
        u.p(&format!("{prefix}.norm_q.weight")),
        eps,
    );
    let k = rms_norm(
        &linear(kv, u, &format!("{prefix}.k")),
        u.p(&format!("{prefix}.norm_k.weight")),
        eps,
    );
    let v = linear(kv, u, &format!("{prefix}.v"));
    let split = |t: Tensor| {
        let n = t.size()[1];
        t.view([b, n, heads, hd])
    };
    let (mut q, mut k, v) = (split(q), split(k), split(v));
    if let Some(r) = rope {
        q = r.apply(&q);
        k = r.apply(&k);
    }
    let out = Tensor::scaled_dot_product_attention(
        &q.transpose(1, 2),
        &k.transpose(1, 2),
        &v.transpose(1, 2),
        None::<Tensor>,
        0.0,
        false,
        None,
        false,
    );
    let out = out.transpose(1, 2).reshape([b, s, dim]);
    linear(&out, u, &format!("{prefix}.o"))
}

/// One transformer block: modulated self-attention, cross-attention, modulated FFN, each a
/// (gated) residual update.
pub fn block_forward(u: &Unit, x: &Tensor, inp: &BlockInputs, dims: &ModelDims) -> Tensor {
    let dim = dims.dim;
    let e = (u.p("modulation") + inp.e0).chunk(6, 1); // each [B, 1, D]
    let h = layer_norm(x, dim, None, dims.eps) * (&e[1] + 1.0) + &e[0];
    let x = x + attention(
        &h,
        &h,
        u,
        "self_attn",
        dims.num_heads,
        dims.eps,
        Some(inp.rope),
    ) * &e[2];
    let h = layer_norm(
        &x,
        dim,
        Some((u.p("norm3.weight"), u.p("norm3.bias"))),
        dims.eps,
    );
    let x = &x
        + attention(
            &h,
            inp.context,
            u,
            "cross_attn",
            dims.num_heads,
            dims.eps,
            None,
        );
    let h = layer_norm(&x, dim, None, dims.eps) * (&e[4] + 1.0) + &e[3];
    let h = linear(&linear(&h, u, "ffn.0").gelu("tanh"), u, "ffn.2");
    &x + h * &e[5]
}

/// What the stem computes before the blocks.
pub struct Embedded {
    /// Patch tokens [B, N, D].
    pub tokens: Tensor,
    /// Time embedding [B, D] (the head's modulation input).
    pub e: Tensor,
    /// The six adaLN vectors [B, 6, D].
    pub e0: Tensor,
    /// Text tokens [B, L, D].
    pub context: Tensor,
    /// Token grid (frames, height, width) after patching.
    pub grid: [i64; 3],
}

/// Patch, text and time embeddings.
pub fn embed(stem: &Unit, x: &Tensor, t: &Tensor, text: &Tensor, dims: &ModelDims) -> Embedded {
    let [pt, ph, pw] = dims.patch;
    let patches = x.conv3d(
        stem.p("patch_embedding.weight"),
        Some(stem.p("patch_embedding.bias")),
        [pt, ph, pw],
        [0, 0, 0],
        [1, 1, 1],
        1,
    ); // [B, D, F, H, W]
    let size = patches.size();
    let grid = [size[2], size[3], size[4]];
    let tokens = patches.flatten(2, 4).transpose(1, 2); // [B, N, D]
                                                        // The features are computed in f64/f32 and enter the MLP in the weights' kind (bf16 runs).
    let f = timestep_features(t, dims.freq_dim).to_kind(stem.p("time_embedding.0.weight").kind());
    let e = linear(
        &linear(&f, stem, "time_embedding.0").silu(),
        stem,
        "time_embedding.2",
    );
    let e0 = linear(&e.silu(), stem, "time_projection.1").unflatten(1, [6, dims.dim]);
    let context = linear(
        &linear(text, stem, "text_embedding.0").gelu("tanh"),
        stem,
        "text_embedding.2",
    );
    Embedded {
        tokens,
        e,
        e0,
        context,
        grid,
    }
}

/// The modulated output head and unpatchify: tokens [B, N, D] -> velocity [B, C, T, H, W].
pub fn head(stem: &Unit, x: &Tensor, e: &Tensor, grid: [i64; 3], dims: &ModelDims) -> Tensor {
    let m = (stem.p("head.modulation") + e.unsqueeze(1)).chunk(2, 1);
    let h = layer_norm(x, dims.dim, None, dims.eps) * (&m[1] + 1.0) + &m[0];
    let out = linear(&h, stem, "head.head"); // [B, N, C pt ph pw]
    let b = out.size()[0];
    let [f, hh, ww] = grid;
    let [pt, ph, pw] = dims.patch;
    let c = dims.out_channels;
    out.view(&[b, f, hh, ww, pt, ph, pw, c][..])
        .permute(&[0, 7, 1, 4, 2, 5, 3, 6][..])
        .reshape([b, c, f * pt, hh * ph, ww * pw])
}

/// The whole network: velocity for noisy video `x` [B, C, T, H, W] at times `t` [B] in [0, 1]
/// with text `text` [B, L, Dt], running only the blocks in `active` (original indices, in order).
pub fn forward(
    src: &dyn UnitSource,
    dims: &ModelDims,
    x: &Tensor,
    t: &Tensor,
    text: &Tensor,
    active: &[usize],
) -> Tensor {
    let stem = src.stem();
    let emb = embed(&stem, x, t, text, dims);
    let rope = Rope::new(dims, emb.grid, x.device());
    let inputs = BlockInputs {
        e0: &emb.e0,
        context: &emb.context,
        rope: &rope,
    };
    let mut h = emb.tokens;
    for &id in active {
        h = block_forward(&src.block(id), &h, &inputs, dims);
    }
    head(&stem, &h, &emb.e, emb.grid, dims)
}

/// Tensors of a unit in `specs` order (for the sharding layer, optimisers and files).
pub fn unit_tensors(u: &Unit, specs: &[ParamSpec]) -> Vec<Tensor> {
    specs.iter().map(|s| u.p(s.name).shallow_clone()).collect()
}

/// Specs of the stem and of a block, for convenience.
pub fn specs(dims: &ModelDims) -> (Vec<ParamSpec>, Vec<ParamSpec>) {
    (stem_specs(dims), block_specs(dims))
}
