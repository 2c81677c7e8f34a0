//! The run hub: what the coordinator knows of the run and decides for it.
//!
//! Plain synchronous code behind one mutex, so the gRPC services (`service.rs`), the launcher
//! and the tests all drive the same object. Its decisions are split by concern, each an
//! `impl RunHub` of its own file:
//! - `liveness.rs`: registration, launches ("generations"), heartbeats, and the one rule
//!   that says a launch is lost;
//! - `control.rs`: pause, resume, checkpoint and stop, and the command rank 0 fetches at
//!   every step boundary;
//! - `commit.rs`: the coordinator's half of the two-phase checkpoint commit;
//! - `status.rs`: stage reports, step metrics and the status people read.
//!
//! Every decision that depends on time takes the current time as an argument (`now`), so
//! tests drive the clock instead of sleeping. Every state change that a restarted coordinator
//! must know is appended to `events.jsonl`; every event also goes to the live stream that
//! `fastlightgen watch` follows.

use super::checkpoints::{read_manifest, CheckpointStore, ShardFile};
use flg_core::checkpoint::Manifest;
use flg_core::config::Config;
use flg_core::events::{Event, EventLog, History, Record};
use flg_core::settings::{differences, run_settings, settings_hash};
use flg_core::{RunDir, Stage};
use flg_proto as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::broadcast;
use tonic::Status;

/// Where the run stands, as `status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the ranks to register.
    Starting,
    Running,
    Paused,
    /// A stop was asked for; the ranks are writing their final checkpoint.
    Stopping,
    /// A rank was lost; waiting for the next launch.
    Restarting,
    Stopped,
    Finished,
    Failed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Stopping => "stopping",
            Phase::Restarting => "restarting",
            Phase::Stopped => "stopped",
            Phase::Finished => "finished",
            Phase::Failed => "failed",
        }
    }

    /// The run is over: nothing more will register, heartbeats are no longer expected.
    pub fn ended(self) -> bool {
        matches!(self, Phase::Stopped | Phase::Finished | Phase::Failed)
    }

    pub fn to_proto(self) -> pb::RunState {
        match self {
            Phase::Starting => pb::RunState::Starting,
            Phase::Running => pb::RunState::Running,
            Phase::Paused => pb::RunState::Paused,
            Phase::Stopping => pb::RunState::Stopping,
            Phase::Restarting => pb::RunState::Restarting,
            Phase::Stopped => pb::RunState::Stopped,
            Phase::Finished => pb::RunState::Finished,
            Phase::Failed => pb::RunState::Failed,
        }
    }
}

pub(super) struct RankInfo {
    pub pid: u32,
    pub hostname: String,
    pub last_beat: Instant,
}

/// Shards reported so far for one checkpoint.
pub(super) struct Pending {
    pub stage: Stage,
    pub step: u64,
    pub tmp_dir: String,
    pub files: BTreeMap<u32, Vec<ShardFile>>,
}

/// The hub's mutable state; each concern's file reads and writes its part.
pub(super) struct Inner {
    pub phase: Phase,
    /// The stage running now (`None` before the first and after the last).
    pub stage: Option<Stage>,
    pub step: u64,
    pub total_steps: u64,
    pub losses: BTreeMap<String, f64>,
    /// Steps per second, smoothed, and the last (time, step) it was computed from.
    pub steps_per_s: f64,
    pub last_metric: Option<(Instant, u64)>,
    pub completed: Vec<Stage>,
    pub generation: Option<u32>,
    /// When the current launch's workers were started (the launcher's spawn, else the
    /// launch's first registration): the registration window counts from here.
    pub launch_started: Option<Instant>,
    pub generations: u32,
    /// The current launch was lost (a rank died or went silent).
    pub lost: Option<String>,
    pub ranks: BTreeMap<u32, RankInfo>,
    pub resume: Option<(PathBuf, Manifest)>,
    pub pause: bool,
    pub checkpoint_asked: bool,
    pub stop_asked: Option<String>,
    /// (stage, step) checkpoints that were asked for and not yet committed.
    pub expected: BTreeSet<(Stage, u64)>,
    pub pending: BTreeMap<u64, Pending>,
    /// (global step, stage, stage step) of the newest committed checkpoint.
    pub last_committed: Option<(u64, Stage, u64)>,
    pub restarts: u32,
    /// Launches lost so far (the launcher compares it with its value at spawn time).
    pub lost_launches: u32,
    /// The secret every WorkerHub call of the current launch carries (`None`: no launch is
    /// expected, and every call is refused).
    pub launch_secret: Option<String>,
    /// When the liveness monitor last ran (to tell a stalled coordinator from silent ranks).
    pub last_tick: Option<Instant>,
}

