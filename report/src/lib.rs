//! `report.md`: what a run did and what it gave, for a person to read (plain Markdown with PNG
//! and GIF images, so a code host shows it): the config and stage durations, the loss curves
//! of every training stage, throughput, the Stage I importance chart, the quality table of the
//! eval stage, and the teacher's and the student's samples side by side. Also the same
//! numbers as JSON for scripts ([`Summary`], `fastlightgen report DIR --json`).
//!
//! Everything is read back from the run directory ([`RunRecord`]: `config.toml`,
//! `events.jsonl`, `metrics.jsonl`, `importance.json`, `eval.json`, `samples/`), so
//! `fastlightgen report DIR` rewrites it at any time. The launcher calls [`write`] when a run
//! with an eval stage finishes. Each section of the report is one function of `sections.rs`.

mod record;
mod samples;
mod sections;
mod summary;

pub use record::RunRecord;
pub use summary::Summary;

use anyhow::Result;
use flg_core::RunDir;
use std::path::PathBuf;

/// The three numbers that matter, as the report states them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Headline {
    pub report: PathBuf,
    pub teacher_average: f64,
    pub student_average: f64,
    /// Share of the teacher's parameters the student keeps (all parameters).
    pub param_share: f64,
    pub block_param_share: f64,
    pub speedup_measured: Option<f64>,
    pub speedup_theoretical: Option<f64>,
}

impl Headline {
    pub fn print(&self) {
        for line in self.lines() {
            println!("{line}");
        }
    }

    /// What `print` prints, line by line.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("report: {}", self.report.display())];
        // Without the teacher's rows (eval.compare_teacher = false) its numbers are NaN: say
        // so instead of printing NaN.
        let teacher = if self.teacher_average.is_finite() {
            format!("teacher 50-step CFG {:.3}", self.teacher_average)
        } else {
            "teacher not sampled (eval.compare_teacher = false)".to_string()
        };
        out.push(format!(
            "  quality (average score, 0-1): student {:.3}, {teacher}",
            self.student_average
        ));
        let blocks = format!(
            "{:.0}% of the block parameters",
            self.block_param_share * 100.0
        );
        out.push(if self.param_share.is_finite() {
            format!(
                "  size: the student keeps {:.1}% of the teacher's parameters ({blocks})",
                self.param_share * 100.0
            )
        } else {
            format!("  size: the student keeps {blocks}")
        });
        if let (Some(m), Some(t)) = (self.speedup_measured, self.speedup_theoretical) {
            out.push(format!(
                "  speed: {m:.1}x faster sampling than the teacher, measured ({t:.1}x theoretical)"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Headline;

    #[test]
    fn a_run_without_the_teacher_says_so_instead_of_nan() {
        let mut h = Headline {
            report: "runs/x/report.md".into(),
            teacher_average: 0.803,
            student_average: 0.693,
            param_share: 0.718,
            block_param_share: 0.7,
            speedup_measured: Some(40.1),
            speedup_theoretical: Some(35.7),
        };
        let all = h.lines().join("\n");
        assert!(
            all.contains("teacher 50-step CFG 0.803") && all.contains("71.8%"),
            "{all}"
        );
        assert!(all.contains("40.1x faster"), "{all}");
        (h.teacher_average, h.param_share) = (f64::NAN, f64::NAN);
        (h.speedup_measured, h.speedup_theoretical) = (None, None);
        let all = h.lines().join("\n");
        assert!(!all.contains("NaN"), "{all}");
        assert!(
            all.contains("teacher not sampled") && all.contains("70% of the block"),
            "{all}"
        );
    }
}

/// Writes `<run_dir>/report.md`, its images under `<run_dir>/report/` and
/// `report/summary.json`; returns the headline.
pub fn write(run_dir: &RunDir) -> Result<Headline> {
    let run = RunRecord::read(run_dir)?;
    std::fs::create_dir_all(run_dir.report_assets())?;
    let headline = run.headline()?;
    let mut md = String::new();
    sections::title(&mut md, &run, &headline)?;
    sections::what_ran(&mut md, &run)?;
    sections::training_curves(&mut md, &run)?;
    sections::collapse_monitor(&mut md, &run)?;
    sections::throughput(&mut md, &run)?;
    sections::importance(&mut md, &run)?;
    sections::quality(&mut md, &run)?;
    sections::samples(&mut md, &run)?;
    std::fs::write(&headline.report, md)?;
    std::fs::write(
        run_dir.report_assets().join("summary.json"),
        serde_json::to_string_pretty(&headline)?,
    )?;
    Ok(headline)
}

/// `Some(x)` as `x` with `digits` decimals and `suffix`; `-` for `None`.
fn fmt_opt(v: Option<f64>, digits: usize, suffix: &str) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}{suffix}"))
}
