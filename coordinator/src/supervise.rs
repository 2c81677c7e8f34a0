//! `fastlightgen run` and `fastlightgen coordinator`: start the coordinator (gRPC server over
//! the run's state), and for `run` also the workers under `mpirun`, restarting them from the
//! last committed checkpoint when a rank dies or goes silent, up to `cluster.max_restarts`.
//! Ctrl-C asks the ranks to stop with a final checkpoint; a second Ctrl-C ends them at once.

use crate::progress::EventView;
use crate::run::{random_hex, Phase, RunHub};
use flg_core::config::Config;
use flg_core::launch::{worker_binary, MpiLaunch};
use flg_core::Stage;
use std::ffi::OsString;
use std::net::ToSocketAddrs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ExitCode};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether the workers are started here (`run`) or by someone else (`coordinator`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    LaunchWorkers,
    CoordinatorOnly,
}

/// The control token: the config's, `$FLG_CONTROL_TOKEN`, or a new one (written to
/// `<run dir>/control-token`, owner-only).
fn control_token(cfg: &Config) -> Result<(String, bool), String> {
    if let Some(t) = &cfg.cluster.control_token {
        return Ok((t.clone(), false));
    }
    if let Ok(t) = std::env::var("FLG_CONTROL_TOKEN") {
        if !t.is_empty() {
            return Ok((t, false));
        }
    }
    let t = random_hex(16);
    let run_dir = cfg.run_dir();
    let path = run_dir.control_token();
    std::fs::create_dir_all(run_dir.path())
        .map_err(|e| format!("{}: {e}", run_dir.path().display()))?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    use std::io::Write;
    writeln!(f, "{t}").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((t, true))
}

pub fn main(config_path: &Path, mode: Mode) -> ExitCode {
    match supervise(config_path, mode) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn supervise(config_path: &Path, mode: Mode) -> Result<ExitCode, String> {
    let cfg = Config::load(config_path).map_err(|e| e.to_string().trim_end().to_string())?;
    let run_dir = cfg.run_dir();
    let (token, generated) = control_token(&cfg)?;
    let hub = Arc::new(
        RunHub::open(cfg.clone(), token.clone())
            .map_err(|e| format!("{}: {e}", config_path.display()))?,
    );
    if hub.phase() == Phase::Finished {
        println!(
            "run {} in {} has already finished; remove the directory (or use another experiment.name) to run it again",
            hub.run_id,
            run_dir.path().display()
        );
        if cfg.runs_stage(Stage::Eval) {
            write_report(&run_dir);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let addr = cfg
        .cluster
        .coordinator_addr
        .to_socket_addrs()
        .map_err(|e| {
            format!(
                "cluster.coordinator_addr {:?}: {e}",
                cfg.cluster.coordinator_addr
            )
        })?
        .next()
        .ok_or_else(|| {
            format!(
                "cluster.coordinator_addr {:?}: no address",
                cfg.cluster.coordinator_addr
            )
        })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flg-coordinator")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the coordinator runtime: {e}"))?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound, server) = rt
        .block_on(crate::run::service::serve(hub.clone(), addr, async {
            let _ = shutdown_rx.await;
        }))
        .map_err(|e| format!("cannot listen on {addr} (cluster.coordinator_addr): {e}"))?;
    let host = if bound.ip().is_unspecified() {
        flg_core::hostname()
    } else {
        bound.ip().to_string()
    };
    let url = format!("http://{host}:{}", bound.port());
    let _ = std::fs::write(
        run_dir.coordinator_info(),
        serde_json::json!({"url": url, "pid": std::process::id(), "run_id": hub.run_id})
            .to_string(),
    );
    println!("coordinator: run {} at {url}", hub.run_id);
    println!("  run directory {}", run_dir.path().display());
    if generated {
        println!(
            "  control token {token} (also in {}; pass it with --token or FLG_CONTROL_TOKEN)",
            run_dir.control_token().display()
        );
    }
    println!("  watch it: fastlightgen watch --coordinator {url}");

    let interrupts = Arc::new(AtomicU32::new(0));
    let counter = interrupts.clone();
    rt.spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let view = EventView::follow(hub.subscribe());

    let code = match mode {
        Mode::LaunchWorkers => launch_and_supervise(&hub, config_path, &url, &interrupts),
        Mode::CoordinatorOnly => {
            let bin = worker_binary().unwrap_or_else(|_| "flg-worker".into());
            println!(
                "  start the workers: mpirun -np {} [--hostfile H] {} run --config {} --coordinator {url}",
                cfg.cluster.world_size,
                bin.display(),
                config_path.display()
            );
            serve_until_done(&hub, &interrupts)
        }
    };
    // Let the last events reach the watchers and the bars.
    std::thread::sleep(Duration::from_millis(200));
    view.finish();
    let _ = shutdown_tx.send(());
    let _ = rt.block_on(server);
    let _ = std::fs::remove_file(run_dir.coordinator_info());
    let status = hub.status(Instant::now());
    if hub.phase() == Phase::Finished && cfg.runs_stage(Stage::Eval) {
        write_report(&run_dir);
    }
    println!(
        "run {}: {} (stage {}, {} restart(s), last checkpoint {})",
        hub.run_id,
        crate::client::state_name(&status),
        status.stage,
        status.restarts,
        crate::client::last_checkpoint(&status)
    );
    Ok(code)
}

