//! Range and cross-field checks of a parsed config. Each check records an issue naming the key
//! and what was expected; none stops at the first problem.

use super::*;
use crate::stage::Stage;

pub(super) fn check(c: &Config, options: LoadOptions, issues: &mut Issues) {
    let files = options.check_files;
    check_experiment(c, issues);
    check_cluster(&c.cluster, files, issues);
    let dims = match resolve_model(&c.model) {
        Ok(dims) => {
            check_model(&c.model, &dims, files, issues);
            Some(dims)
        }
        Err(model_issues) => {
            issues.0.extend(model_issues.0);
            None
        }
    };
    super::validate_data::check_data(c, dims.as_ref(), files, issues);
    check_training(c, issues);
    if issues.0.is_empty() && c.cluster.device == Device::Cpu {
        check_host_memory(c, issues);
    }
}

/// A CPU run's peak memory (the estimate of `validate --estimate-memory`, for every rank this
/// machine runs) against this machine's memory: an impossible size is refused here, with the
/// numbers, instead of aborting in an allocation on every rank and every restart.
fn check_host_memory(c: &Config, issues: &mut Issues) {
    use crate::memory;
    let Some(have) = memory::host_memory_bytes() else {
        return;
    };
    let ((latent, text_len), source) = memory::latent_shape(c, ([16, 21, 60, 104], 512));
    let e = memory::estimate(c, c.cluster.world_size, latent, text_len, source);
    let Some(peak) = e.peak() else { return };
    // Without a hostfile every rank runs here.
    let ranks_here = if c.cluster.hostfile.is_none() {
        c.cluster.world_size
    } else {
        1
    };
    let need = peak.total() * f64::from(ranks_here);
    if need > have as f64 {
        let key = format!("{}.batch_size", peak.stage.name());
        issues.push(
            key,
            format!(
                "the {} stage needs about {:.1} GiB per rank ({:.1} GiB for the {ranks_here} rank(s) on this \
                 machine; videos {latent:?} from {}), more than this machine's {:.1} GiB: lower the batch \
                 size, data.size or data.frames (`fastlightgen validate --estimate-memory` shows the parts)",
                peak.stage.name(),
                peak.total() / memory::GIB,
                need / memory::GIB,
                e.latent_source,
                have as f64 / memory::GIB
            ),
        );
    }
}

fn check_experiment(c: &Config, issues: &mut Issues) {
    let e = &c.experiment;
    if e.name.is_empty() {
        issues.push(
            "experiment.name",
            "missing: a run name such as \"demo-cpu\"",
        );
    } else if !e
        .name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
    {
        issues.push(
            "experiment.name",
            format!(
                "{:?} is used as a directory name: use only letters, digits, '.', '_', '-'",
                e.name
            ),
        );
    }
    if e.name.starts_with('.') || e.name.len() > 128 {
        issues.push(
            "experiment.name",
            format!(
                "{:?}: a run directory's name must not start with '.' (\"..\" would be the parent of \
                 experiment.output_dir) and has at most 128 characters",
                e.name
            ),
        );
    }
    if e.output_dir.as_os_str().is_empty() {
        issues.push("experiment.output_dir", "must not be empty");
    }
    if e.stages.is_empty() {
        issues.push(
            "experiment.stages",
            format!("empty: list some of {}", Stage::names()),
        );
    }
    let mut last = None;
    for stage in &e.stages {
        match Stage::ALL.iter().position(|s| s.name() == stage) {
            None => issues.push(
                "experiment.stages",
                format!(
                    "unknown stage {stage:?}; expected some of {}",
                    Stage::names()
                ),
            ),
            Some(i) => {
                if last.is_some_and(|l| i <= l) {
                    issues.push(
                        "experiment.stages",
                        format!(
                            "{stage:?} is repeated or out of order; stages run in the order {}",
                            Stage::names()
                        ),
                    );
                }
                last = Some(i);
            }
        }
    }
    if c.runs_stage(Stage::Eval) && c.data.kind != DataKind::MovingShapes {
        issues.push(
            "experiment.stages",
            "\"eval\" scores moving-shapes videos against their definition; with data.kind = \
             \"latents\" leave it out and sample the exported student (fastlightgen sample) for \
             your own benchmark",
        );
    }
    let needs_teacher = [Stage::Importance, Stage::Pruning, Stage::Distill]
        .into_iter()
        .any(|s| c.runs_stage(s));
    if needs_teacher && !c.runs_stage(Stage::Pretrain) && c.model.weights.is_none() {
        issues.push(
            "model.weights",
            "missing: the stages start from a teacher, so give its weights file or add \"pretrain\" \
             to experiment.stages",
        );
    }
}

