//! The run state machine: what the coordinator knows of the run and decides for it.
//!
//! Plain synchronous code behind one mutex, so the gRPC services (`service.rs`), the
//! launcher and the tests all drive the same object. Every state change that a restarted
//! coordinator must know is appended to `events.jsonl`; every event also goes to the live
//! stream that `fastlightgen watch` follows.
//!
//! Launches ("generations"): the first registration after a start, or after the previous
//! launch was lost, opens a new generation, chooses the checkpoint to resume from (verifying
//! it) and hands the same answer to every rank of that launch.

use super::checkpoints::{step_dir_name, CheckpointStore, Manifest, Rejected, ShardFile};
use super::events::{event, now_unix, EventLog, History};
use super::settings::{differences, run_settings, settings_hash};
use crate::config::Config;
use flg_proto as pb;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tonic::Status;

/// The stages that take steps (and so have checkpoints).
pub const TRAINING_STAGES: [&str; 3] = ["pretrain", "pruning", "distill"];

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
}

struct RankInfo {
    pid: u32,
    hostname: String,
    last_beat: Instant,
}

/// Shards reported so far for one checkpoint.
struct Pending {
    stage: String,
    step: u64,
    tmp_dir: String,
    files: BTreeMap<u32, Vec<ShardFile>>,
}

struct Inner {
    phase: Phase,
    stage: String,
    step: u64,
    total_steps: u64,
    losses: BTreeMap<String, f64>,
    /// Steps per second, smoothed, and the last (time, step) it was computed from.
    steps_per_s: f64,
    last_metric: Option<(Instant, u64)>,
    completed: Vec<String>,
    generation: Option<u32>,
    generation_started: Instant,
    generations: u32,
    /// The current launch was lost (a rank died or went silent).
    lost: Option<String>,
    ranks: BTreeMap<u32, RankInfo>,
    resume: Option<Manifest>,
    resume_dir: Option<PathBuf>,
    pause: bool,
    checkpoint_asked: bool,
    stop_asked: Option<String>,
    /// (stage, step) checkpoints that were asked for and not yet committed.
    expected: BTreeSet<(String, u64)>,
    pending: BTreeMap<u64, Pending>,
    last_committed: Option<(u64, String, u64)>,
    restarts: u32,
    /// Launches lost so far (the launcher compares it with its value at spawn time).
    lost_launches: u32,
}

pub struct RunHub {
    pub cfg: Config,
    pub run_dir: PathBuf,
    pub run_id: String,
    pub config_hash: String,
    settings: BTreeMap<String, String>,
    token: String,
    events: EventLog,
    pub store: CheckpointStore,
    live: broadcast::Sender<Value>,
    inner: Mutex<Inner>,
}

/// A short random hex string (run ids, generated tokens).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    super::settings::hex(&buf)
}

fn bad_rank(rank: u32, world: u32) -> Status {
    Status::not_found(format!(
        "unknown rank {rank}: this run has ranks 0..{} (cluster.world_size = {world})",
        world.saturating_sub(1)
    ))
}

