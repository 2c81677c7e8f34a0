//! The worker's single-process commands: data sets, pretraining in one process, sampling,
//! scoring, export, annotation, plots, and what the machine offers.

use crate::args::*;
use anyhow::{bail, Context, Result};
use flg_core::config::{moving_shapes_geometry, Config};
use flg_core::Stage;
use flg_worker::data::{self, shapes::ShapesSpec, DataSet};
use flg_worker::device::GpuEnv;
use flg_worker::sample;
use std::sync::Arc;

pub fn data_shapes(a: ShapesArgs) -> Result<()> {
    let ShapesArgs {
        out,
        num,
        frames,
        size,
        seed,
        text_len,
        text_dim,
        text_seed,
        shard_size,
    } = a;
    // The same geometry rules as the config's [data] section.
    if let Some((key, msg)) = moving_shapes_geometry(frames as i64, size as i64)
        .into_iter()
        .next()
    {
        bail!("--{key}: {msg}");
    }
    if num == 0 || shard_size == 0 || text_len == 0 || text_dim == 0 {
        bail!("--num, --shard-size, --text-len and --text-dim must be at least 1");
    }
    let spec = ShapesSpec {
        frames,
        size,
        text_len,
        text_dim,
        seed,
        text_seed,
    };
    let m = data::write_moving_shapes(&out, &spec, num, shard_size, true)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} videos in {} shards to {}",
        m.num_samples,
        m.shards.len(),
        out.display()
    );
    Ok(())
}

pub fn data_verify(a: DataVerifyArgs) -> Result<()> {
    let DataVerifyArgs { dir } = a;
    let ds = DataSet::open(&dir)?;
    print_summary(&ds);
    for (file, sha) in ds.sha256_of_shards() {
        println!("  {sha}  {file}");
    }
    Ok(())
}

/// The project's Python (FLG_PYTHON, else the `.venv` of the checkout this binary was built
/// in, else python3) and one of its tools/ scripts (FLG_TOOLS names the folder otherwise).
fn python_tool(script: &str) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let exe = std::env::current_exe()?;
    let up: Vec<&std::path::Path> = exe.ancestors().skip(1).take(4).collect();
    let python = std::env::var_os("FLG_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            up.iter()
                .map(|d| d.join(".venv/bin/python"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| "python3".into());
    let tools = std::env::var_os("FLG_TOOLS")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            up.iter()
                .map(|d| d.join("tools"))
                .find(|p| p.join(script).is_file())
        })
        .with_context(|| {
            format!(
                "tools/{script} not found beside {} (set FLG_TOOLS to the tools folder)",
                exe.display()
            )
        })?;
    Ok((python, tools.join(script)))
}

pub fn data_encode(a: DataEncodeArgs) -> Result<()> {
    let (python, script) = python_tool("wan_encode.py")?;
    let status = std::process::Command::new(&python)
        .arg(&script)
        .args(&a.args)
        .status()
        .with_context(|| format!("cannot start {} (run `make setup`)", python.display()))?;
    if !status.success() {
        bail!(
            "{} {} failed ({status})",
            python.display(),
            script.display()
        );
    }
    // What the encoder wrote must open as a data set, shard by shard.
    let is_data = a.args.first().is_some_and(|s| s == "data");
    let out = a
        .args
        .iter()
        .position(|s| s == "--out")
        .and_then(|i| a.args.get(i + 1));
    if let (true, Some(out)) = (is_data, out) {
        let ds = DataSet::open(std::path::Path::new(out))?;
        print_summary(&ds);
        println!(
            "  null prompt: {}/null_text.safetensors (set data.null_text to it)",
            std::path::Path::new(out).display()
        );
    }
    Ok(())
}