fn check_cluster(k: &Cluster, files: bool, issues: &mut Issues) {
    if k.world_size == 0 {
        issues.push("cluster.world_size", "must be at least 1");
    }
    match (k.device, k.backend) {
        (Device::Cpu, Backend::Nccl) => issues.push(
            "cluster.backend",
            "\"nccl\" moves CUDA tensors; with device = \"cpu\" use \"mpi\" or \"auto\"",
        ),
        (Device::Cuda, Backend::Mpi) => issues.push(
            "cluster.backend",
            "\"mpi\" moves CPU tensors; with device = \"cuda\" use \"nccl\" or \"auto\"",
        ),
        _ => {}
    }
    if k.precision == Precision::Bf16 && k.device != Device::Cuda {
        issues.push(
            "cluster.precision",
            "\"bf16\" compute is for device = \"cuda\"; the CPU path computes in \"fp32\"",
        );
    }
    if let Err(msg) = check_host_port(&k.coordinator_addr) {
        issues.push("cluster.coordinator_addr", msg);
    }
    if !k.http_addr.is_empty() {
        if let Err(msg) = check_host_port(&k.http_addr) {
            issues.push(
                "cluster.http_addr",
                format!("{msg} (or \"\" for no status page)"),
            );
        }
    }
    within(
        issues,
        "cluster.heartbeat_interval_s",
        k.heartbeat_interval_s,
        0.01,
        600.0,
    );
    within(
        issues,
        "cluster.heartbeat_timeout_s",
        k.heartbeat_timeout_s,
        0.02,
        MAX_HEARTBEAT_TIMEOUT_S,
    );
    if k.world_size > MAX_WORLD_SIZE {
        issues.push(
            "cluster.world_size",
            format!("must be at most {MAX_WORLD_SIZE}, got {}", k.world_size),
        );
    }
    if k.max_restarts > 1000 {
        issues.push(
            "cluster.max_restarts",
            format!("must be at most 1000, got {}", k.max_restarts),
        );
    }
    if k.heartbeat_timeout_s <= k.heartbeat_interval_s {
        issues.push(
            "cluster.heartbeat_timeout_s",
            format!(
                "must be longer than cluster.heartbeat_interval_s ({}), got {}",
                k.heartbeat_interval_s, k.heartbeat_timeout_s
            ),
        );
    }
    if let Some(t) = &k.control_token {
        if t.len() < 8 || t.chars().any(|c| !c.is_ascii_graphic()) {
            issues.push(
                "cluster.control_token",
                "must be at least 8 printable ASCII characters without spaces (it travels in an HTTP header)",
            );
        }
    }
    if let Some(h) = k.hostfile.as_ref().filter(|_| files) {
        if !h.is_file() {
            issues.push("cluster.hostfile", format!("no such file: {}", h.display()));
        }
    }
}

/// `host:port` with a numeric port; the host may be a name (cluster head nodes usually are).
fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("expected host:port such as \"127.0.0.1:50051\", got {addr:?}"))?;
    if host.is_empty() {
        return Err(format!("expected host:port with a host, got {addr:?}"));
    }
    port.parse::<u16>()
        .map(|_| ())
        .map_err(|_| format!("the port of {addr:?} must be a number from 0 to 65535"))
}

