//! Key names and `config.json` of the two public forms of a Wan 2.1 transformer.
//!
//! fastlightgen's own names are the original Wan checkpoint's (`blocks.N.self_attn.q.weight`).
//! diffusers' `WanTransformer3DModel` renames the same tensors (same shapes, same layout):
//!
//! | Wan | diffusers |
//! |---|---|
//! | `text_embedding.{0,2}` | `condition_embedder.text_embedder.linear_{1,2}` |
//! | `time_embedding.{0,2}` | `condition_embedder.time_embedder.linear_{1,2}` |
//! | `time_projection.1` | `condition_embedder.time_proj` |
//! | `head.modulation`, `head.head` | `scale_shift_table`, `proj_out` |
//! | `blocks.N.modulation` | `blocks.N.scale_shift_table` |
//! | `blocks.N.self_attn.{q,k,v,o,norm_q,norm_k}` | `blocks.N.attn1.{to_q,to_k,to_v,to_out.0,norm_q,norm_k}` |
//! | `blocks.N.cross_attn.…` | `blocks.N.attn2.…` |
//! | `blocks.N.norm3` (the affine norm before cross-attention) | `blocks.N.norm2` |
//! | `blocks.N.ffn.{0,2}` | `blocks.N.ffn.net.{0.proj,2}` |
//!
//! `patch_embedding` keeps its name.

use crate::config::ModelDims;
use serde_json::{json, Value};

/// Which names a file's tensors carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyNaming {
    /// The original Wan checkpoint's names, also fastlightgen's own.
    Wan,
    /// diffusers' `WanTransformer3DModel` names.
    Diffusers,
}

/// (Wan prefix, diffusers prefix) for names outside the blocks.
const STEM: [(&str, &str); 8] = [
    (
        "text_embedding.0.",
        "condition_embedder.text_embedder.linear_1.",
    ),
    (
        "text_embedding.2.",
        "condition_embedder.text_embedder.linear_2.",
    ),
    (
        "time_embedding.0.",
        "condition_embedder.time_embedder.linear_1.",
    ),
    (
        "time_embedding.2.",
        "condition_embedder.time_embedder.linear_2.",
    ),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("patch_embedding.", "patch_embedding."),
    ("head.modulation", "scale_shift_table"),
];

/// (Wan, diffusers) for names inside a block, after `blocks.N.`.
const BLOCK: [(&str, &str); 16] = [
    ("modulation", "scale_shift_table"),
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("norm3.", "norm2."),
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
];

/// Splits `blocks.N.rest` into (N, rest).
pub fn split_block(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blocks.")?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

fn map_prefix<'a>(table: &[(&'a str, &'a str)], name: &str, to_diffusers: bool) -> Option<String> {
    table.iter().find_map(|&(wan, diff)| {
        let (from, to) = if to_diffusers {
            (wan, diff)
        } else {
            (diff, wan)
        };
        name.strip_prefix(from).map(|rest| format!("{to}{rest}"))
    })
}

/// The Wan name of a diffusers key (`None` when it is not a key of a Wan text-to-video model).
pub fn diffusers_to_wan(name: &str) -> Option<String> {
    match split_block(name) {
        Some((n, rest)) => map_prefix(&BLOCK, rest, false).map(|r| format!("blocks.{n}.{r}")),
        None => map_prefix(&STEM, name, false),
    }
}

/// The diffusers key of a Wan name (`None` when it is not a parameter of the model).
pub fn wan_to_diffusers(name: &str) -> Option<String> {
    match split_block(name) {
        Some((n, rest)) => map_prefix(&BLOCK, rest, true).map(|r| format!("blocks.{n}.{r}")),
        None => map_prefix(&STEM, name, true),
    }
}

/// A Wan name with its block index replaced through `renumber` (stem names unchanged).
pub fn renumber_block(name: &str, renumber: impl Fn(usize) -> usize) -> String {
    match split_block(name) {
        Some((n, rest)) => format!("blocks.{}.{rest}", renumber(n)),
        None => name.to_string(),
    }
}

