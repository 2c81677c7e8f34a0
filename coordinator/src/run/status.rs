//! Where the run stands: rank 0's stage reports and step metrics, and the status people and
//! scripts read (`fastlightgen status`, the Control API).

use super::hub::{run_stage, Phase, RunHub};
use flg_core::events::Event;
use flg_proto as pb;
use std::time::{Duration, Instant};
use tonic::Status;

impl RunHub {
    /// Rank 0's losses after a step (`now` is when they arrived, for the step rate).
    pub fn report_metrics(&self, m: &pb::MetricsReport, now: Instant) -> Result<(), Status> {
        let mut inner = self.lock();
        self.check_rank(&inner, &m.run_id, m.rank, m.generation)?;
        let stage = run_stage(&self.cfg, &m.stage)?;
        if let Some((t, s)) = inner.last_metric {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if m.step > s && dt > 0.0 && Some(stage) == inner.stage {
                let rate = (m.step - s) as f64 / dt;
                inner.steps_per_s = if inner.steps_per_s > 0.0 {
                    0.8 * inner.steps_per_s + 0.2 * rate
                } else {
                    rate
                };
            }
        }
        inner.last_metric = Some((now, m.step));
        inner.stage = Some(stage);
        inner.step = m.step;
        inner.total_steps = m.total_steps;
        inner.losses = m.values.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let rate = inner.steps_per_s;
        let known = rate > 0.0;
        self.emit(Event::Step {
            stage,
            step: m.step,
            total_steps: m.total_steps,
            values: inner.losses.clone(),
            samples_per_s: known.then(|| rate * stage.batch_size(&self.cfg) as f64),
            eta_s: known.then(|| m.total_steps.saturating_sub(m.step) as f64 / rate),
        });
        Ok(())
    }

