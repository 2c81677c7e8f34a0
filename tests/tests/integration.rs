//! Multi-process integration tests: real `mpirun` ranks, the real `fastlightgen` binary, real
//! files. One test binary for all of them (each extra binary links libtorch again).
//!
//! `make test` builds the release binaries first; these tests find them next to this test
//! executable's directory (target/release/).

use flg_core::launch::MpiLaunch;
use flg_worker::data::{self, shapes::ShapesSpec, DataSet, Loader};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

/// target/<profile>/, where cargo puts the binaries.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn fastlightgen(args: &[&str]) -> Output {
    let bin = bin_dir().join("fastlightgen");
    assert!(
        bin.is_file(),
        "{} missing: run `make build` (make test does)",
        bin.display()
    );
    Command::new(bin).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_config(dir: &Path, world_size: u32, batch: u64) -> PathBuf {
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        format!(
            "[experiment]\nname = \"probe\"\nseed = 5\nstages = [\"pretrain\"]\n\
             [cluster]\nworld_size = {world_size}\n[model]\npreset = \"tiny\"\n\
             [pretrain]\nbatch_size = {batch}\n"
        ),
    )
    .unwrap();
    path
}

fn shapes_spec() -> ShapesSpec {
    ShapesSpec {
        frames: 8,
        size: 16,
        text_len: 4,
        text_dim: 32,
        seed: 9,
        text_seed: 1,
    }
}

#[test]
fn mpi_ranks_read_disjoint_shares_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    data::write_moving_shapes(&data_dir, &shapes_spec(), 100, 32, false).unwrap();
    let (batch, steps, restore_at) = (8u64, 20u64, 9u64);
    let cfg = write_config(tmp.path(), 2, batch);
    let out = tmp.path().join("out");
    let probe = PathBuf::from(env!("CARGO_BIN_EXE_mpi-data-probe"));
    let args: Vec<std::ffi::OsString> = vec![
        "--config".into(),
        cfg.into(),
        "--data".into(),
        data_dir.clone().into(),
        "--steps".into(),
        steps.to_string().into(),
        "--restore-at".into(),
        restore_at.to_string().into(),
        "--out".into(),
        out.clone().into(),
    ];
    let res = MpiLaunch::single_node(2)
        .command(&probe, &args)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "mpirun failed:\n{}\n{}",
        text(&res.stdout),
        text(&res.stderr)
    );

    let read = |r: u32| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("rank-{r}.json"))).unwrap())
            .unwrap()
    };
    let (r0, r1) = (read(0), read(1));
    assert_eq!(
        (r0["world"].as_u64(), r1["world"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        r0["total_served"].as_u64(),
        Some(steps * batch),
        "MPI all-reduce of the counts"
    );
    let batches = |v: &serde_json::Value, key: &str| -> Vec<Vec<u64>> {
        serde_json::from_value(v[key].clone()).unwrap()
    };
    let (s0, s1) = (batches(&r0, "straight"), batches(&r1, "straight"));

    // The same global batches a single rank reads, split into disjoint halves.
    let ds = Arc::new(DataSet::open(&data_dir).unwrap());
    let mut single = Loader::new(ds, 5, batch, 0, 1).unwrap();
    let per_epoch = single.steps_per_epoch() as usize;
    let mut epoch_seen = HashSet::new();
    for step in 0..steps as usize {
        let a: HashSet<u64> = s0[step].iter().copied().collect();
        let b: HashSet<u64> = s1[step].iter().copied().collect();
        assert_eq!(a.len() + b.len(), batch as usize);
        assert!(a.is_disjoint(&b), "step {step}: ranks share a sample");
        let mut joined = s0[step].clone();
        joined.extend(&s1[step]);
        assert_eq!(
            joined,
            single.next_batch().indices,
            "step {step}: union is the 1-rank batch"
        );
        if step % per_epoch == 0 {
            epoch_seen.clear();
        }
        assert!(
            joined.iter().all(|i| epoch_seen.insert(*i)),
            "step {step}: a sample repeats within an epoch"
        );
    }
    // Each rank's restored loader continued exactly where it stopped.
    for (r, straight) in [(&r0, &s0), (&r1, &s1)] {
        assert_eq!(
            batches(r, "resumed"),
            straight[restore_at as usize..].to_vec()
        );
    }
}

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
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
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

/// A pretraining config for the equivalence runs: 20 steps, global batch 8, no EMA.
fn equivalence_config(dir: &Path, world: u32, data_dir: &Path) -> PathBuf {
    let path = dir.join(format!("w{world}.toml"));
    std::fs::write(
        &path,
        format!(
            "[experiment]\nname = \"eq-w{world}\"\nseed = 3\noutput_dir = {out:?}\nstages = [\"pretrain\"]\n\
             [cluster]\nworld_size = {world}\n[model]\npreset = \"tiny\"\n\
             [data]\npath = {data:?}\nnum_samples = 64\n\
             [pretrain]\nsteps = 20\nbatch_size = 8\nema_decay = 0.0\nlog_every = 1\n\
             [pretrain.optim]\nlr = 1e-3\nwarmup_steps = 5\n",
            out = dir.join("runs"),
            data = data_dir,
        ),
    )
    .unwrap();
    path
}

/// Largest difference between two models' tensors, relative to each tensor's largest entry.
fn max_relative_difference(a: &Path, b: &Path) -> f64 {
    let a: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(a)
        .unwrap()
        .into_iter()
        .collect();
    let b: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(b)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, ta)| {
            let tb = &b[k];
            let scale = ta.abs().max().double_value(&[]).max(1e-12);
            (ta - tb).abs().max().double_value(&[]) / scale
        })
        .fold(0.0, f64::max)
}