/// The preset with the file's overrides; every problem is reported by key.
pub(super) fn resolve_model(m: &Model) -> Result<ModelDims, Issues> {
    let mut issues = Issues::default();
    let base = if m.preset.is_empty() {
        issues.push(
            "model.preset",
            format!("missing: one of {}", PRESETS.join(", ")),
        );
        return Err(issues);
    } else if m.preset == "custom" {
        None
    } else {
        match preset(&m.preset) {
            Some(d) => Some(d),
            None => {
                issues.push(
                    "model.preset",
                    format!(
                        "unknown preset {:?}; expected one of {}",
                        m.preset,
                        PRESETS.join(", ")
                    ),
                );
                return Err(issues);
            }
        }
    };
    let mut pick = |key: &str, over: Option<i64>, from: Option<i64>| -> i64 {
        match over.or(from) {
            Some(v) if v >= 1 => v,
            Some(v) => {
                issues.push(
                    format!("model.{key}"),
                    format!("must be at least 1, got {v}"),
                );
                1
            }
            None => {
                issues.push(
                    format!("model.{key}"),
                    "missing: preset \"custom\" needs every dimension",
                );
                1
            }
        }
    };
    let b = base.as_ref();
    let dims = ModelDims {
        dim: pick("dim", m.dim, b.map(|d| d.dim)),
        num_blocks: pick("num_blocks", m.num_blocks, b.map(|d| d.num_blocks)),
        num_heads: pick("num_heads", m.num_heads, b.map(|d| d.num_heads)),
        ffn_dim: pick("ffn_dim", m.ffn_dim, b.map(|d| d.ffn_dim)),
        freq_dim: pick("freq_dim", m.freq_dim, b.map(|d| d.freq_dim)),
        text_dim: pick("text_dim", m.text_dim, b.map(|d| d.text_dim)),
        text_len: pick("text_len", m.text_len, b.map(|d| d.text_len)),
        in_channels: pick("in_channels", m.in_channels, b.map(|d| d.in_channels)),
        out_channels: pick("out_channels", m.out_channels, b.map(|d| d.out_channels)),
        patch: {
            let p = m.patch.or(b.map(|d| d.patch));
            match p {
                Some(p) if p.iter().all(|&v| v >= 1) => p,
                Some(p) => {
                    issues.push(
                        "model.patch",
                        format!("every entry must be at least 1, got {p:?}"),
                    );
                    [1, 1, 1]
                }
                None => {
                    issues.push(
                        "model.patch",
                        "missing: preset \"custom\" needs every dimension",
                    );
                    [1, 1, 1]
                }
            }
        },
        eps: m.eps.or(b.map(|d| d.eps)).unwrap_or(1e-6),
    };
    if issues.0.is_empty() {
        Ok(dims)
    } else {
        Err(issues)
    }
}

fn check_model(m: &Model, d: &ModelDims, files: bool, issues: &mut Issues) {
    for (field, message) in d.problems() {
        issues.push(format!("model.{field}"), message);
    }
    if let Some(w) = m
        .weights
        .as_ref()
        .filter(|_| files && d.problems().is_empty())
    {
        check_weights(w, d, issues);
    }
}

