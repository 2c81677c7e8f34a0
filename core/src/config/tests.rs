use super::*;
use crate::stage::Stage;
use std::path::PathBuf;

const MINIMAL: &str = r#"
[experiment]
name = "t"
stages = ["pretrain", "importance", "pruning", "distill", "export", "eval"]
"#;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("exp.toml"), LoadOptions::default())
}

/// Parses `MINIMAL` with `extra` appended and returns the error (which must exist).
/// `MINIMAL` plus `extra`, with a tiny `[model]` unless `extra` brings its own.
fn with(extra: &str) -> String {
    let model = if extra.contains("[model]") {
        ""
    } else {
        "[model]\npreset = \"tiny\""
    };
    format!("{MINIMAL}\n{model}\n{extra}")
}

fn error_with(extra: &str) -> ConfigError {
    match parse(&with(extra)) {
        Ok(_) => panic!("expected an error for:\n{extra}"),
        Err(e) => e,
    }
}

fn issue<'a>(e: &'a ConfigError, key: &str) -> &'a ConfigIssue {
    e.issues
        .iter()
        .find(|i| i.key == key)
        .unwrap_or_else(|| panic!("no issue for {key}; got:\n{e}"))
}

#[test]
fn shipped_demo_config_validates() {
    // Its paths are relative to the repository root, where users run it; the files are
    // checked from there.
    let path = configs_dir().join("demo-cpu.toml");
    let c = Config::load_with(&path, LoadOptions { check_files: false })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.cluster.world_size, 2);
    assert_eq!(c.cluster.device, Device::Cpu);
    // The demo's teacher: 14 blocks of width 64 (cluster-configs/demo-teacher-cpu.toml).
    assert_eq!((c.model_dims().num_blocks, c.model_dims().dim), (14, 64));
    let weights = configs_dir().join("..").join(
        c.model
            .weights
            .as_ref()
            .expect("starts from the shipped teacher"),
    );
    assert!(
        weights.is_file(),
        "{} ships with the project",
        weights.display()
    );
}

#[test]
fn shipped_wan_config_validates_and_names_its_missing_files() {
    let path = configs_dir().join("wan2.1-t2v-1.3b-8xh100.toml");
    let c = Config::load_with(&path, LoadOptions { check_files: false })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.cluster.world_size, 8);
    assert_eq!(
        (c.cluster.device, c.cluster.backend, c.cluster.precision),
        (Device::Cuda, Backend::Nccl, Precision::Bf16)
    );
    let d = c.model_dims();
    assert_eq!(
        (d.dim, d.num_blocks, d.num_heads, d.ffn_dim, d.text_dim),
        (1536, 30, 12, 8960, 4096)
    );
    // On this machine the weights and latents are not there, and the full check says so by key.
    let e = Config::load(&path).unwrap_err();
    assert!(
        issue(&e, "model.weights").message.contains("no such file"),
        "{e}"
    );
    assert!(
        issue(&e, "data.path")
            .message
            .contains("no such data directory"),
        "{e}"
    );
    assert!(
        issue(&e, "data.null_text").message.contains("no such file"),
        "{e}"
    );
    assert_eq!(e.issues.len(), 3, "{e}");
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let c = parse(&with("")).unwrap();
    assert_eq!(c.pruning.skip_prob, 0.5);
    assert_eq!(c.pruning.alpha, 1.0);
    assert_eq!(c.importance.prune_ratio, 0.3);
    assert_eq!(c.distill.timesteps, vec![1.0, 0.75, 0.5, 0.25]);
    assert_eq!(c.distill.generator_every, 5);
    assert_eq!(c.distill.generator_optim.lr, 5e-7);
    assert_eq!(c.run_dir().path(), Path::new("runs/t"));
}

#[test]
fn resolved_config_round_trips_through_toml() {
    let c = parse(&with("")).unwrap();
    let again = parse(&c.to_toml()).unwrap();
    assert_eq!(c, again);
}

#[test]
fn unknown_key_is_named_with_its_section() {
    let e = error_with("[cluster]\nworld_sise = 2");
    let i = issue(&e, "cluster.world_sise");
    assert!(
        i.message.contains("unknown field") && i.message.contains("world_size"),
        "{}",
        i.message
    );
    let e = error_with("[pruning.optim]\nlearning_rate = 1e-4");
    issue(&e, "pruning.optim.learning_rate");
}

