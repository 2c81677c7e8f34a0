//! `report.md`: what a run did and what it gave, for a person to read (plain Markdown with PNG
//! and GIF images, so a code host shows it): the config and stage durations, the loss curves
//! of every training stage, the Stage I importance chart, the quality table of the eval
//! stage, and the teacher's and the student's samples side by side.
//!
//! Everything is read back from the run directory (`config.toml`, `events.jsonl` or
//! `metrics.jsonl`, `importance.json`, `eval.json`, `samples/`), so `fastlightgen report DIR`
//! rewrites it at any time.

use crate::eval::SCORE_NAMES;
use crate::media::npy;
use crate::stages::evaluate::{RunEval, STUDENT, TEACHER, TEACHER_FEW};
use crate::stages::importance::ImportanceReport;
use crate::stages::paths;
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
        println!("report: {}", self.report.display());
        println!(
            "  quality (average score, 0-1): student {:.3}, teacher 50-step CFG {:.3}",
            self.student_average, self.teacher_average
        );
        println!(
            "  size: the student keeps {:.1}% of the teacher's parameters ({:.0}% of the block parameters)",
            self.param_share * 100.0,
            self.block_param_share * 100.0
        );
        if let (Some(m), Some(t)) = (self.speedup_measured, self.speedup_theoretical) {
            println!(
                "  speed: {m:.1}x faster sampling than the teacher, measured ({t:.1}x theoretical)"
            );
        }
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Per training stage, the logged steps (a resumed launch logs some steps again: the later
/// line wins).
fn stage_steps(metrics: &[Value]) -> BTreeMap<String, BTreeMap<u64, Value>> {
    let mut out: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    for l in metrics {
        if let (Some(stage), Some(step), None) = (
            l.get("stage").and_then(Value::as_str),
            l.get("step").and_then(Value::as_u64),
            l.get("event"),
        ) {
            out.entry(stage.to_string())
                .or_default()
                .insert(step, l.clone());
        }
    }
    out
}

/// Stage durations: the last `stage_done` of each stage (events.jsonl under a coordinator,
/// else metrics.jsonl).
fn durations(events: &[Value], metrics: &[Value]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let from_events = events.iter().filter(|e| e["kind"] == "stage_done");
    let from_metrics = metrics.iter().filter(|e| e["event"] == "stage_done");
    for e in from_metrics.chain(from_events) {
        if let (Some(s), Some(t)) = (e["stage"].as_str(), e["seconds"].as_f64()) {
            out.insert(s.to_string(), t);
        }
    }
    out
}

/// A centred moving average over `window` points (noisy per-step losses read better smoothed).
fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    (0..points.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            let mean = points[a..b].iter().map(|p| p.1).sum::<f64>() / (b - a) as f64;
            (points[i].0, mean)
        })
        .collect()
}

/// The curves drawn for each training stage: (metric key, legend).
fn curves(stage: &str) -> &'static [(&'static str, &'static str)] {
    match stage {
        "pretrain" => &[("loss", "flow-matching loss")],
        "pruning" => &[
            ("loss", "Stage II loss"),
            ("gap", "|P - U|^2 (pruned vs full)"),
            ("flow_full", "flow loss, full pass U"),
            ("flow_pruned", "flow loss, pruned pass P"),
        ],
        "distill" => &[
            ("fake_loss", "fake-score flow loss"),
            ("generator_loss", "generator DMD loss"),
        ],
        _ => &[],
    }
}