/// `model.weights` against the configured model, from the files' headers only: the form is
/// found, `config.json` or fastlightgen's metadata agree with the model's dimensions, every
/// key is there with its shape and a readable dtype, the teacher has every block.
fn check_weights(w: &std::path::Path, d: &ModelDims, issues: &mut Issues) {
    use crate::weights::{check, source::WeightSource};
    let src = match WeightSource::open(w) {
        Ok(s) => s,
        Err(e) => return issues.push("model.weights", e.to_string()),
    };
    if let Some(meta) = &src.meta {
        if meta.dims != *d {
            let (a, b) = (
                serde_json::to_value(&meta.dims).unwrap_or_default(),
                serde_json::to_value(d).unwrap_or_default(),
            );
            let fields: Vec<String> = b
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, v)| a.get(k.as_str()) != Some(v))
                        .map(|(k, v)| {
                            format!("{k} = {} in the file, {v} configured", a[k.as_str()])
                        })
                        .collect()
                })
                .unwrap_or_default();
            issues.push(
                "model.weights",
                format!(
                    "{}: a model of other dimensions: {}",
                    w.display(),
                    fields.join(", ")
                ),
            );
            return;
        }
        if meta.block_ids.len() != d.num_blocks as usize {
            issues.push(
                "model.weights",
                format!(
                    "{}: a pruned model ({} of {} blocks); the teacher must have every block",
                    w.display(),
                    meta.block_ids.len(),
                    d.num_blocks
                ),
            );
            return;
        }
    }
    let (dims, blocks) = match src.dims(Some(d)) {
        Ok(x) => x,
        Err(e) => return issues.push("model.weights", e.to_string()),
    };
    let problems = check::check(&src, &dims, &blocks);
    if !problems.is_empty() {
        issues.push(
            "model.weights",
            format!(
                "{} ({:?} key names, {} files) does not fit the configured model ({} problems):\n{}",
                w.display(),
                src.naming,
                src.files.len(),
                problems.len(),
                check::summarise(&problems, 8)
            ),
        );
    }
}