#[test]
fn unknown_section_is_named() {
    let e = error_with("[distil]\nsteps = 3");
    assert!(issue(&e, "distil").message.contains("unknown section"));
}

#[test]
fn wrong_type_is_named() {
    let e = error_with("[cluster]\nworld_size = \"two\"");
    let i = issue(&e, "cluster.world_size");
    assert!(i.message.contains("invalid type"), "{}", i.message);
    let e = error_with("[cluster]\ndevice = \"tpu\"");
    assert!(issue(&e, "cluster.device").message.contains("cpu"));
    let e = error_with("[distill]\ntimesteps = 4");
    issue(&e, "distill.timesteps");
}

#[test]
fn out_of_range_values_are_named() {
    // Sections of stages the experiment does not run are not held against it.
    parse("[experiment]\nname = \"t\"\nstages = [\"pretrain\"]\n[model]\npreset = \"tiny\"\n[distill]\ntimesteps = []")
        .unwrap();
    let e = error_with("[importance]\nprune_ratio = 1.5");
    assert!(issue(&e, "importance.prune_ratio")
        .message
        .contains("(0, 1)"));
    let e = error_with("[pruning]\nskip_prob = 0.0\nalpha = 1.2");
    issue(&e, "pruning.skip_prob");
    issue(&e, "pruning.alpha");
    let e = error_with("[pretrain.optim]\nlr = -1.0");
    issue(&e, "pretrain.optim.lr");
    let e = error_with("[distill]\ntimesteps = [1.0, 0.5, 0.75]");
    assert!(issue(&e, "distill.timesteps")
        .message
        .contains("strictly down"));
    let e = error_with("[cluster]\ncoordinator_addr = \"localhost\"");
    issue(&e, "cluster.coordinator_addr");
}

#[test]
fn cross_field_problems_are_named() {
    // Heads must divide the width.
    let e = error_with("[model]\npreset = \"tiny\"\nnum_heads = 5");
    assert!(issue(&e, "model.num_heads")
        .message
        .contains("must divide dim (96)"));
    // The global batch must split over the ranks.
    let e = error_with("[cluster]\nworld_size = 3\n[pretrain]\nbatch_size = 32");
    assert!(issue(&e, "pretrain.batch_size")
        .message
        .contains("multiple of cluster.world_size (3)"));
    // NCCL needs CUDA; bf16 is a CUDA policy.
    let e = error_with("[cluster]\nbackend = \"nccl\"\nprecision = \"bf16\"");
    issue(&e, "cluster.backend");
    issue(&e, "cluster.precision");
    // The object must stay inside the frame for all frames.
    let e = error_with("[data]\nframes = 20\nsize = 16");
    assert!(issue(&e, "data.frames")
        .message
        .contains("at most 13 frames"));
    // The data's text width must be the model's.
    let e = error_with("[data]\ntext_dim = 48");
    assert!(issue(&e, "model.text_dim").message.contains("48"));
    // The patch must divide the frame.
    let e = error_with("[model]\npreset = \"tiny\"\npatch = [1, 3, 3]");
    issue(&e, "model.patch");
    // A heartbeat timeout shorter than the interval would declare every rank dead.
    let e = error_with("[cluster]\nheartbeat_interval_s = 5.0\nheartbeat_timeout_s = 2.0");
    issue(&e, "cluster.heartbeat_timeout_s");
}

#[test]
fn stages_without_a_teacher_need_weights() {
    let e =
        parse("[experiment]\nname = \"t\"\nstages = [\"importance\"]\n[model]\npreset = \"tiny\"")
            .unwrap_err();
    assert!(issue(&e, "model.weights").message.contains("teacher"));
    let e = parse("[experiment]\nname = \"t\"\nstages = [\"pruning\", \"importance\"]\n[model]\npreset = \"tiny\"\nweights = \"/nonexistent.safetensors\"").unwrap_err();
    assert!(issue(&e, "experiment.stages").message.contains("order"));
    assert!(issue(&e, "model.weights").message.contains("no such file"));
}

