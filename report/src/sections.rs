//! The report's sections, in order, each appending its Markdown to the page.

use crate::record::{median, smooth, RunRecord};
use crate::{fmt_opt, Headline};
use anyhow::Result;
use flg_core::config::CandidateSelection;
use flg_core::formats::eval::{Row, SCORES, STUDENT, TEACHER, TEACHER_FEW};
use flg_core::Stage;
use serde_json::Value;
use std::fmt::Write as _;

/// The run's name and the one sentence that sums it up.
pub fn title(w: &mut String, run: &RunRecord, h: &Headline) -> Result<()> {
    writeln!(w, "# FastLightGen run `{}`\n", run.cfg.experiment.name)?;
    writeln!(
        w,
        "**The student scores {:.3} (the teacher with 50-step CFG: {:.3}) with {:.1}% of the \
         teacher's parameters, sampling {} faster (measured; {} in theory).**\n",
        h.student_average,
        h.teacher_average,
        h.param_share * 100.0,
        fmt_opt(h.speedup_measured, 1, "x"),
        fmt_opt(h.speedup_theoretical, 1, "x"),
    )?;
    Ok(())
}

/// Config, stages, ranks, model, data, launches, and the seconds of each stage.
pub fn what_ran(w: &mut String, run: &RunRecord) -> Result<()> {
    let cfg = &run.cfg;
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
    let h = &run.history;
    if h.generations > 0 {
        writeln!(
            w,
            "| launches | {} ({} restart(s) after lost ranks), {} checkpoint(s) committed |",
            h.generations, h.restarts, h.commits
        )?;
    }
    writeln!(w, "\n| stage | seconds |\n|---|---|")?;
    let mut total = 0.0;
    for s in cfg.stages() {
        match h.stage_seconds.get(&s) {
            Some(t) => {
                total += t;
                writeln!(w, "| {s} | {t:.0} |")?;
            }
            None => writeln!(w, "| {s} | - |")?,
        }
    }
    writeln!(w, "| **total** | **{total:.0}** |\n")?;
    Ok(())
}

