//! A rank's life in an `mpirun` job (`flg-worker run`): join the job, connect to the
//! coordinator when there is one, run this rank's share of every stage the config lists, and
//! end in a way the coordinator understands.
//!
//! - A stop asked for by the coordinator ends the rank cleanly after the final checkpoint.
//! - An error inside a rank is reported as the stage failing (rank 0 tells the coordinator,
//!   which does not relaunch: a deterministic error would fail again) and the whole job is
//!   aborted, so no rank is left waiting in a collective.
//! - Stage durations go to `events.jsonl`: through the coordinator's stage reports, or
//!   written by rank 0 when the ranks run without one (`fastlightgen workers`).

use crate::checkpoint::Writer;
use crate::collective;
use crate::control::Control;
use crate::data;
use crate::device;
use crate::ranks::Ranks;
use crate::stages::{self, StageCtx};
use crate::trainer::Stopped;
use anyhow::{bail, Result};
use flg_core::config::{Config, LoadOptions, Override, Precision};
use flg_core::events::{Event, EventLog, Record};
use flg_core::{RunDir, Stage};
use flg_proto::StageEvent;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `flg-worker run` was asked to do.
pub struct RankArgs<'a> {
    pub config: &'a Path,
    /// Pretraining writes an EMA snapshot every this many steps (0: none).
    pub snapshot_every: u64,
    /// Run only these stages (`--stage`); all the config lists when empty.
    pub only: &'a [Stage],
    /// The coordinator's URL (`--coordinator`).
    pub coordinator: Option<&'a str>,
    /// `--set section.key=value`, applied to the file.
    pub overrides: &'a [Override],
}

/// One rank of an `mpirun` job, from start to end.
pub fn run_rank(args: &RankArgs) -> Result<()> {
    let path = args.config;
    let mut cfg = Config::load_overridden(path, LoadOptions::default(), args.overrides)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let all_stages = cfg.stages();
    if !args.only.is_empty() {
        if let Some(s) = args.only.iter().find(|s| !cfg.runs_stage(**s)) {
            bail!(
                "--stage {s}: {} does not list it in experiment.stages {:?}",
                path.display(),
                cfg.experiment.stages
            );
        }
        // The run's teacher still comes from pretraining when the config pretrains.
        let pretrains = cfg.runs_stage(Stage::Pretrain);
        cfg.experiment
            .stages
            .retain(|s| args.only.iter().any(|o| o.name() == s));
        if pretrains && !cfg.runs_stage(Stage::Pretrain) && cfg.model.weights.is_none() {
            cfg.model.weights = Some(cfg.run_dir().pretrained_teacher());
        }
    }
    let ranks = crate::ranks::init(&cfg, path)?;
    let control = match args.coordinator {
        Some(url) => match Control::connect(url, &cfg, ranks.rank, ranks.world) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                use mpi::traits::Communicator;
                eprintln!("error (rank {} of {}): {e:#}", ranks.rank, ranks.world);
                ranks.universe.world().abort(1);
            }
        },
        None => None,
    };
    match run_stages(
        &cfg,
        path,
        &ranks,
        all_stages,
        args.snapshot_every,
        args.overrides,
        control.clone(),
    ) {
        Ok(()) => {}
        Err(e) if e.downcast_ref::<Stopped>().is_some() => {
            if ranks.rank == 0 {
                println!("{e}; the run continues from its last checkpoint when started again");
            }
        }
        Err(e) => {
            // The other ranks may be waiting in a collective for this one: end the whole job
            // instead of leaving them hanging. An error is not cured by a restart: say so to
            // the coordinator first, so that it does not relaunch.
            use mpi::traits::Communicator;
            eprintln!("error (rank {} of {}): {e:#}", ranks.rank, ranks.world);
            if let Some(c) = &control {
                // The stage that failed (or the first, for an error before any stage).
                let stage = Some(c.stage())
                    .filter(|s| !s.is_empty())
                    .or_else(|| cfg.experiment.stages.first().cloned())
                    .unwrap_or_default();
                if ranks.rank == 0 {
                    let _ = c.report_stage(&stage, StageEvent::Failed, 0.0, &format!("{e:#}"));
                }
            }
            ranks.universe.world().abort(1);
        }
    }
    Ok(())
}

