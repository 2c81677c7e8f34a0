//! The report's numbers for scripts (`fastlightgen report DIR --json`): what the bench
//! scripts used to recompute from eval.json and metrics.jsonl themselves.

use crate::record::{HeldOut, RunRecord};
use crate::sections::{row_label, score_cells, stage_rates};
use crate::Headline;
use anyhow::Result;
use flg_core::formats::eval::{Row, RunEval};
use flg_core::RunDir;
use serde::Serialize;
use std::collections::BTreeMap;

/// One eval row as eval.json has it, with its table label and cells and its speedup over the
/// reference teacher.
#[derive(Serialize)]
pub struct SummaryRow {
    #[serde(flatten)]
    pub row: Row,
    /// How tables label it.
    pub label: String,
    pub speedup: Option<f64>,
    /// `| prompt | ... | **average** | Fréchet |` cells of the report's table.
    pub score_cells: String,
}

/// A training stage's step rates (medians over its step lines).
#[derive(Serialize)]
pub struct Rates {
    pub samples_per_s: f64,
    pub tflops: Option<f64>,
    pub peak_memory_gib: Option<f64>,
}

#[derive(Serialize)]
pub struct Summary {
    pub run: String,
    pub run_dir: String,
    pub stages: Vec<String>,
    /// Seconds per finished stage.
    pub seconds: BTreeMap<String, f64>,
    pub headline: Headline,
    pub num_videos: usize,
    pub rows: Vec<SummaryRow>,
    pub held_out: Option<HeldOut>,
    /// Stage I's removed blocks and their share of the block parameters.
    pub candidates: Option<Vec<usize>>,
    pub removed_share: Option<f64>,
    pub throughput: BTreeMap<String, Rates>,
    /// The table header matching `rows[].score_cells`.
    pub score_header: String,
    /// Its number of columns.
    pub score_columns: usize,
}

impl Summary {
    pub fn read(run_dir: &RunDir) -> Result<Summary> {
        let run = RunRecord::read(run_dir)?;
        let ev: &RunEval = &run.eval;
        let teacher_s = run.teacher().map(|t| t.seconds);
        let rows = ev
            .rows
            .iter()
            .map(|r| SummaryRow {
                row: r.clone(),
                label: row_label(r).to_string(),
                speedup: teacher_s.map(|t| t / r.seconds),
                score_cells: score_cells(r),
            })
            .collect();
        let throughput = run
            .cfg
            .stages()
            .into_iter()
            .filter_map(|s| {
                let (samples_per_s, tflops, peak_memory_gib) = stage_rates(&run, s)?;
                Some((
                    s.name().to_string(),
                    Rates {
                        samples_per_s,
                        tflops,
                        peak_memory_gib,
                    },
                ))
            })
            .collect();
        Ok(Summary {
            run: run.cfg.experiment.name.clone(),
            run_dir: run_dir.path().display().to_string(),
            stages: run.cfg.experiment.stages.clone(),
            seconds: run
                .history
                .stage_seconds
                .iter()
                .map(|(s, t)| (s.name().to_string(), *t))
                .collect(),
            headline: run.headline()?,
            num_videos: ev.num_videos,
            rows,
            held_out: run.held_out.clone(),
            candidates: run.importance.as_ref().map(|i| i.candidates.clone()),
            removed_share: run.importance.as_ref().map(|i| i.removed_share),
            throughput,
            score_header: crate::sections::score_header(),
            score_columns: crate::sections::score_columns(),
        })
    }
}
