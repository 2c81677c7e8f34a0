//! A finished run as its files record it.

use crate::Headline;
use anyhow::{anyhow, Context, Result};
use flg_core::config::{Config, LoadOptions};
use flg_core::events::{EventLog, History};
use flg_core::formats::eval::{Row, RunEval, STUDENT, TEACHER};
use flg_core::formats::importance::ImportanceReport;
use flg_core::{RunDir, Stage};
use serde_json::Value;
use std::collections::BTreeMap;

/// Stage II's held-out gap, before and after training.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeldOut {
    pub removed: Vec<usize>,
    pub gap_before: f64,
    pub gap_after: f64,
}

/// Everything the report is made of.
pub struct RunRecord {
    pub dir: RunDir,
    pub cfg: Config,
    pub eval: RunEval,
    pub history: History,
    /// Per training stage, its logged step lines by step (a resumed launch logs some steps
    /// again: the later line wins).
    pub steps: BTreeMap<Stage, BTreeMap<u64, Value>>,
    pub held_out: Option<HeldOut>,
    pub importance: Option<ImportanceReport>,
}

impl RunRecord {
    pub fn read(dir: &RunDir) -> Result<RunRecord> {
        let cfg_path = dir.config();
        let cfg_text = std::fs::read_to_string(&cfg_path).with_context(|| {
            format!(
                "{}: not a run directory (no config.toml)",
                dir.path().display()
            )
        })?;
        let cfg = Config::parse(&cfg_text, &cfg_path, LoadOptions { check_files: false })
            .map_err(|e| anyhow!("{e}"))?;
        let eval_path = dir.eval();
        let eval = RunEval::read(&eval_path).with_context(|| {
            format!("the report needs the eval stage's {}", eval_path.display())
        })?;
        if eval.row(STUDENT).is_none() {
            anyhow::bail!("{}: no student row", eval_path.display());
        }
        let history = History::from_records(&EventLog::new(dir).read_all());
        let metrics: Vec<Value> = std::fs::read_to_string(dir.metrics())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok(RunRecord {
            steps: stage_steps(&metrics),
            held_out: held_out(&metrics),
            importance: ImportanceReport::read(&dir.importance()).ok(),
            dir: dir.clone(),
            cfg,
            eval,
            history,
        })
    }

    pub fn student(&self) -> &Row {
        self.eval.row(STUDENT).expect("checked by read")
    }

    pub fn teacher(&self) -> Option<&Row> {
        self.eval.row(TEACHER)
    }

    pub fn headline(&self) -> Result<Headline> {
        let (student, teacher) = (self.student(), self.teacher());
        Ok(Headline {
            report: self.dir.report(),
            teacher_average: teacher.map_or(f64::NAN, |t| t.eval.average),
            student_average: student.eval.average,
            param_share: teacher.map_or(f64::NAN, |t| student.params as f64 / t.params as f64),
            block_param_share: student.block_param_share,
            speedup_measured: self.eval.speedup_measured,
            speedup_theoretical: self.eval.speedup_theoretical,
        })
    }

    /// The values of one metric key over a training stage's steps, finite ones only.
    pub fn series(&self, stage: Stage, key: &str) -> Vec<(f64, f64)> {
        self.nested_series(stage, &[key])
    }

    /// The values at a path of keys (e.g. `["monitor", "average"]`) over a stage's steps,
    /// finite ones only.
    pub fn nested_series(&self, stage: Stage, path: &[&str]) -> Vec<(f64, f64)> {
        self.steps.get(&stage).map_or_else(Vec::new, |st| {
            st.iter()
                .filter_map(|(s, l)| {
                    path.iter()
                        .try_fold(l, |v, k| v.get(*k))
                        .and_then(Value::as_f64)
                        .map(|v| (*s as f64, v))
                })
                .filter(|p| p.1.is_finite())
                .collect()
        })
    }
}

/// Per training stage, the logged steps; the later line of a step wins.
pub(crate) fn stage_steps(metrics: &[Value]) -> BTreeMap<Stage, BTreeMap<u64, Value>> {
    let mut out: BTreeMap<Stage, BTreeMap<u64, Value>> = BTreeMap::new();
    for l in metrics {
        if let (Some(stage), Some(step), None) = (
            l.get("stage")
                .and_then(Value::as_str)
                .and_then(Stage::parse),
            l.get("step").and_then(Value::as_u64),
            l.get("event"),
        ) {
            out.entry(stage).or_default().insert(step, l.clone());
        }
    }
    out
}

/// The last held-out line of Stage II.
fn held_out(metrics: &[Value]) -> Option<HeldOut> {
    metrics
        .iter()
        .filter(|l| l["event"] == "held_out")
        .last()
        .map(|l| HeldOut {
            removed: serde_json::from_value(l["removed"].clone()).unwrap_or_default(),
            gap_before: l["gap_before"].as_f64().unwrap_or(f64::NAN),
            gap_after: l["gap_after"].as_f64().unwrap_or(f64::NAN),
        })
}

/// A centred moving average over `window` points (noisy per-step losses read better smoothed).
pub(crate) fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    (0..points.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            let mean = points[a..b].iter().map(|p| p.1).sum::<f64>() / (b - a) as f64;
            (points[i].0, mean)
        })
        .collect()
}

/// The median of some numbers (`None` for none).
pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_lines_of_a_step_win_and_smoothing_keeps_the_x() {
        let m: Vec<Value> = [
            r#"{"stage":"pruning","step":1,"loss":1.0}"#,
            r#"{"stage":"pruning","step":2,"loss":2.0}"#,
            r#"{"stage":"pruning","step":2,"loss":3.0}"#,
            r#"{"stage":"pruning","event":"held_out","removed":[3],"gap_before":2.0,"gap_after":1.0}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let s = stage_steps(&m);
        assert_eq!(s[&Stage::Pruning].len(), 2);
        assert_eq!(s[&Stage::Pruning][&2]["loss"], 3.0);
        let h = held_out(&m).unwrap();
        assert_eq!((h.removed, h.gap_before, h.gap_after), (vec![3], 2.0, 1.0));
        let sm = smooth(&[(1.0, 0.0), (2.0, 3.0), (3.0, 6.0)], 3);
        assert_eq!(sm, vec![(1.0, 1.5), (2.0, 3.0), (3.0, 4.5)]);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
    }
}