/// Writes the run's report.md and prints the headline numbers (a failure is a warning: the
/// run itself is done).
fn write_report(run_dir: &flg_core::RunDir) {
    match flg_report::write(run_dir) {
        Ok(h) => h.print(),
        Err(e) => eprintln!("warning: writing the report failed: {e:#}"),
    }
}

/// Ctrl-C presses so far; the first asks the run to stop (once, recorded in `stop_asked`).
/// `second` says what another press does.
fn ctrl_c_presses(
    interrupts: &AtomicU32,
    stop_asked: &mut bool,
    hub: &RunHub,
    second: &str,
) -> u32 {
    let n = interrupts.load(Ordering::SeqCst);
    if n >= 1 && !*stop_asked {
        *stop_asked = true;
        hub.stop("Ctrl-C");
        eprintln!(
            "stopping: the ranks write a final checkpoint and exit (Ctrl-C again to {second})"
        );
    }
    n
}

/// Polls until the run ends (workers started elsewhere).
fn serve_until_done(hub: &RunHub, interrupts: &AtomicU32) -> ExitCode {
    let mut asked = false;
    loop {
        let phase = hub.phase();
        if phase.ended() {
            return exit_for(phase);
        }
        if ctrl_c_presses(interrupts, &mut asked, hub, "leave them") >= 2 {
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn exit_for(phase: Phase) -> ExitCode {
    match phase {
        Phase::Finished | Phase::Stopped => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

fn spawn_workers(cfg: &Config, config_path: &Path, url: &str) -> Result<Child, String> {
    let bin = worker_binary()?;
    let launch = MpiLaunch {
        np: cfg.cluster.world_size,
        hostfile: cfg.cluster.hostfile.clone(),
        extra_args: cfg.cluster.mpirun_args.clone(),
    };
    let args: Vec<OsString> = vec![
        "run".into(),
        "--config".into(),
        config_path.into(),
        "--coordinator".into(),
        url.into(),
    ];
    let mut cmd = launch.command(&bin, &args);
    // Its own process group: Ctrl-C in the terminal reaches the coordinator only, which stops
    // the ranks cleanly; and a restart can end the whole group.
    cmd.process_group(0);
    // If the launcher itself dies, mpirun (and with it the ranks) is told to end.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        format!("cannot start mpirun: {e} (is OpenMPI installed? `make setup` installs it)")
    })
}

/// Ends a launch: SIGKILL to every rank this host knows (a stopped rank too), then to
/// mpirun's process group.
fn end_workers(child: &mut Child, hub: &RunHub) {
    for pid in hub.local_pids() {
        // SAFETY: signalling a process id a rank of this run registered.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    // SAFETY: the group was created for mpirun by `process_group(0)`.
    unsafe {
        libc::killpg(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

fn launch_and_supervise(
    hub: &RunHub,
    config_path: &Path,
    url: &str,
    interrupts: &AtomicU32,
) -> ExitCode {
    let cfg = &hub.cfg;
    let mut restarts = 0;
    let mut stop_asked = false;
    loop {
        let mut child = match spawn_workers(cfg, config_path, url) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                hub.fail(&e);
                return ExitCode::FAILURE;
            }
        };
        // The hub decides when this launch is lost (silence, or not every rank registered
        // within the window from now); the launcher only acts on it.
        let lost_before = hub.lost_launches();
        hub.workers_started(Instant::now());
        let reason = loop {
            std::thread::sleep(Duration::from_millis(100));
            if ctrl_c_presses(interrupts, &mut stop_asked, hub, "kill them") >= 2 {
                end_workers(&mut child, hub);
                hub.fail("killed by a second Ctrl-C");
                return ExitCode::FAILURE;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    let phase = hub.phase();
                    if phase.ended() {
                        return exit_for(phase);
                    }
                    hub.workers_exited(status.code());
                    break format!("the workers exited ({status})");
                }
                Ok(None) => {}
                Err(e) => break format!("cannot wait for mpirun: {e}"),
            }
            if hub.lost_launches() > lost_before {
                break "a rank was lost".to_string();
            }
        };
        end_workers(&mut child, hub);
        if stop_asked || hub.phase().ended() {
            let phase = hub.phase();
            return exit_for(phase);
        }
        restarts += 1;
        if restarts > cfg.cluster.max_restarts {
            let msg = format!(
                "{reason}; out of restarts (cluster.max_restarts = {})",
                cfg.cluster.max_restarts
            );
            eprintln!("error: {msg}");
            hub.fail(&msg);
            return ExitCode::FAILURE;
        }
        eprintln!(
            "restarting the workers ({restarts} of {}): {reason}",
            cfg.cluster.max_restarts
        );
        hub.restarting(&reason);
    }
}