/// Which naming a set of keys uses: diffusers when any key has a name only diffusers uses.
pub fn detect<'a>(keys: impl IntoIterator<Item = &'a str>) -> KeyNaming {
    for k in keys {
        if k.starts_with("condition_embedder.")
            || k.starts_with("proj_out.")
            || k == "scale_shift_table"
            || k.contains(".attn1.")
            || k.contains(".attn2.")
        {
            return KeyNaming::Diffusers;
        }
    }
    KeyNaming::Wan
}

/// The dimensions a `config.json` states, by fastlightgen's field name; `text_len` is absent
/// from diffusers' files (the pipeline pads to 512).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatedDims {
    pub fields: Vec<(&'static str, Value)>,
}

impl StatedDims {
    /// The configured model's fields that differ from what the file states, one line each.
    pub fn mismatches(&self, dims: &ModelDims) -> Vec<String> {
        let ours = serde_json::to_value(dims).expect("dims serialise");
        self.fields
            .iter()
            .filter_map(|(k, v)| {
                let mine = &ours[*k];
                let same = match (mine.as_f64(), v.as_f64()) {
                    (Some(a), Some(b)) => a == b,
                    _ => mine == v,
                };
                (!same).then(|| {
                    format!(
                        "{k}: the file's config.json says {v}, the experiment's model has {mine}"
                    )
                })
            })
            .collect()
    }

    /// Full dimensions: the stated fields over `base` (e.g. a preset, or defaults).
    pub fn over(&self, base: &ModelDims) -> anyhow::Result<ModelDims> {
        let mut v = serde_json::to_value(base)?;
        for (k, x) in &self.fields {
            v[*k] = x.clone();
        }
        Ok(serde_json::from_value(v)?)
    }
}

fn get_i64(cfg: &Value, key: &str) -> anyhow::Result<Option<i64>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_i64().filter(|&x| x > 0).map(Some).ok_or_else(|| {
                anyhow::anyhow!("field {key}: expected a positive integer, found {v}")
            })
        }
    }
}

