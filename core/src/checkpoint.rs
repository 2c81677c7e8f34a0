//! A checkpoint as both sides see it: the directory names of the two-phase commit and
//! `step-<N>/manifest.json`.
//!
//! Ranks write their shards into `checkpoints/tmp-<N>-g<generation>/` (the directory the
//! coordinator names in its Checkpoint command); the coordinator writes the manifest and
//! renames the directory to `step-<N>` once all ranks have reported their files.

use crate::settings::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The manifest's file name inside a committed checkpoint.
pub const MANIFEST: &str = "manifest.json";

/// The link to the newest committed checkpoint, inside `checkpoints/`.
pub const LATEST: &str = "latest";

/// One rank's file in a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardFile {
    pub rank: u32,
    /// Relative to the checkpoint directory.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// `step-<N>/manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub run_id: String,
    /// The stage the checkpoint belongs to and how many of its steps were done.
    pub stage: String,
    pub step: u64,
    /// Steps of all training stages so far (the N of `step-<N>`).
    pub global_step: u64,
    pub world_size: u32,
    pub config_hash: String,
    /// The run-defining settings (see `settings::run_settings`), to say what differs.
    pub settings: BTreeMap<String, String>,
    pub files: Vec<ShardFile>,
    pub committed_unix: f64,
}

pub fn step_dir_name(global_step: u64) -> String {
    format!("step-{global_step}")
}

pub fn tmp_dir_name(global_step: u64, generation: u32) -> String {
    format!("tmp-{global_step}-g{generation}")
}

/// sha256 of a file, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Reads a manifest without checking the files.
pub fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let p = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a valid manifest: {e}", p.display()))
}