/// Draws a stage's loss curves; returns the image path and a line saying how each curve
/// moved (mean of the first tenth of the steps -> mean of the last tenth).
fn loss_plot(
    dir: &Path,
    stage: &str,
    steps: &BTreeMap<u64, Value>,
) -> Result<Option<(String, String)>> {
    let mut series = Vec::new();
    let mut moves = Vec::new();
    for (key, legend) in curves(stage) {
        let pts: Vec<(f64, f64)> = steps
            .iter()
            .filter_map(|(s, l)| l.get(*key).and_then(Value::as_f64).map(|v| (*s as f64, v)))
            .filter(|p| p.1.is_finite())
            .collect();
        if pts.is_empty() {
            continue;
        }
        let tenth = (pts.len() / 10).max(1);
        let mean = |p: &[(f64, f64)]| p.iter().map(|x| x.1).sum::<f64>() / p.len() as f64;
        moves.push(format!(
            "{legend} {:.4} -> {:.4}",
            mean(&pts[..tenth]),
            mean(&pts[pts.len() - tenth..])
        ));
        let window = (pts.len() / 25).max(1);
        series.push((format!("{legend} (mean of {window})"), smooth(&pts, window)));
    }
    if series.is_empty() {
        return Ok(None);
    }
    let name = format!("report/{stage}-losses.png");
    crate::plot::line_chart(
        &dir.join(&name),
        &format!("{stage}: losses per step"),
        "step",
        "loss",
        &series,
    )?;
    let line = format!(
        "First tenth of the steps -> last tenth (means): {}.",
        moves.join("; ")
    );
    Ok(Some((name, line)))
}

/// One animated GIF: a row per model (`rows`), a column per video, the same videos (prompt and
/// noise) in every row. Returns the number of columns.
fn side_by_side_gif(run_dir: &Path, rows: &[&str], out: &Path, columns: usize) -> Result<usize> {
    let mut videos = Vec::new();
    let mut shape = Vec::new();
    for r in rows {
        let p = paths::samples(run_dir, r).join("videos.npy");
        let (s, v) = npy::read_u8(&p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
        if !shape.is_empty() && s != shape {
            anyhow::bail!(
                "{}: videos of shape {s:?}, the others {shape:?}",
                p.display()
            );
        }
        shape = s;
        videos.push(v);
    }
    let [n, t, h, w, _] = shape[..] else {
        anyhow::bail!("samples of shape {shape:?}, expected [N, T, H, W, 3]");
    };
    let cols = columns.min(n);
    let (gap, scale) = (2usize, 4usize);
    let (th, tw) = (h * scale, w * scale);
    let (height, width) = (rows.len() * (th + gap) + gap, cols * (tw + gap) + gap);
    let mut frames = Vec::with_capacity(t);
    for f in 0..t {
        let mut img = vec![96u8; height * width * 3];
        for (ri, v) in videos.iter().enumerate() {
            for c in 0..cols {
                let frame = &v[((c * t + f) * h * w * 3)..((c * t + f + 1) * h * w * 3)];
                for y in 0..th {
                    for x in 0..tw {
                        let src = ((y / scale) * w + x / scale) * 3;
                        let dy = gap + ri * (th + gap) + y;
                        let dx = gap + c * (tw + gap) + x;
                        let dst = (dy * width + dx) * 3;
                        img[dst..dst + 3].copy_from_slice(&frame[src..src + 3]);
                    }
                }
            }
        }
        frames.push(img);
    }
    crate::media::write_frames_gif(out, &frames, height, width)?;
    // A still for readers whose viewer does not animate: first, middle and last frame.
    let picks = [0, t / 2, t - 1];
    let sep = 12;
    let still_w = picks.len() * width + (picks.len() - 1) * sep;
    let mut still = vec![255u8; height * still_w * 3];
    for (k, &f) in picks.iter().enumerate() {
        for y in 0..height {
            let dst = (y * still_w + k * (width + sep)) * 3;
            still[dst..dst + width * 3]
                .copy_from_slice(&frames[f][y * width * 3..(y + 1) * width * 3]);
        }
    }
    crate::media::write_png(&out.with_extension("png"), &still, height, still_w)?;
    Ok(cols)
}

/// Per training stage: median samples/s and model TFLOP/s per rank over its step lines, and
/// the largest peak memory a step line reported (runs before these fields show nothing).
fn throughput(
    w: &mut String,
    stages: &[String],
    steps: &BTreeMap<String, BTreeMap<u64, Value>>,
) -> Result<()> {
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let mut rows = Vec::new();
    for s in stages {
        let Some(st) = steps.get(s) else { continue };
        let field = |k: &str| {
            st.values()
                .filter_map(|l| l[k].as_f64())
                .collect::<Vec<_>>()
        };
        let Some(sps) = median(field("samples_per_s")) else {
            continue;
        };
        let tflops = median(field("tflops"));
        let peak = field("peak_memory_gib").into_iter().reduce(f64::max);
        rows.push(format!(
            "| {s} | {sps:.1} | {} | {} |",
            fmt_opt(tflops, 4, ""),
            fmt_opt(peak, 2, " GiB")
        ));
    }
    if !rows.is_empty() {
        writeln!(
            w,
            "## Throughput
"
        )?;
        writeln!(
            w,
            "Per step, median over the stage: samples/s of all ranks together, model TFLOP/s of one rank \
             (torchtitan's count: 6 per parameter and token plus attention; recompute not counted), \
             and the largest peak memory of rank 0 (GPU: in use on the device; CPU: resident set).\n"
        )?;
        writeln!(
            w,
            "| stage | samples/s | TFLOP/s per rank | peak memory |\n|---|---|---|---|"
        )?;
        for r in rows {
            writeln!(w, "{r}")?;
        }
        writeln!(w)?;
    }
    Ok(())
}

fn fmt_opt(v: Option<f64>, digits: usize, suffix: &str) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}{suffix}"))
}