pub fn train(a: TrainArgs) -> Result<()> {
    let TrainArgs {
        config,
        snapshot_every,
    } = a;
    let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !cfg.runs_stage(Stage::Pretrain) {
        bail!(
            "{}: experiment.stages has no \"pretrain\"; nothing to train in one process",
            config.display()
        );
    }
    let run_dir = cfg.run_dir();
    std::fs::create_dir_all(run_dir.path())?;
    std::fs::write(run_dir.config(), cfg.to_toml())?;
    let data = Arc::new(data::open_or_generate(&cfg, &run_dir)?);
    let solo = flg_worker::collective::Solo;
    let null_prompt = flg_worker::context::null_prompt(&cfg, &data)?;
    let ctx = flg_worker::stages::StageCtx {
        cfg: &cfg,
        run_dir: run_dir.clone(),
        data,
        null_prompt,
        comm: &solo,
        device: tch::Device::Cpu,
        kind: tch::Kind::Float,
        teacher: flg_worker::lifecycle::teacher_path(&cfg, &run_dir),
        all_stages: cfg.stages(),
        control: None,
        writer: None,
        last_saved: Default::default(),
    };
    let out = flg_worker::stages::pretrain::run(&ctx, snapshot_every)?;
    println!("teacher written to {}", out.display());
    Ok(())
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let SampleArgs {
        model,
        preset,
        prompts_from,
        steps,
        cfg,
        sampler,
        shift,
        num,
        labels,
        seed,
        batch,
        out,
        eval,
        text_embeddings,
        null_text,
        latent,
        device,
    } = a;
    anyhow::ensure!(
        num.map_or(true, |n| (1..=MAX_SAMPLE_VIDEOS).contains(&n)),
        "--num: must be in 1..={MAX_SAMPLE_VIDEOS}, got {}",
        num.unwrap_or(0)
    );
    anyhow::ensure!(
        (1..=4096).contains(&batch),
        "--batch: must be in 1..=4096, got {batch}"
    );
    anyhow::ensure!(
        steps.map_or(true, |s| (1..=1000).contains(&s)),
        "--steps: must be in 1..=1000, got {}",
        steps.unwrap_or(0)
    );
    anyhow::ensure!(
        cfg.map_or(true, |c| c.is_finite() && (0.0..=100.0).contains(&c)),
        "--cfg: must be a number in [0, 100], got {}",
        cfg.unwrap_or(f64::NAN)
    );
    anyhow::ensure!(
        shift.is_finite() && shift > 0.0 && shift <= 100.0,
        "--shift: must be a number in (0, 100], got {shift}"
    );
    let device = match device.as_str() {
        "cpu" => tch::Device::Cpu,
        "cuda" => {
            flg_worker::device::load_torch_cuda()
                .map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?;
            anyhow::ensure!(
                tch::Cuda::is_available(),
                "--device cuda: no CUDA device found"
            );
            tch::Device::Cuda(0)
        }
        d => bail!("--device {d:?}: expected cpu or cuda"),
    };
    let (m, meta) = load_model(&model, preset.as_deref())?;
    let m = m.to(device, tch::Kind::Float);
    // A student in diffusers or Wan form keeps its sampler in sampler.json beside the weights.
    let recorded = meta
        .as_ref()
        .and_then(|m| m.sampler.clone())
        .or(portable_sampler(&model)?);
    let times = match (steps, &recorded) {
        (None, Some(r)) => r.timesteps.iter().copied().chain([0.0]).collect(),
        _ => flg_worker::flow::euler_times(steps.unwrap_or(50), shift),
    };
    let cfg = cfg.or(recorded.as_ref().map(|r| r.cfg)).unwrap_or(4.0);
    let kind = sampler
        .or(recorded.as_ref().map(|r| r.kind))
        .unwrap_or_default();
    if let Some(file) = text_embeddings {
        return sample_latents(SampleLatents {
            m: &m,
            model: &model,
            file: &file,
            null_text: null_text.as_deref(),
            latent: &latent,
            num,
            how: sample::Sampling {
                times,
                cfg,
                null: flg_worker::flow::NullPrompt::zeros(),
                kind,
                seed,
            },
            batch,
            out: &out,
            device,
        });
    }
    anyhow::ensure!(
        null_text.is_none() && latent.is_empty(),
        "--null-text and --latent are for latent models, with --text-embeddings"
    );
    let num = num.unwrap_or(16);
    if let Some(bad) = labels.iter().find(|&&l| !(0..8).contains(&l)) {
        bail!("--labels: {bad} is not a moving-shapes class (0 to 7)");
    }
    let prompts = match (&prompts_from, meta.as_ref().and_then(|m| m.prompts.clone())) {
        (Some(dir), _) => prompts_of(dir)?,
        (None, Some(p)) => p,
        (None, None) => bail!(
            "{}: records no prompt table; give the moving-shapes data it was trained on with --prompts-from DIR, or prompt embeddings for a latent model with --text-embeddings FILE",
            model.display()
        ),
    };
    let video_bytes =
        4 * m.dims.in_channels * prompts.shapes.frames * prompts.shapes.size * prompts.shapes.size;
    check_sample_memory(num, video_bytes)?;
    let labels = sample::labels_for(num, &labels);
    let text = sample::class_text(&prompts, &labels);
    let shape = [
        m.dims.in_channels,
        prompts.shapes.frames,
        prompts.shapes.size,
        prompts.shapes.size,
    ];
    let noise = sample::initial_noise(num, shape, seed).to_device(device);
    let how = sample::Sampling {
        times: times.clone(),
        cfg,
        null: flg_worker::flow::NullPrompt::zeros(),
        kind,
        seed,
    };
    let text = text.to_device(device);
    let (latents, seconds) = sample::generate(&m, &noise, &text, &how, 0, batch);
    let latents = latents.to_device(tch::Device::Cpu);
    let (pixels, vshape) = sample::to_pixels(&latents);
    sample::write_samples(&out, &pixels, vshape, &labels)?;
    let nfe = flg_worker::flow::nfe(times.len() - 1, cfg);
    let info = serde_json::json!({
        "model": model, "steps": times.len() - 1, "timesteps": times, "cfg": cfg, "sampler": kind.name(), "nfe": nfe,
        "num": num, "seed": seed, "seconds": seconds, "seconds_per_video": seconds / num as f64,
        "params": m.param_count(),
    });
    std::fs::write(
        out.join("sample.json"),
        serde_json::to_string_pretty(&info)?,
    )?;
    println!(
        "{num} videos ({} {} steps, cfg {cfg}, {nfe} NFE) in {seconds:.2}s -> {}",
        times.len() - 1,
        kind.name(),
        out.display()
    );
    if eval {
        print_eval(&eval_dir(&out)?);
    }
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<()> {
    let ExportArgs { config } = a;
    let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run_dir = cfg.run_dir();
    let info = flg_worker::stages::export::export(&run_dir)?;
    println!("{}", info.summary(&run_dir));
    Ok(())
}

/// Most videos one `sample` call makes (they are held in memory together).
const MAX_SAMPLE_VIDEOS: usize = 100_000;

/// Refuses a sampling job whose videos (noise, latents and pixels together, about three
/// copies) would not fit in this machine's memory, before anything is allocated.
fn check_sample_memory(num: usize, video_bytes: i64) -> Result<()> {
    let need = 3.0 * num as f64 * video_bytes as f64;
    if let Some(have) = flg_core::memory::host_memory_bytes() {
        anyhow::ensure!(
            need <= 0.8 * have as f64,
            "--num {num}: the videos need about {:.1} GiB together, more than this machine's {:.1} GiB; sample fewer at a time",
            need / flg_core::memory::GIB,
            have as f64 / flg_core::memory::GIB
        );
    }
    Ok(())
}

/// The sampler.json of a student folder (export/diffusers, `convert --format diffusers|wan`).
fn portable_sampler(
    model: &std::path::Path,
) -> Result<Option<flg_worker::model::file::SamplerSettings>> {
    let path = model.join("sampler.json");
    if !model.is_dir() || !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    let p: flg_core::formats::student::PortableSampler = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a sampler.json", path.display()))?;
    let settings = p.settings();
    let problems = settings.problems();
    anyhow::ensure!(
        problems.is_empty(),
        "{}: {}",
        path.display(),
        problems.join("; ")
    );
    Ok(Some(settings))
}

/// What `sample --text-embeddings` needs.
struct SampleLatents<'a> {
    m: &'a flg_worker::model::Dit,
    model: &'a std::path::Path,
    file: &'a std::path::Path,
    null_text: Option<&'a std::path::Path>,
    latent: &'a [i64],
    num: Option<usize>,
    how: sample::Sampling,
    batch: usize,
    out: &'a std::path::Path,
    device: tch::Device,
}