#[test]
fn teacher_weights_are_checked_by_their_headers() {
    use crate::weights::naming::{diffusers_config, wan_to_diffusers};
    use crate::weights::tests::{wan_names, write};
    let dir = tempfile::tempdir().unwrap();
    let d = preset("tiny").unwrap();
    let names: Vec<(String, Vec<usize>)> = wan_names(&d)
        .into_iter()
        .map(|(n, s)| (wan_to_diffusers(&n).unwrap(), s))
        .collect();
    let file = dir.path().join("diffusion_pytorch_model.safetensors");
    write(&file, &names, safetensors::Dtype::BF16);
    let cfg = |weights: &std::path::Path, extra: &str| {
        format!(
            "[experiment]\nname = \"t\"\nstages = [\"importance\"]\n[model]\npreset = \"tiny\"\nweights = {:?}\n{extra}",
            weights.display().to_string()
        )
    };
    // A diffusers-named bf16 file of the right model passes, as a file and as its folder.
    parse(&cfg(&file, "")).unwrap();
    // Another width: the headers' shapes say so (no config.json yet).
    let e = parse(&cfg(&file, "dim = 128\nnum_heads = 4")).unwrap_err();
    let m = &issue(&e, "model.weights").message;
    assert!(
        m.contains("Diffusers key names") && m.contains("mis-shaped: patch_embedding.weight"),
        "{m}"
    );
    // With config.json, the folder's stated dimensions are compared first, by field.
    std::fs::write(
        dir.path().join("config.json"),
        diffusers_config(&d, 10).to_string(),
    )
    .unwrap();
    parse(&cfg(dir.path(), "")).unwrap();
    let e = parse(&cfg(dir.path(), "num_blocks = 12")).unwrap_err();
    let m = &issue(&e, "model.weights").message;
    assert!(
        m.contains("num_blocks: the file's config.json says 10"),
        "{m}"
    );
    // A file that is not safetensors.
    std::fs::write(&file, b"not a model").unwrap();
    let e = parse(&cfg(&file, "")).unwrap_err();
    assert!(issue(&e, "model.weights")
        .message
        .contains("not a valid safetensors file"));
}

#[test]
fn the_tiny_teacher_does_not_pass_as_the_1_3b_model() {
    let tiny = configs_dir().join("../teacher/tiny-teacher.safetensors");
    let cfg = format!(
        "[experiment]\nname = \"t\"\nstages = [\"importance\"]\n[model]\npreset = \"wan2.1-t2v-1.3b\"\nweights = {:?}\n",
        tiny.display().to_string()
    );
    let e = parse(&cfg).unwrap_err();
    let m = &issue(&e, "model.weights").message;
    assert!(
        m.contains("a model of other dimensions")
            && m.contains("dim = 96 in the file, 1536 configured"),
        "{m}"
    );
    // As the tiny model it is, it passes.
    parse(&cfg.replace("wan2.1-t2v-1.3b", "tiny")).unwrap();
}