fn check_training(c: &Config, issues: &mut Issues) {
    let world = u64::from(c.cluster.world_size.max(1));
    let micro = c.cluster.micro_batch_size;
    let batch = |issues: &mut Issues, key: &str, b: u64| {
        if b == 0 || b % world != 0 {
            issues.push(
                key,
                format!(
                    "the global batch must be a positive multiple of cluster.world_size ({world}) so every \
                     rank gets the same share, got {b}"
                ),
            );
        } else if micro > 0
            && !key.starts_with("importance.") // forward passes only: nothing to accumulate
            && (b / world) % micro != 0
            && b / world > micro
        {
            issues.push(
                "cluster.micro_batch_size",
                format!(
                    "{micro} does not divide {key}'s per-rank share ({b} / {world} ranks = {}); \
                     every micro-batch of a step must be the same size",
                    b / world
                ),
            );
        }
    };
    // A stage's section is checked only when the experiment runs that stage: a run that
    // only pretrains need not tune the distillation's batch.
    if c.runs_stage(Stage::Pretrain) {
        let p = &c.pretrain;
        at_least_one(issues, "pretrain.steps", p.steps);
        batch(issues, "pretrain.batch_size", p.batch_size);
        check_optim(issues, "pretrain.optim", &p.optim);
        unit_open_right(issues, "pretrain.cfg_dropout", p.cfg_dropout);
        unit_open_right(issues, "pretrain.ema_decay", p.ema_decay);
        positive(issues, "pretrain.shift", p.shift);
        at_least_one(issues, "pretrain.log_every", p.log_every);
    }

    if c.runs_stage(Stage::Importance) {
        let i = &c.importance;
        at_least_one(
            issues,
            "importance.calibration_samples",
            i.calibration_samples,
        );
        at_least_one(
            issues,
            "importance.timesteps_per_sample",
            i.timesteps_per_sample,
        );
        positive(issues, "importance.shift", i.shift);
        if !(i.prune_ratio > 0.0 && i.prune_ratio < 1.0) {
            issues.push(
                "importance.prune_ratio",
                format!("must be in (0, 1), got {}", i.prune_ratio),
            );
        }
        batch(issues, "importance.batch_size", i.batch_size);
    }

    if c.runs_stage(Stage::Pruning) {
        let s = &c.pruning;
        at_least_one(issues, "pruning.steps", s.steps);
        batch(issues, "pruning.batch_size", s.batch_size);
        check_optim(issues, "pruning.optim", &s.optim);
        if !(s.skip_prob > 0.0 && s.skip_prob <= 1.0) {
            issues.push(
                "pruning.skip_prob",
                format!("must be in (0, 1], got {}", s.skip_prob),
            );
        }
        if !(0.0..=1.0).contains(&s.alpha) {
            issues.push(
                "pruning.alpha",
                format!("must be in [0, 1], got {}", s.alpha),
            );
        }
        positive(issues, "pruning.shift", s.shift);
        unit_open_right(issues, "pruning.cfg_dropout", s.cfg_dropout);
        non_negative(issues, "pruning.feature_weight", s.feature_weight);
        if s.target == PruningTarget::Ema && !(s.target_ema_decay > 0.0 && s.target_ema_decay < 1.0)
        {
            issues.push(
                "pruning.target_ema_decay",
                format!(
                    "must be in (0, 1) with target = \"ema\", got {}",
                    s.target_ema_decay
                ),
            );
        }
    }

    if c.runs_stage(Stage::Distill) {
        let d = &c.distill;
        at_least_one(issues, "distill.steps", d.steps);
        batch(issues, "distill.batch_size", d.batch_size);
        check_optim(issues, "distill.generator_optim", &d.generator_optim);
        check_optim(issues, "distill.fake_optim", &d.fake_optim);
        at_least_one(issues, "distill.generator_every", d.generator_every);
        if d.timesteps.is_empty() {
            issues.push("distill.timesteps", "must list at least one timestep");
        }
        if d.timesteps.iter().any(|&t| !(t > 0.0 && t <= 1.0)) {
            issues.push(
                "distill.timesteps",
                format!("every timestep must be in (0, 1], got {:?}", d.timesteps),
            );
        }
        if d.timesteps.windows(2).any(|w| w[1] >= w[0]) {
            issues.push(
                "distill.timesteps",
                format!(
                    "must go strictly down from noise to data, got {:?}",
                    d.timesteps
                ),
            );
        }
        positive(issues, "distill.shift", d.shift);
        range(issues, "distill.b1_range", d.b1_range, 0.0, f64::INFINITY);
        range(issues, "distill.b2_range", d.b2_range, 0.0, f64::INFINITY);
        range(issues, "distill.t_range", d.t_range, 0.0, 1.0);
        if d.t_range[0] <= 0.0 || d.t_range[1] >= 1.0 {
            issues.push(
                "distill.t_range",
                format!("must lie strictly inside (0, 1), got {:?}", d.t_range),
            );
        }
        unit_open_right(issues, "distill.ema_decay", d.ema_decay);
        let r = &d.regression;
        non_negative(issues, "distill.regression.weight", r.weight);
        if r.weight > 0.0 {
            at_least_one(issues, "distill.regression.pairs", r.pairs);
            at_least_one(issues, "distill.regression.teacher_steps", r.teacher_steps);
            within(
                issues,
                "distill.regression.teacher_cfg",
                r.teacher_cfg,
                0.0,
                100.0,
            );
        }
        non_negative(issues, "distill.data_forcing", d.data_forcing);
        non_negative(issues, "distill.gan.weight", d.gan.weight);
        non_negative(issues, "distill.gan.max_grad_ratio", d.gan.max_grad_ratio);
        if d.gan.weight > 0.0 {
            // feature_blocks is checked against the generator's blocks when Stage III starts
            // (the block count may come from the weights file).
            check_optim(
                issues,
                "distill.gan.classifier_optim",
                &d.gan.classifier_optim,
            );
        }
        if d.monitor_every > 0 {
            at_least_one(issues, "distill.monitor_videos", d.monitor_videos);
        }
    }

    if c.checkpoint.keep_last == 0 {
        issues.push(
            "checkpoint.keep_last",
            "must be at least 1 (the newest committed checkpoint is kept)",
        );
    }
    if c.runs_stage(Stage::Eval) {
        let e = &c.eval;
        at_least_one(issues, "eval.num_samples", e.num_samples);
        at_least_one(issues, "eval.teacher_steps", e.teacher_steps);
        within(issues, "eval.teacher_cfg", e.teacher_cfg, 0.0, 100.0);
        positive(issues, "eval.shift", e.shift);
        at_least_one(issues, "eval.batch_size", e.batch_size);
        within(
            issues,
            "eval.min_timed_seconds",
            e.min_timed_seconds,
            0.0,
            3600.0,
        );
    }
}

