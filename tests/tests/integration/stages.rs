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
    // Five ways of training the generator: on noised data (no backward simulation), the same
    // with DMD2's GAN term, the same with a fake score of every block, on its own Euler
    // rollout, and on its own re-noising rollout with the regression and data-forcing terms.
    let variants = [
        ("data", "backward_simulation = false\n"),
        ("fake-full", "backward_simulation = false\nfake_score = \"full\"\n"),
        (
            "gan",
            "backward_simulation = false\ngan = { weight = 1.0, classifier_optim = { lr = 1e-3, beta1 = 0.0 } }\n",
        ),
        ("rollout", "backward_simulation = true\n"),
        (
            "renoise",
            "backward_simulation = true\nsampler = \"renoise\"\nregression = { weight = 1.0, pairs = 6, teacher_steps = 3 }\ndata_forcing = 0.5\n",
        ),
    ];
    let out = |w: u32, v: &str| tmp.path().join(format!("distill-w{w}-{v}"));
    for (v, keys) in variants {
        for w in [1, 2] {
            let cfg = stage_probe_config(tmp.path(), w, &data_dir);
            let text = std::fs::read_to_string(&cfg)
                .unwrap()
                .replace("[distill]\n", &format!("[distill]\n{keys}"));
            std::fs::write(&cfg, text).unwrap();
            assert_ok(&probe(w, &cfg, &out(w, v), &["distill"]));
        }
    }
    // The step itself: both roles' gradients of the first step (a generator step, before
    // any update) agree. After it, AdamW's first updates are about lr * sign(g), so entries
    // whose gradient is ~0 differ by up to lr between any two summation orders; the losses
    // below show that the runs stay together.
    for v in ["data", "gan", "fake-full"] {
        for role in ["generator", "fake"] {
            let f = format!("{role}-grads.safetensors");
            let d = max_relative_difference(&out(1, v).join(&f), &out(2, v).join(&f));
            assert!(
                d <= 1e-4,
                "Stage III ({v}) {role} gradients: W=2 differs from W=1 by {d:e}"
            );
        }
    }
    // `fake_score = "full"` trains a fake score of every block: its gradients cover the
    // removed candidates too, the generator's the same blocks as without it.
    let size = |v: &str, f: &str| std::fs::metadata(out(1, v).join(f)).unwrap().len();
    assert!(size("fake-full", "fake-grads.safetensors") > size("data", "fake-grads.safetensors"));
    assert_eq!(
        size("fake-full", "generator-grads.safetensors"),
        size("data", "generator-grads.safetensors")
    );
    // The GAN term is in the generator's gradient: it differs from the one without it.
    let f = "generator-grads.safetensors";
    let d = max_relative_difference(&out(1, "data").join(f), &out(1, "gan").join(f));
    assert!(
        d > 1e-6,
        "the GAN term changed no generator gradient ({d:e})"
    );
    // With backward simulation the sample comes out of a 3-step rollout of the generator,
    // which amplifies the float rounding of batch 4 vs 2 + 2 (about 1e-6 relative per forward,
    // measured) to about 1e-4 in the sample: the generator's gradient still agrees tensor by
    // tensor, the fake score's (a flow-matching gradient of a trained model, where per-sample
    // terms largely cancel) as a whole. The re-noising rollout amplifies it further (measured:
    // generator 1.9e-4 tensor by tensor without the regression term, fake score 2.6e-4 as a
    // whole, against 7.4e-5 and 3.7e-5 for Euler); fresh noise drawn per rank instead of per
    // sample would differ by order 1.
    let f = |r: &str| format!("{r}-grads.safetensors");
    for (v, tol) in [("rollout", 1e-4), ("renoise", 1e-3)] {
        let d = max_relative_difference(
            &out(1, v).join(f("generator")),
            &out(2, v).join(f("generator")),
        );
        assert!(d <= tol, "{v}: generator gradients differ by {d:e}");
        let d = global_relative_difference(&out(1, v).join(f("fake")), &out(2, v).join(f("fake")));
        assert!(
            d <= tol,
            "{v}: fake-score gradients differ by {d:e} (global)"
        );
    }
    for (v, _) in variants {
        let a: Vec<serde_json::Value> = json_file(&out(1, v).join("losses.json"));
        let b: Vec<serde_json::Value> = json_file(&out(2, v).join("losses.json"));
        assert_eq!(a.len(), 6);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["k"], y["k"], "same sampler step drawn");
            let keys: &[&str] = match v {
                "renoise" => &[
                    "fake_loss",
                    "generator_loss",
                    "regression_loss",
                    "data_forcing_loss",
                ],
                "gan" => &[
                    "fake_loss",
                    "generator_loss",
                    "gan_generator_loss",
                    "gan_classifier_loss",
                ],
                _ => &["fake_loss", "generator_loss"],
            };
            for key in keys {
                let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
                assert!(
                    (p - q).abs() <= 1e-4 * p.abs().max(1e-9),
                    "{v} {key}: {q} vs {p}"
                );
            }
        }
    }
    // The regression pairs: made by the ranks together, the same on 1 and 2 ranks, kept in the
    // run directory; the ODE's states at the 4 sampler times (the first is the noise) lead from
    // the noise to the targets, the teacher's samples.
    let pairs = |w: u32| {
        tmp.path().join(format!(
            "distill-w{w}-renoise/distill/ode-pairs.safetensors"
        ))
    };
    let d = max_relative_difference(&pairs(1), &pairs(2));
    assert!(d <= 1e-4, "pairs made on 2 ranks differ by {d:e}");
    let named: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(pairs(1)).unwrap();
    let get = |k: &str| &named.iter().find(|(n, _)| n == k).unwrap().1;
    let states = get("states");
    assert_eq!(states.size()[..2], [6, 4]);
    let target = get("target");
    let dist = |k: i64| target.dist(&states.select(1, k)).double_value(&[]);
    assert!(dist(0) > 1.0, "the targets are not the noise");
    assert!(
        dist(0) > dist(1) && dist(1) > dist(2) && dist(2) > dist(3),
        "the states approach the targets: {} {} {} {}",
        dist(0),
        dist(1),
        dist(2),
        dist(3)
    );
    let a: Vec<serde_json::Value> = json_file(&out(1, "rollout").join("losses.json"));
    assert!(
        a.iter().any(|x| x["k"].as_u64().unwrap() > 0),
        "some step trains a later sampler step (a rollout ran)"
    );
    assert_eq!(
        a.iter().filter(|x| x["generator_loss"].is_f64()).count(),
        6,
        "the generator trains at every step (generator_every = 1)"
    );
    // The generator lost the candidate blocks.
    let g: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(out(1, "rollout").join("generator.safetensors")).unwrap();
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
                 [pruning]\nsteps = 3\nbatch_size = 8\ntarget = \"frozen\"\n\
                 [distill]\nsteps = 4\nbatch_size = 4\ngenerator_every = 2\nsampler = \"renoise\"\n\
                 monitor_every = 2\nmonitor_videos = 8\n\
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
    // The log says which weights Stage III starts from: Stage II's.
    let log = text(&res.stderr) + &text(&res.stdout);
    let starts = log
        .lines()
        .find(|l| l.contains("Stage III starts from"))
        .unwrap_or_else(|| panic!("no start line in:\n{log}"));
    assert!(starts.contains("pruning/model.safetensors"), "{starts}");
    assert!(!log.contains("ignores the Stage II model"), "{log}");
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
    assert_eq!(s["sampler"], "renoise", "the recorded re-noising sampler");
    assert_eq!(info["sampler"]["kind"], "renoise");
    // The step rule matters: the same model, noise and times with Euler steps give other videos.
    let euler = tmp.path().join("student-euler");
    assert_ok(&fastlightgen(&[
        "sample",
        "--model",
        student.to_str().unwrap(),
        "--num",
        "4",
        "--sampler",
        "euler",
        "--out",
        euler.to_str().unwrap(),
    ]));
    assert_eq!(
        json_file::<serde_json::Value>(&euler.join("sample.json"))["sampler"],
        "euler"
    );
    assert_ne!(
        std::fs::read(out.join("videos.npy")).unwrap(),
        std::fs::read(euler.join("videos.npy")).unwrap()
    );
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
    // The collapse monitor: at Stage III's first step and every 2nd, the generator's diversity
    // over noise and a small eval; drawn in the report.
    let monitored: Vec<(u64, serde_json::Value)> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["stage"] == "distill" && v.get("monitor").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["monitor"].clone()))
        .collect();
    assert_eq!(monitored.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2, 4]);
    for (_, m) in &monitored {
        assert!(m["diversity"].as_f64().unwrap() > 0.0, "{m}");
        let avg = m["average"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&avg), "{m}");
        assert!(m["directions_per_class"].as_f64().unwrap() <= 8.0);
    }
    assert_ok(&fastlightgen(&["report", run.to_str().unwrap()]));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("## Stage III: does the generator collapse?"));
    assert!(run.join("report/distill-monitor.png").is_file());
    // Any stage reruns alone from the files of the earlier ones.
    let before = std::fs::read(run.join("export/student.safetensors")).unwrap();
    assert_ok(&fastlightgen(&["workers", c, "--stage", "export"]));
    assert_eq!(
        before,
        std::fs::read(run.join("export/student.safetensors")).unwrap()
    );
    // Rerunning Stage III from a config whose stage list lost "pruning" starts from the teacher
    // (the "no Stage II" baseline): said out loud, since the Stage II model sits right there.
    write("\"importance\", \"distill\", \"export\"");
    let res = fastlightgen(&["workers", c, "--stage", "distill"]);
    assert_ok(&res);
    let log = text(&res.stderr) + &text(&res.stdout);
    assert!(
        log.contains("ignores the Stage II model") && log.contains("pruning/model.safetensors"),
        "{log}"
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