#[test]
fn the_null_prompt_file_must_hold_one_prompt_of_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("null_text.safetensors");
    let cfg = format!(
        "[experiment]\nname = \"t\"\nstages = [\"pretrain\"]\n[model]\npreset = \"tiny\"\n[data]\nnull_text = {:?}\n",
        f.display().to_string()
    );
    crate::weights::tests::write(&f, &[("text".into(), vec![4, 32])], safetensors::Dtype::F32);
    parse(&cfg).unwrap();
    crate::weights::tests::write(&f, &[("text".into(), vec![3, 32])], safetensors::Dtype::F32);
    let e = parse(&cfg).unwrap_err();
    assert!(issue(&e, "data.null_text")
        .message
        .contains("the data's prompts are [4, 32]"));
    crate::weights::tests::write(
        &f,
        &[("other".into(), vec![4, 32])],
        safetensors::Dtype::F32,
    );
    let e = parse(&cfg).unwrap_err();
    assert!(issue(&e, "data.null_text")
        .message
        .contains("has no `text` tensor"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = parse(
        r#"
[experiment]
name = "bad name!"
[cluster]
world_size = 0
[model]
preset = "huge"
[importance]
prune_ratio = 0.0
[eval]
num_sample = 3
"#,
    )
    .unwrap_err();
    for key in [
        "experiment.name",
        "cluster.world_size",
        "model.preset",
        "importance.prune_ratio",
        "eval.num_sample",
    ] {
        issue(&e, key);
    }
    // The message names the file and the key on each line.
    let text = e.to_string();
    assert!(
        text.contains("exp.toml: cluster.world_size: must be at least 1"),
        "{text}"
    );
}

#[test]
fn custom_preset_needs_every_dimension() {
    let e = error_with("[model]\npreset = \"custom\"\ndim = 64");
    for key in ["model.num_blocks", "model.num_heads", "model.patch"] {
        assert!(issue(&e, key).message.contains("custom"));
    }
    assert!(!e.mentions("model.dim"));
}

#[test]
fn syntax_errors_and_missing_files_are_reported() {
    let e = parse("[experiment\nname = 1").unwrap_err();
    assert!(issue(&e, "<file>").message.contains("not valid TOML"));
    let e = Config::load(Path::new("/nonexistent/exp.toml")).unwrap_err();
    assert!(e
        .to_string()
        .contains("/nonexistent/exp.toml: <file>: cannot read"));
    let e = parse("[model]\npreset = \"tiny\"").unwrap_err();
    issue(&e, "experiment");
}

#[test]
fn world_size_must_match_the_launch() {
    let c = parse(&with("")).unwrap();
    c.check_world_size(Path::new("exp.toml"), 1).unwrap();
    let e = c.check_world_size(Path::new("exp.toml"), 4).unwrap_err();
    assert!(issue(&e, "cluster.world_size")
        .message
        .contains("mpirun -np 4"));
}

#[test]
fn latents_data_is_checked_against_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let m = crate::dataset::DatasetManifest {
        format: crate::dataset::DATASET_FORMAT.into(),
        kind: "latents".into(),
        num_samples: 4,
        latent_shape: [16, 8, 16, 16],
        text_shape: [4, 32],
        has_labels: false,
        shards: vec![crate::dataset::ShardEntry {
            file: "shard-00000.safetensors".into(),
            num_samples: 4,
        }],
        moving_shapes: None,
        source: None,
    };
    m.write(dir.path()).unwrap();
    let e = error_with(&format!(
        "[data]\nkind = \"latents\"\npath = {:?}",
        dir.path()
    ));
    assert!(
        issue(&e, "model.in_channels")
            .message
            .contains("16 channels"),
        "{e}"
    );
    let e = error_with("[data]\nkind = \"latents\"");
    assert!(issue(&e, "data.path").message.contains("missing"));
}

#[test]
fn the_eval_stage_needs_moving_shapes() {
    let e = error_with("[data]\nkind = \"latents\"\npath = \"/nowhere\"\n");
    assert!(
        issue(&e, "experiment.stages")
            .message
            .contains("moving-shapes"),
        "{e}"
    );
}

#[test]
fn global_steps_count_the_earlier_training_stages_the_config_runs() {
    let text = "[experiment]\nname = \"t\"\nstages = [\"pretrain\", \"importance\", \"pruning\", \"distill\"]\n[model]\npreset = \"tiny\"\n";
    let options = LoadOptions { check_files: false };
    let mut cfg = Config::parse(text, Path::new("t.toml"), options).unwrap();
    cfg.pretrain.steps = 7;
    cfg.pruning.steps = 11;
    cfg.distill.steps = 13;
    assert_eq!(Stage::Pretrain.offset(&cfg), 0);
    assert_eq!(Stage::Importance.offset(&cfg), 7);
    assert_eq!(Stage::Distill.global_step(&cfg, 2), 7 + 11 + 2);
    cfg.experiment.stages.remove(0);
    assert_eq!(Stage::Distill.offset(&cfg), 11);
}

