//! W ranks compute what one rank computes: data shares, sharded pretraining, Stage I,
//! prefetch and kept block graphs.

use crate::util::*;

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
    // Node places: both ranks share this machine, by MPI's shared-memory split and by
    // OpenMPI's variables (which come first).
    for (r, v) in [(0u64, &r0), (1, &r1)] {
        assert_eq!(v["split_place"], serde_json::json!([r, 2]), "{v}");
        assert_eq!(
            v["node_place"],
            serde_json::json!([r, 2, "OMPI_COMM_WORLD_LOCAL_RANK"]),
            "{v}"
        );
    }
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

#[test]
fn block_importance_is_the_same_on_1_and_2_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 96);
    let worker = bin_dir().join("flg-worker");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(format!("runs/{name}/importance.json")))
                .unwrap(),
        )
        .unwrap()
    };
    for selection in ["single", "greedy"] {
        for w in [1u32, 2] {
            let cfg = tmp.path().join(format!("imp-{selection}-{w}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[experiment]\nname = \"imp-{selection}-w{w}\"\nseed = 5\noutput_dir = {out:?}\nstages = [\"importance\"]\n\
                     [cluster]\nworld_size = {w}\n[model]\npreset = \"tiny\"\nweights = {teacher:?}\n\
                     [data]\npath = {data:?}\nnum_samples = 96\n\
                     [importance]\ncalibration_samples = 24\ntimesteps_per_sample = 2\nbatch_size = 16\nprune_ratio = 0.3\n\
                     selection = \"{selection}\"\n",
                    out = tmp.path().join("runs"),
                    teacher = shipped_teacher(),
                    data = data_dir,
                ),
            )
            .unwrap();
            run_mpi(w, &worker, &["run".into(), "--config".into(), cfg.into()]);
        }
    }
    let (a, b) = (read("imp-single-w1"), read("imp-single-w2"));
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
    assert!(tmp
        .path()
        .join("runs/imp-single-w1/importance.png")
        .is_file());

    // The chosen set's error as it grows: the first candidate alone is its single-block error.
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let first = a["candidates"][0].as_u64().unwrap() as usize;
    let single_sets = floats(&a["set_errors"]);
    assert_eq!(single_sets.len(), 3);
    let alone = a["blocks"][first]["error"].as_f64().unwrap();
    assert!(
        (single_sets[0] - alone).abs() <= 1e-9 * alone,
        "{single_sets:?} vs {alone}"
    );

    // Greedy: the same choice on 1 and 2 ranks; it starts from the same block, and its pair
    // can cost no more than the single ranking's pair (it measured that pair among others).
    let (g1, g2) = (read("imp-greedy-w1"), read("imp-greedy-w2"));
    assert_eq!(g1["selection"], "greedy");
    assert_eq!(a["selection"], "single");
    assert_eq!(
        g1["candidates"], g2["candidates"],
        "same greedy set on 1 and 2 ranks"
    );
    assert_eq!(g1["candidates"].as_array().unwrap().len(), 3);
    assert_eq!(g1["candidates"][0], a["candidates"][0]);
    let greedy_sets = floats(&g1["set_errors"]);
    assert_eq!(greedy_sets.len(), 3);
    assert!(
        greedy_sets[1] <= single_sets[1] * (1.0 + 1e-9),
        "{greedy_sets:?} vs {single_sets:?}"
    );
    for (x, y) in greedy_sets.iter().zip(floats(&g2["set_errors"])) {
        assert!((x - y).abs() <= 1e-4 * x, "set error {x} vs {y}");
    }
}

/// Unit prefetch (the gather thread) and kept block graphs (no recompute) change how a step
/// is computed, not what: on 2 real ranks, Stage II and III with both give the models the
/// defaults give, and so does gradient accumulation (`cluster.micro_batch_size`). Neither does the Stage III collapse monitor (it only reads the generator).
/// Every step line also carries its throughput.
#[test]
fn prefetch_and_kept_block_graphs_train_the_same_models_on_2_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let run = |name: &str, cluster_extra: &str, distill_extra: &str| {
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
                 [distill]\nsteps = 4\nbatch_size = 4\ngenerator_every = 2\n{distill_extra}\n",
                out = tmp.path().join("runs"),
                teacher = shipped_teacher(),
                data = data_dir,
            ),
        )
        .unwrap();
        assert_ok(&fastlightgen(&["workers", cfg.to_str().unwrap()]));
        tmp.path().join("runs").join(name)
    };
    let base = run("defaults", "", "");
    let other = run(
        "prefetch",
        "prefetch = \"on\"\nactivation_checkpoint = \"none\"",
        "monitor_every = 2\nmonitor_videos = 8",
    );
    // Gradient accumulation: each rank's share in micro-batches (Stage II 4 -> 2 x 2,
    // Stage III 2 -> 2 x 1) adds up to the same gradients, up to float rounding.
    let micro = run("micro", "micro_batch_size = 2", "");
    for f in ["pruning/model.safetensors", "distill/generator.safetensors"] {
        let d = max_relative_difference(&base.join(f), &other.join(f));
        assert!(d <= 1e-5, "{f}: max relative difference {d}");
        let d = max_relative_difference(&base.join(f), &micro.join(f));
        eprintln!("{f}: micro-batches vs whole shares: max relative difference {d:e}");
        assert!(d <= 1e-4, "{f}: micro-batches: max relative difference {d}");
    }
    // The runs are not the same run: the one with micro-batches did take them.
    assert_ne!(
        file_sha(&base.join("distill/generator.safetensors")),
        file_sha(&micro.join("distill/generator.safetensors")),
        "accumulation changes the float rounding, so equal files would mean it did not run"
    );
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
