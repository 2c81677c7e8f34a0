//! `fastlightgen run` and `fastlightgen coordinator`: start the coordinator (gRPC server over
//! the run's state), and for `run` also the workers under `mpirun`, restarting them from the
//! last committed checkpoint when a rank dies or goes silent, up to `cluster.max_restarts`.
//! Ctrl-C, SIGTERM or SIGUSR1 asks the ranks to stop with a final checkpoint; a second one
//! ends them at once. One coordinator per run directory (a lock); each launch gets a secret
//! of its own, and only the launcher's own processes are ever signalled.

use crate::progress::EventView;
use crate::run::{random_hex, Phase, RunHub};
use flg_core::config::{Config, LoadOptions, Override};
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
use tokio::signal::unix::{signal, SignalKind};

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
    let t = random_hex(16).map_err(|e| format!("making a control token: {e}"))?;
    let run_dir = cfg.run_dir();
    std::fs::create_dir_all(run_dir.path())
        .map_err(|e| format!("{}: {e}", run_dir.path().display()))?;
    write_secret(&run_dir.control_token(), &t)?;
    Ok((t, true))
}

/// Writes a secret owner-only, never through a link (`flg_core::durable::write_private`).
pub(crate) fn write_secret(path: &Path, secret: &str) -> Result<(), String> {
    flg_core::durable::write_private(path, format!("{secret}\n").as_bytes())
        .map_err(|e| e.to_string())
}

/// What `run` and `coordinator` take besides the config and the mode.
pub struct Options {
    /// `--set section.key=value`, applied to the file (and handed to every rank).
    pub overrides: Vec<Override>,
    /// The period of plain progress lines when stderr is not a terminal.
    pub log_every: Duration,
}

