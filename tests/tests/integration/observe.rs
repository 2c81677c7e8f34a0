//! Watching a run as a cluster user does: `run` logging to a file (plain progress lines, no
//! terminal codes, every worker line with its rank), `watch` attached mid-stage, the HTTP
//! status page and its JSON, the gRPC health service, the page in headless Chromium, the
//! TensorBoard event files read back by TensorBoard's own reader, and `--set` overrides.

use crate::util::*;
use std::io::{Read, Write};

/// `GET path` on `base` (http://host:port): the status code and the body.
fn http_get(base: &str, path: &str) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// The gRPC health status of `service` ("" for the server) at `url`.
fn health(url: &str, service: &str) -> Result<i32, tonic::Code> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let channel = tonic::transport::Channel::from_shared(url.to_string())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
            c.check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|e| e.code())
        })
}

/// The rate in a plain progress line such as `... pruning 40/150 (27%) 61.3 samples/s, ...`.
fn rate_in(line: &str) -> Option<f64> {
    let at = line.find(" samples/s")?;
    line[..at].rsplit(' ').next()?.parse().ok()
}

#[test]
fn a_run_is_watched_through_plain_logs_http_health_tensorboard_and_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = teacher_data(tmp.path(), 64);
    // The file says 400 Stage II steps and no eval stage; the command line changes both.
    let cfg = run_config(tmp.path(), "obs", 2, 400, 0, &data_dir);
    let run = tmp.path().join("runs/obs");
    let log_path = tmp.path().join("run.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Background(
        std::process::Command::new(bin_dir().join("fastlightgen"))
            .arg("run")
            .arg(&cfg)
            .args([
                "--set",
                "pruning.steps=120",
                "--set",
                r#"experiment.stages=["importance", "pruning", "distill", "export", "eval"]"#,
                "--set",
                "eval.num_samples=8",
                "--set",
                "eval.compare_teacher=false",
                "--set",
                "eval.min_timed_seconds=0",
                "--log-every",
                "1",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let info = || -> serde_json::Value {
        std::fs::read_to_string(run.join("coordinator.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    wait_for("the coordinator", 60.0, || info()["http_url"].is_string());
    let (grpc, web) = {
        let i = info();
        (
            i["url"].as_str().unwrap().to_string(),
            i["http_url"].as_str().unwrap().to_string(),
        )
    };
    assert!(
        web.starts_with("http://127.0.0.1:"),
        "loopback by default: {web}"
    );
    wait_for("Stage II steps", 120.0, || {
        let s = status_json(&run);
        s["stage"] == "pruning" && s["step"].as_u64().unwrap() >= 5
    });

    // GET /status: the gRPC Status as JSON, the --set step count in it.
    let (code, body) = http_get(&web, "/status");
    assert_eq!(code, 200, "{body}");
    let http: serde_json::Value = serde_json::from_str(&body).unwrap();
    let grpc_status = status_json(&run);
    for key in ["run_id", "experiment", "world_size", "total_steps"] {
        assert_eq!(
            http[key], grpc_status[key],
            "{key}: {http} vs {grpc_status}"
        );
    }
    assert_eq!(http["total_steps"], 120);
    assert_eq!(http["stage"], "pruning");
    // GET /: the page, with the stage, ranks and losses; nothing else is served.
    let (code, page) = http_get(&web, "/");
    assert_eq!(code, 200);
    for want in [
        "pruning",
        "Ranks",
        "last heartbeat",
        "flow_full",
        "http-equiv=\"refresh\"",
    ] {
        assert!(page.contains(want), "{want} missing from the page:\n{page}");
    }
    assert!(!page.contains(
        &std::fs::read_to_string(run.join("control-token"))
            .unwrap()
            .trim()
            .to_string()
    ));
    assert_eq!(http_get(&web, "/stop").0, 404);
    // gRPC health: the server and its services serve; an unknown service is not found.
    assert_eq!(health(&grpc, ""), Ok(1), "SERVING");
    assert_eq!(health(&grpc, "fastlightgen.v1.Control"), Ok(1));
    assert_eq!(health(&grpc, "nope"), Err(tonic::Code::NotFound));

    // `watch` attached mid-stage, writing to a file: plain lines whose rate is the one
    // `status` reports, not the steps before it counted as done at once.
    let watch_log = tmp.path().join("watch.log");
    let mut watch = Background(
        std::process::Command::new(bin_dir().join("fastlightgen"))
            .args(["watch", "--coordinator", run.to_str().unwrap()])
            .env("FLG_LOG_EVERY", "1")
            .stderr(std::fs::File::create(&watch_log).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    let status_rate = status_json(&run)["samples_per_second"].as_f64().unwrap();
    let _ = watch.0.kill();
    let _ = watch.0.wait();
    let watched = std::fs::read_to_string(&watch_log).unwrap();
    let rates: Vec<f64> = watched.lines().filter_map(rate_in).collect();
    assert!(rates.len() >= 2, "one line a second expected:\n{watched}");
    for r in &rates {
        assert!(
            *r > status_rate / 3.0 && *r < status_rate * 3.0,
            "watch said {r} samples/s, status {status_rate}:\n{watched}"
        );
    }
    assert!(!watched.contains('\x1b'), "{watched:?}");

    // The page in a real browser (Debian's Chromium, headless).
    let shot = tmp.path().join("status-page.png");
    let chromium = std::path::Path::new("/usr/bin/chromium");
    assert!(
        chromium.is_file(),
        "/usr/bin/chromium missing: `make test` installs it (package chromium)"
    );
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1000,860",
        ])
        .arg(format!(
            "--user-data-dir={}",
            tmp.path().join("chromium").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("{web}/"))
        .output()
        .unwrap();
    assert!(shot.is_file(), "no screenshot: {}", text(&out.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    let px = &buf[..frame.buffer_size()];
    let step = frame.color_type.samples();
    // The progress bar's blue (#3a6fd8) is drawn: the page rendered with its styles.
    let blue = px
        .chunks(step)
        .filter(|p| p[0] == 0x3a && p[1] == 0x6f && p[2] == 0xd8)
        .count();
    assert!(
        blue > 100,
        "the progress bar is not on the screenshot ({blue} pixels)"
    );
    if let Ok(keep) = std::env::var("FLG_SCREENSHOT_OUT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    let status = child.0.wait().unwrap();
    let out = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{out}");
    // The log file: plain lines while a stage runs, no terminal codes, ranks named.
    assert!(!out.contains('\x1b'), "terminal codes in a log file");
    let progress: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" pruning ") && l.contains("/120 ("))
        .collect();
    assert!(progress.len() >= 3, "plain progress lines expected:\n{out}");
    assert!(out.contains("pruning: done in"), "{out}");
    for rank in 0..2 {
        assert!(
            out.contains(&format!("[rank {rank}] "))
                && out.contains(&format!("local rank {rank} of 2")),
            "rank {rank}'s lines:\n{out}"
        );
    }
    // --set is recorded at the top of the run's config, and was obeyed.
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        resolved.starts_with("# --set pruning.steps=120\n"),
        "{resolved}"
    );
    assert!(run.join("eval.json").is_file());

    // TensorBoard reads every stage's scalars and the eval grid.
    let py = repo().join(".venv/bin/python");
    let tb = std::process::Command::new(&py)
        .arg(repo().join("tests/python/read_tensorboard.py"))
        .arg(run.join("tensorboard"))
        .output()
        .unwrap();
    assert!(tb.status.success(), "{}", text(&tb.stderr));
    let tb: serde_json::Value = serde_json::from_slice(&tb.stdout).unwrap();
    let steps = |tag: &str| -> Vec<u64> {
        tb["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| {
                panic!(
                    "no scalar {tag}: {:?}",
                    tb["scalars"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .collect::<Vec<_>>()
                )
            })
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect()
    };
    assert_eq!(steps("pruning/loss"), (1..=120).collect::<Vec<u64>>());
    for tag in [
        "pruning/grad_norm",
        "pruning/lr",
        "pruning/samples_per_s",
        "eval/student/average",
    ] {
        assert!(!steps(tag).is_empty(), "{tag}");
    }
    assert!(
        tb["scalars"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("distill/")),
        "{tb}"
    );
    let grid = &tb["images"]["eval/student/grid"][0];
    assert!(
        grid[1].as_u64().unwrap() > 0 && grid[2].as_u64().unwrap() > 0,
        "{tb}"
    );
}
