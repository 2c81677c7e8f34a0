//! The `fastlightgen` and `flg-worker` commands as users call them: validate, data, sample,
//! eval, env checks and clear refusals.

use crate::util::*;

#[test]
fn wrong_world_size_is_refused_on_every_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    data::write_moving_shapes(&data_dir, &shapes_spec(), 16, 16, false).unwrap();
    let cfg = write_config(tmp.path(), 3, 6);
    let probe = PathBuf::from(env!("CARGO_BIN_EXE_mpi-data-probe"));
    let args: Vec<std::ffi::OsString> = vec![
        "--config".into(),
        cfg.into(),
        "--data".into(),
        data_dir.into(),
        "--steps".into(),
        "2".into(),
        "--restore-at".into(),
        "1".into(),
        "--out".into(),
        tmp.path().join("out").into(),
    ];
    let res = MpiLaunch::single_node(2)
        .command(&probe, &args)
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = text(&res.stderr);
    assert!(
        err.contains("cluster.world_size") && err.contains("mpirun -np 2"),
        "{err}"
    );
    assert!(
        !tmp.path().join("out").exists(),
        "no rank went on to read data"
    );
}

#[test]
fn validate_command_reports_every_problem_and_exits_nonzero() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[experiment]\nname = \"x\"\nstages = [\"pretrain\"]\n[cluster]\nworld_size = 2\nbakend = \"mpi\"\n\
         [model]\npreset = \"tiny\"\nnum_heads = 5\n[pretrain]\ncfg_dropout = 1.5\n",
    )
    .unwrap();
    let out = fastlightgen(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let f = bad.display().to_string();
    for key in ["cluster.bakend", "model.num_heads", "pretrain.cfg_dropout"] {
        assert!(
            err.contains(&format!("{f}: {key}: ")),
            "missing {key} in:\n{err}"
        );
    }

    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // The demo config names files relative to the repository root, where users run it.
    let at_root = |args: &[&str]| {
        Command::new(bin_dir().join("fastlightgen"))
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap()
    };
    let out = at_root(&["validate", "cluster-configs/demo-cpu.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"));
    let out = at_root(&[
        "validate",
        "--world-size",
        "4",
        "cluster-configs/demo-cpu.toml",
    ]);
    assert!(text(&out.stderr).contains("cluster.world_size"));
    let wan = repo.join("cluster-configs/wan2.1-t2v-1.3b-8xh100.toml");
    let out = fastlightgen(&["validate", "--skip-files", wan.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The 14-block teacher's configs (its weights exist only once it is trained).
    for f in ["teacher14-cpu.toml", "fastlightgen14-cpu.toml"] {
        let cfg = repo.join("cluster-configs/deep14").join(f);
        let out = fastlightgen(&["validate", "--skip-files", cfg.to_str().unwrap()]);
        assert!(out.status.success(), "{f}: {}", text(&out.stderr));
    }
    // For scripts: the run directory alone, or the same errors and exit 1.
    let out = at_root(&[
        "validate",
        "--print-run-dir",
        "cluster-configs/demo-cpu.toml",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "runs/demo-cpu\n");
    let out = fastlightgen(&["validate", "--print-run-dir", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty());
    assert!(text(&out.stderr).contains(&format!("{f}: model.num_heads: ")));
}

/// The memory estimate: per stage and role, a verdict against the device, and the 8-GPU Wan
/// config that fits on 8 x 80 GB but not on one GPU.
#[test]
fn validate_estimates_memory_per_stage_and_says_whether_it_fits() {
    let wan = repo().join("cluster-configs/wan2.1-t2v-1.3b-8xh100.toml");
    let w = wan.to_str().unwrap();
    let res = fastlightgen(&["validate", "--skip-files", "--estimate-memory", w]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let out = text(&res.stdout);
    for want in [
        "memory per rank, 8 rank(s) on Cuda, Bf16 compute",
        "pruning (batch 2 per rank)",
        "generator",
        "fake score",
        "of 80 GiB per rank: fits",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    let res = fastlightgen(&[
        "validate",
        "--skip-files",
        "--estimate-memory",
        "--ranks",
        "1",
        w,
    ]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let one = text(&res.stdout);
    assert!(one.contains("does NOT fit"), "{one}");
    // The CPU demo reads its shape from the moving-shapes settings.
    let demo = repo().join("cluster-configs/demo-cpu.toml");
    let res = fastlightgen(&[
        "validate",
        "--skip-files",
        "--estimate-memory",
        demo.to_str().unwrap(),
    ]);
    let out = text(&res.stdout);
    assert!(
        out.contains("[3, 8, 16, 16] (128 tokens)") && out.contains("fits"),
        "{out}"
    );
}

/// The GPU kit's checks, run on the CPU: the forward against itself and a timed step.
#[test]
fn device_checks_run_on_the_cpu() {
    let teacher = repo().join("teacher/tiny-teacher.safetensors");
    let t = teacher.to_str().unwrap();
    let res = fastlightgen(&[
        "bench", "device", "forward", "--model", t, "--device", "cpu",
    ]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&res.stdout).trim()).unwrap();
    assert_eq!(v["pass"], true, "{v}");
    assert_eq!(v["f32_rel_l2"], 0.0, "the CPU against itself");
    assert!(
        v["bf16_rel_l2"].as_f64().unwrap() > 0.0,
        "bf16 computed in bf16: {v}"
    );
    let res = fastlightgen(&[
        "bench",
        "device",
        "step",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--frames",
        "8",
        "--height",
        "16",
        "--width",
        "16",
        "--text-len",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&res.stdout).trim()).unwrap();
    assert_eq!(v["params"], 1_592_016);
    assert!(v["step_s"].as_f64().unwrap() > 0.0 && v["tflops"].as_f64().unwrap() > 0.0);
    // A device that is not there is a clear error.
    let res = fastlightgen(&[
        "bench", "device", "forward", "--model", t, "--device", "cuda",
    ]);
    assert!(!res.status.success());
    assert!(
        text(&res.stderr).contains("--device cuda"),
        "{}",
        text(&res.stderr)
    );
}

#[test]
fn data_commands_write_and_check_a_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shapes");
    let d = dir.to_str().unwrap();
    let out = fastlightgen(&[
        "data",
        "shapes",
        "--out",
        d,
        "--num",
        "40",
        "--shard-size",
        "16",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ds = DataSet::open(&dir).unwrap();
    assert_eq!((ds.len(), ds.manifest.shards.len()), (40, 3));
    // What the command wrote is exactly the library's generator output.
    let v = data::shapes::generate(
        &ShapesSpec {
            seed: 0,
            text_seed: 20260301,
            ..shapes_spec()
        },
        17,
    );
    assert_eq!(
        ds.sample(17).latents,
        data::shapes::pixels_to_latents(&v.pixels, 8, 16)
    );

    let out = fastlightgen(&["data", "inspect", d]);
    assert!(
        text(&out.stdout).contains("40 samples in 3 shards"),
        "{}",
        text(&out.stdout)
    );
    std::fs::write(dir.join("shard-00001.safetensors"), b"junk").unwrap();
    let out = fastlightgen(&["data", "inspect", d]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("shard-00001.safetensors"),
        "{}",
        text(&out.stderr)
    );

    let out = fastlightgen(&["data", "shapes", "--out", d, "--size", "10"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("--size"),
        "{}",
        text(&out.stderr)
    );
    let out = fastlightgen(&["data", "--help"]);
    assert!(text(&out.stdout).contains("shapes"));
}

#[test]
fn sample_and_eval_commands_write_what_they_promise() {
    use flg_media::npy;
    use flg_worker::model::{file, Dit};
    let tmp = tempfile::tempdir().unwrap();
    let dims = flg_core::config::preset("tiny").unwrap();
    let model = Dit::init(&dims, 0);
    let spec = shapes_spec();
    let meta = file::ModelMeta {
        dims: dims.clone(),
        block_ids: model.block_ids.clone(),
        prompts: Some(file::Prompts {
            text_len: 4,
            text_dim: 32,
            shapes: data::shapes_params(&spec),
        }),
        sampler: None,
    };
    let weights = tmp.path().join("m.safetensors");
    file::save(&weights, &model.named_tensors(), &meta).unwrap();
    let out_dir = tmp.path().join("samples");
    let o = out_dir.to_str().unwrap();
    let res = fastlightgen(&[
        "sample",
        "--model",
        weights.to_str().unwrap(),
        "--steps",
        "2",
        "--cfg",
        "2",
        "--num",
        "3",
        "--out",
        o,
        "--eval",
    ]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let (shape, _) = npy::read_u8(&out_dir.join("videos.npy")).unwrap();
    assert_eq!(shape, vec![3, 8, 16, 16, 3]);
    assert_eq!(
        npy::read_i64(&out_dir.join("labels.npy")).unwrap(),
        vec![0, 1, 2]
    );
    let gifs = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "gif")
        })
        .count();
    assert_eq!(gifs, 3);
    assert!(std::fs::read(out_dir.join("grid.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    assert!(std::fs::read(out_dir.join("video-0001-class1.gif"))
        .unwrap()
        .starts_with(b"GIF89a"));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("sample.json")).unwrap())
            .unwrap();
    assert_eq!(info["nfe"], 4, "2 steps with CFG = 4 network evaluations");
    let ev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("eval.json")).unwrap()).unwrap();
    assert!(
        ev["average"].as_f64().unwrap() < 0.5,
        "an untrained model's samples are not videos of shapes"
    );

    // Real videos written the same way score near 1 through the command.
    let real_dir = tmp.path().join("real");
    std::fs::create_dir_all(&real_dir).unwrap();
    let vids: Vec<_> = (0..16).map(|i| data::shapes::generate(&spec, i)).collect();
    let px: Vec<u8> = vids.iter().flat_map(|v| v.pixels.clone()).collect();
    npy::write_u8(&real_dir.join("videos.npy"), &[16, 8, 16, 16, 3], &px).unwrap();
    npy::write_i64(
        &real_dir.join("labels.npy"),
        &vids.iter().map(|v| i64::from(v.class)).collect::<Vec<_>>(),
    )
    .unwrap();
    let res = fastlightgen(&["eval", real_dir.to_str().unwrap()]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let ev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(real_dir.join("eval.json")).unwrap())
            .unwrap();
    assert!(ev["average"].as_f64().unwrap() > 0.99, "{ev}");

    // A file without metadata needs --preset, and says so.
    let bare = tmp.path().join("bare.safetensors");
    model.save(&bare).unwrap();
    let res = fastlightgen(&["sample", "--model", bare.to_str().unwrap(), "--out", o]);
    assert!(
        !res.status.success() && text(&res.stderr).contains("--preset"),
        "{}",
        text(&res.stderr)
    );
}

/// The slurm template runs as sbatch would run it, with `fastlightgen` standing in as a shim
/// that validates instead of running (values only: the weights live on the cluster): both of
/// its commands, with every --set it passes, are accepted for 2 nodes x 8 GPUs.
#[test]
fn the_slurm_template_validates_the_run_it_would_start() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = tmp.path().join("fastlightgen");
    let calls = tmp.path().join("calls.log");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/bash\nprintf '%s\\n' \"$*\" >> {calls:?}\n\
             if [ \"$1\" = run ]; then shift; set -- validate \"$@\"; fi\n\
             exec {real:?} \"$@\" --skip-files\n",
            real = bin_dir().join("fastlightgen"),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = repo().join("cluster-configs/slurm/wan2.1-t2v-1.3b.sbatch");
    let out = Command::new("bash")
        .arg(&script)
        .env("FLG_BIN", tmp.path())
        .env(
            "CONFIG",
            repo().join("cluster-configs/wan2.1-t2v-1.3b-8xh100.toml"),
        )
        .env("SLURM_JOB_ID", "77")
        .env("SLURM_JOB_NUM_NODES", "2")
        .env("SLURM_JOB_NODELIST", "gpu[01-02]")
        .output()
        .unwrap();
    assert_ok(&out);
    let calls = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 2, "{calls}");
    assert!(
        lines[0].starts_with("validate ") && lines[0].contains("--world-size 16"),
        "{calls}"
    );
    assert!(
        lines[1].starts_with("run ") && lines[1].contains("cluster.world_size=16"),
        "{calls}"
    );
    assert!(lines[1].contains("ppr:8:node"), "{calls}");
    // Both validated with 16 ranks (the shim's validate of `run` printed "ok" too).
    assert_eq!(
        text(&out.stdout).matches(": ok").count(),
        2,
        "{}",
        text(&out.stdout)
    );
}
