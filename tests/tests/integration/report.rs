//! `fastlightgen run` writes a report whose numbers are eval.json's.

use crate::util::*;

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
    // Stage I's paragraph gives the removed set's joint cost from importance.json.
    let imp: serde_json::Value = json_file(&run.join("importance.json"));
    let joint = imp["set_errors"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_f64()
        .unwrap()
        - imp["baseline_error"].as_f64().unwrap();
    assert!(
        md.contains(&format!("raise the x0 error by {joint:.4}")),
        "{md}"
    );
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
    // `report --json`: the same numbers for scripts, and it writes nothing.
    let before = std::fs::metadata(run.join("report.md"))
        .unwrap()
        .modified()
        .unwrap();
    let res = fastlightgen(&["report", run.to_str().unwrap(), "--json"]);
    assert_ok(&res);
    let summary: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    let rows = summary["rows"].as_array().unwrap();
    assert_eq!(rows.len(), ev["rows"].as_array().unwrap().len());
    for (s, r) in rows.iter().zip(ev["rows"].as_array().unwrap()) {
        assert_eq!(s["name"], r["name"]);
        assert_eq!(s["eval"], r["eval"]);
        let cells = s["score_cells"].as_str().unwrap();
        assert!(cells.contains(&format!("**{:.3}**", avg(r))), "{cells}");
        let label = format!("| {} |", s["label"].as_str().unwrap());
        assert!(
            md.lines()
                .any(|l| l.starts_with(&label) && l.contains(cells)),
            "report.md has no row {label} with the cells {cells}"
        );
    }
    assert_eq!(
        summary["headline"]["speedup_measured"],
        ev["speedup_measured"]
    );
    let done = of_kind(&ev_log, "stage_done");
    let eval_secs = done.iter().rev().find(|e| e["stage"] == "eval").unwrap()["seconds"].clone();
    assert_eq!(summary["seconds"]["eval"], eval_secs);
    let held = &summary["held_out"];
    assert!(
        held["gap_before"].as_f64().is_some() && held["gap_after"].as_f64().is_some(),
        "{summary}"
    );
    assert_eq!(
        std::fs::metadata(run.join("report.md"))
            .unwrap()
            .modified()
            .unwrap(),
        before,
        "--json writes nothing"
    );
}

/// `make paper` resumes, but not from runs made with another version of their config: a run
/// directory counts as done only with its eval.json and the stamp of the config as it is now
/// (bench/paper-runs.sh), and a stale one is removed before the run is made again.
#[test]
fn make_paper_reruns_a_variant_whose_config_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, dir) = (tmp.path().join("v.toml"), tmp.path().join("runs/v"));
    std::fs::write(&cfg, "[distill]\nb1_range = [3.0, 4.0]\n").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("eval.json"), "{}").unwrap();
    let lib = repo().join("bench/paper-runs.sh");
    let sh = |script: &str| {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(". {} && {script}", lib.display()))
            .env("CFG", &cfg)
            .env("DIR", &dir)
            .output()
            .unwrap();
        (out.status.success(), text(&out.stdout))
    };
    // An eval.json without a stamp (a run from before the stamps): not done.
    assert!(!sh("run_done \"$CFG\" \"$DIR\"").0);
    assert!(sh("stamp_run \"$CFG\" \"$DIR\" && run_done \"$CFG\" \"$DIR\"").0);
    // Kept while the config is unchanged.
    assert!(sh("fresh_run_dir \"$CFG\" \"$DIR\"").0);
    assert!(dir.join("eval.json").exists());
    // A changed config makes the run stale, and its directory is removed.
    std::fs::write(&cfg, "[distill]\nb1_range = [2.0, 3.0]\n").unwrap();
    assert!(!sh("run_done \"$CFG\" \"$DIR\"").0);
    let (ok, out) = sh("fresh_run_dir \"$CFG\" \"$DIR\"");
    assert!(ok, "{out}");
    assert!(out.contains("running it again"), "{out}");
    assert!(!dir.exists());
}
