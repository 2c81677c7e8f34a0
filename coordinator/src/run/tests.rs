//! The gRPC services against a real server on 127.0.0.1 (in-process): bad calls get clear
//! errors and change nothing; control calls need the token; heartbeats time out; a run
//! directory of other settings is refused.

use super::service::{serve, AUTH_HEADER, LAUNCH_SECRET_HEADER};
use super::RunHub;
use flg_core::config::{Config, LoadOptions};
use flg_core::settings::{run_settings, settings_hash};
use flg_proto as pb;
use pb::control_client::ControlClient;
use pb::worker_hub_client::WorkerHubClient;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const TOKEN: &str = "test-token-123";
const SECRET: &str = "launch-secret-0123456789";

/// What the ranks of the current launch add to every call.
type Signed = tonic::service::interceptor::InterceptedService<
    Channel,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

fn sign(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut()
        .insert(LAUNCH_SECRET_HEADER, SECRET.parse().unwrap());
    Ok(r)
}

fn config(dir: &Path, extra: &str) -> Config {
    let text = format!(
        "[experiment]\nname = \"t\"\noutput_dir = {out:?}\nstages = [\"pretrain\", \"pruning\", \"distill\"]\n\
         [cluster]\nworld_size = 2\nheartbeat_interval_s = 0.1\nheartbeat_timeout_s = 0.5\n\
         [model]\npreset = \"tiny\"\n[pretrain]\nsteps = 10\n[pruning]\nsteps = 10\n\
         [checkpoint]\ninterval_steps = 5\n{extra}",
        out = dir.join("runs")
    );
    Config::parse(
        &text,
        Path::new("t.toml"),
        LoadOptions { check_files: false },
    )
    .unwrap()
}

