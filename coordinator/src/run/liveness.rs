//! Registration and liveness: launches ("generations"), heartbeats, and the one rule that
//! declares a launch lost.
//!
//! The first registration after a start, or after the previous launch was lost, opens a new
//! generation, chooses the checkpoint to resume from (verifying it) and hands the same answer
//! to every rank of that launch. A launch is lost when a registered rank is silent for longer
//! than `cluster.heartbeat_timeout_s`, when not every rank registered within the registration
//! window after the workers were started, or when the workers exit before the run ended.
//! Errors inside a rank are not losses: the rank reports its stage as failed and the run
//! fails (a deterministic error would fail again).

use super::checkpoints::Rejected;
use super::hub::{bad_rank, Inner, Phase, RankInfo, RunHub};
use flg_core::events::Event;
use flg_proto as pb;
use std::time::{Duration, Instant};
use tonic::Status;

/// A monitor gap beyond its period that counts as the coordinator having stalled (a busy
/// runtime delays a tick by milliseconds, not a second).
const STALL_GRACE: Duration = Duration::from_secs(1);

/// Linux's largest possible pid (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: u32 = 1 << 22;

/// Seconds the workers have to register after they were started: starting mpirun across
/// nodes and loading libtorch and a large model take a while, so at least a minute, and
/// never less than four heartbeat timeouts.
pub fn registration_window_s(heartbeat_timeout_s: f64) -> f64 {
    (heartbeat_timeout_s * 4.0).max(60.0)
}