/// Samples a latent model from prompt embeddings; writes OUT/latents.safetensors.
fn sample_latents(a: SampleLatents) -> Result<()> {
    use tch::Tensor;
    let dims = &a.m.dims;
    let named = Tensor::read_safetensors(a.file)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", a.file.display()))?;
    let text = named
        .into_iter()
        .find(|(k, _)| k == "text")
        .map(|(_, t)| t.to_kind(tch::Kind::Float))
        .ok_or_else(|| anyhow::anyhow!("{}: has no `text` tensor [N, L, D]", a.file.display()))?;
    let ts = text.size();
    anyhow::ensure!(
        ts.len() == 3 && ts[0] >= 1 && ts[2] == dims.text_dim,
        "{}: `text` is {ts:?}; the model takes [N, L, {}]",
        a.file.display(),
        dims.text_dim
    );
    let rows = ts[0] as usize;
    let n = a.num.unwrap_or(rows);
    let idx: Vec<i64> = (0..n).map(|i| (i % rows) as i64).collect();
    let text = text.index_select(0, &Tensor::from_slice(&idx));
    let shape: [i64; 4] = match a.latent {
        [] => [dims.in_channels, 21, 60, 104],
        &[c, t, h, w] => [c, t, h, w],
        other => bail!("--latent {other:?}: expected C,T,H,W"),
    };
    anyhow::ensure!(
        shape[0] == dims.in_channels && shape.iter().all(|&d| d > 0),
        "--latent {shape:?}: the model takes {} channels",
        dims.in_channels
    );
    for (k, name) in [(1, "T"), (2, "H"), (3, "W")] {
        anyhow::ensure!(
            shape[k] % dims.patch[k - 1] == 0,
            "--latent: {name} = {} is not a multiple of the patch {:?}",
            shape[k],
            dims.patch
        );
    }
    anyhow::ensure!(
        shape.iter().all(|&d| d <= 4096),
        "--latent {shape:?}: every dimension must be at most 4096"
    );
    check_sample_memory(n, 4 * shape.iter().product::<i64>())?;
    let mut how = a.how;
    if let Some(p) = a.null_text {
        how.null = flg_worker::flow::NullPrompt::load(p, [ts[1], ts[2]])?;
    }
    let noise = sample::initial_noise(n, shape, how.seed).to_device(a.device);
    let (latents, seconds) =
        sample::generate(a.m, &noise, &text.to_device(a.device), &how, 0, a.batch);
    std::fs::create_dir_all(a.out)?;
    let path = a.out.join("latents.safetensors");
    // The initial noise too, so that another sampler (tools/wan_student_pipeline.py
    // --noise-from) can start from the same point.
    let named = [
        ("latents".to_string(), latents.to_device(tch::Device::Cpu)),
        ("noise".to_string(), noise.to_device(tch::Device::Cpu)),
        ("text".to_string(), text),
    ];
    let meta = std::collections::HashMap::from([(
        "fastlightgen".to_string(),
        serde_json::json!({"model": a.model, "timesteps": how.times, "cfg": how.cfg,
            "sampler": how.kind.name(), "seed": how.seed})
        .to_string(),
    )]);
    std::fs::write(
        &path,
        flg_worker::model::file::safetensors_bytes(&named, meta)?,
    )?;
    let nfe = flg_worker::flow::nfe(how.times.len() - 1, how.cfg);
    let info = serde_json::json!({
        "model": a.model, "text_embeddings": a.file, "steps": how.times.len() - 1,
        "timesteps": how.times, "cfg": how.cfg, "sampler": how.kind.name(), "nfe": nfe,
        "num": n, "latent": shape, "seed": how.seed, "seconds": seconds,
    });
    std::fs::write(
        a.out.join("sample.json"),
        serde_json::to_string_pretty(&info)?,
    )?;
    println!(
        "{n} latent videos {shape:?} ({} {} steps, cfg {}, {nfe} NFE) in {seconds:.2}s -> {} (decode: tools/wan_decode.py)",
        how.times.len() - 1,
        how.kind.name(),
        how.cfg,
        path.display()
    );
    Ok(())
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    use flg_worker::model::file::{self, FolderForm, SaveDtype};
    let (m, meta) = load_model(&a.src, a.preset.as_deref())?;
    let meta = meta.unwrap_or_else(|| file::ModelMeta {
        dims: m.dims.clone(),
        block_ids: m.block_ids.clone(),
        prompts: None,
        sampler: None,
    });
    let form = match a.format {
        ConvertFormat::Fastlightgen => {
            anyhow::ensure!(
                a.dtype == SaveDtype::F32,
                "--dtype bf16: fastlightgen files hold f32 master weights; use --format diffusers or wan"
            );
            file::save(&a.out, &m.named_tensors(), &meta)?;
            println!(
                "wrote {} ({} blocks, {} parameters)",
                a.out.display(),
                m.block_ids.len(),
                m.param_count()
            );
            return Ok(());
        }
        ConvertFormat::Diffusers => FolderForm::Diffusers,
        ConvertFormat::Wan => FolderForm::Wan,
    };
    let files = file::save_folder(&a.out, &m, form, a.dtype, a.max_shard_size)?;
    println!(
        "wrote {} ({:?} form, {:?}, {} blocks numbered 0..={} (originally {:?}), {} files)",
        a.out.display(),
        form,
        a.dtype,
        m.block_ids.len(),
        m.block_ids.len().saturating_sub(1),
        m.block_ids,
        files.len()
    );
    if let Some(s) = &meta.sampler {
        let path = a.out.join("sampler.json");
        let portable = flg_core::formats::student::PortableSampler::new(s);
        std::fs::write(&path, serde_json::to_string_pretty(&portable)?)?;
        println!("wrote {} (the student's few-step sampler)", path.display());
    }
    Ok(())
}