fn run_mpi(np: u32, program: &Path, args: &[std::ffi::OsString]) {
    let res = MpiLaunch::single_node(np)
        .command(program, args)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "mpirun -np {np} failed:\n{}\n{}",
        text(&res.stdout),
        text(&res.stderr)
    );
}

#[test]
fn sharded_pretraining_on_2_and_4_ranks_equals_1_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    data::write_moving_shapes(&data_dir, &shapes_spec(), 64, 64, false).unwrap();
    let worker = bin_dir().join("flg-worker");
    let losses = |w: u32| -> Vec<f64> {
        std::fs::read_to_string(tmp.path().join(format!("runs/eq-w{w}/metrics.jsonl")))
            .unwrap()
            .lines()
            // Step lines; the stage's closing event line has no loss.
            .filter_map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["last_loss"].as_f64()
            })
            .collect()
    };
    for w in [1, 2, 4] {
        let cfg = equivalence_config(tmp.path(), w, &data_dir);
        run_mpi(w, &worker, &["run".into(), "--config".into(), cfg.into()]);
    }
    let params = |w: u32| {
        tmp.path()
            .join(format!("runs/eq-w{w}/pretrain/teacher.safetensors"))
    };
    let base = losses(1);
    assert_eq!(base.len(), 20);
    assert!(base[19] < base[0], "training lowers the loss: {base:?}");
    for w in [2, 4] {
        let d = max_relative_difference(&params(1), &params(w));
        assert!(
            d <= 1e-4,
            "W={w}: parameters differ from W=1 by {d:e} (relative)"
        );
        for (a, b) in base.iter().zip(losses(w)) {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "W={w}: loss {b} vs {a}");
        }
    }
}

/// Moving-shapes data with the shipped teacher's prompt table.
fn teacher_data(dir: &Path, n: u64) -> PathBuf {
    let data_dir = dir.join("data");
    data::write_moving_shapes(
        &data_dir,
        &ShapesSpec {
            seed: 0,
            text_seed: 20260301,
            ..shapes_spec()
        },
        n,
        n,
        false,
    )
    .unwrap();
    data_dir
}

/// A config for the stage probe: the shipped teacher, a small batch, a few steps.
fn stage_probe_config(dir: &Path, world: u32, data_dir: &Path) -> PathBuf {
    let path = dir.join(format!("stages-w{world}.toml"));
    std::fs::write(
        &path,
        format!(
            "[experiment]\nname = \"stages-w{world}\"\nseed = 3\noutput_dir = {out:?}\nstages = [\"pruning\", \"distill\"]\n\
             [cluster]\nworld_size = {world}\n[model]\npreset = \"tiny\"\nweights = {teacher:?}\n\
             [data]\npath = {data:?}\nnum_samples = 64\n\
             [pruning]\nsteps = 12\nbatch_size = 8\nskip_prob = 0.5\nalpha = 1.0\n\
             [pruning.optim]\nlr = 1e-5\nwarmup_steps = 0\n\
             [distill]\nsteps = 6\nbatch_size = 4\ngenerator_every = 1\nb1_range = [3.0, 4.0]\nb2_range = [0.0, 0.5]\n\
             [distill.generator_optim]\nlr = 1e-4\n[distill.fake_optim]\nlr = 1e-4\n",
            out = dir.join("runs"),
            teacher = shipped_teacher(),
            data = data_dir,
        ),
    )
    .unwrap();
    path
}

fn probe(np: u32, cfg: &Path, out: &Path, stage: &[&str]) -> Output {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--config".into(),
        cfg.into(),
        "--candidates".into(),
        "3,4,5".into(),
        "--out".into(),
        out.into(),
    ];
    args.extend(stage.iter().map(|s| s.into()));
    MpiLaunch::single_node(np)
        .command(Path::new(env!("CARGO_BIN_EXE_stage-probe")), &args)
        .output()
        .unwrap()
}

fn json_file<T: serde::de::DeserializeOwned>(p: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn assert_ok(res: &Output) {
    assert!(
        res.status.success(),
        "{}\n{}",
        text(&res.stdout),
        text(&res.stderr)
    );
}

#[test]
fn stage_ii_on_2_and_4_ranks_equals_1_rank_with_one_mask_and_lowers_the_pruned_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let out = |w: u32| tmp.path().join(format!("pruning-w{w}"));
    for w in [1, 2, 4] {
        let cfg = stage_probe_config(tmp.path(), w, &data_dir);
        assert_ok(&probe(w, &cfg, &out(w), &["pruning"]));
    }
    let masks =
        |w: u32, r: u32| -> Vec<Vec<usize>> { json_file(&out(w).join(format!("masks-{r}.json"))) };
    let m = masks(1, 0);
    assert!(m.iter().any(|a| a.len() < 10), "some step skipped blocks");
    assert!(
        m.windows(2).any(|p| p[0] != p[1]),
        "the mask changes from step to step"
    );
    for r in 0..4 {
        assert_eq!(
            masks(4, r),
            m,
            "rank {r} of 4 drew the same masks as 1 rank"
        );
    }
    let losses = |w: u32| -> Vec<serde_json::Value> { json_file(&out(w).join("losses.json")) };
    for w in [2, 4] {
        let d = max_relative_difference(
            &out(1).join("params.safetensors"),
            &out(w).join("params.safetensors"),
        );
        assert!(
            d <= 1e-4,
            "W={w}: Stage II parameters differ from W=1 by {d:e}"
        );
        for (a, b) in losses(1).iter().zip(losses(w)) {
            let (a, b) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1e-9),
                "W={w}: loss {b} vs {a}"
            );
        }
    }
    // Stage II's own objective, on a held-out batch with every candidate removed.
    let [before, after]: [f64; 2] = json_file(&out(1).join("held-out.json"));
    assert!(
        after < before,
        "the pruned model moves towards the full one: {before} -> {after}"
    );
}