impl RunHub {
    /// A rank of a launch says it is there.
    pub fn register(
        &self,
        r: &pb::RegisterRequest,
        now: Instant,
    ) -> Result<pb::RegisterReply, Status> {
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
        // Only a display field (nothing signals a pid from an RPC), but a value no process
        // can have is a forged or broken call.
        if !(2..=PID_MAX_LIMIT).contains(&r.pid) {
            return Err(Status::invalid_argument(format!(
                "rank {} registered with pid {}, which no process can have (2..={PID_MAX_LIMIT})",
                r.rank, r.pid
            )));
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
                    now.saturating_duration_since(info.last_beat).as_secs_f64()
                )));
            }
        }
        if inner.generation.is_none() || inner.lost.is_some() {
            self.start_generation(&mut inner, now);
        }
        inner.ranks.insert(
            r.rank,
            RankInfo {
                pid: r.pid,
                hostname: r.hostname.clone(),
                last_beat: now,
            },
        );
        let generation = inner.generation.unwrap_or(0);
        self.emit(Event::RankRegistered {
            rank: r.rank,
            pid: r.pid,
            hostname: r.hostname.clone(),
            generation,
        });
        if inner.ranks.len() as u32 == self.world() && inner.phase == Phase::Starting {
            inner.phase = Phase::Running;
            self.emit(Event::RanksReady {
                generation,
                world_size: self.world(),
            });
        }
        let (resume_from, resume_stage, resume_step) = match &inner.resume {
            Some((d, m)) => (d.display().to_string(), m.stage.clone(), m.step),
            None => (String::new(), String::new(), 0),
        };
        Ok(pb::RegisterReply {
            run_id: self.run_id.clone(),
            generation,
            resume_from,
            completed_stages: inner
                .completed
                .iter()
                .map(|s| s.name().to_string())
                .collect(),
            resume_stage,
            resume_step,
        })
    }

    /// Opens a launch: picks (and verifies) the checkpoint it resumes from.
    fn start_generation(&self, inner: &mut Inner, now: Instant) {
        let generation = inner.generations;
        inner.generations += 1;
        inner.generation = Some(generation);
        // Started by the launcher (which said when), or by someone else's mpirun (the
        // first registration is the first sign of it).
        if inner.lost.is_some() || inner.launch_started.is_none() {
            inner.launch_started = Some(now);
        }
        inner.lost = None;
        inner.ranks.clear();
        inner.pending.clear();
        inner.expected.clear();
        inner.phase = Phase::Starting;
        if let Err(e) = self.store.clear_uncommitted() {
            tracing::warn!("cannot remove uncommitted checkpoint directories: {e}");
        }
        self.recheck_outputs(inner);
        // The workers start with the first stage not done; only a checkpoint of that stage
        // is of use (a later stage's, when an earlier output was lost, is not).
        let first_todo = self
            .cfg
            .stages()
            .into_iter()
            .find(|s| !inner.completed.contains(s));
        let (point, rejected) = self
            .store
            .resume_point_of(|m| first_todo.is_some_and(|s| s.name() == m.stage));
        for Rejected { dir, reason } in rejected {
            tracing::warn!(checkpoint = %dir.display(), "not resuming from a bad checkpoint: {reason}");
            self.emit(Event::CheckpointRejected {
                dir: dir.display().to_string(),
                reason,
            });
        }
        inner.resume = point.as_ref().map(|p| (p.dir.clone(), p.manifest.clone()));
        self.emit(Event::GenerationStarted {
            generation,
            resume_from: point.as_ref().map(|p| p.dir.display().to_string()),
            resume_stage: point
                .as_ref()
                .and_then(|p| flg_core::Stage::parse(&p.manifest.stage)),
            resume_step: point.as_ref().map(|p| p.manifest.step),
            completed_stages: inner.completed.clone(),
        });
    }

    pub fn heartbeat(&self, h: &pb::HeartbeatRequest, now: Instant) -> Result<(), Status> {
        let mut inner = self.lock();
        self.check_rank(&inner, &h.run_id, h.rank, h.generation)?;
        if let Some(info) = inner.ranks.get_mut(&h.rank) {
            info.last_beat = now;
        }
        Ok(())
    }

    /// The launcher started the workers at `now`, handing them `secret`: the registration
    /// window counts from here, and only calls carrying `secret` are accepted from now on
    /// (every process of an earlier launch is shut out).
    pub fn workers_started(&self, now: Instant, secret: String) {
        let mut inner = self.lock();
        inner.launch_started = Some(now);
        inner.launch_secret = Some(secret);
        inner.lost = None;
        // The previous launch's ranks are gone (or shut out by the new secret); the next
        // registration opens a new generation, and until then the window decides whether
        // this launch is lost too.
        if inner.generation.take().is_some() {
            inner.ranks.clear();
            if !inner.phase.ended() {
                inner.phase = Phase::Starting;
            }
        }
    }

    /// The coordinator's monitor runs at `now`, meaning to run every `period`. A much
    /// longer gap since its last run means this process itself was not running (SIGSTOP, a
    /// suspended VM, swapped out): the ranks could not reach it, so the gap is not counted
    /// as their silence. Returns the time credited, if any.
    pub fn tick(&self, now: Instant, period: Duration) -> Option<Duration> {
        let mut inner = self.lock();
        let last = inner.last_tick.replace(now)?;
        let stalled = now.saturating_duration_since(last).saturating_sub(period);
        if stalled < STALL_GRACE {
            return None;
        }
        for info in inner.ranks.values_mut() {
            info.last_beat = (info.last_beat + stalled).min(now);
        }
        if let Some(started) = inner.launch_started.as_mut() {
            *started = (*started + stalled).min(now);
        }
        tracing::warn!(
            "the coordinator did not run for {:.1} s; that time does not count against the ranks' heartbeats",
            stalled.as_secs_f64()
        );
        Some(stalled)
    }

    /// Whether the current launch is lost at `now`; says why (once). The only place that
    /// decides a launch is lost from silence: a registered rank silent for longer than the
    /// heartbeat timeout, or not every rank registered within the registration window.
    pub fn check_liveness(&self, now: Instant) -> Option<String> {
        let mut inner = self.lock();
        if inner.phase.ended() || inner.lost.is_some() {
            return None;
        }
        let Some(started) = inner.launch_started else {
            return None;
        };
        let timeout = self.cfg.cluster.heartbeat_timeout_s;
        let window = registration_window_s(timeout);
        let silent = inner
            .ranks
            .iter()
            .map(|(r, i)| (*r, now.saturating_duration_since(i.last_beat).as_secs_f64()))
            .filter(|(_, s)| *s > timeout)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let waited = now.saturating_duration_since(started).as_secs_f64();
        let reason = match silent {
            Some((rank, s)) => format!(
                "rank {rank} sent no heartbeat for {s:.1} s (cluster.heartbeat_timeout_s = {timeout})"
            ),
            None if (inner.ranks.len() as u32) < self.world() && waited > window => format!(
                "only {} of {} ranks registered within {window:.0} s of starting the workers",
                inner.ranks.len(),
                self.world(),
            ),
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
        self.emit(Event::RankLost {
            generation: inner.generation,
            reason: reason.to_string(),
        });
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
        self.emit(Event::Restarting {
            restart: inner.restarts,
            reason: reason.to_string(),
        });
    }

    /// How many launches were lost so far.
    pub fn lost_launches(&self) -> u32 {
        self.lock().lost_launches
    }

    /// The run failed for a reason outside the ranks (e.g. out of restarts).
    pub fn fail(&self, message: &str) {
        let mut inner = self.lock();
        if inner.phase.ended() {
            return;
        }
        inner.phase = Phase::Failed;
        self.emit(Event::Failed {
            stage: None,
            message: message.to_string(),
        });
    }
}