pub fn annotate(a: AnnotateArgs) -> Result<()> {
    let AnnotateArgs {
        model,
        preset,
        prompts_from,
        out,
    } = a;
    let (m, _) = load_model(&model, Some(&preset))?;
    let meta = flg_worker::model::file::ModelMeta {
        dims: m.dims.clone(),
        block_ids: m.block_ids.clone(),
        prompts: prompts_from.as_deref().map(prompts_of).transpose()?,
        sampler: None,
    };
    flg_worker::model::file::save(&out, &m.named_tensors(), &meta)?;
    println!("wrote {}", out.display());
    Ok(())
}

pub fn plot(a: PlotArgs) -> Result<()> {
    let PlotArgs { spec, out } = a;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec)?)
        .with_context(|| format!("{}: not JSON", spec.display()))?;
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let series: Vec<(String, Vec<(f64, f64)>)> = v["series"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{}: no \"series\" list", spec.display()))?
        .iter()
        .map(|e| {
            let pts = e["points"].as_array().map(|a| {
                a.iter()
                    .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                    .collect()
            });
            (
                e["name"].as_str().unwrap_or("").to_string(),
                pts.unwrap_or_default(),
            )
        })
        .collect();
    flg_media::plot::line_chart(&out, &s("title"), &s("x"), &s("y"), &series)?;
    Ok(())
}

