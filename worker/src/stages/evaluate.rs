//! The eval stage: the run's models sampled for the same prompts from the same noise, scored
//! with `fastlightgen eval`, and timed against each other in one run.
//!
//! Rows: the teacher with its reference sampler (`eval.teacher_steps` Euler steps, CFG
//! `eval.teacher_cfg`) and the teacher at the student's step count (both unless
//! `eval.compare_teacher = false`), then the exported student with its recorded sampler.
//! Videos are split across the ranks (video i always starts from noise `(seed, i)`), gathered
//! on rank 0, written to `samples/<row>/` and scored; `eval.json` holds the table and the
//! measured and theoretical speedups of the student over the reference teacher.

use super::StageCtx;
use crate::eval::evaluate;
use crate::flow;
use crate::model::file::{self, Prompts};
use crate::model::Dit;
use crate::sample;
use anyhow::{Context, Result};
use flg_core::formats::eval::{Row, RunEval, STUDENT, TEACHER, TEACHER_FEW};
use flg_core::formats::student::StudentInfo;
use flg_core::Stage;
use std::path::Path;
use tch::{Kind, Tensor};

/// Samples `n` videos split across the ranks; rank 0 gets all of them as uint8 pixels.
/// Returns the pixels (empty on other ranks), their shape and the slowest rank's seconds
/// (`timed`: a fast sampler is repeated for `eval.min_timed_seconds` for a steadier time).
pub(crate) fn sample_split(
    ctx: &StageCtx,
    model: &Dit,
    prompts: &Prompts,
    labels: &[i64],
    how: &sample::Sampling,
    timed: bool,
) -> (Vec<u8>, [usize; 4], f64) {
    let (rank, world) = (ctx.comm.rank(), ctx.comm.world());
    let n = labels.len();
    let per = n.div_ceil(world);
    let (lo, hi) = ((rank * per).min(n), ((rank + 1) * per).min(n));
    let shape = [
        model.dims.in_channels,
        prompts.shapes.frames,
        prompts.shapes.size,
        prompts.shapes.size,
    ];
    let noise = sample::initial_noise(n, shape, ctx.cfg.experiment.seed).to_device(ctx.device);
    let text = sample::class_text(prompts, labels).to_device(ctx.device);
    let mine = (hi - lo) as i64;
    let run = || {
        sample::generate(
            model,
            &noise.narrow(0, lo as i64, mine),
            &text.narrow(0, lo as i64, mine),
            how,
            lo,
            ctx.cfg.eval.batch_size as usize,
        )
    };
    let (latents, seconds) = if mine > 0 {
        // A fast sampler finishes in about a second, where the first call's warm-up (memory
        // allocation, thread start) and timer noise are a large share: then the first run only
        // warms up, and the time is the mean of repeats over eval.min_timed_seconds.
        let (latents, first) = run();
        let min = ctx.cfg.eval.min_timed_seconds;
        if first >= min || !timed {
            (latents, first)
        } else {
            let (mut total, mut runs) = (0.0, 0);
            while total < min {
                total += run().1;
                runs += 1;
            }
            (latents, total / runs as f64)
        }
    } else {
        (noise.narrow(0, 0, 0), 0.0)
    };
    // Pad to `per` videos so every rank sends the same length.
    let pad = Tensor::zeros(
        [per as i64 - mine, shape[0], shape[1], shape[2], shape[3]],
        (Kind::Float, ctx.device),
    );
    let all = ctx
        .comm
        .all_gather(&Tensor::cat(&[latents, pad], 0).reshape([-1]));
    let slowest = ctx
        .comm
        .all_gather(&Tensor::from_slice(&[seconds as f32]).to_device(ctx.device))
        .max()
        .double_value(&[]);
    let latents = all
        .view([
            world as i64 * per as i64,
            shape[0],
            shape[1],
            shape[2],
            shape[3],
        ])
        .narrow(0, 0, n as i64)
        .to_device(tch::Device::Cpu);
    let (pixels, vshape) = sample::to_pixels(&latents);
    (pixels, vshape, slowest)
}

#[allow(clippy::too_many_arguments)]
fn score_row(
    ctx: &StageCtx,
    name: &str,
    path: &Path,
    model: &Dit,
    prompts: &Prompts,
    labels: &[i64],
    how: &sample::Sampling,
) -> Result<Option<Row>> {
    let (pixels, shape, seconds) = sample_split(ctx, model, prompts, labels, how, true);
    if !ctx.lead() {
        return Ok(None);
    }
    sample::write_samples(&ctx.run_dir.samples(name), &pixels, shape, labels)?;
    let eval = evaluate(&pixels, labels, shape[1], shape[2]);
    let (steps, cfg) = (how.times.len() - 1, how.cfg);
    let row = Row {
        name: name.to_string(),
        model: path.display().to_string(),
        steps,
        cfg,
        nfe: flow::nfe(steps, cfg),
        params: model.param_count(),
        block_param_share: model.block_param_share(),
        seconds,
        eval,
    };
    println!(
        "{:>18}: {:>2} steps, {:>3} NFE, {:>5.1}% block params, {:>7.2}s, average {:.3}, FD {:.2}",
        row.name,
        row.steps,
        row.nfe,
        row.block_param_share * 100.0,
        row.seconds,
        row.eval.average,
        row.eval.frechet_distance
    );
    Ok(Some(row))
}