struct Server {
    hub: Arc<RunHub>,
    /// A rank of the current launch (sends the secret).
    hub_client: WorkerHubClient<Signed>,
    /// Anyone who reaches the port (sends no secret unless told).
    forger: WorkerHubClient<Channel>,
    control: ControlClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(cfg: Config) -> Server {
    let hub = Arc::new(RunHub::open(cfg, TOKEN.into()).unwrap());
    hub.expect_launch(SECRET.into());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, _) = serve(hub.clone(), "127.0.0.1:0".parse().unwrap(), async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Server {
        hub,
        hub_client: WorkerHubClient::with_interceptor(channel.clone(), sign as fn(_) -> _),
        forger: WorkerHubClient::new(channel.clone()),
        control: ControlClient::new(channel),
        _stop: tx,
    }
}

fn register(s: &Server, rank: u32) -> pb::RegisterRequest {
    registration(&s.hub, rank)
}

/// Rank `rank`'s Register call for `hub`'s run (pid 1000 + rank on host "test").
fn registration(hub: &RunHub, rank: u32) -> pb::RegisterRequest {
    pb::RegisterRequest {
        run_id: String::new(),
        rank,
        world_size: 2,
        hostname: "test".into(),
        pid: 1000 + rank,
        config_hash: settings_hash(&run_settings(&hub.cfg)),
    }
}

/// Ranks 0 and 1 of the current launch register; returns the run id.
async fn register_both(s: &mut Server) -> String {
    let id = s
        .hub_client
        .register(register(s, 0))
        .await
        .unwrap()
        .into_inner()
        .run_id;
    s.hub_client.register(register(s, 1)).await.unwrap();
    id
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(AUTH_HEADER, format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn next_command(run_id: &str, rank: u32, step: u64) -> pb::NextCommandRequest {
    pb::NextCommandRequest {
        run_id: run_id.into(),
        rank,
        stage: "pruning".into(),
        step,
        generation: 0,
    }
}

fn commit(run_id: &str, rank: u32, stage: &str, step: u64, global: u64) -> pb::ShardCommit {
    pb::ShardCommit {
        run_id: run_id.into(),
        rank,
        stage: stage.into(),
        step,
        files: vec![pb::ShardFile {
            path: format!("rank-{rank:05}.safetensors"),
            bytes: 4,
            sha256: "0".repeat(64),
        }],
        global_step: global,
        tmp_dir: flg_core::checkpoint::tmp_dir_name(global, 0),
        generation: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_worker_calls_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(config(dir.path(), "")).await;
    let reply = s
        .hub_client
        .register(register(&s, 0))
        .await
        .unwrap()
        .into_inner();
    let run_id = reply.run_id.clone();
    assert_eq!(reply.generation, 0);
    assert!(reply.resume_from.is_empty());
    let before = s.hub.status(Instant::now());
    let events_before = s.hub.history().len();

    // Duplicate registration.
    let e = s.hub_client.register(register(&s, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(
        e.message().contains("rank 0 is already registered"),
        "{}",
        e.message()
    );
    // Unknown rank.
    let mut r = register(&s, 7);
    let e = s.hub_client.register(r.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("unknown rank 7"), "{}", e.message());
    // Wrong run id.
    r.rank = 1;
    r.run_id = "someone-else".into();
    let e = s.hub_client.register(r.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("wrong run id"), "{}", e.message());
    // Other settings.
    r.run_id = run_id.clone();
    r.config_hash = "f".repeat(64);
    let e = s.hub_client.register(r.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // A heartbeat from a rank that never registered.
    let e = s
        .hub_client
        .heartbeat(pb::HeartbeatRequest {
            run_id: run_id.clone(),
            rank: 1,
            generation: 0,
            stage: String::new(),
            step: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A checkpoint commit for a step nobody asked for.
    let e = s
        .hub_client
        .commit_shard(commit(&run_id, 0, "pruning", 3, 13))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("no checkpoint was asked for at pruning step 3"),
        "{}",
        e.message()
    );
    // Only rank 0 fetches commands.
    assert!(s.hub_client.register(register(&s, 1)).await.is_ok());
    let e = s
        .hub_client
        .next_command(next_command(&run_id, 1, 5))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let after = s.hub.status(Instant::now());
    assert_eq!(
        (after.step, after.last_committed_step),
        (before.step, before.last_committed_step)
    );
    // Nothing but rank 1's registration was recorded; no checkpoint directory appeared.
    let new: Vec<_> = s.hub.history()[events_before..]
        .iter()
        .map(|e| e.event.kind().to_string())
        .collect();
    assert_eq!(new, vec!["ranks_ready"]);
    assert!(!dir.path().join("runs/t/checkpoints").exists());

    // The periodic checkpoint is asked for at step 5 of pruning (global step 15); a commit
    // with the wrong global step or a path escaping the directory is refused; the real one
    // waits for both ranks.
    let cmd = s
        .hub_client
        .next_command(next_command(&run_id, 0, 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cmd.kind, pb::command::Kind::Checkpoint as i32);
    let e = s
        .hub_client
        .commit_shard(commit(&run_id, 0, "pruning", 5, 5))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut bad = commit(&run_id, 0, "pruning", 5, 15);
    bad.files[0].path = "../../escape".into();
    let e = s.hub_client.commit_shard(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let tmp = dir.path().join("runs/t/checkpoints/tmp-15-g0");
    std::fs::create_dir_all(&tmp).unwrap();
    for r in 0..2 {
        std::fs::write(tmp.join(format!("rank-{r:05}.safetensors")), b"abcd").unwrap();
    }
    s.hub_client
        .commit_shard(commit(&run_id, 0, "pruning", 5, 15))
        .await
        .unwrap();
    assert!(!dir.path().join("runs/t/checkpoints/step-15").exists());
    let e = s
        .hub_client
        .commit_shard(commit(&run_id, 0, "pruning", 5, 15))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    s.hub_client
        .commit_shard(commit(&run_id, 1, "pruning", 5, 15))
        .await
        .unwrap();
    assert!(dir
        .path()
        .join("runs/t/checkpoints/step-15/manifest.json")
        .is_file());
    assert_eq!(s.hub.status(Instant::now()).last_committed_step, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_calls_need_the_token_and_a_silent_rank_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    // A timeout no test run reaches, so the server's own monitor (real time) never decides.
    let cfg = config(dir.path(), "").with_heartbeat_timeout(30.0);
    let mut s = start(cfg).await;
    let req = || pb::ControlRequest { reason: "t".into() };
    let e = s.control.pause(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(req());
    wrong
        .metadata_mut()
        .insert(AUTH_HEADER, "Bearer nope".parse().unwrap());
    assert_eq!(
        s.control.stop(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(!s.hub.stop_asked());
    assert!(
        s.control
            .pause(authed(req()))
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    assert_eq!(s.hub.phase(), super::Phase::Starting);

    // Status over the API is the hub's.
    let status = s
        .control
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.world_size, 2);
    assert_eq!(status.run_id, s.hub.run_id);

    // Both ranks register; rank 0 beats, rank 1 never does: lost once it has been silent for
    // longer than the timeout (the hub is asked with a later clock: no sleeping).
    let id = register_both(&mut s).await;
    let mut watch = s
        .control
        .watch(pb::WatchRequest { from_start: false })
        .await
        .unwrap()
        .into_inner();
    let t0 = Instant::now();
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
    let beat = pb::HeartbeatRequest {
        run_id: id.clone(),
        rank: 0,
        generation: 0,
        stage: String::new(),
        step: 0,
    };
    s.hub.heartbeat(&beat, at(20.0)).unwrap();
    assert_eq!(s.hub.check_liveness(at(29.0)), None);
    let why = s.hub.check_liveness(at(31.0)).expect("rank 1 is lost");
    assert!(why.contains("rank 1 sent no heartbeat for 31"), "{why}");
    assert_eq!(s.hub.phase(), super::Phase::Restarting);
    assert_eq!(s.hub.check_liveness(at(40.0)), None, "a loss is said once");
    assert_eq!(s.hub.status(at(31.0)).ranks_alive, 0);
    // Watchers see it.
    let mut kinds = Vec::new();
    while let Ok(Some(e)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), watch.message())
            .await
            .unwrap_or(Ok(None))
    {
        kinds.push(e.kind.clone());
        if e.kind == "rank_lost" {
            assert!(e.json.contains("rank 1 sent no heartbeat"), "{}", e.json);
            break;
        }
    }
    assert!(kinds.contains(&"rank_lost".to_string()), "{kinds:?}");
    // The next registration opens launch 1.
    let reply = s
        .hub_client
        .register(register(&s, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.generation, 1);
}

#[test]
fn a_run_directory_of_other_settings_is_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    drop(RunHub::open(config(dir.path(), ""), TOKEN.into()).unwrap());
    // Launch settings may change between launches.
    let again = config(dir.path(), "").clone();
    let mut more_ranks = again.clone();
    more_ranks.cluster.world_size = 4;
    assert!(RunHub::open(more_ranks, TOKEN.into()).is_ok());
    let mut other = again;
    other.pruning.alpha = 0.25;
    let e = RunHub::open(other, TOKEN.into()).err().expect("refused");
    assert!(
        e.contains("pruning.alpha: was 1.0, this config has 0.25"),
        "{e}"
    );
}

trait WithTimeout {
    fn with_heartbeat_timeout(self, secs: f64) -> Self;
}

impl WithTimeout for Config {
    fn with_heartbeat_timeout(mut self, secs: f64) -> Config {
        self.cluster.heartbeat_timeout_s = secs;
        self
    }
}

#[test]
fn a_launch_is_lost_when_its_ranks_do_not_register_in_time_or_fall_silent() {
    let dir = tempfile::tempdir().unwrap();
    let hub = RunHub::open(config(dir.path(), ""), TOKEN.into()).unwrap();
    let t0 = Instant::now();
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
    let window = super::registration_window_s(hub.cfg.cluster.heartbeat_timeout_s);
    assert_eq!(
        window, 60.0,
        "at least a minute to start mpirun and load the model"
    );
    // Nothing is decided before the workers are started.
    assert_eq!(hub.check_liveness(at(1000.0)), None);

    // Launch 1: the workers start at t0; one rank registers, the other never does.
    hub.workers_started(t0, SECRET.into());
    let reg = |rank: u32| registration(&hub, rank);
    hub.register(&reg(0), at(5.0)).unwrap();
    let beat = |rank: u32, generation: u32| pb::HeartbeatRequest {
        run_id: hub.run_id.clone(),
        rank,
        generation,
        stage: String::new(),
        step: 0,
    };
    for t in [5.3, 5.6, 59.8] {
        hub.heartbeat(&beat(0, 0), at(t)).unwrap();
        assert_eq!(hub.check_liveness(at(t + 0.1)), None, "at {t} s");
    }
    hub.heartbeat(&beat(0, 0), at(60.2)).unwrap();
    let why = hub.check_liveness(at(60.5)).expect("lost after the window");
    assert!(
        why.contains("only 1 of 2 ranks registered within 60 s"),
        "{why}"
    );
    assert_eq!(
        (hub.phase(), hub.lost_launches()),
        (super::Phase::Restarting, 1)
    );

    // Launch 2: the launcher starts the workers again; until they register, the window
    // counts from the new start, not the old one.
    hub.restarting(&why);
    hub.workers_started(at(100.0), "second-launch".into());
    assert_eq!(hub.phase(), super::Phase::Starting);
    assert_eq!(hub.check_liveness(at(150.0)), None);
    let r0 = hub.register(&reg(0), at(150.0)).unwrap();
    hub.register(&reg(1), at(150.0)).unwrap();
    assert_eq!(r0.generation, 1);
    assert_eq!(hub.phase(), super::Phase::Running);
    // A heartbeat of the old launch is refused; rank 1 then falls silent.
    let stale = hub.heartbeat(&beat(0, 0), at(150.1)).unwrap_err();
    assert!(stale.message().contains("stale"), "{}", stale.message());
    hub.heartbeat(&beat(0, 1), at(150.4)).unwrap();
    hub.heartbeat(&beat(1, 1), at(150.2)).unwrap();
    assert_eq!(hub.status(at(150.6)).ranks_alive, 2);
    assert_eq!(hub.check_liveness(at(150.6)), None);
    hub.heartbeat(&beat(0, 1), at(150.8)).unwrap();
    assert_eq!(hub.status(at(150.8)).ranks_alive, 1);
    let why = hub
        .check_liveness(at(150.8))
        .expect("rank 1 silent for 0.6 s");
    assert!(why.contains("rank 1 sent no heartbeat for 0.6 s"), "{why}");
    assert_eq!(hub.lost_launches(), 2);
    // The history holds both losses and the restart, in order.
    let kinds: Vec<&str> = hub
        .history()
        .iter()
        .map(|r| r.event.kind())
        .filter(|k| ["rank_lost", "restarting", "generation_started"].contains(k))
        .collect();
    assert_eq!(
        kinds,
        [
            "generation_started",
            "rank_lost",
            "restarting",
            "generation_started",
            "rank_lost"
        ]
    );
}

/// `msg` with `secret` (if any) in the launch-secret header.
fn with_secret<T>(msg: T, secret: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(s) = secret {
        r.metadata_mut()
            .insert(LAUNCH_SECRET_HEADER, s.parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_worker_hub_calls_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "").with_heartbeat_timeout(30.0);
    let mut s = start(cfg).await;
    // No secret, a wrong one: even Register is refused, and nothing is recorded.
    let events_before = s.hub.history().len();
    for secret in [None, Some("wrong"), Some("")] {
        let e = s
            .forger
            .register(with_secret(register(&s, 0), secret))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{secret:?}: {e:?}");
    }
    assert_eq!(s.hub.history().len(), events_before);
    assert_eq!(s.hub.status(Instant::now()).ranks_alive, 0);
    // Absurd pids, even with the secret: the launcher would never signal them (it ends only
    // its own descendants), and Register refuses them outright.
    for pid in [0, 1, u32::MAX, 1 << 23] {
        let mut r = register(&s, 0);
        r.pid = pid;
        let e = s.hub_client.register(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "pid {pid}: {e:?}");
        assert!(e.message().contains("pid"), "{}", e.message());
    }
    assert_eq!(s.hub.history().len(), events_before);

    // The real launch registers; a checkpoint is asked for.
    let run_id = register_both(&mut s).await;
    s.hub_client
        .report_stage(pb::StageReport {
            run_id: run_id.clone(),
            rank: 0,
            stage: "pruning".into(),
            event: pb::StageEvent::Started as i32,
            seconds: 0.0,
            message: String::new(),
            generation: 0,
        })
        .await
        .unwrap();
    assert!(
        s.control
            .checkpoint(authed(pb::ControlRequest { reason: "t".into() }))
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    let before = s.hub.status(Instant::now());
    let events_before = s.hub.history().len();

    // Every call without the secret is refused: the checkpoint command is not consumed, no
    // stage becomes done or failed, no shard is committed, no heartbeat counts.
    let forged_stage = |event: pb::StageEvent| pb::StageReport {
        run_id: run_id.clone(),
        rank: 0,
        stage: "pretrain".into(),
        event: event as i32,
        seconds: 1.0,
        message: "forged".into(),
        generation: 0,
    };
    let beat = pb::HeartbeatRequest {
        run_id: run_id.clone(),
        rank: 1,
        generation: 0,
        stage: String::new(),
        step: 0,
    };
    let metrics = pb::MetricsReport {
        run_id: run_id.clone(),
        rank: 0,
        stage: "pretrain".into(),
        step: 9,
        total_steps: 10,
        values: [("loss".to_string(), 1.0)].into(),
        generation: 0,
    };
    for secret in [None, Some("wrong")] {
        let codes = [
            s.forger
                .next_command(with_secret(next_command(&run_id, 0, 3), secret))
                .await
                .unwrap_err()
                .code(),
            s.forger
                .report_stage(with_secret(forged_stage(pb::StageEvent::Done), secret))
                .await
                .unwrap_err()
                .code(),
            s.forger
                .report_stage(with_secret(forged_stage(pb::StageEvent::Failed), secret))
                .await
                .unwrap_err()
                .code(),
            s.forger
                .commit_shard(with_secret(commit(&run_id, 0, "pruning", 5, 15), secret))
                .await
                .unwrap_err()
                .code(),
            s.forger
                .heartbeat(with_secret(beat.clone(), secret))
                .await
                .unwrap_err()
                .code(),
            s.forger
                .report_metrics(with_secret(metrics.clone(), secret))
                .await
                .unwrap_err()
                .code(),
        ];
        assert!(
            codes.iter().all(|c| *c == Code::Unauthenticated),
            "{secret:?}: {codes:?}"
        );
    }
    // A stale generation with the right secret (a process that kept the secret but belongs
    // to an earlier launch) is refused too.
    let mut stale_beat = beat.clone();
    stale_beat.generation = 7;
    let mut stale_stage = forged_stage(pb::StageEvent::Done);
    stale_stage.generation = 7;
    let mut stale_cmd = next_command(&run_id, 0, 3);
    stale_cmd.generation = 7;
    for e in [
        s.hub_client.heartbeat(stale_beat).await.unwrap_err(),
        s.hub_client.report_stage(stale_stage).await.unwrap_err(),
        s.hub_client.next_command(stale_cmd).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("stale"), "{}", e.message());
    }
    let after = s.hub.status(Instant::now());
    assert_eq!(s.hub.history().len(), events_before, "nothing was recorded");
    assert_eq!(
        (after.step, after.stage.clone(), after.last_committed_step),
        (
            before.step,
            before.stage.clone(),
            before.last_committed_step
        )
    );
    assert_eq!(s.hub.phase(), super::Phase::Running);
    // The checkpoint is still there for rank 0 to fetch.
    let cmd = s
        .hub_client
        .next_command(next_command(&run_id, 0, 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cmd.kind, pb::command::Kind::Checkpoint as i32);

    // A new launch gets a new secret: the old one no longer works for anything.
    s.hub
        .workers_started(Instant::now(), "the-next-launch".into());
    let e = s.hub_client.heartbeat(beat).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = s.hub_client.register(register(&s, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    s.forger
        .register(with_secret(register(&s, 0), Some("the-next-launch")))
        .await
        .unwrap();
}

#[test]
fn a_stalled_coordinator_does_not_count_its_own_stall_as_the_ranks_silence() {
    let dir = tempfile::tempdir().unwrap();
    let hub = RunHub::open(config(dir.path(), ""), TOKEN.into()).unwrap();
    let t0 = Instant::now();
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
    let period = Duration::from_millis(50);
    hub.workers_started(t0, SECRET.into());
    let reg = |rank: u32| registration(&hub, rank);
    hub.register(&reg(0), at(0.1)).unwrap();
    hub.register(&reg(1), at(0.1)).unwrap();
    // The monitor runs every 50 ms up to 1 s, then the process is stopped for 10 s
    // (SIGSTOP): nobody could beat, nobody is lost.
    let beat = |rank: u32, t: f64| {
        let b = pb::HeartbeatRequest {
            run_id: hub.run_id.clone(),
            rank,
            generation: 0,
            stage: String::new(),
            step: 0,
        };
        hub.heartbeat(&b, at(t)).unwrap();
    };
    let mut t = 0.1;
    while t < 1.0 {
        beat(0, t);
        beat(1, t);
        assert_eq!(hub.tick(at(t), period), None);
        assert_eq!(hub.check_liveness(at(t)), None);
        t += 0.05;
    }
    let credited = hub.tick(at(11.0), period).expect("a stall");
    assert!(credited.as_secs_f64() > 9.9, "{credited:?}");
    assert_eq!(
        hub.check_liveness(at(11.0)),
        None,
        "silence during the stall"
    );
    // Time after the stall counts again: ranks that stay silent past the timeout (0.5 s)
    // are lost.
    assert_eq!(hub.tick(at(11.05), period), None);
    assert_eq!(hub.check_liveness(at(11.05)), None);
    let why = hub
        .check_liveness(at(11.7))
        .expect("silent after the stall");
    assert!(why.contains("sent no heartbeat"), "{why}");
}
