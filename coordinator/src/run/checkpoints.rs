//! Committed checkpoints: the coordinator's half of the two-phase commit.
//!
//! Ranks write their shards into `checkpoints/tmp-<N>-g<generation>/` and report each file
//! with its size and sha256. Only when all W ranks have reported does [`CheckpointStore::commit`]
//! write `manifest.json`, rename the directory to `step-<N>` and point `latest` at it (a
//! symlink replaced by rename, so readers see the old or the new one, never neither). A
//! directory without a manifest is never resumed from; [`CheckpointStore::resume_point`]
//! re-hashes every file and falls back to the previous committed checkpoint when one is bad.

use flg_core::checkpoint::{file_sha256, step_dir_name, Manifest, LATEST, MANIFEST};
pub use flg_core::checkpoint::{read_manifest, ShardFile};
use flg_core::RunDir;
use std::path::{Path, PathBuf};

/// A committed checkpoint that passed verification.
#[derive(Clone, Debug)]
pub struct ResumePoint {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// A committed checkpoint that did not verify, and why.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub dir: PathBuf,
    pub reason: String,
}

pub struct CheckpointStore {
    pub dir: PathBuf,
    pub keep_last: usize,
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

impl CheckpointStore {
    pub fn new(run_dir: &RunDir, keep_last: u32) -> CheckpointStore {
        CheckpointStore {
            dir: run_dir.checkpoints(),
            keep_last: keep_last.max(1) as usize,
        }
    }