pub struct RunHub {
    pub cfg: Config,
    pub run_dir: RunDir,
    pub run_id: String,
    pub config_hash: String,
    pub(super) settings: BTreeMap<String, String>,
    token: String,
    events: EventLog,
    pub store: CheckpointStore,
    live: broadcast::Sender<Record>,
    inner: Mutex<Inner>,
}

/// Equality that takes the same time wherever the first difference is (secrets, tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random hex string from the OS generator (`getrandom(2)`): run ids, control tokens,
/// launch secrets. A failure is an error, never a predictable value.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < bytes {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), bytes - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(std::io::Error::new(
                e.kind(),
                format!("reading the OS random generator: {e}"),
            ));
        }
        filled += n as usize;
    }
    Ok(flg_core::settings::hex(&buf))
}

pub(super) fn bad_rank(rank: u32, world: u32) -> Status {
    Status::not_found(format!(
        "unknown rank {rank}: this run has ranks 0..{} (cluster.world_size = {world})",
        world.saturating_sub(1)
    ))
}

/// The refusal of a call from another launch than the current one.
pub(super) fn stale(rank: u32, generation: u32, current: Option<u32>) -> Status {
    Status::permission_denied(format!(
        "rank {rank} belongs to launch {generation}, the current one is {}: a stale process should exit",
        current.map_or("none".to_string(), |g| g.to_string())
    ))
}

/// A stage name from a rank: one of this run's stages.
pub(super) fn run_stage(cfg: &Config, name: &str) -> Result<Stage, Status> {
    match Stage::parse(name) {
        Some(s) if cfg.runs_stage(s) => Ok(s),
        _ => Err(Status::invalid_argument(format!(
            "stage {name:?} is not in this run's experiment.stages {:?}",
            cfg.experiment.stages
        ))),
    }
}

impl RunHub {
    /// Opens (or continues) the run of `cfg`: refuses when the run directory holds a run or
    /// checkpoint made with other run-defining settings, naming each setting that differs.
    pub fn open(cfg: Config, token: String) -> Result<RunHub, String> {
        let run_dir = cfg.run_dir();
        std::fs::create_dir_all(run_dir.path())
            .map_err(|e| format!("{}: {e}", run_dir.path().display()))?;
        let settings = run_settings(&cfg);
        let config_hash = settings_hash(&settings);
        let events = EventLog::new(&run_dir);
        let history = History::from_records(&events.read_all());
        let store = CheckpointStore::new(&run_dir, cfg.checkpoint.keep_last);
        let refuse = |what: String, before: &BTreeMap<String, String>| {
            let d = differences(before, &settings);
            format!(
                "{what} was made with other settings than this config:\n  {}\n\
                 Use another experiment.name (or output_dir) for a new run, or restore the \
                 settings to continue this one.",
                d.join("\n  ")
            )
        };
        if let Some(before) = &history.settings {
            if settings_hash(before) != config_hash {
                return Err(refuse(
                    format!("the run in {}", run_dir.path().display()),
                    before,
                ));
            }
        }
        for (_, dir) in store.committed().iter().rev().take(1) {
            if let Ok(m) = read_manifest(dir) {
                if m.config_hash != config_hash {
                    return Err(refuse(format!("checkpoint {}", dir.display()), &m.settings));
                }
            }
        }
        let run_id = match history.run_id.clone() {
            Some(id) => id,
            None => format!(
                "{}-{}",
                cfg.experiment.name,
                random_hex(4).map_err(|e| e.to_string())?
            ),
        };
        let (live, _) = broadcast::channel(4096);
        let phase = if history.finished {
            Phase::Finished
        } else {
            Phase::Starting
        };
        let last_committed = store.committed().last().and_then(|(n, dir)| {
            let m = read_manifest(dir).ok()?;
            Some((*n, Stage::parse(&m.stage)?, m.step))
        });
        let hub = RunHub {
            run_dir,
            run_id,
            config_hash,
            token,
            events,
            store,
            live,
            inner: Mutex::new(Inner {
                phase,
                stage: None,
                step: 0,
                total_steps: 0,
                losses: BTreeMap::new(),
                steps_per_s: 0.0,
                last_metric: None,
                completed: history.completed_stages.clone(),
                generation: None,
                launch_started: None,
                generations: history.generations,
                lost: None,
                ranks: BTreeMap::new(),
                resume: None,
                pause: false,
                checkpoint_asked: false,
                stop_asked: None,
                expected: BTreeSet::new(),
                pending: BTreeMap::new(),
                last_committed,
                restarts: history.restarts,
                lost_launches: 0,
                launch_secret: None,
                last_tick: None,
            }),
            settings: settings.clone(),
            cfg,
        };
        if history.run_id.is_none() {
            hub.emit(Event::RunStarted {
                run_id: hub.run_id.clone(),
                config_hash: hub.config_hash.clone(),
                settings,
                stages: hub.cfg.stages(),
            });
        } else {
            hub.emit(Event::CoordinatorStarted {
                run_id: hub.run_id.clone(),
                completed_stages: history.completed_stages,
            });
        }
        // A run that finished is finished only while its outputs are there.
        hub.recheck_outputs(&mut hub.lock());
        Ok(hub)
    }