#[test]
fn a_rank_drawing_its_own_skip_mask_stops_the_run_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let cfg = stage_probe_config(tmp.path(), 2, &data_dir);
    let res = probe(
        2,
        &cfg,
        &tmp.path().join("bad"),
        &["pruning", "--rank-own-mask"],
    );
    assert!(
        !res.status.success(),
        "a rank with its own mask must not train on"
    );
    let err = text(&res.stderr);
    assert!(
        err.contains("every rank must draw the same skip mask") && err.contains("rank 1 runs"),
        "{err}"
    );
}

/// ||a - b|| / ||a|| over all tensors of two files.
fn global_relative_difference(a: &Path, b: &Path) -> f64 {
    let b: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(b)
        .unwrap()
        .into_iter()
        .collect();
    let (mut diff, mut norm) = (0.0, 0.0);
    for (k, ta) in tch::Tensor::read_safetensors(a).unwrap() {
        diff += (&ta - &b[&k])
            .square()
            .sum(tch::Kind::Double)
            .double_value(&[]);
        norm += ta.square().sum(tch::Kind::Double).double_value(&[]);
    }
    (diff / norm).sqrt()
}

#[test]
fn stage_iii_steps_on_2_ranks_equal_1_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let out = |w: u32, sim: bool| tmp.path().join(format!("distill-w{w}-{sim}"));
    for sim in [false, true] {
        for w in [1, 2] {
            let cfg = stage_probe_config(tmp.path(), w, &data_dir);
            let text = std::fs::read_to_string(&cfg).unwrap().replace(
                "[distill]\n",
                &format!("[distill]\nbackward_simulation = {sim}\n"),
            );
            std::fs::write(&cfg, text).unwrap();
            assert_ok(&probe(w, &cfg, &out(w, sim), &["distill"]));
        }
    }
    // The step itself: both roles' gradients of the first step (a generator step, before
    // any update) agree. After it, AdamW's first updates are about lr * sign(g), so entries
    // whose gradient is ~0 differ by up to lr between any two summation orders; the losses
    // below show that the runs stay together.
    for role in ["generator", "fake"] {
        let f = format!("{role}-grads.safetensors");
        let d = max_relative_difference(&out(1, false).join(&f), &out(2, false).join(&f));
        assert!(
            d <= 1e-4,
            "Stage III {role} gradients: W=2 differs from W=1 by {d:e}"
        );
    }
    // With backward simulation the sample comes out of a 3-step Euler rollout of the
    // generator, which amplifies the float rounding of batch 4 vs 2 + 2 (about 1e-6 relative
    // per forward, measured) to about 1e-4 in the sample: the generator's gradient still agrees
    // tensor by tensor, the fake score's (a flow-matching gradient of a trained model, where
    // per-sample terms largely cancel) as a whole.
    let f = |r: &str| format!("{r}-grads.safetensors");
    let d = max_relative_difference(
        &out(1, true).join(f("generator")),
        &out(2, true).join(f("generator")),
    );
    assert!(d <= 1e-4, "rollout generator gradients differ by {d:e}");
    let d =
        global_relative_difference(&out(1, true).join(f("fake")), &out(2, true).join(f("fake")));
    assert!(
        d <= 1e-4,
        "rollout fake-score gradients differ by {d:e} (global)"
    );
    for sim in [false, true] {
        let a: Vec<serde_json::Value> = json_file(&out(1, sim).join("losses.json"));
        let b: Vec<serde_json::Value> = json_file(&out(2, sim).join("losses.json"));
        assert_eq!(a.len(), 6);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["k"], y["k"], "same sampler step drawn");
            for key in ["fake_loss", "generator_loss"] {
                let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
                assert!(
                    (p - q).abs() <= 1e-4 * p.abs().max(1e-9),
                    "{key}: {q} vs {p}"
                );
            }
        }
    }
    let a: Vec<serde_json::Value> = json_file(&out(1, true).join("losses.json"));
    assert!(
        a.iter().any(|x| x["k"].as_u64().unwrap() > 0),
        "some step trains a later sampler step (a rollout ran)"
    );
    let out = |w: u32| out(w, true);
    assert_eq!(
        a.iter().filter(|x| x["generator_loss"].is_f64()).count(),
        6,
        "the generator trains at every step (generator_every = 1)"
    );
    // The generator lost the candidate blocks.
    let g: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(out(1).join("generator.safetensors")).unwrap();
    assert!(g.iter().all(|(k, _)| !k.starts_with("blocks.3.")
        && !k.starts_with("blocks.4.")
        && !k.starts_with("blocks.5.")));
    assert!(g.iter().any(|(k, _)| k.starts_with("blocks.6.")));
}

