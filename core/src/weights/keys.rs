//! The DiT's parameters: names, shapes and grouping into units (no tensors: the control
//! plane checks weight files' headers against these, the worker builds its model from them).
//!
//! Names are the public Wan 2.1 checkpoint keys, so a released `.safetensors` loads without
//! renaming. The mapping (Wan module -> what it is here):
//!
//! | key | shape | role |
//! |---|---|---|
//! | `patch_embedding.{weight,bias}` | [D, C, pt, ph, pw], [D] | Conv3d with stride = kernel = patch |
//! | `text_embedding.{0,2}.{weight,bias}` | [D, Dt], [D, D] | Linear, GELU(tanh), Linear |
//! | `time_embedding.{0,2}.{weight,bias}` | [D, F], [D, D] | Linear, SiLU, Linear on sinusoidal features |
//! | `time_projection.1.{weight,bias}` | [6D, D] | SiLU, Linear -> the 6 adaLN vectors |
//! | `blocks.N.modulation` | [1, 6, D] | per-block offsets of shift/scale/gate (attn, FFN) |
//! | `blocks.N.self_attn.{q,k,v,o}.{weight,bias}` | [D, D] | self-attention projections |
//! | `blocks.N.self_attn.norm_{q,k}.weight` | [D] | RMSNorm of q and k over the full width |
//! | `blocks.N.norm3.{weight,bias}` | [D] | affine LayerNorm before cross-attention |
//! | `blocks.N.cross_attn.{q,k,v,o}.{weight,bias}`, `...norm_{q,k}.weight` | | cross-attention to the text |
//! | `blocks.N.ffn.{0,2}.{weight,bias}` | [Fd, D], [D, Fd] | Linear, GELU(tanh), Linear |
//! | `head.modulation` | [1, 2, D] | shift/scale of the output norm |
//! | `head.head.{weight,bias}` | [C pt ph pw, D] | per-token output projection |
//!
//! `norm1`, `norm2` and `head.norm` are LayerNorms without parameters.
//!
//! A *unit* is what the sharding layer gathers at once: unit 0 is the stem (embeddings,
//! time projection, head), unit 1 + k is block k.

use crate::config::ModelDims;

/// One parameter's name (relative to its unit) and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub shape: Vec<i64>,
}

fn spec(name: &'static str, shape: &[i64]) -> ParamSpec {
    ParamSpec {
        name,
        shape: shape.to_vec(),
    }
}

/// Parameters outside the blocks, with names as in the checkpoint.
pub fn stem_specs(d: &ModelDims) -> Vec<ParamSpec> {
    let [pt, ph, pw] = d.patch;
    let dim = d.dim;
    vec![
        spec("patch_embedding.weight", &[dim, d.in_channels, pt, ph, pw]),
        spec("patch_embedding.bias", &[dim]),
        spec("text_embedding.0.weight", &[dim, d.text_dim]),
        spec("text_embedding.0.bias", &[dim]),
        spec("text_embedding.2.weight", &[dim, dim]),
        spec("text_embedding.2.bias", &[dim]),
        spec("time_embedding.0.weight", &[dim, d.freq_dim]),
        spec("time_embedding.0.bias", &[dim]),
        spec("time_embedding.2.weight", &[dim, dim]),
        spec("time_embedding.2.bias", &[dim]),
        spec("time_projection.1.weight", &[6 * dim, dim]),
        spec("time_projection.1.bias", &[6 * dim]),
        spec("head.modulation", &[1, 2, dim]),
        spec("head.head.weight", &[d.out_channels * pt * ph * pw, dim]),
        spec("head.head.bias", &[d.out_channels * pt * ph * pw]),
    ]
}

/// Parameters of one block, named relative to `blocks.N.`.
pub fn block_specs(d: &ModelDims) -> Vec<ParamSpec> {
    let (dim, ffn) = (d.dim, d.ffn_dim);
    let mut v = vec![spec("modulation", &[1, 6, dim])];
    for (w, b, nq, nk, p) in [
        (
            [
                "self_attn.q.weight",
                "self_attn.k.weight",
                "self_attn.v.weight",
                "self_attn.o.weight",
            ],
            [
                "self_attn.q.bias",
                "self_attn.k.bias",
                "self_attn.v.bias",
                "self_attn.o.bias",
            ],
            "self_attn.norm_q.weight",
            "self_attn.norm_k.weight",
            false,
        ),
        (
            [
                "cross_attn.q.weight",
                "cross_attn.k.weight",
                "cross_attn.v.weight",
                "cross_attn.o.weight",
            ],
            [
                "cross_attn.q.bias",
                "cross_attn.k.bias",
                "cross_attn.v.bias",
                "cross_attn.o.bias",
            ],
            "cross_attn.norm_q.weight",
            "cross_attn.norm_k.weight",
            true,
        ),
    ] {
        if p {
            v.push(spec("norm3.weight", &[dim]));
            v.push(spec("norm3.bias", &[dim]));
        }
        for (wn, bn) in w.into_iter().zip(b) {
            v.push(spec(wn, &[dim, dim]));
            v.push(spec(bn, &[dim]));
        }
        v.push(spec(nq, &[dim]));
        v.push(spec(nk, &[dim]));
    }
    v.push(spec("ffn.0.weight", &[ffn, dim]));
    v.push(spec("ffn.0.bias", &[ffn]));
    v.push(spec("ffn.2.weight", &[dim, ffn]));
    v.push(spec("ffn.2.bias", &[dim]));
    v
}

fn numel(shape: &[i64]) -> i64 {
    shape.iter().product()
}

/// Parameters of the stem.
pub fn stem_param_count(d: &ModelDims) -> i64 {
    stem_specs(d).iter().map(|s| numel(&s.shape)).sum()
}

/// Parameters of one block (all blocks are the same size).
pub fn block_param_count(d: &ModelDims) -> i64 {
    block_specs(d).iter().map(|s| numel(&s.shape)).sum()
}

/// Parameters of the whole model, from the shapes alone (nothing allocated).
pub fn total_param_count(d: &ModelDims) -> i64 {
    stem_param_count(d) + d.num_blocks * block_param_count(d)
}
