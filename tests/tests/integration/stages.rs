//! The FastLightGen stages through the library's training loop (the stage probe) and end to end
//! on 2 ranks.

use crate::util::*;

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
