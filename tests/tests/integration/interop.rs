//! Interop with diffusers' `WanTransformer3DModel` (diffusers and torch from the project's
//! virtual environment, installed by `make setup`; CPU, float32, nothing downloaded): a tiny
//! random model made by diffusers and saved sharded loads in fastlightgen and computes the
//! same velocities; what fastlightgen writes in diffusers form loads back strictly in
//! diffusers with the same weights, bit for bit.

use crate::util::*;
use flg_worker::model::file::{self, FolderForm, SaveDtype};
use tch::Tensor;

fn python() -> PathBuf {
    let py = repo().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} missing: run `make setup` (make test does)",
        py.display()
    );
    py
}

/// Runs tests/python/diffusers_wan.py with `args`; panics with its output if it fails.
fn diffusers_wan(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/python/diffusers_wan.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diffusers_wan.py {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
}

fn velocity(
    model: &flg_worker::model::Dit,
    io: &std::collections::HashMap<String, Tensor>,
) -> Tensor {
    let _g = tch::no_grad_guard();
    model.forward(&io["x"], &io["t"], &io["text"], None)
}

#[test]
fn a_sharded_diffusers_transformer_loads_computes_the_same_and_exports_back_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    diffusers_wan(&["make", d.to_str().unwrap()]);
    let folder = d.join("model");
    let io: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(d.join("io.safetensors"))
            .unwrap()
            .into_iter()
            .collect();

    // The folder, and its index named directly: dimensions from config.json, the shards
    // through the index, diffusers' key names.
    let (model, meta) = file::load(&folder, None).unwrap();
    assert!(meta.is_none());
    assert_eq!(
        (model.dims.dim, model.dims.num_blocks, model.dims.num_heads),
        (32, 3, 2)
    );
    assert_eq!(
        (
            model.dims.in_channels,
            model.dims.text_dim,
            model.dims.ffn_dim
        ),
        (4, 24, 48)
    );
    let v = velocity(&model, &io);
    let err = rel_l2(&v, &io["out"]);
    eprintln!("fastlightgen vs diffusers, relative L2: {err:e}");
    assert!(
        err < 1e-4,
        "fastlightgen's forward differs from diffusers' by {err:e} (relative L2)"
    );
    let index = folder.join("diffusion_pytorch_model.safetensors.index.json");
    let (by_index, _) = file::load(&index, None).unwrap();
    assert!(velocity(&by_index, &io).equal(&v));

    // A configured model other than the folder's: config.json names the field.
    let tiny = flg_core::config::preset("tiny").unwrap();
    let e = file::load(&folder, Some(&tiny)).err().unwrap().to_string();
    assert!(
        e.contains("config.json") && e.contains("dim: the file's config.json says 32"),
        "{e}"
    );

    // `convert` to fastlightgen's file and on to every form; each loads to the same model.
    let flg = d.join("flg.safetensors");
    let conv = |args: &[&str]| {
        let out = fastlightgen(&[&["convert"], args].concat());
        assert!(
            out.status.success(),
            "convert {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    conv(&[folder.to_str().unwrap(), "--out", flg.to_str().unwrap()]);
    let (from_flg, meta) = file::load(&flg, None).unwrap();
    assert_eq!(meta.unwrap().dims, model.dims);
    assert!(velocity(&from_flg, &io).equal(&v));

    let back = d.join("back");
    let said = conv(&[
        flg.to_str().unwrap(),
        "--out",
        back.to_str().unwrap(),
        "--format",
        "diffusers",
        "--max-shard-size",
        "30KB",
    ]);
    assert!(said.contains("wrote"), "{said}");
    assert!(
        back.join("diffusion_pytorch_model.safetensors.index.json")
            .is_file(),
        "sharded with an index"
    );
    diffusers_wan(&["check", back.to_str().unwrap(), folder.to_str().unwrap()]);
    // A second write with one shard removes the first write's shards and index.
    conv(&[
        flg.to_str().unwrap(),
        "--out",
        back.to_str().unwrap(),
        "--format",
        "diffusers",
    ]);
    assert!(!back
        .join("diffusion_pytorch_model.safetensors.index.json")
        .exists());
    diffusers_wan(&["check", back.to_str().unwrap(), folder.to_str().unwrap()]);

    let bf16 = d.join("bf16");
    conv(&[
        folder.to_str().unwrap(),
        "--out",
        bf16.to_str().unwrap(),
        "--format",
        "diffusers",
        "--dtype",
        "bf16",
    ]);
    diffusers_wan(&[
        "check",
        bf16.to_str().unwrap(),
        folder.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    // bf16 files load into f32 masters, within bf16's rounding of the f32 model.
    let (from_bf16, _) = file::load(&bf16, None).unwrap();
    let e16 = rel_l2(&velocity(&from_bf16, &io), &io["out"]);
    assert!(e16 > 0.0 && e16 < 5e-2, "bf16 weights: relative L2 {e16:e}");

    // fp16 files load into f32 masters too, within fp16's rounding.
    let (from_f16, _) = file::load(&folder.with_file_name("model16"), None).unwrap();
    let e16 = rel_l2(&velocity(&from_f16, &io), &io["out"]);
    assert!(e16 > 0.0 && e16 < 1e-2, "fp16 weights: relative L2 {e16:e}");

    // The original Wan layout, sharded: Wan's config.json, an index, Wan key names.
    let wan = d.join("wan");
    conv(&[
        flg.to_str().unwrap(),
        "--out",
        wan.to_str().unwrap(),
        "--format",
        "wan",
        "--max-shard-size",
        "30KB",
    ]);
    assert!(wan
        .join("diffusion_pytorch_model.safetensors.index.json")
        .is_file());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(wan.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["dim"].as_i64(), cfg["num_layers"].as_i64()),
        (Some(32), Some(3))
    );
    let (from_wan, _) = file::load(&wan, None).unwrap();
    assert!(velocity(&from_wan, &io).equal(&v));

    // A pruned student: kept blocks renumbered 0..n-1, num_layers = n, same tensors.
    let pruned = model.pruned(&[0, 2]);
    let student = d.join("student");
    file::save_folder(
        &student,
        &pruned,
        FolderForm::Diffusers,
        SaveDtype::F32,
        5_000_000_000,
    )
    .unwrap();
    diffusers_wan(&[
        "check",
        student.to_str().unwrap(),
        folder.to_str().unwrap(),
        "--keep",
        "0,2",
    ]);
    let (reloaded, _) = file::load(&student, None).unwrap();
    assert_eq!(reloaded.block_ids, vec![0, 1]);
    assert!(velocity(&reloaded, &io).equal(&pruned.forward(&io["x"], &io["t"], &io["text"], None)));
}

/// bench/wan-tiny.sh in a fresh directory: tiny random Wan components -> `data encode` ->
/// validate -> Stage I-III + export on 2 ranks under the coordinator, the teacher read from
/// diffusers' folder and the negative prompt's embedding as the null prompt -> the student
/// sampled by fastlightgen and by WanPipeline from the same noise (they must agree) -> mp4.
#[test]
fn the_wan_path_at_toy_size_runs_from_clips_to_a_diffusers_student() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("bench/wan-tiny.sh"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "bench/wan-tiny.sh failed:\n{log}");
    let last = text(&out.stdout).lines().last().unwrap_or("").to_string();
    let summary: serde_json::Value =
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    let rel = summary["pipeline_check"]["relative_l2"].as_f64().unwrap();
    assert!(rel < 1e-4, "WanPipeline and fastlightgen differ by {rel:e}");
    let run = dir.path().join("runs/wan-tiny");
    // The data set the encoder wrote: 11 of 12 clips (one too short), bf16 shards, its null prompt.
    let data = DataSet::open(&dir.path().join("runs/wan-tiny-inputs/data")).unwrap();
    assert_eq!(
        (data.len(), data.latent_shape(), data.text_shape()),
        (11, [4, 5, 8, 12], [16, 32])
    );
    // The student: 4 of the 6 blocks, in diffusers form with its sampler.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("export/diffusers/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["num_layers"].as_i64(), Some(4));
    let sampler: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("export/diffusers/sampler.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sampler["kind"], "euler");
    assert_eq!(
        sampler["transformer_timesteps"],
        serde_json::json!([1000.0, 750.0, 500.0, 250.0])
    );
    let (student, _) = file::load(&run.join("export/diffusers"), None).unwrap();
    assert_eq!(student.block_ids.len(), 4);
    // Sampled from its diffusers folder, the student follows the sampler.json beside it and
    // makes the same videos as from fastlightgen's file.
    let again = run.join("samples-from-diffusers");
    let out = fastlightgen(&[
        "sample",
        "--model",
        run.join("export/diffusers").to_str().unwrap(),
        "--text-embeddings",
        dir.path()
            .join("runs/wan-tiny-inputs/prompts.safetensors")
            .to_str()
            .unwrap(),
        "--latent",
        "4,5,8,12",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("4 euler steps, cfg 1"),
        "{}",
        text(&out.stdout)
    );
    let latents = |p: PathBuf| -> tch::Tensor {
        tch::Tensor::read_safetensors(p.join("latents.safetensors"))
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == "latents")
            .unwrap()
            .1
    };
    let diff = (latents(again) - latents(run.join("samples-latent")))
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "the two forms sample {diff} apart");
    for f in [
        "videos/video-0000.mp4",
        "videos/video-0001.mp4",
        "videos/pipeline.gif",
    ] {
        assert!(
            std::fs::metadata(run.join(f)).unwrap().len() > 0,
            "{f} empty"
        );
    }
    // A rerun resumes: nothing re-encoded, the finished run shown, the same check.
    let again = Command::new("bash")
        .arg(repo().join("bench/wan-tiny.sh"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again.stderr));
}
