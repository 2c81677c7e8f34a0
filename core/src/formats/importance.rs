//! `importance.json`: Stage I's score of every block and the blocks chosen for removal.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BlockScore {
    pub block: usize,
    /// Increase of the mean squared x0 error when this block alone is skipped.
    pub score: f64,
    /// The mean squared x0 error with this block skipped.
    pub error: f64,
    pub params: i64,
}

/// `importance.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImportanceReport {
    pub blocks: Vec<BlockScore>,
    /// Mean squared x0 error with every block.
    pub baseline_error: f64,
    /// Calibration items (videos x timesteps) measured.
    pub items: u64,
    pub prune_ratio: f64,
    /// Blocks to remove, least important first.
    pub candidates: Vec<usize>,
    /// Share of the block parameters the candidates hold.
    pub removed_share: f64,
}

impl ImportanceReport {
    pub fn read(path: &Path) -> anyhow::Result<ImportanceReport> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not an importance table: {e}", path.display()))
    }
}