/// The shipped tiny teacher.
fn shipped_teacher() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../teacher/tiny-teacher.safetensors");
    assert!(p.is_file(), "{} is part of the repository", p.display());
    p
}

#[test]
fn block_importance_is_the_same_on_1_and_2_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 96);
    let worker = bin_dir().join("flg-worker");
    let read = |w: u32| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(format!("runs/imp-w{w}/importance.json")))
                .unwrap(),
        )
        .unwrap()
    };
    for w in [1u32, 2] {
        let cfg = tmp.path().join(format!("imp{w}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[experiment]\nname = \"imp-w{w}\"\nseed = 5\noutput_dir = {out:?}\nstages = [\"importance\"]\n\
                 [cluster]\nworld_size = {w}\n[model]\npreset = \"tiny\"\nweights = {teacher:?}\n\
                 [data]\npath = {data:?}\nnum_samples = 96\n\
                 [importance]\ncalibration_samples = 24\ntimesteps_per_sample = 2\nbatch_size = 16\nprune_ratio = 0.3\n",
                out = tmp.path().join("runs"),
                teacher = shipped_teacher(),
                data = data_dir,
            ),
        )
        .unwrap();
        run_mpi(w, &worker, &["run".into(), "--config".into(), cfg.into()]);
    }
    let (a, b) = (read(1), read(2));
    assert_eq!(
        a["candidates"], b["candidates"],
        "same candidates on 1 and 2 ranks"
    );
    assert_eq!(
        a["candidates"].as_array().unwrap().len(),
        3,
        "30% of 10 equal blocks"
    );
    assert_eq!(a["items"], 48);
    let scores = |v: &serde_json::Value| -> Vec<f64> {
        v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["score"].as_f64().unwrap())
            .collect()
    };
    let (sa, sb) = (scores(&a), scores(&b));
    let mut order_a: Vec<usize> = (0..10).collect();
    order_a.sort_by(|&i, &j| sa[i].total_cmp(&sa[j]));
    let mut order_b: Vec<usize> = (0..10).collect();
    order_b.sort_by(|&i, &j| sb[i].total_cmp(&sb[j]));
    assert_eq!(order_a, order_b, "the same ranking");
    for (x, y) in sa.iter().zip(&sb) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1e-6),
            "score {x} vs {y}"
        );
    }
    // The trained teacher's blocks matter: skipping any of them costs something.
    assert!(sa.iter().all(|&s| s > 0.0), "{sa:?}");
    assert!(tmp.path().join("runs/imp-w1/importance.png").is_file());
}