/// This rank's share of every stage the config lists, in order.
fn run_stages(
    cfg: &Config,
    path: &Path,
    ranks: &Ranks,
    all_stages: Vec<Stage>,
    snapshot_every: u64,
    overrides: &[Override],
    control: Option<Arc<Control>>,
) -> Result<()> {
    let backend = device::select_backend(
        cfg.cluster.device,
        cfg.cluster.backend,
        &device::GpuEnv::detect(),
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let place = collective::node_place(&ranks.universe);
    tracing::info!(host = %flg_core::hostname(), "{place}");
    let local = place.local_rank;
    let prefetch = cfg.cluster.prefetch.enabled(cfg.cluster.device);
    let comm = collective::connect(backend, &ranks.universe, local, prefetch)
        .map_err(anyhow::Error::msg)?;
    collective::share_cores_among_local_ranks(&place);
    let device = device::tch_device(cfg.cluster.device, local);
    let kind = if cfg.cluster.precision == Precision::Bf16 {
        tch::Kind::BFloat16
    } else {
        tch::Kind::Float
    };
    let run_dir = cfg.run_dir();
    if ranks.rank == 0 {
        std::fs::create_dir_all(run_dir.path())?;
        // The run's config, with every stage it lists (also when `--stage` runs only some).
        let mut resolved = cfg.clone();
        resolved.experiment.stages = all_stages.iter().map(|s| s.name().to_string()).collect();
        // Keys set on the command line head it, so the file says how it came to differ.
        let text = flg_core::config::record_overrides(overrides) + &resolved.to_toml();
        std::fs::write(run_dir.config(), text)?;
        data::open_or_generate(cfg, &run_dir)?; // generated once, by rank 0
    }
    comm.barrier();
    let data = Arc::new(data::open_or_generate(cfg, &run_dir)?);
    let null_prompt = crate::context::null_prompt(cfg, &data)?;
    let writer = control
        .as_ref()
        .map(|c| Writer::start(c.clone(), run_dir.checkpoints()));
    let ctx = StageCtx {
        cfg,
        run_dir: run_dir.clone(),
        data,
        comm: comm.as_ref(),
        device,
        kind,
        teacher: teacher_path(cfg, &run_dir),
        null_prompt,
        all_stages,
        control: control.clone(),
        writer,
        last_saved: Default::default(),
    };
    let done_before = control
        .as_ref()
        .map(|c| c.completed_stages.clone())
        .unwrap_or_default();
    let lead = ranks.rank == 0;
    for stage in cfg.stages() {
        if done_before.iter().any(|s| s == stage.name()) {
            if lead {
                println!("{stage}: done in an earlier launch, skipped");
            }
            continue;
        }
        let started = std::time::Instant::now();
        if let Some(c) = &control {
            if lead {
                c.report_stage(stage.name(), StageEvent::Started, 0.0, "")?;
            }
            c.set_progress(stage.name(), 0);
        }
        let result = run_stage(&ctx, stage, snapshot_every);
        if let Err(e) = &result {
            if let (Some(stop), Some(c), true) = (e.downcast_ref::<Stopped>(), &control, lead) {
                c.report_stage(
                    stage.name(),
                    StageEvent::Stopped,
                    started.elapsed().as_secs_f64(),
                    &stop.to_string(),
                )?;
            }
        }
        result?;
        ctx.flush_checkpoints()?;
        // The next stage reads what rank 0 just wrote.
        comm.barrier();
        let seconds = started.elapsed().as_secs_f64();
        if lead {
            match &control {
                Some(c) => c.report_stage(stage.name(), StageEvent::Done, seconds, "")?,
                None => EventLog::new(&run_dir).append(&Record::now(Event::StageDone {
                    stage,
                    seconds,
                    message: String::new(),
                }))?,
            }
        }
    }
    Ok(())
}

/// One stage of this rank.
fn run_stage(ctx: &StageCtx, stage: Stage, snapshot_every: u64) -> Result<()> {
    let lead = ctx.lead();
    match stage {
        Stage::Pretrain => {
            let out = stages::pretrain::run(ctx, snapshot_every)?;
            if lead {
                println!("pretrain: teacher (EMA) -> {}", out.display());
            }
        }
        Stage::Importance => {
            let full = ctx.load_input(&ctx.teacher, Stage::Pretrain)?;
            let model = ctx.shard(&full);
            drop(full);
            let report = stages::importance::measure(
                &model,
                ctx.comm,
                &ctx.data,
                &ctx.cfg.importance,
                ctx.cfg.experiment.seed,
            );
            if lead {
                stages::importance::write(&report, &ctx.run_dir)?;
                println!(
                    "importance: candidates {:?} ({:.0}% of block parameters, {} choice) -> {}",
                    report.candidates,
                    report.removed_share * 100.0,
                    report.selection.name(),
                    ctx.run_dir.importance().display()
                );
            }
        }
        Stage::Pruning => {
            let out = stages::pruning::run(ctx)?;
            if lead {
                println!("pruning: Stage II model -> {}", out.display());
            }
        }
        Stage::Distill => {
            let out = stages::distill::run(ctx)?;
            if lead {
                println!("distill: generator (EMA) -> {}", out.display());
            }
        }
        Stage::Export => {
            if lead {
                let info = stages::export::export(&ctx.run_dir)?;
                println!("export: {}", info.summary(&ctx.run_dir));
            }
        }
        Stage::Eval => {
            stages::evaluate::run(ctx)?;
        }
    }
    Ok(())
}

/// The teacher a run starts from: its own pretraining output if it pretrains, else
/// model.weights.
pub fn teacher_path(cfg: &Config, run_dir: &RunDir) -> PathBuf {
    if cfg.runs_stage(Stage::Pretrain) || cfg.model.weights.is_none() {
        run_dir.pretrained_teacher()
    } else {
        cfg.model.weights.clone().expect("checked")
    }
}