/// Reads a transformer `config.json` of either form. Errors name the field; a model kind
/// fastlightgen does not implement (image-to-video, other norms) is refused.
pub fn stated_dims(cfg: &Value) -> anyhow::Result<(KeyNaming, StatedDims)> {
    let mut f: Vec<(&'static str, Value)> = Vec::new();
    let mut put = |k: &'static str, v: Option<i64>| {
        if let Some(v) = v {
            f.push((k, json!(v)));
        }
    };
    let naming = if cfg.get("num_attention_heads").is_some() {
        let heads = get_i64(cfg, "num_attention_heads")?;
        let head_dim = get_i64(cfg, "attention_head_dim")?;
        if let (Some(h), Some(d)) = (heads, head_dim) {
            put("dim", Some(h * d));
        }
        put("num_heads", heads);
        put("num_blocks", get_i64(cfg, "num_layers")?);
        put("ffn_dim", get_i64(cfg, "ffn_dim")?);
        put("freq_dim", get_i64(cfg, "freq_dim")?);
        put("text_dim", get_i64(cfg, "text_dim")?);
        let inc = get_i64(cfg, "in_channels")?;
        put("in_channels", inc);
        put("out_channels", get_i64(cfg, "out_channels")?.or(inc));
        for (key, ok) in [
            ("image_dim", Value::Null),
            ("added_kv_proj_dim", Value::Null),
            ("pos_embed_seq_len", Value::Null),
        ] {
            if let Some(v) = cfg.get(key) {
                anyhow::ensure!(
                    *v == ok,
                    "field {key}: {v} (an image-to-video model); fastlightgen implements text-to-video Wan only"
                );
            }
        }
        if let Some(v) = cfg.get("qk_norm") {
            anyhow::ensure!(
                v == "rms_norm_across_heads",
                "field qk_norm: {v}; fastlightgen implements \"rms_norm_across_heads\" only"
            );
        }
        if let Some(v) = cfg.get("cross_attn_norm") {
            anyhow::ensure!(
                v == true,
                "field cross_attn_norm: {v}; fastlightgen implements true only"
            );
        }
        KeyNaming::Diffusers
    } else if cfg.get("dim").is_some() || cfg.get("num_heads").is_some() {
        put("dim", get_i64(cfg, "dim")?);
        put("num_heads", get_i64(cfg, "num_heads")?);
        put("num_blocks", get_i64(cfg, "num_layers")?);
        put("ffn_dim", get_i64(cfg, "ffn_dim")?);
        put("freq_dim", get_i64(cfg, "freq_dim")?);
        put("text_dim", get_i64(cfg, "text_dim")?);
        put("text_len", get_i64(cfg, "text_len")?);
        let inc = get_i64(cfg, "in_dim")?;
        put("in_channels", inc);
        put("out_channels", get_i64(cfg, "out_dim")?.or(inc));
        if let Some(t) = cfg.get("model_type") {
            anyhow::ensure!(
                t == "t2v",
                "field model_type: {t}; fastlightgen implements text-to-video (\"t2v\") Wan only"
            );
        }
        KeyNaming::Wan
    } else {
        anyhow::bail!(
            "neither a diffusers WanTransformer3DModel config (num_attention_heads, ...) nor an original Wan config (dim, num_heads, ...)"
        );
    };
    if let Some(p) = cfg.get("patch_size") {
        let v: Vec<i64> = p
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
            .unwrap_or_default();
        anyhow::ensure!(
            v.len() == 3 && v.iter().all(|&x| x > 0),
            "field patch_size: {p}; expected 3 positive integers"
        );
        f.push(("patch", json!(v)));
    }
    if let Some(e) = cfg.get("eps") {
        let x = e.as_f64().filter(|x| *x > 0.0 && x.is_finite());
        f.push((
            "eps",
            json!(x.ok_or_else(|| anyhow::anyhow!("field eps: {e}; expected a positive number"))?),
        ));
    }
    if let (Some((_, d)), Some((_, h))) = (
        f.iter().find(|(k, _)| *k == "dim"),
        f.iter().find(|(k, _)| *k == "num_heads"),
    ) {
        let (d, h) = (d.as_i64().unwrap_or(0), h.as_i64().unwrap_or(0));
        anyhow::ensure!(
            d % h == 0 && (d / h) % 2 == 0,
            "dim {d} is not num_heads {h} times an even head width"
        );
    }
    Ok((naming, StatedDims { fields: f }))
}

/// diffusers' `config.json` for a model of `dims` with `num_layers` blocks.
pub fn diffusers_config(dims: &ModelDims, num_layers: usize) -> Value {
    json!({
        "_class_name": "WanTransformer3DModel",
        "_diffusers_version": "0.42.1",
        "added_kv_proj_dim": null,
        "attention_head_dim": dims.dim / dims.num_heads,
        "cross_attn_norm": true,
        "eps": dims.eps,
        "ffn_dim": dims.ffn_dim,
        "freq_dim": dims.freq_dim,
        "image_dim": null,
        "in_channels": dims.in_channels,
        "num_attention_heads": dims.num_heads,
        "num_layers": num_layers,
        "out_channels": dims.out_channels,
        "patch_size": dims.patch,
        "pos_embed_seq_len": null,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 1024,
        "text_dim": dims.text_dim,
    })
}

/// The original Wan `config.json` for a model of `dims` with `num_layers` blocks.
pub fn wan_config(dims: &ModelDims, num_layers: usize) -> Value {
    json!({
        "_class_name": "WanModel",
        "model_type": "t2v",
        "dim": dims.dim,
        "eps": dims.eps,
        "ffn_dim": dims.ffn_dim,
        "freq_dim": dims.freq_dim,
        "in_dim": dims.in_channels,
        "num_heads": dims.num_heads,
        "num_layers": num_layers,
        "out_dim": dims.out_channels,
        "text_len": dims.text_len,
        "text_dim": dims.text_dim,
        "patch_size": dims.patch,
    })
}