#[test]
fn every_stage_runs_on_2_ranks_and_the_exported_student_samples_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let cfg = tmp.path().join("pipeline.toml");
    let write = |stages: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[experiment]\nname = \"pipe\"\nseed = 1\noutput_dir = {out:?}\nstages = [{stages}]\n\
                 [cluster]\nworld_size = 2\n[model]\npreset = \"tiny\"\nweights = {teacher:?}\n\
                 [data]\npath = {data:?}\nnum_samples = 64\n\
                 [importance]\ncalibration_samples = 16\ntimesteps_per_sample = 1\nbatch_size = 16\n\
                 [pruning]\nsteps = 3\nbatch_size = 8\n\
                 [distill]\nsteps = 4\nbatch_size = 4\ngenerator_every = 2\n\
                 [eval]\nnum_samples = 8\nteacher_steps = 4\nbatch_size = 8\nmin_timed_seconds = 0.0\n",
                out = tmp.path().join("runs"),
                teacher = shipped_teacher(),
                data = data_dir,
            ),
        )
        .unwrap();
    };
    let all = "\"importance\", \"pruning\", \"distill\", \"export\", \"eval\"";
    write(all);
    let c = cfg.to_str().unwrap();
    // A stage whose input is missing names the stage that writes it.
    let res = fastlightgen(&["workers", c, "--stage", "pruning"]);
    assert!(!res.status.success());
    assert!(
        text(&res.stderr).contains("importance.json")
            && text(&res.stderr).contains("importance stage"),
        "{}",
        text(&res.stderr)
    );
    let res = fastlightgen(&["workers", c]);
    assert_ok(&res);
    let run = tmp.path().join("runs/pipe");
    for f in [
        "importance.json",
        "importance.png",
        "pruning/model.safetensors",
        "distill/generator.safetensors",
        "export/student.safetensors",
        "export/student.json",
        "eval.json",
        "samples/teacher/videos.npy",
        "samples/teacher-few-step/grid.png",
        "samples/student/labels.npy",
    ] {
        assert!(run.join(f).is_file(), "{f} written");
    }
    let info: serde_json::Value = json_file(&run.join("export/student.json"));
    let removed: Vec<u64> = info["removed_blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(removed.len(), 3, "30% of 10 equal blocks removed");
    assert!((info["block_param_share"].as_f64().unwrap() - 0.7).abs() < 1e-9);
    // The student file holds no removed block, and samples with its recorded sampler alone.
    let student = run.join("export/student.safetensors");
    let keys: Vec<String> = tch::Tensor::read_safetensors(&student)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for b in &removed {
        assert!(
            !keys.iter().any(|k| k.starts_with(&format!("blocks.{b}."))),
            "block {b} gone"
        );
    }
    let out = tmp.path().join("student-samples");
    let res = fastlightgen(&[
        "sample",
        "--model",
        student.to_str().unwrap(),
        "--num",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ok(&res);
    let s: serde_json::Value = json_file(&out.join("sample.json"));
    assert_eq!(s["steps"], 4, "the recorded 4-step sampler");
    assert_eq!(s["cfg"], 1.0, "no CFG");
    assert_eq!(s["nfe"], 4);
    // eval.json: three rows, the student at 4 NFE, speedups present.
    let e: serde_json::Value = json_file(&run.join("eval.json"));
    let rows = e["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["teacher", "teacher-few-step", "student"]);
    assert_eq!(rows[2]["nfe"], 4);
    assert_eq!(rows[0]["nfe"], 8);
    let theory = e["speedup_theoretical"].as_f64().unwrap();
    assert!((theory - 8.0 / (4.0 * 0.7)).abs() < 1e-9, "{theory}");
    assert!(e["speedup_measured"].as_f64().unwrap() > 0.0);
    // Metrics of both training stages, with both passes' flow losses for Stage II.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"flow_pruned\"") && metrics.contains("\"flow_full\""));
    assert!(metrics.contains("\"generator_loss\"") && metrics.contains("\"fake_loss\""));
    // Any stage reruns alone from the files of the earlier ones.
    let before = std::fs::read(run.join("export/student.safetensors")).unwrap();
    assert_ok(&fastlightgen(&["workers", c, "--stage", "export"]));
    assert_eq!(
        before,
        std::fs::read(run.join("export/student.safetensors")).unwrap()
    );
}

/// Unit prefetch (the gather thread) and kept block graphs (no recompute) change how a step
/// is computed, not what: on 2 real ranks, Stage II and III with both give the models the
/// defaults give. Every step line also carries its throughput.
#[test]
fn prefetch_and_kept_block_graphs_train_the_same_models_on_2_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let run = |name: &str, cluster_extra: &str| {
        let cfg = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[experiment]\nname = \"{name}\"\nseed = 3\noutput_dir = {out:?}\n\
                 stages = [\"importance\", \"pruning\", \"distill\"]\n\
                 [cluster]\nworld_size = 2\n{cluster_extra}\n[model]\npreset = \"tiny\"\nweights = {teacher:?}\n\
                 [data]\npath = {data:?}\nnum_samples = 64\n\
                 [importance]\ncalibration_samples = 16\ntimesteps_per_sample = 1\nbatch_size = 16\n\
                 [pruning]\nsteps = 3\nbatch_size = 8\n\
                 [distill]\nsteps = 4\nbatch_size = 4\ngenerator_every = 2\n",
                out = tmp.path().join("runs"),
                teacher = shipped_teacher(),
                data = data_dir,
            ),
        )
        .unwrap();
        assert_ok(&fastlightgen(&["workers", cfg.to_str().unwrap()]));
        tmp.path().join("runs").join(name)
    };
    let base = run("defaults", "");
    let other = run(
        "prefetch",
        "prefetch = \"on\"\nactivation_checkpoint = \"none\"",
    );
    for f in ["pruning/model.safetensors", "distill/generator.safetensors"] {
        let d = max_relative_difference(&base.join(f), &other.join(f));
        assert!(d <= 1e-5, "{f}: max relative difference {d}");
    }
    let metrics = std::fs::read_to_string(other.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("step").is_some())
        .collect();
    assert_eq!(steps.len(), 3 + 4, "one line per Stage II and III step");
    for v in &steps {
        for key in ["samples_per_s", "tflops", "peak_memory_gib"] {
            let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"));
            assert!(x > 0.0 && x.is_finite(), "{key} = {x} in {v}");
        }
    }
}

#[test]
fn stage_iii_lowers_its_generator_loss_on_a_short_run() {
    // 60 steps from the teacher with a generator update at every step: the DMD2 loss (how far
    // the fake score, i.e. the generator's distribution, is from the well-guided real score)
    // falls. Measured on this config: mean 2.01 over the first 20 steps, 1.43 over the last 20.
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let cfg = stage_probe_config(tmp.path(), 1, &data_dir);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[distill]\nsteps = 6", "[distill]\nsteps = 60");
    std::fs::write(&cfg, text).unwrap();
    let out = tmp.path().join("long");
    assert_ok(&probe(1, &cfg, &out, &["distill"]));
    let l: Vec<serde_json::Value> = json_file(&out.join("losses.json"));
    let g: Vec<f64> = l
        .iter()
        .map(|x| x["generator_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(g.len(), 60);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&g[..20]), mean(&g[40..]));
    assert!(last < 0.9 * first, "generator loss {first:.3} -> {last:.3}");
}

// ------------------------------------------------------------------------------------------
// The coordinator: `fastlightgen run` with real mpirun ranks, checkpoints, faults, control.

/// A pipeline config for `fastlightgen run`: Stage II and III on the shipped teacher, short.
fn run_config(
    dir: &Path,
    name: &str,
    world: u32,
    pruning_steps: u64,
    interval: u64,
    data: &Path,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[experiment]\nname = \"{name}\"\nseed = 3\noutput_dir = {out:?}\nstages = [\"importance\", \"pruning\", \"distill\", \"export\"]\n\
             [cluster]\nworld_size = {world}\nheartbeat_interval_s = 0.5\nheartbeat_timeout_s = 4.0\nmax_restarts = 3\n\
             [model]\npreset = \"tiny\"\nweights = {teacher:?}\n\
             [data]\npath = {data:?}\nnum_samples = 64\n\
             [importance]\ncalibration_samples = 16\ntimesteps_per_sample = 1\nbatch_size = 16\n\
             [pruning]\nsteps = {pruning_steps}\nbatch_size = 8\n\
             [distill]\nsteps = 8\nbatch_size = 4\ngenerator_every = 2\n\
             [checkpoint]\ninterval_steps = {interval}\nkeep_last = 2\n",
            out = dir.join("runs"),
            teacher = shipped_teacher(),
        ),
    )
    .unwrap();
    path
}

