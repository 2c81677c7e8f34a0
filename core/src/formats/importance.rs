//! `importance.json`: Stage I's score of every block and the blocks chosen for removal.

use crate::config::CandidateSelection;
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
    /// How the candidates were chosen (absent in tables written before the choice existed).
    #[serde(default = "single")]
    pub selection: CandidateSelection,
    /// Mean squared x0 error with the first k + 1 candidates removed together: how far the
    /// removed set's joint cost is from the sum of the single-block scores.
    #[serde(default)]
    pub set_errors: Vec<f64>,
}

fn single() -> CandidateSelection {
    CandidateSelection::Single
}

impl ImportanceReport {
    pub fn read(path: &Path) -> anyhow::Result<ImportanceReport> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not an importance table: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables written before the greedy choice existed read as single-block rankings.
    #[test]
    fn a_table_without_the_selection_reads_as_single() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("importance.json");
        std::fs::write(
            &path,
            r#"{"blocks": [{"block": 0, "score": 0.5, "error": 1.5, "params": 10}],
                "baseline_error": 1.0, "items": 4, "prune_ratio": 0.3,
                "candidates": [0], "removed_share": 1.0}"#,
        )
        .unwrap();
        let r = ImportanceReport::read(&path).unwrap();
        assert_eq!(r.selection, CandidateSelection::Single);
        assert!(r.set_errors.is_empty());
        assert_eq!(r.candidates, vec![0]);
    }
}