    /// A finished stage whose output is missing or unreadable is not finished: it is taken
    /// off the completed list (recorded as `output_lost`), so the next launch runs it again
    /// (from its last checkpoint when one is kept).
    pub(super) fn recheck_outputs(&self, inner: &mut Inner) {
        let mut lost = false;
        for stage in inner.completed.clone() {
            let broken = self
                .run_dir
                .stage_outputs(stage)
                .iter()
                .find_map(|p| flg_core::durable::check_output(p).err());
            if let Some(reason) = broken {
                tracing::warn!("{stage} is to be run again: its output is lost ({reason})");
                inner.completed.retain(|s| *s != stage);
                self.emit(Event::OutputLost { stage, reason });
                lost = true;
            }
        }
        if lost && inner.phase == Phase::Finished {
            inner.phase = Phase::Starting;
        }
    }

    /// Whether `given` is the current launch's secret (compared in constant time).
    pub fn launch_secret_matches(&self, given: &str) -> bool {
        match &self.lock().launch_secret {
            Some(s) => constant_time_eq(s.as_bytes(), given.as_bytes()),
            None => false,
        }
    }

    /// From now on WorkerHub calls must carry `secret` (workers started by someone else:
    /// one secret for the coordinator's life; the launcher sets a new one per launch with
    /// `workers_started`).
    pub fn expect_launch(&self, secret: String) {
        self.lock().launch_secret = Some(secret);
    }

    /// The token mutating control calls must carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.live.subscribe()
    }

    /// The persisted history (events.jsonl).
    pub fn history(&self) -> Vec<Record> {
        self.events.read_all()
    }

    /// Sends an event to watchers, and appends it to `events.jsonl` when a restarted
    /// coordinator needs it.
    pub(super) fn emit(&self, event: Event) {
        let record = Record::now(event);
        if record.event.persisted() {
            if let Err(err) = self.events.append(&record) {
                tracing::error!(path = %self.events.path().display(), "cannot append an event: {err}");
            }
        }
        let _ = self.live.send(record);
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn world(&self) -> u32 {
        self.cfg.cluster.world_size
    }

    pub(super) fn check_run_id(&self, run_id: &str) -> Result<(), Status> {
        if run_id != self.run_id {
            return Err(Status::failed_precondition(format!(
                "wrong run id {run_id:?}: this coordinator serves run {:?}",
                self.run_id
            )));
        }
        Ok(())
    }

    /// A call from a rank of the current launch: its run, a rank of the run, registered, and
    /// of the current generation (a stale process of an earlier launch is refused with
    /// `PermissionDenied`, which tells it to exit).
    pub(super) fn check_rank(
        &self,
        inner: &Inner,
        run_id: &str,
        rank: u32,
        generation: u32,
    ) -> Result<(), Status> {
        self.check_run_id(run_id)?;
        if rank >= self.world() {
            return Err(bad_rank(rank, self.world()));
        }
        if Some(generation) != inner.generation {
            return Err(stale(rank, generation, inner.generation));
        }
        if !inner.ranks.contains_key(&rank) {
            return Err(Status::not_found(format!(
                "rank {rank} is not registered in the current launch (generation {:?}); call Register first",
                inner.generation
            )));
        }
        Ok(())
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }
}