/// Draws a stage's loss curves; returns the image path (relative to the run directory) and a
/// line saying how each curve moved (mean of the first tenth of the steps -> the last tenth).
pub fn loss_plot(run: &RunRecord, stage: Stage) -> Result<Option<(String, String)>> {
    let mut series = Vec::new();
    let mut moves = Vec::new();
    for (key, legend) in stage.loss_curves() {
        let pts = run.series(stage, key);
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
    flg_media::plot::line_chart(
        &run.dir.path().join(&name),
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

/// The loss curves of every training stage, and Stage II's held-out gap.
pub fn training_curves(w: &mut String, run: &RunRecord) -> Result<()> {
    writeln!(w, "## Training curves\n")?;
    for s in run.cfg.stages() {
        if let Some((img, moves)) = loss_plot(run, s)? {
            writeln!(w, "![{s} losses]({img})\n")?;
            let what = match s {
                Stage::Pruning => "Stage II trains the pruned pass P (random candidates skipped) towards the full pass U with the same weights. ",
                Stage::Distill => "Stage III: the fake score follows the generator's samples (its flow loss); the generator's DMD loss measures how far the fake score is from the well-guided real score. ",
                _ => "",
            };
            writeln!(w, "{what}{moves}\n")?;
        }
    }
    if let Some(h) = &run.held_out {
        writeln!(
            w,
            "Held-out |P - U|^2 with blocks {:?} removed: {:.4} before Stage II, {:.4} after.\n",
            h.removed, h.gap_before, h.gap_after
        )?;
    }
    Ok(())
}

/// Stage III's collapse monitor (`distill.monitor_every`): the generator's diversity over
/// noise and the small periodic eval, as curves and a table.
pub fn collapse_monitor(w: &mut String, run: &RunRecord) -> Result<()> {
    let get = |k: &str| run.nested_series(Stage::Distill, &["monitor", k]);
    let diversity = get("diversity");
    if diversity.is_empty() {
        return Ok(());
    }
    let directions: Vec<(f64, f64)> = get("directions_per_class")
        .into_iter()
        .map(|(s, v)| (s, v / 8.0))
        .collect();
    let series: Vec<(String, Vec<(f64, f64)>)> = [
        (
            "diversity over noise (first-step x0 spread)",
            diversity.clone(),
        ),
        ("average score", get("average")),
        ("dynamic degree", get("dynamic_degree")),
        ("prompt following", get("prompt_following")),
        ("motion directions per class / 8", directions),
    ]
    .into_iter()
    .filter(|(_, p)| !p.is_empty())
    .map(|(n, p)| (n.to_string(), p))
    .collect();
    let img = "report/distill-monitor.png";
    flg_media::plot::line_chart(
        &run.dir.path().join(img),
        "Stage III: the generator during training",
        "step",
        "value",
        &series,
    )?;
    writeln!(w, "## Stage III: does the generator collapse?\n")?;
    writeln!(
        w,
        "Every {} steps: the spread of the generator's first-step prediction over a fixed set of \
         noises (0 = every noise gives the same video) and a small eval of its EMA ({} videos, \
         same noise each time).\n",
        run.cfg.distill.monitor_every, run.cfg.distill.monitor_videos
    )?;
    writeln!(w, "![Stage III monitor]({img})\n")?;
    writeln!(
        w,
        "| step | diversity | average | dynamic | Fréchet | directions per class |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|")?;
    let at = |pts: &[(f64, f64)], s: f64| {
        pts.iter()
            .find(|p| p.0 == s)
            .map_or("-".to_string(), |p| format!("{:.3}", p.1))
    };
    let (avg, dynamic, fd, dirs) = (
        get("average"),
        get("dynamic_degree"),
        get("frechet_distance"),
        get("directions_per_class"),
    );
    for &(s, d) in &diversity {
        writeln!(
            w,
            "| {s} | {d:.3} | {} | {} | {} | {} |",
            at(&avg, s),
            at(&dynamic, s),
            at(&fd, s),
            at(&dirs, s)
        )?;
    }
    writeln!(w)?;
    Ok(())
}

/// A training stage's step rates: median samples/s and model TFLOP/s per rank over its step
/// lines, and the largest peak memory a line reported (`None` for runs without these fields).
pub fn stage_rates(run: &RunRecord, stage: Stage) -> Option<(f64, Option<f64>, Option<f64>)> {
    let field = |k: &str| run.series(stage, k).into_iter().map(|p| p.1).collect();
    let sps = median(field("samples_per_s"))?;
    let peak = field("peak_memory_gib").into_iter().reduce(f64::max);
    Some((sps, median(field("tflops")), peak))
}

/// Per training stage: samples/s, TFLOP/s per rank, peak memory.
pub fn throughput(w: &mut String, run: &RunRecord) -> Result<()> {
    let rows: Vec<String> = run
        .cfg
        .stages()
        .into_iter()
        .filter_map(|s| {
            let (sps, tflops, peak) = stage_rates(run, s)?;
            Some(format!(
                "| {s} | {sps:.1} | {} | {} |",
                fmt_opt(tflops, 4, ""),
                fmt_opt(peak, 2, " GiB")
            ))
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(w, "## Throughput\n")?;
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
    Ok(())
}

/// Stage I's chart and the removed blocks.
pub fn importance(w: &mut String, run: &RunRecord) -> Result<()> {
    let Some(imp) = &run.importance else {
        return Ok(());
    };
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
    if let Some(joint) = imp.set_errors.last() {
        let alone: f64 = imp
            .blocks
            .iter()
            .filter(|b| imp.candidates.contains(&b.block))
            .map(|b| b.score)
            .sum();
        let how = match imp.selection {
            CandidateSelection::Single => "ranked one block at a time",
            CandidateSelection::Greedy => {
                "chosen greedily, each block measured with the ones before it removed"
            }
        };
        writeln!(
            w,
            "The set was {how} (`importance.selection`). Removed together, the blocks raise the \
             x0 error by {:.4} (from {:.4}); their single-block rises sum to {alone:.4}.\n",
            joint - imp.baseline_error,
            imp.baseline_error,
        )?;
    }
    Ok(())
}

/// How an eval row is named in tables.
pub fn row_label(r: &Row) -> &str {
    match r.name.as_str() {
        TEACHER => "teacher",
        TEACHER_FEW => "teacher, few steps",
        STUDENT => "**FastLightGen student**",
        other => other,
    }
}

/// The score columns' header cells (`| prompt | ... | **average** | Fréchet | directions |`).
pub fn score_header() -> String {
    let names: Vec<&str> = SCORES.iter().map(|s| s.1).collect();
    format!(
        "| {} | **average** | Fréchet | directions per class |",
        names.join(" | ")
    )
}

/// How many columns [`score_header`] has.
pub fn score_columns() -> usize {
    SCORES.len() + 3
}

/// One row's score cells, as [`score_header`] names them.
pub fn score_cells(r: &Row) -> String {
    let cells: Vec<String> = r
        .eval
        .scores
        .named()
        .iter()
        .map(|(_, x)| format!("{x:.3}"))
        .collect();
    format!(
        "| {} | **{:.3}** | {:.2} | {} |",
        cells.join(" | "),
        r.eval.average,
        r.eval.frechet_distance,
        r.eval
            .directions_per_class
            .map_or("-".to_string(), |d| format!("{d:.1}"))
    )
}

/// The eval table: every row's scores, cost and speed, and the student's speedups.
pub fn quality(w: &mut String, run: &RunRecord) -> Result<()> {
    let ev = &run.eval;
    writeln!(w, "## Quality and speed\n")?;
    writeln!(
        w,
        "{} videos per row, the same prompts and starting noise in every row, scored against \
         the moving-shapes definition (0-1, higher is better; Fréchet distance: lower is better).\n",
        ev.num_videos
    )?;
    writeln!(
        w,
        "| model | steps | CFG | NFE | params {} sampling (s) | speedup |",
        score_header()
    )?;
    writeln!(
        w,
        "|---|---|---|---|---|{}---|---|",
        "---|".repeat(score_columns())
    )?;
    let teacher_s = run.teacher().map(|t| t.seconds);
    for r in &ev.rows {
        writeln!(
            w,
            "| {} | {} | {} | {} | {:.2}M ({:.0}% of blocks) {} {:.2} | {} |",
            row_label(r),
            r.steps,
            r.cfg,
            r.nfe,
            r.params as f64 / 1e6,
            r.block_param_share * 100.0,
            score_cells(r),
            r.seconds,
            fmt_opt(teacher_s.map(|t| t / r.seconds), 1, "x"),
        )?;
    }
    writeln!(
        w,
        "\nSpeedup of the student over the teacher: **{} measured** (sampling time, same videos, \
         same run), {} theoretical (teacher NFE / (student NFE x kept block share)).\n",
        fmt_opt(ev.speedup_measured, 1, "x"),
        fmt_opt(ev.speedup_theoretical, 2, "x"),
    )?;
    Ok(())
}

/// The samples side by side, and where every file is.
pub fn samples(w: &mut String, run: &RunRecord) -> Result<()> {
    let ev = &run.eval;
    writeln!(w, "## Samples\n")?;
    let rows: Vec<&str> = [TEACHER, TEACHER_FEW, STUDENT]
        .into_iter()
        .filter(|r| ev.row(r).is_some())
        .collect();
    let gif = "report/samples.gif";
    let cols = crate::samples::side_by_side_gif(&run.dir, &rows, &run.dir.path().join(gif), 8)?;
    writeln!(w, "![teacher and student samples]({gif})\n")?;
    writeln!(
        w,
        "The same three rows at the first, middle and last frame (a still):\n\n![samples, three frames](report/samples.png)\n"
    )?;
    let describe: Vec<String> = rows
        .iter()
        .filter_map(|r| ev.row(r))
        .map(|r| match r.name.as_str() {
            TEACHER | TEACHER_FEW => format!("teacher ({} steps, CFG {})", r.steps, r.cfg),
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
    Ok(())
}