pub fn env() -> Result<()> {
    let env = GpuEnv::detect();
    let torch = flg_worker::device::loaded_library("libtorch_cpu.so");
    println!(
        "libtorch:        {}",
        torch.as_deref().unwrap_or(env!("FLG_LIBTORCH_DIR"))
    );
    println!(
        "libtorch CUDA:   {}",
        match (
            &env.torch_cuda_error,
            flg_worker::device::loaded_library("libtorch_cuda.so")
        ) {
            (Some(e), _) => format!("present but failed to load: {e}"),
            (None, Some(p)) => format!("loaded ({p})"),
            (None, None) => "none (a CPU-only libtorch)".to_string(),
        }
    );
    println!(
        "MPI:             {}",
        mpi::environment::library_version()
            .unwrap_or_else(|_| "?".into())
            .lines()
            .next()
            .unwrap_or("")
    );
    println!(
        "CUDA driver:     {}",
        if env.cuda_driver {
            "found"
        } else {
            "not found"
        }
    );
    println!("GPUs (libtorch): {}", env.torch_cuda_devices);
    println!(
        "NCCL:            {}",
        if env.nccl {
            "found (libnccl.so)"
        } else {
            "not found (libnccl.so)"
        }
    );
    println!("CPU threads:     {}", tch::get_num_threads());
    Ok(())
}