fn run_with_faults(cfg: &Path, faults: &str) -> Output {
    let mut cmd = Command::new(bin_dir().join("fastlightgen"));
    cmd.arg("run").arg(cfg);
    if !faults.is_empty() {
        cmd.env("FLG_FAULT", faults);
    }
    cmd.output().unwrap()
}

fn file_sha(p: &Path) -> String {
    flg_core::checkpoint::file_sha256(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn events(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn of_kind<'a>(ev: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    ev.iter().filter(|e| e["kind"] == kind).collect()
}

#[test]
fn a_run_killed_mid_step_and_mid_checkpoint_and_hung_finishes_with_the_same_weights_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let outputs = [
        "pruning/model.safetensors",
        "distill/generator.safetensors",
        "export/student.safetensors",
    ];

    let reference = run_config(tmp.path(), "reference", 2, 16, 4, &data_dir);
    let res = run_with_faults(&reference, "");
    assert_ok(&res);
    let ref_run = tmp.path().join("runs/reference");
    let want: Vec<String> = outputs.iter().map(|f| file_sha(&ref_run.join(f))).collect();

    // Launch 0: rank 1 SIGKILLs itself at a random Stage II step (after the step-4
    // checkpoint). Launch 1 resumes from step 4; rank 0 dies halfway through writing the
    // step-12 checkpoint, which must never be resumed from. Launch 2 resumes again; rank 1
    // stops (SIGSTOP) in Stage III and must be found by its missing heartbeats. Launch 3
    // finishes.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let kill_step = 5 + nanos % 7; // 5..=11
    println!("killing rank 1 at pruning step {kill_step}");
    let faulty = run_config(tmp.path(), "faulty", 2, 16, 4, &data_dir);
    let faults = format!(
        "kill:1:pruning:{kill_step}:0,kill-in-checkpoint:0:pruning:12:1,stop:1:distill:5:2"
    );
    let res = run_with_faults(&faulty, &faults);
    assert_ok(&res);
    let run = tmp.path().join("runs/faulty");
    let got: Vec<String> = outputs.iter().map(|f| file_sha(&run.join(f))).collect();
    assert_eq!(
        got, want,
        "resumed weights differ from the uninterrupted run's"
    );

    let ev = events(&run);
    assert_eq!(of_kind(&ev, "restarting").len(), 3, "{}", text(&res.stderr));
    let gens = of_kind(&ev, "generation_started");
    assert_eq!(gens.len(), 4);
    let resumed: Vec<(String, u64)> = gens[1..]
        .iter()
        .map(|g| {
            (
                g["resume_stage"].as_str().unwrap().to_string(),
                g["resume_step"].as_u64().unwrap(),
            )
        })
        .collect();
    // Launch 1 resumes from the newest checkpoint committed before the kill (the kill comes
    // at the boundary of `kill_step`, before that boundary's own checkpoint is asked for);
    // launch 2 from step 8 (step 12 was cut short); launch 3 from distill step 4.
    let first_loss = ev.iter().position(|e| e["kind"] == "rank_lost").unwrap();
    let before_kill = ev[..first_loss]
        .iter()
        .filter(|e| e["kind"] == "checkpoint_committed")
        .map(|e| e["step"].as_u64().unwrap())
        .next_back()
        .expect("a checkpoint before the kill");
    assert!(
        (4..kill_step).contains(&before_kill) && before_kill % 4 == 0,
        "resumed from {before_kill}, killed at {kill_step}"
    );
    assert_eq!(
        resumed,
        vec![
            ("pruning".to_string(), before_kill),
            ("pruning".to_string(), 8),
            ("distill".to_string(), 4)
        ]
    );
    // The hang is noticed by heartbeat timeout (4 s), not by an exit.
    let lost = of_kind(&ev, "rank_lost");
    let hang = lost[2]["reason"].as_str().unwrap();
    assert!(hang.contains("no heartbeat"), "{hang}");
    let silent: f64 = hang
        .split("for ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((4.0..5.5).contains(&silent), "{hang}");
    assert!(of_kind(&ev, "finished").len() == 1);
    // Nothing uncommitted is left, and only the last two committed checkpoints are kept.
    let ck: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != "latest")
        .collect();
    assert_eq!(ck.len(), 2, "{ck:?}");
    assert!(ck.iter().all(|n| n.starts_with("step-")), "{ck:?}");
}

/// `fastlightgen <args>` with the control target.
fn control(args: &[&str]) -> Output {
    fastlightgen(args)
}

fn status_json(run: &Path) -> serde_json::Value {
    let res = control(&["status", "--coordinator", run.to_str().unwrap(), "--json"]);
    assert_ok(&res);
    serde_json::from_slice(&res.stdout).unwrap()
}

/// A background `fastlightgen run` that is killed if the test fails halfway.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn run_in_background(cfg: &Path, log: &Path) -> Background {
    let log = std::fs::File::create(log).unwrap();
    Background(
        Command::new(bin_dir().join("fastlightgen"))
            .arg("run")
            .arg(cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn wait_for(what: &str, secs: f64, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed().as_secs_f64() < secs,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn control_calls_pause_checkpoint_resume_and_stop_and_a_corrupt_checkpoint_is_passed_over() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let cfg = run_config(tmp.path(), "ctl", 2, 400, 0, &data_dir);
    let run = tmp.path().join("runs/ctl");
    let mut child = run_in_background(&cfg, &tmp.path().join("run.log"));
    let r = run.to_str().unwrap();
    wait_for("the coordinator", 60.0, || {
        run.join("coordinator.json").is_file()
    });
    wait_for("Stage II steps", 120.0, || {
        let s = status_json(&run);
        s["stage"] == "pruning" && s["step"].as_u64().unwrap() >= 3
    });
    let s = status_json(&run);
    assert_eq!(
        (s["world_size"].as_u64(), s["ranks_alive"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(s["total_steps"], 400);
    assert!(s["losses"]["flow_full"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["samples_per_second"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["run_id"], events(&run)[0]["run_id"]);

    // Without the token (explicitly wrong, then none at all: a URL finds no token file).
    let url: serde_json::Value = json_file(&run.join("coordinator.json"));
    let url = url["url"].as_str().unwrap();
    let res = control(&["pause", "--coordinator", url]);
    assert!(!res.status.success());
    assert!(
        text(&res.stderr).contains("Unauthenticated"),
        "{}",
        text(&res.stderr)
    );
    let res = control(&["stop", "--coordinator", r, "--token", "not-the-token"]);
    assert!(
        text(&res.stderr).contains("wrong control token"),
        "{}",
        text(&res.stderr)
    );
    assert_eq!(status_json(&run)["state"], "running");

    // Pause: steps stop within one step.
    let before = status_json(&run)["step"].as_u64().unwrap();
    assert_ok(&control(&["pause", "--coordinator", r, "--reason", "test"]));
    wait_for("the pause", 30.0, || status_json(&run)["state"] == "paused");
    let paused_at = status_json(&run)["step"].as_u64().unwrap();
    assert!(
        paused_at <= before + 2,
        "asked at step {before}, paused at {paused_at}"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(status_json(&run)["step"].as_u64().unwrap(), paused_at);
    // A checkpoint asked for while paused is committed at the paused step; still paused.
    assert_ok(&control(&["checkpoint", "--coordinator", r]));
    wait_for("the checkpoint", 30.0, || {
        status_json(&run)["last_committed_step"].as_u64() == Some(paused_at)
    });
    assert_eq!(status_json(&run)["step"].as_u64().unwrap(), paused_at);
    assert!(run
        .join(format!("checkpoints/step-{paused_at}/manifest.json"))
        .is_file());
    // Resume: steps go on.
    assert_ok(&control(&["resume", "--coordinator", r]));
    wait_for("steps after resume", 60.0, || {
        status_json(&run)["step"].as_u64().unwrap() > paused_at + 2
    });
    // Stop: a final checkpoint, a clean exit.
    assert_ok(&control(&[
        "stop",
        "--coordinator",
        r,
        "--reason",
        "test over",
    ]));
    let status = child.0.wait().unwrap();
    let out = std::fs::read_to_string(tmp.path().join("run.log")).unwrap();
    assert!(status.success(), "{out}");
    let ev = events(&run);
    let stopped = of_kind(&ev, "stopped");
    assert_eq!(stopped.len(), 1, "{out}");
    let stop_step = stopped[0]["step"].as_u64().unwrap();
    let latest = std::fs::read_link(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest, PathBuf::from(format!("step-{stop_step}")));
    // The same calls on an ended run are refused.
    assert!(!control(&["pause", "--coordinator", url]).status.success());

    // Corrupt rank 1's shard of the newest checkpoint: the next launch reports it and resumes
    // from the one before (the paused step), on ONE rank this time (re-sharding 2 -> 1).
    let shard = run.join(format!(
        "checkpoints/step-{stop_step}/rank-00001.safetensors"
    ));
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let one = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("world_size = 2", "world_size = 1");
    std::fs::write(&cfg, one).unwrap();
    // Stop again soon after it resumes (the rest of the 400 steps is not the point).
    let mut child = run_in_background(&cfg, &tmp.path().join("run2.log"));
    wait_for("the resumed run", 120.0, || {
        run.join("coordinator.json").is_file()
            && status_json(&run)["step"].as_u64().unwrap_or(0) >= paused_at + 3
    });
    assert_ok(&control(&["stop", "--coordinator", r]));
    assert!(child.0.wait().unwrap().success());
    let ev = events(&run);
    let rejected = of_kind(&ev, "checkpoint_rejected");
    assert_eq!(rejected.len(), 1);
    let why = rejected[0]["reason"].as_str().unwrap();
    assert!(
        why.contains("rank-00001.safetensors") && why.contains("corrupt"),
        "{why}"
    );
    let gens = of_kind(&ev, "generation_started");
    let last = gens.last().unwrap();
    assert_eq!(last["resume_step"].as_u64(), Some(paused_at), "{last}");
    // Re-sharded correctly: the first steps after resuming on 1 rank repeat what 2 ranks
    // computed from the same state (same weights, optimizer state, data position).
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["stage"] == "pruning" && l.get("step").is_some())
        .collect();
    for step in paused_at + 1..=paused_at + 3 {
        let at: Vec<f64> = lines
            .iter()
            .filter(|l| l["step"].as_u64() == Some(step))
            .map(|l| l["loss"].as_f64().unwrap())
            .collect();
        assert!(at.len() >= 2, "step {step}: {at:?}");
        let (w2, w1) = (at[0], at[at.len() - 1]);
        assert!(
            ((w1 - w2) / w2).abs() < 1e-3,
            "step {step}: loss {w2} on 2 ranks, {w1} resumed on 1"
        );
    }

    // A config with another run-defining setting is refused, naming the setting.
    let other = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[pruning]\n", "[pruning]\nalpha = 0.7\n");
    std::fs::write(&cfg, other).unwrap();
    let res = fastlightgen(&["run", cfg.to_str().unwrap()]);
    assert!(!res.status.success());
    let err = text(&res.stderr);
    assert!(
        err.contains("pruning.alpha: was 1.0, this config has 0.7"),
        "{err}"
    );
}

#[test]
fn fastlightgen_run_writes_a_report_whose_files_exist_and_whose_numbers_are_eval_json() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let cfg = run_config(tmp.path(), "report", 2, 6, 3, &data_dir);
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"export\"]", "\"export\", \"eval\"]")
        + "[eval]\nnum_samples = 8\nteacher_steps = 4\nbatch_size = 8\nmin_timed_seconds = 0.0\n";
    std::fs::write(&cfg, text_cfg).unwrap();
    let res = fastlightgen(&["run", cfg.to_str().unwrap()]);
    assert_ok(&res);
    let run = tmp.path().join("runs/report");
    let out = text(&res.stdout);
    assert!(
        out.contains(&format!("report: {}", run.join("report.md").display())),
        "{out}"
    );

    let ev: serde_json::Value = json_file(&run.join("eval.json"));
    let row = |name: &str| {
        ev["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    let (teacher, student) = (row("teacher"), row("student"));
    let avg = |r: &serde_json::Value| r["eval"]["average"].as_f64().unwrap();
    let share = student["params"].as_f64().unwrap() / teacher["params"].as_f64().unwrap();
    let speedup = ev["speedup_measured"].as_f64().unwrap();
    // The three numbers printed at the end.
    assert!(
        out.contains(&format!(
            "student {:.3}, teacher 50-step CFG {:.3}",
            avg(&student),
            avg(&teacher)
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "keeps {:.1}% of the teacher's parameters",
            share * 100.0
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{speedup:.1}x faster sampling")),
        "{out}"
    );

    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    // The throughput of both training stages, from their step lines.
    let table = md
        .split("## Throughput")
        .nth(1)
        .expect("a throughput section");
    for stage in ["| pruning |", "| distill |"] {
        assert!(table.contains(stage), "throughput row {stage}: {table}");
    }
    // Every image and file the report links to is there and is what its name says.
    let links: Vec<&str> = md
        .split("](")
        .skip(1)
        .map(|s| s.split(')').next().unwrap())
        .collect();
    for want in [
        "report/pruning-losses.png",
        "report/distill-losses.png",
        "importance.png",
        "report/samples.gif",
        "report/samples.png",
    ] {
        assert!(
            links.contains(&want),
            "report.md does not show {want}: {links:?}"
        );
    }
    for l in &links {
        let bytes = std::fs::read(run.join(l)).unwrap_or_else(|e| panic!("{l}: {e}"));
        if l.ends_with(".png") {
            assert_eq!(&bytes[1..4], b"PNG", "{l}");
        } else if l.ends_with(".gif") {
            assert_eq!(&bytes[..3], b"GIF", "{l}");
        }
    }
    // The quality table and the speedups are eval.json's numbers.
    for (label, r) in [
        ("| teacher |", &teacher),
        ("| **FastLightGen student** |", &student),
    ] {
        let line = md
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row"));
        assert!(line.contains(&format!("**{:.3}**", avg(r))), "{line}");
        assert!(
            line.contains(&format!("| {:.2} |", r["seconds"].as_f64().unwrap())),
            "{line}"
        );
        let scores = &r["eval"]["scores"];
        assert!(
            line.contains(&format!(
                "| {:.3} |",
                scores["prompt_following"].as_f64().unwrap()
            )),
            "{line}"
        );
    }
    assert!(md.contains(&format!("**{speedup:.1}x measured**")), "{md}");
    assert!(md.contains(&format!(
        "{:.2}x theoretical",
        ev["speedup_theoretical"].as_f64().unwrap()
    )));
    // Every stage's duration, from the run's own events.
    let ev_log = events(&run);
    for stage in ["importance", "pruning", "distill", "export", "eval"] {
        let done = of_kind(&ev_log, "stage_done");
        let secs = done.iter().rev().find(|e| e["stage"] == stage).unwrap()["seconds"]
            .as_f64()
            .unwrap();
        assert!(
            md.contains(&format!("| {stage} | {secs:.0} |")),
            "{stage}: {md}"
        );
    }
}
