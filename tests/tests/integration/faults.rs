//! Ranks killed mid-step, mid-checkpoint and hung: the run finishes with the same weights.

use crate::util::*;

#[test]
fn a_run_killed_mid_step_and_mid_checkpoint_and_hung_finishes_with_the_same_weights_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    let outputs = [
        "pruning/model.safetensors",
        "distill/generator.safetensors",
        "export/student.safetensors",
    ];

    // Stage III with DMD2's GAN term: its classifier is a fourth role, checkpointed and resumed
    // with the others (launch 3 resumes Stage III mid-way).
    let with_gan = |cfg: std::path::PathBuf| {
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "[distill]\n",
            "[distill]\ngan = { weight = 1.0, classifier_optim = { lr = 1e-3 } }\n",
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let reference = with_gan(run_config(tmp.path(), "reference", 2, 16, 4, &data_dir));
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
    let faulty = with_gan(run_config(tmp.path(), "faulty", 2, 16, 4, &data_dir));
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

    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"gan_classifier_loss\"") && metrics.contains("\"gan_grad_ratio\""),
        "Stage III ran with the GAN term"
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
