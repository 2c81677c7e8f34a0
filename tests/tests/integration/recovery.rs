//! Recovery beyond dead ranks (issue 16): a finished stage's lost output is made again, a
//! stalled launcher is not mistaken for silent ranks, SIGTERM checkpoints and stops, and a
//! second coordinator of the same run directory is refused.

use crate::util::*;
use std::time::Duration;

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling the `fastlightgen run` child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// events.jsonl so far (empty before the run wrote it; a line being written is skipped).
fn events_now(run: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn kinds(run: &std::path::Path) -> Vec<String> {
    events_now(run)
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Two ranks started by hand (`mpirun flg-worker run`) against the coordinator at `url`,
/// with `secret` in their environment, or none (then they read the run directory's).
fn hand_started_workers(cfg: &Path, url: &str, secret: Option<&str>) -> Output {
    let env = secret
        .map(|s| vec![("FLG_LAUNCH_SECRET".to_string(), s.to_string())])
        .unwrap_or_default();
    let mut cmd = MpiLaunch {
        env,
        ..MpiLaunch::single_node(2)
    }
    .command(
        &bin_dir().join("flg-worker"),
        &[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--coordinator",
            url,
        ]
        .map(std::ffi::OsString::from),
    );
    if secret.is_none() {
        cmd.env_remove("FLG_LAUNCH_SECRET");
    }
    cmd.output().unwrap()
}

#[test]
fn a_lost_stage_output_is_made_again_from_its_checkpoint_and_the_run_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let cfg = run_config(tmp.path(), "lost", 2, 8, 4, &data_dir);
    // Keep every checkpoint, so Stage II's are still there when its output goes.
    let toml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("keep_last = 2", "keep_last = 10");
    std::fs::write(&cfg, toml).unwrap();
    assert_ok(&run_with_faults(&cfg, ""));
    let run = tmp.path().join("runs/lost");
    let model = run.join("pruning/model.safetensors");
    let want = file_sha(&model);
    let generator = file_sha(&run.join("distill/generator.safetensors"));

    // Stage II's output is cut in half after its stage_done: the next launch runs Stage II
    // again from its last checkpoint instead of failing on the header.
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let res = run_with_faults(&cfg, "");
    assert_ok(&res);
    let ev = events(&run);
    let lost = of_kind(&ev, "output_lost");
    assert_eq!(lost.len(), 1, "{}", text(&res.stdout));
    assert_eq!(lost[0]["stage"], "pruning");
    let gens = of_kind(&ev, "generation_started");
    let last = gens.last().unwrap();
    assert_eq!(last["resume_stage"], "pruning", "{last}");
    // Stage II took 8 steps with a checkpoint every 4: the last one is at step 4.
    assert_eq!(last["resume_step"], 4, "{last}");
    assert_eq!(file_sha(&model), want, "Stage II made again, bit for bit");
    assert_eq!(
        file_sha(&run.join("distill/generator.safetensors")),
        generator,
        "a later stage's output is left as it was"
    );
    assert_eq!(of_kind(&ev, "finished").len(), 2);

    // A missing output of the last stage: the run is not "already finished".
    std::fs::remove_file(run.join("export/student.json")).unwrap();
    assert_ok(&run_with_faults(&cfg, ""));
    assert!(run.join("export/student.json").is_file());
    assert_eq!(of_kind(&events(&run), "output_lost").len(), 2);
}

#[test]
fn a_stopped_launcher_is_not_a_lost_launch_and_sigterm_checkpoints_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    // Long enough to be stopped mid-stage; heartbeats time out after 4 s.
    let cfg = run_config(tmp.path(), "stall", 2, 400, 1000, &data_dir);
    let run = tmp.path().join("runs/stall");
    let log = tmp.path().join("stall.log");
    let mut bg = run_in_background(&cfg, &log);
    let pid = bg.0.id();
    let step_of = |run: &std::path::Path| -> u64 { status_json(run)["step"].as_u64().unwrap_or(0) };
    wait_for("Stage II to start", 120.0, || {
        events_now(&run)
            .iter()
            .any(|e| e["kind"] == "stage_started" && e["stage"] == "pruning")
    });
    wait_for("a few Stage II steps", 60.0, || step_of(&run) >= 3);

    // A second coordinator of the same run directory is refused, naming the first.
    let second = fastlightgen(&["run", cfg.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1));
    let err = text(&second.stderr);
    assert!(
        err.contains("in use by another coordinator") && err.contains(&format!("pid {pid}")),
        "{err}"
    );

    // Ranks started by someone else with a forged secret are refused at Register and exit;
    // the run goes on.
    let url = json_file::<serde_json::Value>(&run.join("coordinator.json"))["url"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = hand_started_workers(&cfg, &url, Some("forged"));
    assert!(!forged.status.success());
    let err = text(&forged.stderr) + &text(&forged.stdout);
    assert!(err.contains("wrong launch secret"), "{err}");

    // The launcher stops for 10 s (2.5 heartbeat timeouts), then goes on: no launch is lost.
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(10));
    signal(pid, libc::SIGCONT);
    let before = step_of(&run);
    wait_for("Stage II to go on after the stall", 60.0, || {
        step_of(&run) >= before + 5
    });
    let k = kinds(&run);
    assert!(
        !k.contains(&"rank_lost".to_string()) && !k.contains(&"restarting".to_string()),
        "{k:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // SIGTERM (a scheduler's preemption notice): a final checkpoint, then a clean stop.
    signal(pid, libc::SIGTERM);
    let status = bg.0.wait().unwrap();
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}\n{out}");
    let ev = events(&run);
    let stopped = of_kind(&ev, "stopped");
    assert_eq!(stopped.len(), 1, "{out}");
    let at = stopped[0]["step"].as_u64().unwrap();
    let committed: Vec<u64> = of_kind(&ev, "checkpoint_committed")
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        committed.last(),
        Some(&at),
        "the stop's own checkpoint: {committed:?}"
    );
    assert!(of_kind(&ev, "rank_lost").is_empty());
    // The next run resumes from there.
    let mut again = run_in_background(&cfg, &tmp.path().join("again.log"));
    wait_for("the rerun to register", 120.0, || {
        of_kind(&events_now(&run), "generation_started").len() >= 2
    });
    let gens = of_kind(&events(&run), "generation_started")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(gens[1]["resume_step"].as_u64(), Some(at));
    signal(again.0.id(), libc::SIGTERM);
    assert!(again.0.wait().unwrap().success());
}

#[test]
fn workers_started_by_hand_find_the_launch_secret_in_the_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let cfg = run_config(tmp.path(), "byhand", 2, 4, 4, &data_dir);
    let run = tmp.path().join("runs/byhand");
    let log = std::fs::File::create(tmp.path().join("coordinator.log")).unwrap();
    let coordinator = Background(
        Command::new(bin_dir().join("fastlightgen"))
            .arg("coordinator")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("the coordinator", 60.0, || {
        run.join("coordinator.json").is_file()
    });
    use std::os::unix::fs::PermissionsExt;
    let secret = run.join("launch-secret");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let url = json_file::<serde_json::Value>(&run.join("coordinator.json"))["url"]
        .as_str()
        .unwrap()
        .to_string();
    let res = hand_started_workers(&cfg, &url, None);
    assert_ok(&res);
    let mut coordinator = coordinator;
    assert!(coordinator.0.wait().unwrap().success());
    assert_eq!(of_kind(&events(&run), "finished").len(), 1);
}
