use super::check::check;
use super::keys::{block_specs, stem_specs};
use super::naming::*;
use super::source::WeightSource;
use crate::config::preset;
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

pub(crate) fn wan_names(dims: &crate::config::ModelDims) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = stem_specs(dims)
        .into_iter()
        .map(|s| {
            (
                s.name.to_string(),
                s.shape.iter().map(|&d| d as usize).collect(),
            )
        })
        .collect();
    for b in 0..dims.num_blocks {
        v.extend(block_specs(dims).into_iter().map(|s| {
            (
                format!("blocks.{b}.{}", s.name),
                s.shape.iter().map(|&d| d as usize).collect(),
            )
        }));
    }
    v
}

/// Writes zero-filled tensors of the given dtype (4 bytes per element for F32/I32, 2 else).
pub(crate) fn write(path: &Path, tensors: &[(String, Vec<usize>)], dtype: Dtype) {
    let size = if matches!(dtype, Dtype::F32 | Dtype::I32) {
        4
    } else {
        2
    };
    let bufs: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| vec![0u8; s.iter().product::<usize>() * size])
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bufs)
        .map(|((n, s), b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn every_parameter_maps_to_diffusers_and_back() {
    let d = preset("tiny").unwrap();
    let mut seen = std::collections::HashSet::new();
    for (n, _) in wan_names(&d) {
        let k = wan_to_diffusers(&n).unwrap_or_else(|| panic!("{n} has no diffusers name"));
        assert!(seen.insert(k.clone()), "two names map to {k}");
        assert_eq!(diffusers_to_wan(&k).as_deref(), Some(n.as_str()));
    }
    assert_eq!(
        wan_to_diffusers("blocks.3.norm3.weight").unwrap(),
        "blocks.3.norm2.weight"
    );
    assert_eq!(
        wan_to_diffusers("blocks.0.self_attn.o.bias").unwrap(),
        "blocks.0.attn1.to_out.0.bias"
    );
    assert_eq!(
        wan_to_diffusers("head.modulation").unwrap(),
        "scale_shift_table"
    );
    assert_eq!(diffusers_to_wan("blocks.1.norm3.weight"), None);
    assert_eq!(
        diffusers_to_wan("condition_embedder.image_embedder.ff.net.0.proj.weight"),
        None
    );
    assert_eq!(
        renumber_block("blocks.7.ffn.0.weight", |b| b - 5),
        "blocks.2.ffn.0.weight"
    );
    assert_eq!(detect(["blocks.0.self_attn.q.weight"]), KeyNaming::Wan);
    assert_eq!(detect(["blocks.0.attn1.to_q.weight"]), KeyNaming::Diffusers);
}

#[test]
fn config_files_of_both_forms_state_the_dimensions() {
    let d = preset("wan2.1-t2v-1.3b").unwrap();
    let (naming, stated) = stated_dims(&diffusers_config(&d, 30)).unwrap();
    assert_eq!(naming, KeyNaming::Diffusers);
    assert!(
        stated.mismatches(&d).is_empty(),
        "{:?}",
        stated.mismatches(&d)
    );
    assert_eq!(
        stated.over(&preset("tiny").unwrap()).unwrap().text_len,
        4,
        "diffusers states no text_len"
    );
    let (naming, stated) = stated_dims(&wan_config(&d, 30)).unwrap();
    assert_eq!(naming, KeyNaming::Wan);
    assert_eq!(stated.over(&preset("tiny").unwrap()).unwrap(), d);
    let mut fewer = diffusers_config(&d, 21);
    let bad = stated_dims(&fewer).unwrap().1.mismatches(&d);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("num_blocks: the file's config.json says 21"),
        "{bad:?}"
    );
    fewer["image_dim"] = serde_json::json!(1280);
    let e = stated_dims(&fewer).unwrap_err().to_string();
    assert!(
        e.contains("field image_dim") && e.contains("image-to-video"),
        "{e}"
    );
    let e = stated_dims(&serde_json::json!({"num_attention_heads": -1}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("field num_attention_heads"), "{e}");
}

#[test]
fn a_sharded_diffusers_folder_is_found_through_its_index_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = preset("tiny").unwrap();
    let all: Vec<(String, Vec<usize>)> = wan_names(&d)
        .into_iter()
        .map(|(n, s)| (wan_to_diffusers(&n).unwrap(), s))
        .collect();
    let (a, b) = all.split_at(all.len() / 2);
    write(
        &dir.path()
            .join("diffusion_pytorch_model-00001-of-00002.safetensors"),
        a,
        Dtype::BF16,
    );
    write(
        &dir.path()
            .join("diffusion_pytorch_model-00002-of-00002.safetensors"),
        b,
        Dtype::BF16,
    );
    let mut map = serde_json::Map::new();
    for (n, _) in a {
        map.insert(
            n.clone(),
            "diffusion_pytorch_model-00001-of-00002.safetensors".into(),
        );
    }
    for (n, _) in b {
        map.insert(
            n.clone(),
            "diffusion_pytorch_model-00002-of-00002.safetensors".into(),
        );
    }
    let index = dir
        .path()
        .join("diffusion_pytorch_model.safetensors.index.json");
    std::fs::write(&index, serde_json::json!({"weight_map": map}).to_string()).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        diffusers_config(&d, 10).to_string(),
    )
    .unwrap();

    for path in [dir.path().to_path_buf(), index.clone()] {
        let src = WeightSource::open(&path).unwrap();
        assert_eq!(src.files.len(), 2);
        assert_eq!(src.naming, KeyNaming::Diffusers);
        let (dims, blocks) = src.dims(Some(&d)).unwrap();
        assert_eq!(dims, d);
        assert_eq!(blocks.len(), 10);
        assert_eq!(check(&src, &dims, &blocks), Vec::<String>::new());
    }
    // The 1.3B model is not this folder: config.json and the shapes both say so.
    let big = preset("wan2.1-t2v-1.3b").unwrap();
    let src = WeightSource::open(dir.path()).unwrap();
    let e = src.dims(Some(&big)).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("dim: the file's config.json says 96"),
        "{e}"
    );
    let problems = check(&src, &big, &(0..30).collect::<Vec<_>>());
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("missing: blocks.29.")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("mis-shaped: patch_embedding.weight")),
        "{problems:?}"
    );

    // An index that points outside its folder is refused.
    let evil = serde_json::json!({"weight_map": {"x": "../../etc/passwd"}});
    std::fs::write(&index, evil.to_string()).unwrap();
    let e = WeightSource::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("weight_map.x") && e.contains("not a file name"),
        "{e}"
    );
}

#[test]
fn unreadable_dtypes_and_strangers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = preset("tiny").unwrap();
    let mut names = wan_names(&d);
    names.push(("extra.weight".into(), vec![2]));
    let path = dir.path().join("m.safetensors");
    write(&path, &names, Dtype::I32);
    let src = WeightSource::open(&path).unwrap();
    assert_eq!(src.naming, KeyNaming::Wan);
    let e = src.dims(None).unwrap_err().to_string();
    assert!(e.contains("--preset"), "{e}");
    let problems = check(&src, &d, &(0..10).collect::<Vec<_>>());
    assert!(
        problems.iter().any(|p| p == "unexpected: extra.weight"),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("dtype: patch_embedding.weight is I32")),
        "{problems:?}"
    );
    // Not a safetensors file at all.
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").unwrap();
    let e = WeightSource::open(&path).unwrap_err().to_string();
    assert!(e.contains("not a valid safetensors file"), "{e}");
}
