//! The control API against a live run: pause, checkpoint, resume, stop, a corrupt checkpoint.

use crate::util::*;

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