pub fn data_inspect(a: DataInspectArgs) -> Result<()> {
    print_summary(&DataSet::open(&a.dir)?);
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    print_eval(&eval_dir(&a.dir)?);
    Ok(())
}

/// The dimensions of a `--preset` (tiny, small-100m, wan2.1-t2v-1.3b).
pub fn preset_dims(name: &str) -> Result<flg_core::config::ModelDims> {
    flg_core::config::preset(name).with_context(|| {
        format!(
            "preset {name:?}: not a preset with dimensions (one of {:?})",
            &flg_core::config::PRESETS[..3]
        )
    })
}

fn print_summary(ds: &DataSet) {
    let m = &ds.manifest;
    println!(
        "{}: {} ({} samples in {} shards)",
        ds.dir.display(),
        m.kind,
        m.num_samples,
        m.shards.len()
    );
    println!("  latents [C, T, H, W] = {:?}", m.latent_shape);
    println!("  text    [L, D]       = {:?}", m.text_shape);
    println!("  labels: {}", if m.has_labels { "yes" } else { "no" });
    if let Some(p) = &m.moving_shapes {
        println!(
            "  moving-shapes: frames {} size {} seed {} text_seed {}",
            p.frames, p.size, p.seed, p.text_seed
        );
    }
}

/// Scores DIR/videos.npy against DIR/labels.npy and writes DIR/eval.json.
fn eval_dir(dir: &std::path::Path) -> Result<flg_worker::eval::EvalReport> {
    use flg_media::npy;
    let (shape, pixels) = npy::read_u8(&dir.join("videos.npy")).map_err(anyhow::Error::msg)?;
    let labels = npy::read_i64(&dir.join("labels.npy")).map_err(anyhow::Error::msg)?;
    if shape.len() != 5 || shape[4] != 3 || shape[2] != shape[3] || shape[0] != labels.len() {
        bail!(
            "{}: expected videos [N, T, S, S, 3] with N = {} labels, got {shape:?}",
            dir.join("videos.npy").display(),
            labels.len()
        );
    }
    if shape[2] % 4 != 0 || shape[2] < 8 {
        bail!(
            "{}: frame side {} is not a moving-shapes size (a multiple of 4, at least 8)",
            dir.display(),
            shape[2]
        );
    }
    let report = flg_worker::eval::evaluate(&pixels, &labels, shape[1], shape[2]);
    std::fs::write(
        dir.join("eval.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}

fn print_eval(r: &flg_worker::eval::EvalReport) {
    println!(
        "{} videos of {} frames, {}x{}:",
        r.num_videos, r.frames, r.size, r.size
    );
    for (name, v) in r.scores.named() {
        println!("  {name:<20} {v:.3}");
    }
    println!("  {:<20} {:.3}", "average", r.average);
    println!("  {:<20} {:.4}", "frechet_distance", r.frechet_distance);
}

/// Loads a model file, with a preset's dimensions when the file records none.
fn load_model(
    path: &std::path::Path,
    preset: Option<&str>,
) -> Result<(
    flg_worker::model::Dit,
    Option<flg_worker::model::file::ModelMeta>,
)> {
    let fallback = match preset {
        Some(p) => Some(preset_dims(p)?),
        None => None,
    };
    flg_worker::model::file::load(path, fallback.as_ref())
}

/// The prompt table of a moving-shapes data directory.
fn prompts_of(dir: &std::path::Path) -> Result<flg_worker::model::file::Prompts> {
    let m = flg_core::dataset::DatasetManifest::read(dir)?;
    let shapes = m
        .moving_shapes
        .ok_or_else(|| anyhow::anyhow!("{}: not a moving-shapes data set", dir.display()))?;
    Ok(flg_worker::model::file::Prompts {
        text_len: m.text_shape[0],
        text_dim: m.text_shape[1],
        shapes,
    })
}
