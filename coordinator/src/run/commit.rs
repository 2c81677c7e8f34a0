//! The coordinator's half of the two-phase checkpoint commit: each rank reports the files it
//! wrote into the directory the Checkpoint command named; the last of the W reports commits
//! the checkpoint (`CheckpointStore::commit`).

use super::checkpoints::ShardFile;
use super::hub::{run_stage, Pending, RunHub};
use flg_core::checkpoint::{step_dir_name, tmp_dir_name, Manifest};
use flg_core::events::Event;
use flg_core::now_unix;
use flg_proto as pb;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tonic::Status;

impl RunHub {
    /// A rank's files of a checkpoint; the last of the W reports commits it.
    pub fn commit_shard(&self, c: &pb::ShardCommit) -> Result<Option<PathBuf>, Status> {
        let mut inner = self.lock();
        self.check_rank(&inner, &c.run_id, c.rank, c.generation)?;
        let stage = run_stage(&self.cfg, &c.stage)?;
        if !inner.expected.contains(&(stage, c.step)) {
            return Err(Status::failed_precondition(format!(
                "no checkpoint was asked for at {} step {}: rank {} reported files nobody expects",
                c.stage, c.step, c.rank
            )));
        }
        let global = stage.global_step(&self.cfg, c.step);
        if c.global_step != global {
            return Err(Status::invalid_argument(format!(
                "{} step {} is global step {global}, the rank said {}",
                c.stage, c.step, c.global_step
            )));
        }
        let generation = inner.generation.unwrap_or(0);
        let tmp_dir = tmp_dir_name(global, generation);
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
            stage,
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
            stage: pending.stage.name().to_string(),
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
                inner.expected.remove(&(pending.stage, pending.step));
                inner.last_committed = Some((global, pending.stage, pending.step));
                let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
                self.emit(Event::CheckpointCommitted {
                    stage: pending.stage,
                    step: pending.step,
                    global_step: global,
                    dir: dir.display().to_string(),
                    bytes,
                });
                Ok(Some(dir))
            }
            Err(e) => {
                self.emit(Event::CheckpointFailed {
                    step: global,
                    reason: e.clone(),
                });
                Err(Status::internal(format!(
                    "checkpoint {} not committed: {e}",
                    step_dir_name(global)
                )))
            }
        }
    }
}