/// Writes `<run_dir>/report.md` and its images under `<run_dir>/report/`.
pub fn write(run_dir: &Path) -> Result<Headline> {
    let cfg_path = run_dir.join("config.toml");
    let cfg_text = std::fs::read_to_string(&cfg_path).with_context(|| {
        format!(
            "{}: not a run directory (no config.toml)",
            run_dir.display()
        )
    })?;
    let cfg = flg_coordinator::config::Config::parse(
        &cfg_text,
        &cfg_path,
        flg_coordinator::config::LoadOptions { check_files: false },
    )
    .map_err(|e| anyhow!("{e}"))?;
    let eval_path = paths::eval_report(run_dir);
    let ev = RunEval::read(&eval_path)
        .with_context(|| format!("the report needs the eval stage's {}", eval_path.display()))?;
    let student = ev
        .row(STUDENT)
        .ok_or_else(|| anyhow!("{}: no student row", eval_path.display()))?;
    let teacher = ev.row(TEACHER);
    std::fs::create_dir_all(run_dir.join("report"))?;
    let events = read_lines(&run_dir.join("events.jsonl"));
    let metrics = read_lines(&run_dir.join("metrics.jsonl"));
    let seconds = durations(&events, &metrics);
    let steps = stage_steps(&metrics);

    let mut md = String::new();
    let w = &mut md;
    writeln!(w, "# FastLightGen run `{}`\n", cfg.experiment.name)?;
    let headline = Headline {
        report: run_dir.join("report.md"),
        teacher_average: teacher.map_or(f64::NAN, |t| t.eval.average),
        student_average: student.eval.average,
        param_share: teacher.map_or(f64::NAN, |t| student.params as f64 / t.params as f64),
        block_param_share: student.block_param_share,
        speedup_measured: ev.speedup_measured,
        speedup_theoretical: ev.speedup_theoretical,
    };
    writeln!(
        w,
        "**The student scores {:.3} (the teacher with 50-step CFG: {:.3}) with {:.1}% of the \
         teacher's parameters, sampling {} faster (measured; {} in theory).**\n",
        headline.student_average,
        headline.teacher_average,
        headline.param_share * 100.0,
        fmt_opt(headline.speedup_measured, 1, "x"),
        fmt_opt(headline.speedup_theoretical, 1, "x"),
    )?;

    writeln!(w, "## What ran\n")?;
    writeln!(w, "| | |\n|---|---|")?;
    writeln!(
        w,
        "| config | [`config.toml`](config.toml), the resolved config |"
    )?;
    writeln!(w, "| stages | {} |", cfg.experiment.stages.join(" → "))?;
    let name = |v: Value| v.as_str().unwrap_or("?").to_string();
    writeln!(
        w,
        "| ranks | {} ({}, {} backend, {}) |",
        cfg.cluster.world_size,
        name(serde_json::to_value(cfg.cluster.device)?),
        name(serde_json::to_value(cfg.cluster.backend)?),
        name(serde_json::to_value(cfg.cluster.precision)?)
    )?;
    let d = cfg.model_dims();
    writeln!(
        w,
        "| model | `{}`: dim {}, {} blocks, {} heads; teacher `{}` |",
        cfg.model.preset,
        d.dim,
        d.num_blocks,
        d.num_heads,
        cfg.model
            .weights
            .as_ref()
            .map_or("trained in this run".into(), |p| p.display().to_string())
    )?;
    writeln!(
        w,
        "| data | {}, {} videos of {} frames of {}x{} |",
        name(serde_json::to_value(cfg.data.kind)?),
        cfg.data.num_samples,
        cfg.data.frames,
        cfg.data.size,
        cfg.data.size
    )?;
    let launches = events
        .iter()
        .filter(|e| e["kind"] == "generation_started")
        .count();
    if launches > 0 {
        let restarts = events.iter().filter(|e| e["kind"] == "restarting").count();
        let commits = events
            .iter()
            .filter(|e| e["kind"] == "checkpoint_committed")
            .count();
        writeln!(
            w,
            "| launches | {launches} ({restarts} restart(s) after lost ranks), {commits} checkpoint(s) committed |"
        )?;
    }
    writeln!(w, "\n| stage | seconds |\n|---|---|")?;
    let mut total = 0.0;
    for s in &cfg.experiment.stages {
        match seconds.get(s) {
            Some(t) => {
                total += t;
                writeln!(w, "| {s} | {t:.0} |")?;
            }
            None => writeln!(w, "| {s} | - |")?,
        }
    }
    writeln!(w, "| **total** | **{total:.0}** |\n")?;

    writeln!(w, "## Training curves\n")?;
    for s in &cfg.experiment.stages {
        if let Some(st) = steps.get(s) {
            if let Some((img, moves)) = loss_plot(run_dir, s, st)? {
                writeln!(w, "![{s} losses]({img})\n")?;
                let what = match s.as_str() {
                    "pruning" => "Stage II trains the pruned pass P (random candidates skipped) towards the full pass U with the same weights. ",
                    "distill" => "Stage III: the fake score follows the generator's samples (its flow loss); the generator's DMD loss measures how far the fake score is from the well-guided real score. ",
                    _ => "",
                };
                writeln!(w, "{what}{moves}\n")?;
            }
        }
    }
    for l in metrics.iter().filter(|l| l["event"] == "held_out") {
        writeln!(
            w,
            "Held-out |P - U|^2 with blocks {} removed: {:.4} before Stage II, {:.4} after.\n",
            l["removed"],
            l["gap_before"].as_f64().unwrap_or(f64::NAN),
            l["gap_after"].as_f64().unwrap_or(f64::NAN)
        )?;
    }

    throughput(w, &cfg.experiment.stages, &steps)?;

    if let Ok(imp) = ImportanceReport::read(&paths::importance(run_dir)) {
        writeln!(w, "## Stage I: block importance\n")?;
        writeln!(w, "![block importance](importance.png)\n")?;
        writeln!(
            w,
            "Rise of the x0 error when each block alone is skipped (higher = more important). \
             Removed: blocks {:?}, {:.0}% of the block parameters (prune_ratio {}).\n",
            imp.candidates,
            imp.removed_share * 100.0,
            imp.prune_ratio
        )?;
    }

    writeln!(w, "## Quality and speed\n")?;
    writeln!(
        w,
        "{} videos per row, the same prompts and starting noise in every row, scored against \
         the moving-shapes definition (0-1, higher is better; Fréchet distance: lower is better).\n",
        ev.num_videos
    )?;
    let names = [
        "prompt",
        "quality",
        "background",
        "smoothness",
        "consistency",
        "dynamic",
    ];
    writeln!(
        w,
        "| model | steps | CFG | NFE | params | {} | **average** | Fréchet | sampling (s) | speedup |",
        names.join(" | ")
    )?;
    writeln!(
        w,
        "|---|---|---|---|---|{}---|---|---|---|",
        "---|".repeat(names.len())
    )?;
    let teacher_s = teacher.map(|t| t.seconds);
    for r in &ev.rows {
        let label = match r.name.as_str() {
            TEACHER => "teacher",
            TEACHER_FEW => "teacher, few steps",
            STUDENT => "**FastLightGen student**",
            other => other,
        };
        let s = r.eval.scores.values();
        writeln!(
            w,
            "| {label} | {} | {} | {} | {:.2}M ({:.0}% of blocks) | {} | **{:.3}** | {:.2} | {:.2} | {} |",
            r.steps,
            r.cfg,
            r.nfe,
            r.params as f64 / 1e6,
            r.block_param_share * 100.0,
            s.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" | "),
            r.eval.average,
            r.eval.frechet_distance,
            r.seconds,
            fmt_opt(teacher_s.map(|t| t / r.seconds), 1, "x"),
        )?;
    }
    debug_assert_eq!(SCORE_NAMES.len(), names.len());
    writeln!(
        w,
        "\nSpeedup of the student over the teacher: **{} measured** (sampling time, same videos, \
         same run), {} theoretical (teacher NFE / (student NFE x kept block share)).\n",
        fmt_opt(ev.speedup_measured, 1, "x"),
        fmt_opt(ev.speedup_theoretical, 2, "x"),
    )?;

    writeln!(w, "## Samples\n")?;
    let rows: Vec<&str> = [TEACHER, TEACHER_FEW, STUDENT]
        .into_iter()
        .filter(|r| ev.row(r).is_some())
        .collect();
    let gif = "report/samples.gif";
    let cols = side_by_side_gif(run_dir, &rows, &run_dir.join(gif), 8)?;
    writeln!(w, "![teacher and student samples]({gif})\n")?;
    writeln!(
        w,
        "The same three rows at the first, middle and last frame (a still):\n\n![samples, three frames](report/samples.png)\n"
    )?;
    let describe: Vec<String> = rows
        .iter()
        .filter_map(|r| ev.row(r))
        .map(|r| match r.name.as_str() {
            TEACHER => format!("teacher ({} steps, CFG {})", r.steps, r.cfg),
            TEACHER_FEW => format!("teacher ({} steps, CFG {})", r.steps, r.cfg),
            _ => format!("FastLightGen student ({} steps)", r.steps),
        })
        .collect();
    writeln!(
        w,
        "Rows, top to bottom: {}. Columns: the first {cols} videos (prompts = classes 0-{}: \
         red, green, blue, yellow square, then disk), each column from the same noise. Every \
         frame of every video: {}.\n",
        describe.join("; "),
        cols.saturating_sub(1),
        rows.iter()
            .map(|r| format!("[{r}](samples/{r}/grid.png)"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        w,
        "Files: `eval.json` (the table), `metrics.jsonl` (every step), `events.jsonl` (the run's \
         history), `export/student.safetensors` (the student: `fastlightgen sample --model \
         export/student.safetensors --out DIR`).\n"
    )?;
    std::fs::write(&headline.report, md)?;
    std::fs::write(
        run_dir.join("report/summary.json"),
        serde_json::to_string_pretty(&headline)?,
    )?;
    Ok(headline)
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
            r#"{"stage":"pruning","event":"stage_done","seconds":4.0}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let s = stage_steps(&m);
        assert_eq!(s["pruning"].len(), 2);
        assert_eq!(s["pruning"][&2]["loss"], 3.0);
        assert_eq!(durations(&[], &m)["pruning"], 4.0);
        let sm = smooth(&[(1.0, 0.0), (2.0, 3.0), (3.0, 6.0)], 3);
        assert_eq!(sm, vec![(1.0, 1.5), (2.0, 3.0), (3.0, 4.5)]);
    }
}