/// Runs the eval stage; rank 0 writes the samples and `eval.json`.
pub fn run(ctx: &StageCtx) -> Result<Option<RunEval>> {
    let e = &ctx.cfg.eval;
    let n = e.num_samples as usize;
    let labels = sample::labels_for(n, &[]);
    let teacher_file = &ctx.teacher;
    let (teacher, teacher_meta) = file::load(teacher_file, Some(&ctx.cfg.model_dims()))?;
    let prompts = teacher_meta
        .and_then(|m| m.prompts)
        .or_else(|| super::model_meta(&teacher, &ctx.data).prompts)
        .with_context(|| {
            "the eval stage needs a moving-shapes prompt table (data.kind = \"moving-shapes\")"
        })?;
    let teacher = teacher.to(ctx.device, Kind::Float);
    let student_file = ctx.run_dir.student();
    let mut rows = Vec::new();
    let few = ctx.cfg.distill.timesteps.len();
    let seed = ctx.cfg.experiment.seed;
    let euler = |times: Vec<f64>, cfg: f64| sample::Sampling {
        times,
        cfg,
        null: ctx.null_prompt.clone(),
        kind: flow::SamplerKind::Euler,
        seed,
    };
    if e.compare_teacher {
        let reference = flow::euler_times(e.teacher_steps as usize, e.shift);
        rows.extend(score_row(
            ctx,
            TEACHER,
            teacher_file,
            &teacher,
            &prompts,
            &labels,
            &euler(reference, e.teacher_cfg),
        )?);
        let short = flow::euler_times(few, e.shift);
        rows.extend(score_row(
            ctx,
            TEACHER_FEW,
            teacher_file,
            &teacher,
            &prompts,
            &labels,
            &euler(short, e.teacher_cfg),
        )?);
    }
    drop(teacher);
    let has_student = ctx.has_stage(Stage::Export) || student_file.exists();
    let mut student_share = None;
    if has_student {
        let info = StudentInfo::read(&ctx.run_dir.student_info()).with_context(|| {
            "the eval stage scores the exported student; run the export stage first"
        })?;
        let (student, _) = file::load(&student_file, None)?;
        let student = student.to(ctx.device, Kind::Float);
        let times: Vec<f64> = info
            .sampler
            .timesteps
            .iter()
            .copied()
            .chain([0.0])
            .collect();
        rows.extend(score_row(
            ctx,
            STUDENT,
            &student_file,
            &student,
            &prompts,
            &labels,
            &sample::Sampling {
                times,
                cfg: info.sampler.cfg,
                null: ctx.null_prompt.clone(),
                kind: info.sampler.kind,
                seed,
            },
        )?);
        student_share = Some(info.block_param_share);
    }
    if !ctx.lead() {
        return Ok(None);
    }
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let (speedup_measured, speedup_theoretical) =
        match (find(TEACHER), find(STUDENT), student_share) {
            (Some(t), Some(s), Some(share)) => (
                Some(t.seconds / s.seconds),
                Some(t.nfe as f64 / (s.nfe as f64 * share)),
            ),
            _ => (None, None),
        };
    let report = RunEval {
        run: ctx.cfg.experiment.name.clone(),
        world: ctx.comm.world(),
        num_videos: n,
        seed: ctx.cfg.experiment.seed,
        rows,
        speedup_measured,
        speedup_theoretical,
    };
    let path = ctx.run_dir.eval();
    flg_core::durable::write_file(&path, serde_json::to_string_pretty(&report)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(mut log) = ctx.metrics()? {
        // TensorBoard: each row's scores and its sample grid.
        for r in &report.rows {
            let mut values: Vec<(&str, f64)> = r.eval.scores.named().to_vec();
            values.push(("average", r.eval.average));
            values.push(("frechet_distance", r.eval.frechet_distance));
            values.push(("seconds", r.seconds));
            log.scalars(&format!("eval/{}", r.name), r.steps as u64, &values);
            let grid = ctx
                .run_dir
                .samples(&r.name)
                .join(flg_core::run_dir::sample_files::GRID);
            log.image(&format!("eval/{}/grid", r.name), r.steps as u64, &grid);
        }
    }
    if let (Some(m), Some(t)) = (speedup_measured, speedup_theoretical) {
        println!("student speedup over the teacher: {m:.2}x measured, {t:.2}x theoretical");
    }
    println!("eval -> {}", path.display());
    Ok(Some(report))
}