impl RunHub {
    /// Opens (or continues) the run of `cfg`: refuses when the run directory holds a run or
    /// checkpoint made with other run-defining settings, naming each setting that differs.
    pub fn open(cfg: Config, token: String) -> Result<RunHub, String> {
        let run_dir = cfg.run_dir();
        std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        let settings = run_settings(&cfg);
        let config_hash = settings_hash(&settings);
        let events = EventLog::new(&run_dir);
        let history = History::from_events(&events.read_all());
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
                return Err(refuse(format!("the run in {}", run_dir.display()), before));
            }
        }
        for (_, dir) in store.committed().iter().rev().take(1) {
            if let Ok(m) = CheckpointStore::read_manifest(dir) {
                if m.config_hash != config_hash {
                    return Err(refuse(format!("checkpoint {}", dir.display()), &m.settings));
                }
            }
        }
        let run_id = history
            .run_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", cfg.experiment.name, random_hex(4)));
        let (live, _) = broadcast::channel(4096);
        let phase = if history.finished {
            Phase::Finished
        } else {
            Phase::Starting
        };
        let last_committed = store.committed().last().and_then(|(n, dir)| {
            CheckpointStore::read_manifest(dir)
                .ok()
                .map(|m| (*n, m.stage, m.step))
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
                stage: String::new(),
                step: 0,
                total_steps: 0,
                losses: BTreeMap::new(),
                steps_per_s: 0.0,
                last_metric: None,
                completed: history.completed_stages.clone(),
                generation: None,
                generation_started: Instant::now(),
                generations: history.generations,
                lost: None,
                ranks: BTreeMap::new(),
                resume: None,
                resume_dir: None,
                pause: false,
                checkpoint_asked: false,
                stop_asked: None,
                expected: BTreeSet::new(),
                pending: BTreeMap::new(),
                last_committed,
                restarts: history.restarts,
                lost_launches: 0,
            }),
            settings: settings.clone(),
            cfg,
        };
        if history.run_id.is_none() {
            hub.emit(
                event(
                    "run_started",
                    json!({"run_id": hub.run_id, "config_hash": hub.config_hash, "settings": settings,
                           "stages": hub.cfg.experiment.stages}),
                ),
                true,
            );
        } else {
            hub.emit(
                event(
                    "coordinator_started",
                    json!({"run_id": hub.run_id, "completed_stages": history.completed_stages}),
                ),
                true,
            );
        }
        Ok(hub)
    }

    /// The token mutating control calls must carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.live.subscribe()
    }

    pub fn history(&self) -> Vec<Value> {
        self.events.read_all()
    }

    /// Sends an event to watchers, and appends it to `events.jsonl` when `persist`.
    fn emit(&self, e: Value, persist: bool) {
        if persist {
            if let Err(err) = self.events.append(&e) {
                tracing::error!(path = %self.events.path().display(), "cannot append an event: {err}");
            }
        }
        let _ = self.live.send(e);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn world(&self) -> u32 {
        self.cfg.cluster.world_size
    }

    pub fn stage_steps(&self, stage: &str) -> u64 {
        stage_steps(&self.cfg, stage)
    }

    pub fn stage_offset(&self, stage: &str) -> u64 {
        stage_offset(&self.cfg, stage)
    }

    fn check_run_id(&self, run_id: &str) -> Result<(), Status> {
        if run_id != self.run_id {
            return Err(Status::failed_precondition(format!(
                "wrong run id {run_id:?}: this coordinator serves run {:?}",
                self.run_id
            )));
        }
        Ok(())
    }

    /// A call from a rank of the current launch.
    fn check_rank(&self, inner: &Inner, run_id: &str, rank: u32) -> Result<(), Status> {
        self.check_run_id(run_id)?;
        if rank >= self.world() {
            return Err(bad_rank(rank, self.world()));
        }
        if !inner.ranks.contains_key(&rank) {
            return Err(Status::not_found(format!(
                "rank {rank} is not registered in the current launch (generation {:?}); call Register first",
                inner.generation
            )));
        }
        Ok(())
    }

    // ------------------------------------------------------------------ WorkerHub

    pub fn register(&self, r: &pb::RegisterRequest) -> Result<pb::RegisterReply, Status> {
        if !r.run_id.is_empty() {
            self.check_run_id(&r.run_id)?;
        }
        if r.config_hash != self.config_hash {
            return Err(Status::failed_precondition(format!(
                "rank {} runs with other settings than the coordinator (config hash {} vs {}): start both from the same config file",
                r.rank, r.config_hash, self.config_hash
            )));
        }
        if r.world_size != self.world() {
            return Err(Status::invalid_argument(format!(
                "rank {} was started with {} ranks; the config's cluster.world_size is {} (mpirun -np must match)",
                r.rank,
                r.world_size,
                self.world()
            )));
        }
        if r.rank >= self.world() {
            return Err(bad_rank(r.rank, self.world()));
        }
        let mut inner = self.lock();
        if inner.phase.ended() {
            return Err(Status::failed_precondition(format!(
                "run {} has {}; nothing is left to do",
                self.run_id,
                inner.phase.name()
            )));
        }
        if let Some(info) = inner.ranks.get(&r.rank) {
            if inner.lost.is_none() {
                return Err(Status::already_exists(format!(
                    "rank {} is already registered in generation {} (pid {} on {}, last heartbeat {:.1} s ago)",
                    r.rank,
                    inner.generation.unwrap_or(0),
                    info.pid,
                    info.hostname,
                    info.last_beat.elapsed().as_secs_f64()
                )));
            }
        }
        if inner.generation.is_none() || inner.lost.is_some() {
            self.start_generation(&mut inner);
        }
        inner.ranks.insert(
            r.rank,
            RankInfo {
                pid: r.pid,
                hostname: r.hostname.clone(),
                last_beat: Instant::now(),
            },
        );
        let generation = inner.generation.unwrap_or(0);
        self.emit(
            event(
                "rank_registered",
                json!({"rank": r.rank, "pid": r.pid, "hostname": r.hostname, "generation": generation}),
            ),
            false,
        );
        if inner.ranks.len() as u32 == self.world() && inner.phase == Phase::Starting {
            inner.phase = Phase::Running;
            self.emit(
                event(
                    "ranks_ready",
                    json!({"generation": generation, "world_size": self.world()}),
                ),
                true,
            );
        }
        let (resume_from, resume_stage, resume_step) = match (&inner.resume, &inner.resume_dir) {
            (Some(m), Some(d)) => (d.display().to_string(), m.stage.clone(), m.step),
            _ => (String::new(), String::new(), 0),
        };
        Ok(pb::RegisterReply {
            run_id: self.run_id.clone(),
            generation,
            resume_from,
            completed_stages: inner.completed.clone(),
            resume_stage,
            resume_step,
        })
    }

    /// Opens a launch: picks (and verifies) the checkpoint it resumes from.
    fn start_generation(&self, inner: &mut Inner) {
        let generation = inner.generations;
        inner.generations += 1;
        inner.generation = Some(generation);
        inner.generation_started = Instant::now();
        inner.lost = None;
        inner.ranks.clear();
        inner.pending.clear();
        inner.expected.clear();
        inner.phase = Phase::Starting;
        if let Err(e) = self.store.clear_uncommitted() {
            tracing::warn!("cannot remove uncommitted checkpoint directories: {e}");
        }
        let (point, rejected) = self.store.resume_point();
        for Rejected { dir, reason } in rejected {
            tracing::warn!(checkpoint = %dir.display(), "not resuming from a bad checkpoint: {reason}");
            self.emit(
                event(
                    "checkpoint_rejected",
                    json!({"dir": dir.display().to_string(), "reason": reason}),
                ),
                true,
            );
        }
        // A checkpoint of a stage that has since finished is of no use: its output is on disk.
        let point = point.filter(|p| !inner.completed.contains(&p.manifest.stage));
        inner.resume = point.as_ref().map(|p| p.manifest.clone());
        inner.resume_dir = point.as_ref().map(|p| p.dir.clone());
        self.emit(
            event(
                "generation_started",
                json!({
                    "generation": generation,
                    "resume_from": point.as_ref().map(|p| p.dir.display().to_string()),
                    "resume_stage": point.as_ref().map(|p| p.manifest.stage.clone()),
                    "resume_step": point.as_ref().map(|p| p.manifest.step),
                    "completed_stages": inner.completed,
                }),
            ),
            true,
        );
    }

    pub fn heartbeat(&self, h: &pb::HeartbeatRequest) -> Result<(), Status> {
        let mut inner = self.lock();
        self.check_rank(&inner, &h.run_id, h.rank)?;
        if Some(h.generation) != inner.generation {
            return Err(Status::failed_precondition(format!(
                "rank {} belongs to launch {}, the current one is {:?}: a stale process should exit",
                h.rank, h.generation, inner.generation
            )));
        }
        if let Some(info) = inner.ranks.get_mut(&h.rank) {
            info.last_beat = Instant::now();
        }
        Ok(())
    }

    pub fn report_metrics(&self, m: &pb::MetricsReport) -> Result<(), Status> {
        let mut inner = self.lock();
        self.check_rank(&inner, &m.run_id, m.rank)?;
        let now = Instant::now();
        if let Some((t, s)) = inner.last_metric {
            let dt = now.duration_since(t).as_secs_f64();
            if m.step > s && dt > 0.0 && m.stage == inner.stage {
                let rate = (m.step - s) as f64 / dt;
                inner.steps_per_s = if inner.steps_per_s > 0.0 {
                    0.8 * inner.steps_per_s + 0.2 * rate
                } else {
                    rate
                };
            }
        }
        inner.last_metric = Some((now, m.step));
        inner.stage = m.stage.clone();
        inner.step = m.step;
        inner.total_steps = m.total_steps;
        inner.losses = m.values.iter().map(|(k, v)| (k.clone(), *v)).collect();
        self.emit(
            event(
                "step",
                json!({"stage": m.stage, "step": m.step, "total_steps": m.total_steps, "values": inner.losses}),
            ),
            false,
        );
        Ok(())
    }

    /// Rank 0, at a step boundary (`step` steps of `stage` done): what to do before the next.
    pub fn next_command(&self, c: &pb::NextCommandRequest) -> Result<pb::Command, Status> {
        use pb::command::Kind;
        let mut inner = self.lock();
        self.check_rank(&inner, &c.run_id, c.rank)?;
        if c.rank != 0 {
            return Err(Status::invalid_argument(format!(
                "rank {} asked for a command: only rank 0 fetches commands (it broadcasts them to the others)",
                c.rank
            )));
        }
        let key = (c.stage.clone(), c.step);
        let reply = |kind: Kind, reason: &str| pb::Command {
            kind: kind as i32,
            reason: reason.to_string(),
        };
        if let Some(reason) = inner.stop_asked.clone() {
            inner.expected.insert(key);
            inner.phase = Phase::Stopping;
            return Ok(reply(Kind::Stop, &reason));
        }
        if inner.checkpoint_asked {
            inner.checkpoint_asked = false;
            inner.expected.insert(key);
            return Ok(reply(Kind::Checkpoint, "asked for"));
        }
        if inner.pause {
            if inner.phase != Phase::Paused {
                inner.phase = Phase::Paused;
                self.emit(
                    event("paused", json!({"stage": c.stage, "step": c.step})),
                    true,
                );
            }
            return Ok(reply(Kind::Pause, "paused"));
        }
        if inner.phase == Phase::Paused {
            inner.phase = Phase::Running;
            self.emit(
                event("resumed", json!({"stage": c.stage, "step": c.step})),
                true,
            );
        }
        let interval = self.cfg.checkpoint.interval_steps;
        let total = self.stage_steps(&c.stage);
        let committed = inner
            .last_committed
            .as_ref()
            .is_some_and(|(_, s, n)| (s, *n) == (&c.stage, c.step));
        if interval > 0
            && c.step > 0
            && c.step < total
            && c.step % interval == 0
            && !inner.expected.contains(&key)
            && !committed
        {
            inner.expected.insert(key);
            return Ok(reply(Kind::Checkpoint, "interval"));
        }
        Ok(reply(Kind::Continue, ""))
    }

    /// A rank's files of a checkpoint; the last of the W reports commits it.
    pub fn commit_shard(&self, c: &pb::ShardCommit) -> Result<Option<PathBuf>, Status> {
        let mut inner = self.lock();
        self.check_rank(&inner, &c.run_id, c.rank)?;
        if !inner.expected.contains(&(c.stage.clone(), c.step)) {
            return Err(Status::failed_precondition(format!(
                "no checkpoint was asked for at {} step {}: rank {} reported files nobody expects",
                c.stage, c.step, c.rank
            )));
        }
        let global = self.stage_offset(&c.stage) + c.step;
        if c.global_step != global {
            return Err(Status::invalid_argument(format!(
                "{} step {} is global step {global}, the rank said {}",
                c.stage, c.step, c.global_step
            )));
        }
        let generation = inner.generation.unwrap_or(0);
        let tmp_dir = super::checkpoints::tmp_dir_name(global, generation);
        if c.tmp_dir != tmp_dir {
            return Err(Status::invalid_argument(format!(
                "checkpoint files of generation {generation} at step {global} belong in {tmp_dir}, not {:?}",
                c.tmp_dir
            )));
        }
        if c.files.is_empty() {
            return Err(Status::invalid_argument("a shard commit with no files"));
        }
        for f in &c.files {
            if f.path.is_empty() || f.path.contains('/') || f.path.starts_with('.') {
                return Err(Status::invalid_argument(format!(
                    "shard file name {:?}: must be a plain file name inside the checkpoint directory",
                    f.path
                )));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Status::invalid_argument(format!(
                    "shard file {}: {:?} is not a sha256 hex digest",
                    f.path, f.sha256
                )));
            }
        }
        let pending = inner.pending.entry(global).or_insert_with(|| Pending {
            stage: c.stage.clone(),
            step: c.step,
            tmp_dir,
            files: BTreeMap::new(),
        });
        if pending.files.contains_key(&c.rank) {
            return Err(Status::already_exists(format!(
                "rank {} already reported its files for step {global}",
                c.rank
            )));
        }
        pending.files.insert(
            c.rank,
            c.files
                .iter()
                .map(|f| ShardFile {
                    rank: c.rank,
                    path: f.path.clone(),
                    bytes: f.bytes,
                    sha256: f.sha256.clone(),
                })
                .collect(),
        );
        if pending.files.len() < self.world() as usize {
            return Ok(None);
        }
        let pending = inner.pending.remove(&global).expect("present");
        let manifest = Manifest {
            format: 1,
            run_id: self.run_id.clone(),
            stage: pending.stage.clone(),
            step: pending.step,
            global_step: global,
            world_size: self.world(),
            config_hash: self.config_hash.clone(),
            settings: self.settings.clone(),
            files: pending.files.into_values().flatten().collect(),
            committed_unix: now_unix(),
        };
        match self.store.commit(&pending.tmp_dir, &manifest) {
            Ok(dir) => {
                inner
                    .expected
                    .remove(&(pending.stage.clone(), pending.step));
                inner.last_committed = Some((global, pending.stage.clone(), pending.step));
                let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
                self.emit(
                    event(
                        "checkpoint_committed",
                        json!({"stage": pending.stage, "step": pending.step, "global_step": global,
                               "dir": dir.display().to_string(), "bytes": bytes}),
                    ),
                    true,
                );
                Ok(Some(dir))
            }
            Err(e) => {
                self.emit(
                    event("checkpoint_failed", json!({"step": global, "reason": e})),
                    true,
                );
                Err(Status::internal(format!(
                    "checkpoint {} not committed: {e}",
                    step_dir_name(global)
                )))
            }
        }
    }

    /// Rank 0: a stage started, finished, stopped or failed.
    pub fn report_stage(&self, s: &pb::StageReport) -> Result<(), Status> {
        let mut inner = self.lock();
        self.check_rank(&inner, &s.run_id, s.rank)?;
        if s.rank != 0 {
            return Err(Status::invalid_argument("only rank 0 reports stages"));
        }
        if !self.cfg.runs_stage(&s.stage) {
            return Err(Status::invalid_argument(format!(
                "stage {:?} is not in this run's experiment.stages {:?}",
                s.stage, self.cfg.experiment.stages
            )));
        }
        match s.event.as_str() {
            "started" => {
                inner.stage = s.stage.clone();
                inner.step = 0;
                inner.total_steps = self.stage_steps(&s.stage);
                inner.losses.clear();
                inner.last_metric = None;
                inner.steps_per_s = 0.0;
                if inner.phase == Phase::Starting {
                    inner.phase = Phase::Running;
                }
                self.emit(
                    event(
                        "stage_started",
                        json!({"stage": s.stage, "total_steps": inner.total_steps, "generation": inner.generation}),
                    ),
                    true,
                );
            }
            "done" => {
                if !inner.completed.contains(&s.stage) {
                    inner.completed.push(s.stage.clone());
                }
                self.emit(
                    event(
                        "stage_done",
                        json!({"stage": s.stage, "seconds": s.seconds, "message": s.message}),
                    ),
                    true,
                );
                let all_done = self
                    .cfg
                    .experiment
                    .stages
                    .iter()
                    .all(|st| inner.completed.contains(st));
                if all_done {
                    inner.phase = Phase::Finished;
                    inner.stage = "done".into();
                    self.emit(event("finished", json!({"run_id": self.run_id})), true);
                }
            }
            "stopped" => {
                inner.phase = Phase::Stopped;
                self.emit(
                    event(
                        "stopped",
                        json!({"stage": s.stage, "step": inner.step, "reason": inner.stop_asked}),
                    ),
                    true,
                );
            }
            "failed" => {
                inner.phase = Phase::Failed;
                self.emit(
                    event("failed", json!({"stage": s.stage, "message": s.message})),
                    true,
                );
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "stage event {other:?}: expected started, done, stopped or failed"
                )))
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ control

    pub fn status(&self) -> pb::RunStatus {
        let inner = self.lock();
        let timeout = Duration::from_secs_f64(self.cfg.cluster.heartbeat_timeout_s);
        let alive = if inner.phase.ended() || inner.lost.is_some() {
            0
        } else {
            inner
                .ranks
                .values()
                .filter(|r| r.last_beat.elapsed() < timeout)
                .count() as u32
        };
        let remaining = inner.total_steps.saturating_sub(inner.step) as f64;
        let (last_step, last_stage) = inner
            .last_committed
            .as_ref()
            .map(|(g, s, _)| (*g, s.clone()))
            .unwrap_or_default();
        let batch = match inner.stage.as_str() {
            "pretrain" => self.cfg.pretrain.batch_size,
            "pruning" => self.cfg.pruning.batch_size,
            "distill" => self.cfg.distill.batch_size,
            _ => 0,
        } as f64;
        pb::RunStatus {
            run_id: self.run_id.clone(),
            experiment: self.cfg.experiment.name.clone(),
            stage: inner.stage.clone(),
            state: inner.phase.name().into(),
            step: inner.step,
            total_steps: inner.total_steps,
            losses: inner.losses.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            samples_per_second: inner.steps_per_s * batch,
            eta_seconds: if inner.steps_per_s > 0.0 {
                remaining / inner.steps_per_s
            } else {
                0.0
            },
            ranks_alive: alive,
            world_size: self.world(),
            last_committed_step: last_step,
            last_committed_stage: last_stage,
            restarts: inner.restarts,
        }
    }

    fn refuse_if_ended(&self, inner: &Inner, what: &str) -> Option<pb::ControlReply> {
        inner.phase.ended().then(|| {
            refused(&format!(
                "cannot {what}: the run has {}",
                inner.phase.name()
            ))
        })
    }

    pub fn pause(&self, reason: &str) -> pb::ControlReply {
        let mut inner = self.lock();
        if let Some(r) = self.refuse_if_ended(&inner, "pause") {
            return r;
        }
        inner.pause = true;
        self.emit(event("pause_requested", json!({"reason": reason})), true);
        accepted("the ranks pause at the next step boundary")
    }

    pub fn resume(&self, reason: &str) -> pb::ControlReply {
        let mut inner = self.lock();
        if let Some(r) = self.refuse_if_ended(&inner, "resume") {
            return r;
        }
        if !inner.pause {
            return refused("the run is not paused");
        }
        inner.pause = false;
        self.emit(event("resume_requested", json!({"reason": reason})), true);
        accepted("the ranks continue")
    }

    pub fn checkpoint(&self, reason: &str) -> pb::ControlReply {
        let mut inner = self.lock();
        if let Some(r) = self.refuse_if_ended(&inner, "checkpoint") {
            return r;
        }
        if !TRAINING_STAGES.contains(&inner.stage.as_str()) {
            return refused(&format!(
                "stage {:?} has no steps to checkpoint; its output is written when it ends",
                inner.stage
            ));
        }
        inner.checkpoint_asked = true;
        self.emit(
            event("checkpoint_requested", json!({"reason": reason})),
            true,
        );
        accepted("a checkpoint is taken at the next step boundary")
    }

    pub fn stop(&self, reason: &str) -> pb::ControlReply {
        let mut inner = self.lock();
        if let Some(r) = self.refuse_if_ended(&inner, "stop") {
            return r;
        }
        inner.stop_asked = Some(reason.to_string());
        inner.pause = false;
        self.emit(event("stop_requested", json!({"reason": reason})), true);
        accepted("the ranks write a final checkpoint at the next step boundary and exit")
    }

    // ------------------------------------------------------------------ supervision

    /// Whether a stop was asked for.
    pub fn stop_asked(&self) -> bool {
        self.lock().stop_asked.is_some()
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// Pids of the current launch's ranks on this host (to end them on a restart).
    pub fn local_pids(&self) -> Vec<u32> {
        let host = hostname();
        self.lock()
            .ranks
            .values()
            .filter(|r| r.hostname == host)
            .map(|r| r.pid)
            .collect()
    }

    /// Checks the current launch's heartbeats; returns why it is lost (once) when a rank is
    /// silent for longer than the timeout, or did not register within it.
    pub fn check_heartbeats(&self) -> Option<String> {
        let mut inner = self.lock();
        if inner.phase.ended() || inner.lost.is_some() || inner.generation.is_none() {
            return None;
        }
        let timeout = self.cfg.cluster.heartbeat_timeout_s;
        let silent = inner
            .ranks
            .iter()
            .map(|(r, i)| (*r, i.last_beat.elapsed().as_secs_f64()))
            .filter(|(_, s)| *s > timeout)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let reason = match silent {
            Some((rank, s)) => format!(
                "rank {rank} sent no heartbeat for {s:.1} s (cluster.heartbeat_timeout_s = {timeout})"
            ),
            None if (inner.ranks.len() as u32) < self.world()
                && inner.generation_started.elapsed().as_secs_f64() > timeout * 4.0 =>
            {
                format!(
                    "only {} of {} ranks registered within {:.0} s",
                    inner.ranks.len(),
                    self.world(),
                    timeout * 4.0
                )
            }
            None => return None,
        };
        self.lose(&mut inner, &reason);
        Some(reason)
    }

    fn lose(&self, inner: &mut Inner, reason: &str) {
        inner.lost = Some(reason.to_string());
        inner.lost_launches += 1;
        inner.phase = Phase::Restarting;
        tracing::warn!("launch {:?} lost: {reason}", inner.generation);
        self.emit(
            event(
                "rank_lost",
                json!({"generation": inner.generation, "reason": reason}),
            ),
            true,
        );
    }

    /// The launcher saw the workers exit (`code`) while the run was not over.
    pub fn workers_exited(&self, code: Option<i32>) {
        let mut inner = self.lock();
        if inner.phase.ended() || inner.lost.is_some() {
            return;
        }
        let reason = format!("the workers exited with {code:?} before the run ended");
        self.lose(&mut inner, &reason);
    }

    /// The launcher starts the workers again.
    pub fn restarting(&self, reason: &str) {
        let mut inner = self.lock();
        inner.restarts += 1;
        self.emit(
            event(
                "restarting",
                json!({"restart": inner.restarts, "reason": reason}),
            ),
            true,
        );
    }

    /// How many launches were lost so far.
    pub fn lost_launches(&self) -> u32 {
        self.lock().lost_launches
    }

    /// A launch is on: its ranks registered and none was lost.
    pub fn generation_live(&self) -> bool {
        let inner = self.lock();
        inner.generation.is_some() && inner.lost.is_none()
    }

    /// The run failed for a reason outside the ranks (e.g. out of restarts).
    pub fn fail(&self, message: &str) {
        let mut inner = self.lock();
        if inner.phase.ended() {
            return;
        }
        inner.phase = Phase::Failed;
        self.emit(event("failed", json!({"message": message})), true);
    }
}

/// Steps a stage takes (0 for the stages without steps).
pub fn stage_steps(cfg: &Config, stage: &str) -> u64 {
    match stage {
        "pretrain" => cfg.pretrain.steps,
        "pruning" => cfg.pruning.steps,
        "distill" => cfg.distill.steps,
        _ => 0,
    }
}

/// Steps of the training stages before `stage`, so that `offset + step` (the global step)
/// names a checkpoint uniquely across stages.
pub fn stage_offset(cfg: &Config, stage: &str) -> u64 {
    cfg.experiment
        .stages
        .iter()
        .take_while(|s| s.as_str() != stage)
        .map(|s| stage_steps(cfg, s))
        .sum()
}

fn refused(message: &str) -> pb::ControlReply {
    pb::ControlReply {
        accepted: false,
        message: message.into(),
    }
}

fn accepted(message: &str) -> pb::ControlReply {
    pb::ControlReply {
        accepted: true,
        message: message.into(),
    }
}

/// This machine's host name (ranks report theirs when they register).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
