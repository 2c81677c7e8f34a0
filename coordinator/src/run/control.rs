//! Control commands: pause, resume, checkpoint and stop from people and scripts, and the
//! command rank 0 fetches at every step boundary (which also decides periodic checkpoints:
//! the coordinator is the one source of truth for when a checkpoint is taken and where its
//! files go).

use super::hub::{run_stage, Inner, Phase, RunHub};
use flg_core::checkpoint::tmp_dir_name;
use flg_core::events::Event;
use flg_proto as pb;
use tonic::Status;

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

impl RunHub {
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
        self.emit(Event::PauseRequested {
            reason: reason.into(),
        });
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
        self.emit(Event::ResumeRequested {
            reason: reason.into(),
        });
        accepted("the ranks continue")
    }

    pub fn checkpoint(&self, reason: &str) -> pb::ControlReply {
        let mut inner = self.lock();
        if let Some(r) = self.refuse_if_ended(&inner, "checkpoint") {
            return r;
        }
        if !inner.stage.is_some_and(|s| s.trains()) {
            return refused(&format!(
                "stage {:?} has no steps to checkpoint; its output is written when it ends",
                inner.stage.map(|s| s.name()).unwrap_or("")
            ));
        }
        inner.checkpoint_asked = true;
        self.emit(Event::CheckpointRequested {
            reason: reason.into(),
        });
        accepted("a checkpoint is taken at the next step boundary")
    }

    pub fn stop(&self, reason: &str) -> pb::ControlReply {
        let mut inner = self.lock();
        if let Some(r) = self.refuse_if_ended(&inner, "stop") {
            return r;
        }
        inner.stop_asked = Some(reason.to_string());
        inner.pause = false;
        self.emit(Event::StopRequested {
            reason: reason.into(),
        });
        accepted("the ranks write a final checkpoint at the next step boundary and exit")
    }

    /// Whether a stop was asked for.
    pub fn stop_asked(&self) -> bool {
        self.lock().stop_asked.is_some()
    }

    /// Rank 0, at a step boundary (`step` steps of `stage` done): what to do before the next.
    /// A checkpoint (asked for, periodic, or the final one of a stop) names the global step
    /// and the directory the ranks write into.
    pub fn next_command(&self, c: &pb::NextCommandRequest) -> Result<pb::Command, Status> {
        use pb::command::Kind;
        let mut inner = self.lock();
        self.check_rank(&inner, &c.run_id, c.rank, c.generation)?;
        if c.rank != 0 {
            return Err(Status::invalid_argument(format!(
                "rank {} asked for a command: only rank 0 fetches commands (it broadcasts them to the others)",
                c.rank
            )));
        }
        let stage = run_stage(&self.cfg, &c.stage)?;
        let total = stage.steps(&self.cfg);
        if !stage.trains() || c.step > total {
            return Err(Status::invalid_argument(format!(
                "{stage} step {}: the stage has {total} steps",
                c.step
            )));
        }
        let key = (stage, c.step);
        let global = stage.global_step(&self.cfg, c.step);
        let generation = inner.generation.unwrap_or(0);
        let reply = |kind: Kind, reason: &str| pb::Command {
            kind: kind as i32,
            reason: reason.to_string(),
            global_step: 0,
            tmp_dir: String::new(),
        };
        let save = |kind: Kind, reason: &str| pb::Command {
            global_step: global,
            tmp_dir: tmp_dir_name(global, generation),
            ..reply(kind, reason)
        };
        if let Some(reason) = inner.stop_asked.clone() {
            inner.expected.insert(key);
            inner.phase = Phase::Stopping;
            return Ok(save(Kind::Stop, &reason));
        }
        if inner.checkpoint_asked {
            inner.checkpoint_asked = false;
            inner.expected.insert(key);
            return Ok(save(Kind::Checkpoint, "asked for"));
        }
        if inner.pause {
            if inner.phase != Phase::Paused {
                inner.phase = Phase::Paused;
                self.emit(Event::Paused {
                    stage,
                    step: c.step,
                });
            }
            return Ok(reply(Kind::Pause, "paused"));
        }
        if inner.phase == Phase::Paused {
            inner.phase = Phase::Running;
            self.emit(Event::Resumed {
                stage,
                step: c.step,
            });
        }
        let interval = self.cfg.checkpoint.interval_steps;
        let committed = inner.last_committed.is_some_and(|(_, s, n)| (s, n) == key);
        if interval > 0
            && c.step > 0
            && c.step < total
            && c.step % interval == 0
            && !inner.expected.contains(&key)
            && !committed
        {
            inner.expected.insert(key);
            return Ok(save(Kind::Checkpoint, "interval"));
        }
        Ok(reply(Kind::Continue, ""))
    }
}