pub fn main(config_path: &Path, mode: Mode, options: &Options) -> ExitCode {
    match supervise(config_path, mode, options) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn supervise(config_path: &Path, mode: Mode, options: &Options) -> Result<ExitCode, String> {
    let cfg = Config::load_overridden(config_path, LoadOptions::default(), &options.overrides)
        .map_err(|e| e.to_string().trim_end().to_string())?;
    let run_dir = cfg.run_dir();
    std::fs::create_dir_all(run_dir.path())
        .map_err(|e| format!("{}: {e}", run_dir.path().display()))?;
    // Held until this process ends: a second coordinator of the same run is refused here,
    // before it touches anything.
    let _lock = crate::run_lock::RunLock::take(&run_dir.lock())?;
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
    let addr = first_address(&cfg.cluster.coordinator_addr, "cluster.coordinator_addr")?;
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
    let url = url_of(bound);
    let (http_shutdown_tx, http_shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let http = if cfg.cluster.http_addr.is_empty() {
        None
    } else {
        let addr = first_address(&cfg.cluster.http_addr, "cluster.http_addr")?;
        let (bound, server) = rt
            .block_on(crate::http::serve(hub.clone(), addr, async {
                let _ = http_shutdown_rx.await;
            }))
            .map_err(|e| format!("cannot listen on {addr} (cluster.http_addr): {e}"))?;
        Some((url_of(bound), server))
    };
    let http_url = http.as_ref().map(|(u, _)| u.clone());
    let _ = std::fs::write(
        run_dir.coordinator_info(),
        serde_json::json!({"url": url, "http_url": http_url, "pid": std::process::id(), "run_id": hub.run_id})
            .to_string(),
    );
    println!("coordinator: run {} at {url}", hub.run_id);
    if let Some(u) = &http_url {
        println!("  status page {u}/ (JSON at {u}/status)");
    }
    println!("  run directory {}", run_dir.path().display());
    if generated {
        println!(
            "  control token {token} (also in {}; pass it with --token or FLG_CONTROL_TOKEN)",
            run_dir.control_token().display()
        );
    }
    println!("  watch it: fastlightgen watch --coordinator {url}");

    // Ctrl-C, SIGTERM (what schedulers send before preemption or at the time limit) and
    // SIGUSR1 (slurm's `--signal`) all ask for a checkpoint and a stop; a second one ends
    // the ranks at once.
    let interrupts = Arc::new(AtomicU32::new(0));
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::user_defined1(),
    ] {
        let counter = interrupts.clone();
        let mut stream = rt
            .block_on(async { signal(kind) })
            .map_err(|e| format!("cannot handle signals: {e}"))?;
        rt.spawn(async move {
            while stream.recv().await.is_some() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let view = EventView::follow(hub.subscribe(), options.log_every);

    let code = match mode {
        Mode::LaunchWorkers => launch_and_supervise(
            &hub,
            &WorkerCommand {
                config: config_path,
                overrides: &options.overrides,
                url: &url,
                log_every: options.log_every,
            },
            &interrupts,
        ),
        Mode::CoordinatorOnly => {
            // Workers started by hand read the secret from the run directory (owner-only).
            let secret = random_hex(16).map_err(|e| format!("making a launch secret: {e}"))?;
            write_secret(&run_dir.launch_secret(), &secret)?;
            hub.expect_launch(secret);
            let bin = worker_binary().unwrap_or_else(|_| "flg-worker".into());
            let sets: String = options
                .overrides
                .iter()
                .map(|o| format!(" --set '{}'", o.text))
                .collect();
            println!(
                "  start the workers: mpirun -np {} [--hostfile H] {} run --config {}{sets} --coordinator {url}",
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
    let _ = http_shutdown_tx.send(());
    let _ = rt.block_on(server);
    if let Some((_, server)) = http {
        let _ = rt.block_on(server);
    }
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

/// The first socket address `addr` (a config value, named by `key`) resolves to.
fn first_address(addr: &str, key: &str) -> Result<std::net::SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{key} {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{key} {addr:?}: no address"))
}

/// The URL others use for a bound address (this host's name for a wildcard bind).
fn url_of(bound: std::net::SocketAddr) -> String {
    let host = if bound.ip().is_unspecified() {
        flg_core::hostname()
    } else {
        bound.ip().to_string()
    };
    format!("http://{host}:{}", bound.port())
}

/// Writes the run's report.md and prints the headline numbers (a failure is a warning: the
/// run itself is done).
fn write_report(run_dir: &flg_core::RunDir) {
    match flg_report::write(run_dir) {
        Ok(h) => h.print(),
        Err(e) => eprintln!("warning: writing the report failed: {e:#}"),
    }
}

/// Interrupts (Ctrl-C, SIGTERM, SIGUSR1) so far; the first asks the run to stop (once, recorded in `stop_asked`).
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
        hub.stop("interrupted (Ctrl-C, SIGTERM or SIGUSR1)");
        eprintln!(
            "stopping: the ranks write a final checkpoint and exit (interrupt again to {second})"
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

/// What every rank is started with: the config, its overrides, the coordinator's URL.
struct WorkerCommand<'a> {
    config: &'a Path,
    overrides: &'a [Override],
    url: &'a str,
    log_every: Duration,
}

/// Starts a launch's ranks under mpirun, handing them `secret` in their environment.
fn spawn_workers(cfg: &Config, what: &WorkerCommand, secret: &str) -> Result<Child, String> {
    let bin = worker_binary()?;
    let launch = MpiLaunch {
        np: cfg.cluster.world_size,
        hostfile: cfg.cluster.hostfile.clone(),
        extra_args: cfg.cluster.mpirun_args.clone(),
        env: vec![
            (
                flg_core::launch::LAUNCH_SECRET_ENV.to_string(),
                secret.to_string(),
            ),
            // The ranks' own plain lines (Stage I, data generation) keep the launcher's pace.
            (
                flg_core::logging::LOG_EVERY_ENV.to_string(),
                what.log_every.as_secs_f64().to_string(),
            ),
        ],
    };
    let mut args: Vec<OsString> = vec![
        "run".into(),
        "--config".into(),
        what.config.into(),
        "--coordinator".into(),
        what.url.into(),
    ];
    for o in what.overrides {
        args.push("--set".into());
        args.push(o.text.clone().into());
    }
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

/// Ends a launch: SIGKILL to mpirun's process group, then to every descendant of the
/// launcher (a rank re-parented here after mpirun died, a stopped rank), then reaps them.
/// Only processes the kernel says are the launcher's own are signalled.
fn end_workers(child: &mut Child) {
    // SAFETY: the group was created for mpirun by `process_group(0)`.
    unsafe {
        libc::killpg(child.id() as i32, libc::SIGKILL);
    }
    let left = crate::processes::kill_descendants(std::process::id());
    if !left.is_empty() {
        eprintln!("warning: processes {left:?} of the launch did not end after SIGKILL");
    }
    let _ = child.wait();
    crate::processes::reap_orphans();
}

fn launch_and_supervise(hub: &RunHub, what: &WorkerCommand, interrupts: &AtomicU32) -> ExitCode {
    let cfg = &hub.cfg;
    let mut restarts = 0;
    let mut stop_asked = false;
    crate::processes::become_subreaper();
    loop {
        // A new secret per launch: every process of an earlier launch is shut out.
        let secret = match random_hex(16) {
            Ok(s) => s,
            Err(e) => {
                let e = format!("making a launch secret: {e}");
                eprintln!("error: {e}");
                hub.fail(&e);
                return ExitCode::FAILURE;
            }
        };
        let mut child = match spawn_workers(cfg, what, &secret) {
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
        hub.workers_started(Instant::now(), secret);
        let reason = loop {
            std::thread::sleep(Duration::from_millis(100));
            if ctrl_c_presses(interrupts, &mut stop_asked, hub, "kill them") >= 2 {
                end_workers(&mut child);
                hub.fail("killed by a second interrupt");
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
        end_workers(&mut child);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_file_is_owner_only_and_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control-token");
        // An old world-readable token file.
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&path, "s1").unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "s1\n");
        // A symlink planted where the token goes: replaced, its target untouched.
        let target = dir.path().join("victim");
        std::fs::write(&target, "precious").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_secret(&path, "s2").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file(), "the link itself was replaced");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Tokens come from the OS generator: 16 bytes, all different.
        let a = random_hex(16).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_hex(16).unwrap());
    }
}