    /// Removes temporary directories of launches that died before committing.
    pub fn clear_uncommitted(&self) -> std::io::Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("tmp-") {
                std::fs::remove_dir_all(e.path())?;
            }
        }
        Ok(())
    }

    /// Phase two: every rank has reported `manifest.files`; checks they are there with the
    /// reported sizes, writes the manifest, renames the directory, replaces `latest`, and
    /// deletes committed checkpoints beyond `keep_last`. Returns the committed directory.
    pub fn commit(&self, tmp_name: &str, manifest: &Manifest) -> Result<PathBuf, String> {
        let tmp = self.dir.join(tmp_name);
        for f in &manifest.files {
            let p = tmp.join(&f.path);
            let len = std::fs::metadata(&p)
                .map_err(|e| format!("rank {}'s file {}: {e}", f.rank, p.display()))?
                .len();
            if len != f.bytes {
                return Err(format!(
                    "rank {}'s file {} has {len} bytes, the rank reported {}",
                    f.rank,
                    p.display(),
                    f.bytes
                ));
            }
        }
        let text = serde_json::to_string_pretty(manifest).expect("manifest serialises");
        let mpath = tmp.join(MANIFEST);
        std::fs::write(&mpath, text).map_err(|e| format!("{}: {e}", mpath.display()))?;
        if let Ok(f) = std::fs::File::open(&mpath) {
            let _ = f.sync_all();
        }
        fsync_dir(&tmp);
        let name = step_dir_name(manifest.global_step);
        let dest = self.dir.join(&name);
        if dest.exists() {
            // The same step committed by an earlier launch (a resumed run passing it again):
            // the new one replaces it.
            std::fs::remove_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        }
        std::fs::rename(&tmp, &dest)
            .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), dest.display()))?;
        let link_tmp = self.dir.join(format!("{LATEST}.tmp"));
        let _ = std::fs::remove_file(&link_tmp);
        std::os::unix::fs::symlink(&name, &link_tmp)
            .and_then(|_| std::fs::rename(&link_tmp, self.dir.join(LATEST)))
            .map_err(|e| format!("replacing {}/latest: {e}", self.dir.display()))?;
        fsync_dir(&self.dir);
        self.prune();
        Ok(dest)
    }

    /// Committed checkpoints (directories with a manifest), oldest first.
    pub fn committed(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let n: u64 = name.strip_prefix("step-")?.parse().ok()?;
                e.path().join(MANIFEST).is_file().then(|| (n, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    fn prune(&self) {
        let all = self.committed();
        if all.len() > self.keep_last {
            for (_, dir) in &all[..all.len() - self.keep_last] {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Checks a committed checkpoint: manifest readable, every rank's file present with its
    /// size and sha256.
    pub fn verify(dir: &Path) -> Result<Manifest, String> {
        let m = read_manifest(dir)?;
        let mut ranks: Vec<u32> = m.files.iter().map(|f| f.rank).collect();
        ranks.sort();
        ranks.dedup();
        if ranks.len() != m.world_size as usize {
            return Err(format!(
                "{}: has files of {} rank(s), the manifest says world size {}",
                dir.display(),
                ranks.len(),
                m.world_size
            ));
        }
        for f in &m.files {
            let p = dir.join(&f.path);
            let len = std::fs::metadata(&p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .len();
            if len != f.bytes {
                return Err(format!(
                    "{}: {len} bytes, the manifest says {}",
                    p.display(),
                    f.bytes
                ));
            }
            let sum = file_sha256(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            if sum != f.sha256 {
                return Err(format!(
                    "{}: sha256 {sum}, the manifest says {} (the file is corrupt)",
                    p.display(),
                    f.sha256
                ));
            }
        }
        Ok(m)
    }

    /// The newest committed checkpoint that verifies, with every newer one that did not.
    pub fn resume_point(&self) -> (Option<ResumePoint>, Vec<Rejected>) {
        self.resume_point_of(|_| true)
    }

    /// The newest committed checkpoint that verifies and whose manifest `wanted` accepts
    /// (e.g. of the stage the next launch starts with); those that fail verification on the
    /// way are rejected, those not wanted are passed over unread.
    pub fn resume_point_of(
        &self,
        wanted: impl Fn(&Manifest) -> bool,
    ) -> (Option<ResumePoint>, Vec<Rejected>) {
        let mut rejected = Vec::new();
        for (_, dir) in self.committed().into_iter().rev() {
            if read_manifest(&dir).is_ok_and(|m| !wanted(&m)) {
                continue;
            }
            match Self::verify(&dir) {
                Ok(manifest) => return (Some(ResumePoint { dir, manifest }), rejected),
                Err(reason) => rejected.push(Rejected { dir, reason }),
            }
        }
        (None, rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flg_core::checkpoint::tmp_dir_name;
    use std::collections::BTreeMap;

    fn manifest(global_step: u64, files: Vec<ShardFile>) -> Manifest {
        Manifest {
            format: 1,
            run_id: "r".into(),
            stage: "pruning".into(),
            step: global_step,
            global_step,
            world_size: files.len() as u32,
            config_hash: "h".into(),
            settings: BTreeMap::new(),
            files,
            committed_unix: 0.0,
        }
    }

    /// Writes a temporary checkpoint of two ranks and returns its manifest.
    fn write_tmp(store: &CheckpointStore, global_step: u64) -> Manifest {
        let tmp = store.dir.join(tmp_dir_name(global_step, 0));
        std::fs::create_dir_all(&tmp).unwrap();
        let files = (0..2)
            .map(|r| {
                let path = format!("rank-{r:05}.safetensors");
                let body = format!("rank {r} at {global_step}");
                std::fs::write(tmp.join(&path), &body).unwrap();
                ShardFile {
                    rank: r,
                    path: path.clone(),
                    bytes: body.len() as u64,
                    sha256: file_sha256(&tmp.join(&path)).unwrap(),
                }
            })
            .collect();
        manifest(global_step, files)
    }

    #[test]
    fn commits_keep_the_last_k_and_a_corrupt_one_falls_back_to_the_previous() {
        let run = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(&RunDir::new(run.path()), 2);
        for n in [10, 20, 30] {
            let m = write_tmp(&store, n);
            store.commit(&tmp_dir_name(n, 0), &m).unwrap();
        }
        let kept: Vec<u64> = store.committed().iter().map(|(n, _)| *n).collect();
        assert_eq!(kept, vec![20, 30]);
        assert_eq!(
            std::fs::read_link(store.dir.join("latest")).unwrap(),
            PathBuf::from("step-30")
        );
        let (p, rejected) = store.resume_point();
        assert_eq!(p.unwrap().manifest.global_step, 30);
        assert!(rejected.is_empty());

        // Flip one byte of rank 1's file in the newest: it is rejected, naming the file.
        let f = store.dir.join("step-30/rank-00001.safetensors");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&f, bytes).unwrap();
        let (p, rejected) = store.resume_point();
        assert_eq!(p.unwrap().manifest.global_step, 20);
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].reason.contains("rank-00001.safetensors"));
        assert!(rejected[0].reason.contains("corrupt"));
    }

    #[test]
    fn a_directory_without_a_manifest_is_never_resumed_from() {
        let run = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(&RunDir::new(run.path()), 2);
        let m = write_tmp(&store, 5);
        // A rank reports more bytes than it wrote: the commit is refused.
        let mut bad = m.clone();
        bad.files[0].bytes += 1;
        assert!(store.commit(&tmp_dir_name(5, 0), &bad).is_err());
        // A directory named like a checkpoint but without a manifest (a crash mid-rename).
        std::fs::create_dir_all(store.dir.join("step-9")).unwrap();
        assert!(store.committed().is_empty());
        assert!(store.resume_point().0.is_none());
        store.clear_uncommitted().unwrap();
        assert!(!store.dir.join(tmp_dir_name(5, 0)).exists());
    }
}