#[test]
fn anti_collapse_keys_are_checked_and_named() {
    let e = error_with(
        "[distill]\nregression = { weight = -1.0 }\ndata_forcing = nan\nmonitor_every = 10\nmonitor_videos = 0\n\
         [pruning]\ntarget = \"ema\"\ntarget_ema_decay = 1.0\n",
    );
    for key in [
        "distill.regression.weight",
        "distill.data_forcing",
        "distill.monitor_videos",
        "pruning.target_ema_decay",
    ] {
        issue(&e, key);
    }
    let e = error_with(
        "[distill]\ngan = { weight = 1.0, classifier_optim = { lr = 0.0, beta1 = 1.0 } }\n",
    );
    issue(&e, "distill.gan.classifier_optim.lr");
    issue(&e, "distill.gan.classifier_optim.beta1");
    let e = error_with("[distill]\ngan = { weight = -0.5, max_grad_ratio = -1.0 }\n");
    issue(&e, "distill.gan.weight");
    issue(&e, "distill.gan.max_grad_ratio");
    let e = error_with("[distill]\ngan = { weight = 1.0, features = 3 }\n");
    assert!(e.to_string().contains("features"), "{e}");
    let e = error_with("[distill]\nregression = { weight = 1.0, pairs = 0, teacher_cfg = inf }\n");
    issue(&e, "distill.regression.pairs");
    issue(&e, "distill.regression.teacher_cfg");
    // Unknown choices are refused by name.
    let e = error_with("[distill]\nsampler = \"heun\"\n");
    assert!(e.to_string().contains("sampler"), "{e}");
    let e = error_with("[pruning]\ntarget = \"teacher\"\n");
    assert!(e.to_string().contains("target"), "{e}");
    let e = error_with("[distill]\nunpruned = \"frozen\"\n");
    assert!(e.to_string().contains("unpruned"), "{e}");
    let e = error_with("[distill]\nfake_score = \"teacher\"\n");
    assert!(e.to_string().contains("fake_score"), "{e}");
    let e = error_with("[distill]\nguidance = \"teacher\"\n");
    assert!(e.to_string().contains("guidance"), "{e}");
    // The choices themselves parse.
    let c = parse(&with(
        "[distill]\nsampler = \"renoise\"\nregression = { weight = 4.0 }\nunpruned = \"teacher\"\n[pruning]\ntarget = \"frozen\"\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.distill.sampler, SamplerKind::Renoise);
    assert_eq!(c.distill.unpruned, UnprunedSource::Teacher);
    assert_eq!(c.distill.unpruned.name(), "teacher");
    assert_eq!(c.distill.fake_score, FakeScoreBlocks::Generator);
    let full = parse(&with("[distill]\nfake_score = \"full\"\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(full.distill.fake_score, FakeScoreBlocks::Full);
    assert_eq!(c.distill.guidance, GuidancePass::Pruned);
    let u = parse(&with("[distill]\nguidance = \"unpruned\"\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u.distill.guidance, GuidancePass::Unpruned);
    assert_eq!(
        c.distill.regression.pairs, 256,
        "unnamed keys keep their defaults"
    );
    assert_eq!(c.pruning.target, PruningTarget::Frozen);
    assert_eq!(c.distill.gan.weight, 0.0, "the GAN term is off by default");
    let c = parse(&with(
        "[distill]\ngan = { weight = 0.5, feature_blocks = 2, classifier_optim = { lr = 1e-3 } }\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.distill.gan.weight, c.distill.gan.feature_blocks),
        (0.5, 2)
    );
    assert_eq!(c.distill.gan.classifier_optim.lr, 1e-3);
    assert_eq!(
        c.distill.gan.classifier_optim.beta1, 0.9,
        "an optimizer table's unnamed keys are Optim's defaults"
    );
}

#[test]
fn non_finite_and_out_of_range_numbers_are_named_once() {
    for (extra, key, says) in [
        (
            "[cluster]\nheartbeat_timeout_s = nan",
            "cluster.heartbeat_timeout_s",
            "finite",
        ),
        (
            "[cluster]\nheartbeat_timeout_s = inf",
            "cluster.heartbeat_timeout_s",
            "finite",
        ),
        (
            "[cluster]\nheartbeat_timeout_s = 1e20",
            "cluster.heartbeat_timeout_s",
            "3600",
        ),
        (
            "[distill]\nb1_range = [0.0, inf]",
            "distill.b1_range[1]",
            "finite",
        ),
        ("[data]\nsize = 1048576", "data.size", "at most 4096"),
        (
            "[distill]\nsteps = 9223372036854775807",
            "distill.steps",
            "at most",
        ),
    ] {
        let e = error_with(extra);
        let found: Vec<_> = e.issues.iter().filter(|i| i.key == key).collect();
        assert_eq!(found.len(), 1, "{extra}: {e}");
        assert!(found[0].message.contains(says), "{extra}: {e}");
    }
}

#[test]
fn a_run_name_cannot_leave_the_output_directory() {
    for name in ["..", ".", ".hidden"] {
        let text = with("").replace("name = \"t\"", &format!("name = {name:?}"));
        let e = parse(&text).expect_err(name);
        issue(&e, "experiment.name");
    }
}

#[test]
fn impossible_model_dimensions_are_named_by_field() {
    let mut d = preset("tiny").unwrap();
    assert!(d.problems().is_empty());
    d.num_heads = 0;
    d.dim = 1_000_000_000;
    d.eps = f64::NAN;
    let fields: Vec<_> = d.problems().into_iter().map(|(k, _)| k).collect();
    assert_eq!(fields, ["dim", "num_heads", "eps"]);
    let mut d = preset("tiny").unwrap();
    d.num_heads = 48; // head width 2: fine; 96 / 64 is not whole
    assert!(d.problems().is_empty());
    d.num_heads = 64;
    assert_eq!(d.problems()[0].0, "num_heads");
}

#[test]
fn set_overrides_are_checked_like_the_file_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exp.toml");
    std::fs::write(&path, with("[distill]\nsteps = 10")).unwrap();
    let load = |sets: &[&str]| {
        let o: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
        Config::load_overridden(&path, LoadOptions { check_files: false }, &o)
    };
    let c = load(&[
        "distill.steps=300",
        "distill.generator_optim.lr = 2e-5",
        "experiment.name=try2",
        "cluster.device=\"cpu\"",
        "distill.steps=400", // a later one wins
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.distill.steps, 400);
    assert_eq!(c.distill.generator_optim.lr, 2e-5);
    assert_eq!(c.experiment.name, "try2");
    // The same messages as the file gets, naming the --set that caused them.
    let e = load(&["distill.stpes=3"]).unwrap_err();
    let i = issue(&e, "distill.stpes");
    assert!(
        i.message.contains("unknown field") && i.message.contains("--set distill.stpes=3"),
        "{i:?}"
    );
    let e = load(&["distill.steps=many"]).unwrap_err();
    assert!(e.mentions("distill.steps"), "{e}");
    let e = load(&["cluster.world_size=0"]).unwrap_err();
    assert!(
        issue(&e, "cluster.world_size").message.contains("--set"),
        "{e}"
    );
    // A whole section replaced by a value: refused, in the file's words or ours.
    let e = load(&["distill.generator_optim=3"]).unwrap_err();
    assert!(
        issue(&e, "distill.generator_optim")
            .message
            .contains("--set"),
        "{e}"
    );
    std::fs::write(
        &path,
        with("[distill]\nsteps = 10\n[distill.generator_optim]\nlr = 1e-4"),
    )
    .unwrap();
    let e = load(&["distill.generator_optim=3"]).unwrap_err();
    assert!(
        issue(&e, "distill.generator_optim")
            .message
            .contains("is a section"),
        "{e}"
    );
    let e = load(&["distill.steps.x=3"]).unwrap_err();
    assert!(
        issue(&e, "distill.steps.x")
            .message
            .contains("is a value, not a section"),
        "{e}"
    );
    for bad in [
        "distill.steps",
        "steps=3",
        "distill=3",
        ".steps=3",
        "distill..steps=3",
        "distill.st eps=3",
    ] {
        assert!(Override::parse(bad).is_err(), "{bad}");
    }
    let o = [Override::parse("distill.steps=300").unwrap()];
    assert_eq!(record_overrides(&o), "# --set distill.steps=300\n");
}

#[test]
fn micro_batches_must_divide_every_training_share() {
    // pruning: 8 over 2 ranks = 4 per rank; distill: 4 / 2 = 2 per rank.
    let base = "[cluster]\nworld_size = 2\nmicro_batch_size = {m}\n[pruning]\nbatch_size = 8\n[distill]\nbatch_size = 4\n[importance]\nbatch_size = 6";
    assert!(parse(&with(&base.replace("{m}", "2"))).is_ok());
    assert!(parse(&with(&base.replace("{m}", "0"))).is_ok());
    // Not less than a share: that share runs whole.
    assert!(parse(&with(&base.replace("{m}", "4"))).is_ok());
    let e = error_with(&base.replace("{m}", "3"));
    let said: Vec<&str> = e
        .issues
        .iter()
        .filter(|i| i.key == "cluster.micro_batch_size")
        .map(|i| i.message.as_str())
        .collect();
    // One message per stage it does not fit; none for Stage III (its share of 2 is smaller,
    // so it runs whole) nor for Stage I (forward passes only).
    assert!(
        said.iter()
            .any(|m| m.contains("pruning.batch_size") && m.contains("= 4")),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|m| m.contains("distill.batch_size")),
        "{said:?}"
    );
    assert!(!said.iter().any(|m| m.contains("importance")), "{said:?}");
}