    /// Rank 0: a stage started, finished, stopped or failed.
    pub fn report_stage(&self, s: &pb::StageReport) -> Result<(), Status> {
        let mut inner = self.lock();
        self.check_rank(&inner, &s.run_id, s.rank, s.generation)?;
        if s.rank != 0 {
            return Err(Status::invalid_argument("only rank 0 reports stages"));
        }
        let stage = run_stage(&self.cfg, &s.stage)?;
        match pb::StageEvent::try_from(s.event) {
            Ok(pb::StageEvent::Started) => {
                inner.stage = Some(stage);
                inner.step = 0;
                inner.total_steps = stage.steps(&self.cfg);
                inner.losses.clear();
                inner.last_metric = None;
                inner.steps_per_s = 0.0;
                if inner.phase == Phase::Starting {
                    inner.phase = Phase::Running;
                }
                self.emit(Event::StageStarted {
                    stage,
                    total_steps: inner.total_steps,
                    generation: inner.generation,
                });
            }
            Ok(pb::StageEvent::Done) => {
                if !inner.completed.contains(&stage) {
                    inner.completed.push(stage);
                }
                self.emit(Event::StageDone {
                    stage,
                    seconds: s.seconds,
                    message: s.message.clone(),
                });
                if self
                    .cfg
                    .stages()
                    .iter()
                    .all(|st| inner.completed.contains(st))
                {
                    inner.phase = Phase::Finished;
                    inner.stage = None;
                    self.emit(Event::Finished {
                        run_id: self.run_id.clone(),
                    });
                }
            }
            Ok(pb::StageEvent::Stopped) => {
                inner.phase = Phase::Stopped;
                self.emit(Event::Stopped {
                    stage,
                    step: inner.step,
                    reason: inner.stop_asked.clone(),
                });
            }
            Ok(pb::StageEvent::Failed) => {
                inner.phase = Phase::Failed;
                self.emit(Event::Failed {
                    stage: Some(stage),
                    message: s.message.clone(),
                });
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "stage event {}: expected STARTED, DONE, STOPPED or FAILED",
                    s.event
                )))
            }
        }
        Ok(())
    }

    /// The run's status at `now` (ranks alive, rate, ETA).
    pub fn status(&self, now: Instant) -> pb::RunStatus {
        let inner = self.lock();
        let timeout = Duration::from_secs_f64(self.cfg.cluster.heartbeat_timeout_s);
        let alive = if inner.phase.ended() || inner.lost.is_some() {
            0
        } else {
            inner
                .ranks
                .values()
                .filter(|r| now.saturating_duration_since(r.last_beat) < timeout)
                .count() as u32
        };
        let remaining = inner.total_steps.saturating_sub(inner.step) as f64;
        let (last_step, last_stage) = inner
            .last_committed
            .map(|(g, s, _)| (g, s.name().to_string()))
            .unwrap_or_default();
        let batch = inner.stage.map_or(0, |s| s.batch_size(&self.cfg)) as f64;
        let stage = match inner.stage {
            Some(s) => s.name(),
            None if inner.phase == Phase::Finished => "done",
            None => "",
        };
        pb::RunStatus {
            run_id: self.run_id.clone(),
            experiment: self.cfg.experiment.name.clone(),
            stage: stage.into(),
            state: inner.phase.to_proto() as i32,
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
}

/// `status` as one JSON object: the fields of gRPC Status, by the same names (what
/// `fastlightgen status --json` prints and `GET /status` serves).
pub fn status_json(s: &pb::RunStatus) -> serde_json::Value {
    let losses: std::collections::BTreeMap<_, _> = s.losses.iter().collect();
    serde_json::json!({
        "run_id": s.run_id, "experiment": s.experiment, "stage": s.stage,
        "state": crate::client::state_name(s),
        "step": s.step, "total_steps": s.total_steps, "losses": losses,
        "samples_per_second": s.samples_per_second, "eta_seconds": s.eta_seconds,
        "ranks_alive": s.ranks_alive, "world_size": s.world_size,
        "last_committed_step": s.last_committed_step,
        "last_committed_stage": s.last_committed_stage, "restarts": s.restarts,
    })
}

/// One rank as the status page shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RankView {
    pub rank: u32,
    pub host: String,
    pub pid: u32,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: f64,
}

/// What the status page shows beyond `status`: the stages and how far each got, the
/// ranks and their heartbeats, the committed checkpoints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PageView {
    pub status: serde_json::Value,
    /// (stage, "done" | "running" | "waiting").
    pub stages: Vec<(String, String)>,
    pub ranks: Vec<RankView>,
    pub heartbeat_timeout_s: f64,
    /// (global step, directory name), newest last.
    pub checkpoints: Vec<(u64, String)>,
    pub generation: Option<u32>,
}

impl RunHub {
    /// The status page's view of the run at `now`.
    pub fn page(&self, now: Instant) -> PageView {
        let status = self.status(now);
        let checkpoints = self
            .store
            .committed()
            .into_iter()
            .map(|(g, dir)| {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (g, name)
            })
            .collect();
        let inner = self.lock();
        let stages = self
            .cfg
            .stages()
            .into_iter()
            .map(|st| {
                let state = if inner.completed.contains(&st) {
                    "done"
                } else if inner.stage == Some(st) && !inner.phase.ended() {
                    "running"
                } else {
                    "waiting"
                };
                (st.name().to_string(), state.to_string())
            })
            .collect();
        let ranks = inner
            .ranks
            .iter()
            .map(|(r, info)| RankView {
                rank: *r,
                host: info.hostname.clone(),
                pid: info.pid,
                heartbeat_age_s: now.saturating_duration_since(info.last_beat).as_secs_f64(),
            })
            .collect();
        PageView {
            status: status_json(&status),
            stages,
            ranks,
            heartbeat_timeout_s: self.cfg.cluster.heartbeat_timeout_s,
            checkpoints,
            generation: inner.generation,
        }
    }
}
