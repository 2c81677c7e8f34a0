use super::params::*;
use super::*;
use flg_core::config::preset;

fn tiny() -> ModelDims {
    preset("tiny").unwrap()
}

fn inputs(d: &ModelDims, b: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(1);
    let x = Tensor::randn([b, d.in_channels, 8, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([b], (Kind::Float, Device::Cpu));
    let text = Tensor::randn([b, 4, d.text_dim], (Kind::Float, Device::Cpu));
    (x, t, text)
}

/// A model whose output head is not zero (a fresh model predicts exactly 0 everywhere).
fn live_model(d: &ModelDims) -> Dit {
    let m = Dit::init(d, 3);
    let _ = m
        .stem
        .p("head.head.weight")
        .shallow_clone()
        .normal_(0.0, 0.05);
    m
}

#[test]
fn tiny_forward_has_the_input_shape() {
    let d = tiny();
    let m = live_model(&d);
    let (x, t, text) = inputs(&d, 2);
    let v = m.forward(&x, &t, &text, None);
    assert_eq!(v.size(), x.size());
    assert!(v.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert_eq!(m.param_count(), total_param_count(&d));
}

#[test]
fn wan_1_3b_parameter_count_matches_the_release() {
    // The released Wan2.1-T2V-1.3B DiT has about 1.42e9 parameters; counted from shapes only.
    let d = preset("wan2.1-t2v-1.3b").unwrap();
    let n = total_param_count(&d);
    assert!((1.41e9..1.43e9).contains(&(n as f64)), "{n}");
    assert_eq!(
        n, 1_418_996_800,
        "the count computed from the Wan 2.1 shapes"
    );
    // Each block: 2 x 4 attention projections + FFN + norms + modulation.
    let per_block =
        8 * (1536 * 1536 + 1536) + 2 * 1536 * 8960 + 8960 + 1536 + 4 * 1536 + 2 * 1536 + 6 * 1536;
    assert_eq!(block_param_count(&d), per_block);
}

#[test]
fn skipping_every_block_is_the_empty_stack() {
    let d = tiny();
    let m = live_model(&d);
    let (x, t, text) = inputs(&d, 2);
    let skipped = m.forward(&x, &t, &text, Some(&[]));
    // The empty stack by hand: embed, then straight to the head.
    let emb = dit::embed(&m.stem, &x, &t, &text, &d);
    let direct = dit::head(&m.stem, &emb.tokens, &emb.e, emb.grid, &d);
    assert!(skipped.allclose(&direct, 1e-6, 1e-6, false));
    // And skipping a block changes the output (blocks do something).
    let all = m.forward(&x, &t, &text, None);
    assert!(!all.allclose(&skipped, 1e-4, 1e-4, false));
}

#[test]
fn pruned_model_equals_the_full_model_with_those_blocks_skipped() {
    let d = tiny();
    let m = live_model(&d);
    let (x, t, text) = inputs(&d, 1);
    let keep = [0usize, 1, 2, 4, 6, 7, 9];
    let skipped = m.forward(&x, &t, &text, Some(&keep));
    let pruned = m.pruned(&keep);
    assert_eq!(pruned.block_ids, keep.to_vec());
    let out = pruned.forward(&x, &t, &text, None);
    assert!(out.allclose(&skipped, 1e-6, 1e-6, false));
    assert_eq!(
        pruned.param_count(),
        stem_param_count(&d) + 7 * block_param_count(&d)
    );
}

#[test]
fn wan_named_checkpoint_loads_and_a_wrong_one_is_refused_by_key() {
    let d = tiny();
    let m = live_model(&d);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    m.save(&path).unwrap();
    // The file uses Wan's key names.
    let names: Vec<String> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for key in [
        "blocks.3.self_attn.q.weight",
        "blocks.9.cross_attn.norm_k.weight",
        "blocks.0.ffn.2.bias",
        "blocks.5.modulation",
        "patch_embedding.weight",
        "time_projection.1.weight",
        "head.head.weight",
        "blocks.2.norm3.bias",
    ] {
        assert!(
            names.iter().any(|n| n == key),
            "{key} missing from {names:?}"
        );
    }
    let loaded = Dit::load(&d, &path).unwrap();
    let (x, t, text) = inputs(&d, 1);
    assert!(loaded.forward(&x, &t, &text, None).allclose(
        &m.forward(&x, &t, &text, None),
        1e-6,
        1e-6,
        false
    ));

    // Drop one key, reshape another, add a stray one: all three are named.
    let mut named = m.named_tensors();
    named.retain(|(n, _)| n != "blocks.4.ffn.0.bias");
    for (n, t) in named.iter_mut() {
        if n == "head.modulation" {
            *t = Tensor::zeros([1, 3, d.dim], (Kind::Float, Device::Cpu));
        }
    }
    named.push((
        "blocks.10.ffn.0.bias".into(),
        Tensor::zeros([4], (Kind::Float, Device::Cpu)),
    ));
    let bad = dir.path().join("bad.safetensors");
    Tensor::write_safetensors(&named, &bad).unwrap();
    let e = Dit::load(&d, &bad).err().expect("refused").to_string();
    assert!(e.contains("missing: blocks.4.ffn.0.bias"), "{e}");
    assert!(e.contains("mis-shaped: head.modulation"), "{e}");
    assert!(e.contains("unexpected: blocks.10.ffn.0.bias"), "{e}");
    assert!(e.contains("bad.safetensors"), "{e}");
}

#[test]
fn a_short_training_run_lowers_the_loss() {
    use crate::optim::{clip_factor, grad_sq_sum, AdamW};
    let d = tiny();
    let m = Dit::init(&d, 0);
    let params: Vec<Tensor> = m
        .parameters()
        .into_iter()
        .map(|t| t.set_requires_grad(true))
        .collect();
    let cfg = flg_core::config::Optim {
        lr: 2e-3,
        warmup_steps: 5,
        ..Default::default()
    };
    let mut opt = AdamW::new(&cfg, &params);
    // A fixed batch of 4 videos; the same noise draws every step isolate the optimisation.
    let (x0, _, text) = inputs(&d, 4);
    let x0 = x0.tanh();
    let loss_at = |m: &Dit| {
        let d = crate::train::draws(42, 0, 0, 0, 4, &x0.size()[1..], Device::Cpu);
        crate::train::flow_loss(
            |x, t, c| m.forward(x, t, c, None),
            &x0,
            &text,
            &d,
            1.0,
            0.0,
            &crate::flow::NullPrompt::zeros(),
        )
    };
    let first = loss_at(&m).double_value(&[]);
    for _ in 0..40 {
        let loss = loss_at(&m);
        let g = Tensor::run_backward(&[&loss], &params, false, false);
        opt.update(
            &params,
            &crate::optim::all_present(&g),
            clip_factor(grad_sq_sum(&g).sqrt(), 1.0),
        );
    }
    let last = loss_at(&m).double_value(&[]);
    assert!(last < 0.8 * first, "loss {first} -> {last}");
}

/// The coordinator's memory estimate counts parameters from the dimensions alone; it must
/// agree with the specs the worker builds models from, for every preset.
#[test]
fn the_memory_estimate_counts_the_parameters_the_worker_builds() {
    use crate::model::params::{block_param_count, stem_param_count};
    for name in ["tiny", "small-100m", "wan2.1-t2v-1.3b"] {
        let d = flg_core::config::preset(name).unwrap();
        assert_eq!(
            flg_core::memory::block_params(&d),
            block_param_count(&d),
            "{name}"
        );
        assert_eq!(
            flg_core::memory::stem_params(&d),
            stem_param_count(&d),
            "{name}"
        );
    }
}