fn check_optim(issues: &mut Issues, key: &str, o: &Optim) {
    positive(issues, &format!("{key}.lr"), o.lr);
    positive(issues, &format!("{key}.eps"), o.eps);
    for (name, b) in [("beta1", o.beta1), ("beta2", o.beta2)] {
        if !(0.0..1.0).contains(&b) {
            issues.push(
                format!("{key}.{name}"),
                format!("must be in [0, 1), got {b}"),
            );
        }
    }
    for (name, v) in [("weight_decay", o.weight_decay), ("grad_clip", o.grad_clip)] {
        non_negative(issues, &format!("{key}.{name}"), v);
    }
    if !(0.0..=1.0).contains(&o.final_lr_ratio) {
        issues.push(
            format!("{key}.final_lr_ratio"),
            format!("must be in [0, 1], got {}", o.final_lr_ratio),
        );
    }
    if o.lr > 1.0 {
        issues.push(
            format!("{key}.lr"),
            format!("must be at most 1, got {}", o.lr),
        );
    }
    if o.warmup_steps > MAX_COUNT {
        issues.push(
            format!("{key}.warmup_steps"),
            format!("must be at most {MAX_COUNT}, got {}", o.warmup_steps),
        );
    }
}

/// Longest silence before a rank is declared lost: an hour covers any checkpoint write or
/// collective timeout; beyond it a hung run would hold its nodes for good.
pub const MAX_HEARTBEAT_TIMEOUT_S: f64 = 3600.0;

/// More ranks than any cluster this tool targets; also bounds per-rank arrays.
pub const MAX_WORLD_SIZE: u32 = 65536;

/// Largest value of a step count, sample count or batch size: far above any real run, and
/// low enough that step and sample arithmetic cannot overflow.
pub const MAX_COUNT: u64 = 1 << 40;

/// A finite number in `[lo, hi]`.
fn within(issues: &mut Issues, key: &str, v: f64, lo: f64, hi: f64) {
    if !(v.is_finite() && v >= lo && v <= hi) {
        issues.push(key, format!("must be a number in [{lo}, {hi}], got {v}"));
    }
}

fn positive(issues: &mut Issues, key: &str, v: f64) {
    if !(v > 0.0 && v.is_finite()) {
        issues.push(key, format!("must be a positive number, got {v}"));
    }
}

fn non_negative(issues: &mut Issues, key: &str, v: f64) {
    if !(v >= 0.0 && v.is_finite()) {
        issues.push(key, format!("must be a finite number >= 0, got {v}"));
    }
}

fn at_least_one(issues: &mut Issues, key: &str, v: u64) {
    if v == 0 {
        issues.push(key, "must be at least 1, got 0");
    } else if v > MAX_COUNT {
        issues.push(key, format!("must be at most {MAX_COUNT}, got {v}"));
    }
}

/// A probability-like value in [0, 1).
fn unit_open_right(issues: &mut Issues, key: &str, v: f64) {
    if !(0.0..1.0).contains(&v) {
        issues.push(key, format!("must be in [0, 1), got {v}"));
    }
}

/// `[lo, hi]` with lo <= hi inside [min, max].
fn range(issues: &mut Issues, key: &str, r: [f64; 2], min: f64, max: f64) {
    if !(r[0] <= r[1] && r[0] >= min && r[1] <= max && r.iter().all(|v| v.is_finite())) {
        issues.push(
            key,
            format!("expected finite [low, high] with {min} <= low <= high <= {max}, got {r:?}"),
        );
    }
}
