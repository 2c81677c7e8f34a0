//! `events.jsonl`: the run's history, one [`Record`] a line (`unix_time`, `kind` and the
//! kind's fields). It is the run state machine's persistence: a restarted coordinator reads it
//! to learn the run id, the stages already done, the launches so far and whether the run
//! ended. The same records stream live to `fastlightgen watch`; step progress (`Step`,
//! `RankRegistered`) is only streamed, never written (it is in `metrics.jsonl`).

use crate::stage::Stage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What happened. Serialised with its snake_case name under `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A new run: its id and the settings that define it.
    RunStarted {
        run_id: String,
        config_hash: String,
        settings: BTreeMap<String, String>,
        stages: Vec<Stage>,
    },
    /// A coordinator continued an existing run.
    CoordinatorStarted {
        run_id: String,
        completed_stages: Vec<Stage>,
    },
    /// A launch of the workers opened, resuming from a checkpoint or not.
    GenerationStarted {
        generation: u32,
        resume_from: Option<String>,
        resume_stage: Option<Stage>,
        resume_step: Option<u64>,
        completed_stages: Vec<Stage>,
    },
    CheckpointRejected {
        dir: String,
        reason: String,
    },
    RankRegistered {
        rank: u32,
        pid: u32,
        hostname: String,
        generation: u32,
    },
    RanksReady {
        generation: u32,
        world_size: u32,
    },
    StageStarted {
        stage: Stage,
        total_steps: u64,
        generation: Option<u32>,
    },
    /// Rank 0's step progress (streamed only), with the coordinator's rate and ETA (the
    /// ones `status` shows; absent until two reports of the stage have arrived).
    Step {
        stage: Stage,
        step: u64,
        total_steps: u64,
        values: BTreeMap<String, f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        samples_per_s: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_s: Option<f64>,
    },
    StageDone {
        stage: Stage,
        seconds: f64,
        message: String,
    },
    CheckpointCommitted {
        stage: Stage,
        step: u64,
        global_step: u64,
        dir: String,
        bytes: u64,
    },
    CheckpointFailed {
        step: u64,
        reason: String,
    },
    PauseRequested {
        reason: String,
    },
    Paused {
        stage: Stage,
        step: u64,
    },
    ResumeRequested {
        reason: String,
    },
    Resumed {
        stage: Stage,
        step: u64,
    },
    CheckpointRequested {
        reason: String,
    },
    StopRequested {
        reason: String,
    },
    Stopped {
        stage: Stage,
        step: u64,
        reason: Option<String>,
    },
    /// A rank died or went silent, or the workers exited early: the launch is lost.
    RankLost {
        generation: Option<u32>,
        reason: String,
    },
    Restarting {
        restart: u32,
        reason: String,
    },
    Finished {
        run_id: String,
    },
    /// A finished stage's output is missing or unreadable: the stage is to be run again.
    OutputLost {
        stage: Stage,
        reason: String,
    },
    /// The run failed: in a stage (a rank's error) or outside the ranks (`stage` unset).
    Failed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<Stage>,
        message: String,
    },
}

impl Event {
    /// The `kind` it is written under.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run_started",
            Event::CoordinatorStarted { .. } => "coordinator_started",
            Event::GenerationStarted { .. } => "generation_started",
            Event::CheckpointRejected { .. } => "checkpoint_rejected",
            Event::RankRegistered { .. } => "rank_registered",
            Event::RanksReady { .. } => "ranks_ready",
            Event::StageStarted { .. } => "stage_started",
            Event::Step { .. } => "step",
            Event::StageDone { .. } => "stage_done",
            Event::CheckpointCommitted { .. } => "checkpoint_committed",
            Event::CheckpointFailed { .. } => "checkpoint_failed",
            Event::PauseRequested { .. } => "pause_requested",
            Event::Paused { .. } => "paused",
            Event::ResumeRequested { .. } => "resume_requested",
            Event::Resumed { .. } => "resumed",
            Event::CheckpointRequested { .. } => "checkpoint_requested",
            Event::StopRequested { .. } => "stop_requested",
            Event::Stopped { .. } => "stopped",
            Event::RankLost { .. } => "rank_lost",
            Event::Restarting { .. } => "restarting",
            Event::Finished { .. } => "finished",
            Event::OutputLost { .. } => "output_lost",
            Event::Failed { .. } => "failed",
        }
    }

    /// The stage it concerns, if any.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Event::StageStarted { stage, .. }
            | Event::Step { stage, .. }
            | Event::StageDone { stage, .. }
            | Event::CheckpointCommitted { stage, .. }
            | Event::Paused { stage, .. }
            | Event::Resumed { stage, .. }
            | Event::Stopped { stage, .. }
            | Event::OutputLost { stage, .. } => Some(*stage),
            Event::Failed { stage, .. } => *stage,
            _ => None,
        }
    }

    /// Whether a restarted coordinator needs it (written to events.jsonl), or it is progress
    /// for watchers only.
    pub fn persisted(&self) -> bool {
        !matches!(self, Event::Step { .. } | Event::RankRegistered { .. })
    }
}

/// One line of events.jsonl: when, and what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub unix_time: f64,
    #[serde(flatten)]
    pub event: Event,
}

impl Record {
    /// `event`, now.
    pub fn now(event: Event) -> Record {
        Record {
            unix_time: crate::now_unix(),
            event,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Record always serialises")
    }
}

/// The events file of a run directory.
pub struct EventLog {
    path: PathBuf,
}

impl EventLog {
    pub fn new(run_dir: &crate::RunDir) -> EventLog {
        EventLog {
            path: run_dir.events(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (flushed and synced: it is the state a restart reads). After a torn
    /// last line (a crash mid-write) it starts a new line, so only the torn event is lost.
    pub fn append(&self, record: &Record) -> std::io::Result<()> {
        let mut f = crate::durable::open_jsonl(&self.path)?;
        writeln!(f, "{}", record.to_json())?;
        f.sync_data()
    }

    /// Every record so far; a torn line (a crash mid-write) or a kind this version does not
    /// know is skipped.
    pub fn read_all(&self) -> Vec<Record> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// What a run's history says about where it stands.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub run_id: Option<String>,
    /// The settings the run started with (`run_started`).
    pub settings: Option<BTreeMap<String, String>>,
    pub completed_stages: Vec<Stage>,
    /// Launches of the workers so far.
    pub generations: u32,
    pub restarts: u32,
    /// Checkpoints committed so far.
    pub commits: u32,
    /// `finished` when the last stage is done.
    pub finished: bool,
    /// The last `stage_done` seconds of each stage.
    pub stage_seconds: BTreeMap<Stage, f64>,
}

impl History {
    pub fn from_records(records: &[Record]) -> History {
        let mut h = History::default();
        for r in records {
            match &r.event {
                Event::RunStarted {
                    run_id, settings, ..
                } => {
                    h.run_id = Some(run_id.clone());
                    h.settings = Some(settings.clone());
                }
                Event::StageDone { stage, seconds, .. } => {
                    if !h.completed_stages.contains(stage) {
                        h.completed_stages.push(*stage);
                    }
                    h.stage_seconds.insert(*stage, *seconds);
                }
                Event::GenerationStarted { .. } => h.generations += 1,
                Event::Restarting { .. } => h.restarts += 1,
                Event::CheckpointCommitted { .. } => h.commits += 1,
                Event::Finished { .. } => h.finished = true,
                Event::OutputLost { stage, .. } => {
                    h.completed_stages.retain(|s| s != stage);
                    h.finished = false;
                }
                _ => {}
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record at a fixed time that JSON carries exactly (serde_json's default float parser
    /// may round the last bit of an arbitrary `now()`, which made a round-trip test flaky).
    fn rec(event: Event) -> Record {
        Record {
            unix_time: 1_795_826_015.25,
            ..Record::now(event)
        }
    }

    #[test]
    fn a_history_survives_a_torn_last_line_and_unknown_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::new(&crate::RunDir::new(dir.path()));
        let settings: BTreeMap<String, String> = [("a".into(), "1".into())].into();
        log.append(&rec(Event::RunStarted {
            run_id: "r1".into(),
            config_hash: "h".into(),
            settings,
            stages: vec![Stage::Pruning, Stage::Distill],
        }))
        .unwrap();
        log.append(&rec(Event::GenerationStarted {
            generation: 0,
            resume_from: None,
            resume_stage: None,
            resume_step: None,
            completed_stages: vec![],
        }))
        .unwrap();
        let done = |stage| {
            rec(Event::StageDone {
                stage,
                seconds: 2.5,
                message: String::new(),
            })
        };
        log.append(&done(Stage::Pruning)).unwrap();
        log.append(&rec(Event::Restarting {
            restart: 1,
            reason: "x".into(),
        }))
        .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap();
        write!(f, "{{\"kind\": \"stage_do").unwrap();
        log.append(&done(Stage::Distill)).unwrap();
        writeln!(
            f,
            "{{\"unix_time\": 1.0, \"kind\": \"from_a_later_version\"}}"
        )
        .unwrap();
        let records = log.read_all();
        assert_eq!(records.len(), 5);
        let h = History::from_records(&records);
        assert_eq!(h.run_id.as_deref(), Some("r1"));
        assert_eq!(h.completed_stages, vec![Stage::Pruning, Stage::Distill]);
        assert_eq!((h.generations, h.restarts, h.finished), (1, 1, false));
        assert_eq!(h.settings.unwrap()["a"], "1");
        assert_eq!(h.stage_seconds[&Stage::Distill], 2.5);
    }

    #[test]
    fn records_are_written_with_their_kind_and_read_back_alike() {
        let r = rec(Event::Failed {
            stage: None,
            message: "out of restarts".into(),
        });
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["kind"], "failed");
        assert_eq!(v["kind"], r.event.kind());
        assert!(v.get("stage").is_none());
        assert_eq!(serde_json::from_value::<Record>(v).unwrap(), r);
        let s = rec(Event::StageStarted {
            stage: Stage::Distill,
            total_steps: 9,
            generation: Some(0),
        });
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["stage"].as_str()),
            (Some("stage_started"), Some("distill"))
        );
    }
}
