//! Hostile and broken inputs (issue 16): configs, data directories and model files, each
//! refused with exit 1, the file and the field named, no panic, and little memory (peak
//! resident size under 1 GB, measured by the kernel for each process).

use crate::util::*;

/// What one probe expects: the command's exit 1, and these words in its error output.
struct Probe {
    name: String,
    args: Vec<String>,
    says: Vec<String>,
}

/// Runs `fastlightgen args...`; returns (exit code, stderr + stdout, peak RSS in bytes).
fn run_measured(args: &[String]) -> (Option<i32>, String, u64) {
    let child = Command::new(bin_dir().join("fastlightgen"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.unwrap();
    let mut err = child.stderr.unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let mut status = 0;
    // SAFETY: waiting for our own child; `usage` is a plain struct the kernel fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    let code = if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else {
        None
    };
    let text = e.join().unwrap() + &o.join().unwrap();
    (code, text, usage.ru_maxrss as u64 * 1024)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A valid config for `validate` (the shipped teacher, a tiny run), with `extra` lines
/// appended to (or replacing keys of) its sections.
fn config_text(dir: &Path, sections: &[(&str, &str)]) -> String {
    let mut base: Vec<(String, Vec<String>)> = vec![
        (
            "experiment".into(),
            vec![
                "name = \"h\"".into(),
                format!("output_dir = {:?}", dir.join("runs")),
                "stages = [\"importance\", \"pruning\", \"distill\", \"export\"]".into(),
            ],
        ),
        ("cluster".into(), vec!["world_size = 2".into()]),
        (
            "model".into(),
            vec![
                "preset = \"tiny\"".into(),
                format!("weights = {:?}", shipped_teacher()),
            ],
        ),
        ("data".into(), vec!["num_samples = 64".into()]),
        (
            "pruning".into(),
            vec!["steps = 4".into(), "batch_size = 8".into()],
        ),
        (
            "distill".into(),
            vec!["steps = 4".into(), "batch_size = 4".into()],
        ),
    ];
    for (section, line) in sections {
        let key = line.split('=').next().unwrap().trim().to_string();
        match base.iter_mut().find(|(n, _)| n == section) {
            Some((_, lines)) => {
                lines.retain(|l| l.split('=').next().unwrap().trim() != key);
                lines.push(line.to_string());
            }
            None => base.push((section.to_string(), vec![line.to_string()])),
        }
    }
    base.iter()
        .map(|(n, lines)| format!("[{n}]\n{}\n", lines.join("\n")))
        .collect()
}

/// The safetensors header of `bytes` as JSON, and the data after it.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

fn join_safetensors(header: &serde_json::Value, body: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(body);
    out
}

/// The shipped teacher with its fastlightgen metadata changed by `f`.
fn with_meta(f: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let (mut header, body) = split_safetensors(&std::fs::read(shipped_teacher()).unwrap());
    let mut meta: serde_json::Value =
        serde_json::from_str(header["__metadata__"]["fastlightgen"].as_str().unwrap()).unwrap();
    f(&mut meta);
    header["__metadata__"]["fastlightgen"] = meta.to_string().into();
    join_safetensors(&header, &body)
}

/// The shipped teacher with its header changed by `f`.
fn with_header(f: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) -> Vec<u8> {
    let (mut header, body) = split_safetensors(&std::fs::read(shipped_teacher()).unwrap());
    f(header.as_object_mut().unwrap());
    join_safetensors(&header, &body)
}

#[test]
fn hostile_configs_data_and_model_files_are_refused_by_name_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut probes: Vec<Probe> = Vec::new();

    // ---- configs (fastlightgen validate)
    let configs: Vec<(&str, Vec<(&str, &str)>, &str)> = vec![
        (
            "timeout-nan",
            vec![("cluster", "heartbeat_timeout_s = nan")],
            "cluster.heartbeat_timeout_s",
        ),
        (
            "timeout-inf",
            vec![("cluster", "heartbeat_timeout_s = inf")],
            "cluster.heartbeat_timeout_s",
        ),
        (
            "timeout-1e20",
            vec![("cluster", "heartbeat_timeout_s = 1e20")],
            "cluster.heartbeat_timeout_s",
        ),
        (
            "interval-zero",
            vec![("cluster", "heartbeat_interval_s = 0.0")],
            "cluster.heartbeat_interval_s",
        ),
        (
            "interval-neg-inf",
            vec![("cluster", "heartbeat_interval_s = -inf")],
            "cluster.heartbeat_interval_s",
        ),
        (
            "world-zero",
            vec![("cluster", "world_size = 0")],
            "cluster.world_size",
        ),
        (
            "world-huge",
            vec![("cluster", "world_size = 4000000")],
            "cluster.world_size",
        ),
        (
            "world-negative",
            vec![("cluster", "world_size = -2")],
            "cluster.world_size",
        ),
        (
            "addr-no-port",
            vec![("cluster", "coordinator_addr = \"localhost\"")],
            "cluster.coordinator_addr",
        ),
        (
            "restarts-huge",
            vec![("cluster", "max_restarts = 1000000")],
            "cluster.max_restarts",
        ),
        (
            "token-short",
            vec![("cluster", "control_token = \"abc\"")],
            "cluster.control_token",
        ),
        (
            "name-dotdot",
            vec![("experiment", "name = \"..\"")],
            "experiment.name",
        ),
        (
            "name-slash",
            vec![("experiment", "name = \"a/../../etc\"")],
            "experiment.name",
        ),
        (
            "name-dot",
            vec![("experiment", "name = \".\"")],
            "experiment.name",
        ),
        (
            "stage-unknown",
            vec![("experiment", "stages = [\"pruning\", \"rm -rf\"]")],
            "experiment.stages",
        ),
        (
            "data-size-huge",
            vec![("data", "size = 1048576")],
            "data.size",
        ),
        (
            "data-samples-huge",
            vec![("data", "num_samples = 100000000000")],
            "data.num_samples",
        ),
        (
            "data-frames-huge",
            vec![("data", "frames = 100000")],
            "data.frames",
        ),
        (
            "data-too-much-memory",
            vec![("data", "size = 1024")],
            "batch_size",
        ),
        (
            "lr-nan",
            vec![("pruning", "optim = { lr = nan }")],
            "pruning.optim.lr",
        ),
        (
            "lr-negative",
            vec![("distill", "generator_optim = { lr = -1.0 }")],
            "distill.generator_optim.lr",
        ),
        (
            "beta-one",
            vec![("distill", "fake_optim = { beta1 = 1.0 }")],
            "distill.fake_optim.beta1",
        ),
        (
            "grad-clip-inf",
            vec![("pruning", "optim = { grad_clip = inf }")],
            "pruning.optim.grad_clip",
        ),
        (
            "final-lr-ratio-above-one",
            vec![(
                "pruning",
                "optim = { schedule = \"cosine\", final_lr_ratio = 2.0 }",
            )],
            "pruning.optim.final_lr_ratio",
        ),
        (
            "schedule-unknown",
            vec![("pruning", "optim = { schedule = \"linear\" }")],
            "pruning.optim.schedule",
        ),
        (
            "timesteps-nan",
            vec![("distill", "timesteps = [1.0, nan]")],
            "distill.timesteps[1]",
        ),
        (
            "t-range-edges",
            vec![("distill", "t_range = [0.0, 1.0]")],
            "distill.t_range",
        ),
        (
            "b2-range-inf",
            vec![("distill", "b2_range = [0.0, inf]")],
            "distill.b2_range[1]",
        ),
        (
            "prune-ratio",
            vec![("importance", "prune_ratio = 1.5")],
            "importance.prune_ratio",
        ),
        (
            "steps-huge",
            vec![("pruning", "steps = 9223372036854775807")],
            "pruning.steps",
        ),
        (
            "steps-string",
            vec![("pruning", "steps = \"many\"")],
            "pruning.steps",
        ),
        (
            "batch-not-divisible",
            vec![("pruning", "batch_size = 3")],
            "pruning.batch_size",
        ),
        (
            "model-heads-zero",
            vec![("model", "num_heads = 0")],
            "model.num_heads",
        ),
        (
            "model-dim-huge",
            vec![("model", "dim = 1000000000")],
            "model.dim",
        ),
        (
            "model-patch-zero",
            vec![("model", "patch = [0, 4, 4]")],
            "model.patch",
        ),
        ("model-eps-inf", vec![("model", "eps = inf")], "model.eps"),
        ("unknown-section", vec![("sneaky", "x = 1")], "sneaky"),
    ];
    for (name, sections, key) in configs {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config_text(dir, &sections)).unwrap();
        let p = path.to_str().unwrap().to_string();
        probes.push(Probe {
            name: format!("config {name}"),
            args: vec!["validate".into(), p.clone()],
            says: vec![p, key.to_string()],
        });
    }
    let not_toml = dir.join("not-toml.toml");
    std::fs::write(&not_toml, "[experiment\nname = ").unwrap();
    probes.push(Probe {
        name: "config not TOML".into(),
        args: s(&["validate", not_toml.to_str().unwrap()]),
        says: s(&[not_toml.to_str().unwrap(), "not valid TOML"]),
    });

    // ---- data directories (fastlightgen data inspect)
    let good = teacher_data(dir, 16);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(good.join("dataset.json")).unwrap()).unwrap();
    let shard = std::fs::read(good.join("shard-00000.safetensors")).unwrap();
    let data_case = |name: &str, edit: &dyn Fn(&mut serde_json::Value, &Path)| -> String {
        let d = dir.join(format!("data-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("shard-00000.safetensors"), &shard).unwrap();
        let mut m = manifest.clone();
        edit(&mut m, &d);
        std::fs::write(d.join("dataset.json"), m.to_string()).unwrap();
        d.to_str().unwrap().to_string()
    };
    let data_cases: Vec<(&str, Box<dyn Fn(&mut serde_json::Value, &Path)>, &str)> = vec![
        (
            "shape-negative",
            Box::new(|m, _| m["latent_shape"][1] = (-8).into()),
            "latent_shape",
        ),
        (
            "shape-huge",
            Box::new(|m, _| m["latent_shape"][2] = (1u64 << 40).into()),
            "latent_shape",
        ),
        (
            "text-zero",
            Box::new(|m, _| m["text_shape"][0] = 0.into()),
            "text_shape",
        ),
        (
            "count-mismatch",
            Box::new(|m, _| m["num_samples"] = 17.into()),
            "num_samples",
        ),
        (
            "shard-escapes",
            Box::new(|m, _| m["shards"][0]["file"] = "../../etc/passwd".into()),
            "shard file",
        ),
        (
            "shard-missing",
            Box::new(|m, _| m["shards"][0]["file"] = "gone.safetensors".into()),
            "gone.safetensors",
        ),
        (
            "format-other",
            Box::new(|m, _| m["format"] = "something/9".into()),
            "format",
        ),
        (
            "no-shards",
            Box::new(|m, _| {
                m["shards"] = serde_json::json!([]);
                m["num_samples"] = 0.into();
            }),
            "shards",
        ),
        (
            "shard-truncated",
            Box::new(|_, d| {
                let p = d.join("shard-00000.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 3]).unwrap();
            }),
            "shard-00000.safetensors",
        ),
        (
            "shard-header-huge",
            Box::new(|_, d| {
                let p = d.join("shard-00000.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                b[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
                std::fs::write(&p, &b).unwrap();
            }),
            "shard-00000.safetensors",
        ),
        (
            "shard-garbage",
            Box::new(|_, d| {
                std::fs::write(
                    d.join("shard-00000.safetensors"),
                    b"not a safetensors file at all",
                )
                .unwrap();
            }),
            "shard-00000.safetensors",
        ),
    ];
    for (name, edit, says) in &data_cases {
        let d = data_case(name, edit.as_ref());
        probes.push(Probe {
            name: format!("data {name}"),
            args: vec!["data".into(), "inspect".into(), d.clone()],
            says: vec![d, says.to_string()],
        });
    }
    let not_json = data_case("not-json", &|_, _| {});
    std::fs::write(Path::new(&not_json).join("dataset.json"), "{\"format\": ").unwrap();
    probes.push(Probe {
        name: "data dataset.json not JSON".into(),
        args: s(&["data", "inspect", &not_json]),
        says: s(&["dataset.json", "not a valid data set index"]),
    });

    // ---- model files (fastlightgen sample --model)
    let model_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dim-1e9",
            with_meta(|m| m["dims"]["dim"] = 1_000_000_000.into()),
            "dim",
        ),
        (
            "dim-negative",
            with_meta(|m| m["dims"]["dim"] = (-1).into()),
            "dim",
        ),
        (
            "dim-2000",
            with_meta(|m| m["dims"]["dim"] = 2000.into()),
            "patch_embedding.weight",
        ),
        (
            "heads-zero",
            with_meta(|m| m["dims"]["num_heads"] = 0.into()),
            "num_heads",
        ),
        (
            "heads-odd-width",
            with_meta(|m| m["dims"]["num_heads"] = 32.into()),
            "num_heads",
        ),
        (
            "blocks-zero",
            with_meta(|m| m["dims"]["num_blocks"] = 0.into()),
            "num_blocks",
        ),
        (
            "patch-zero",
            with_meta(|m| m["dims"]["patch"] = serde_json::json!([0, 4, 4])),
            "patch",
        ),
        (
            "freq-odd",
            with_meta(|m| m["dims"]["freq_dim"] = 63.into()),
            "freq_dim",
        ),
        (
            "block-ids-out-of-range",
            with_meta(|m| m["block_ids"] = serde_json::json!([0, 1, 99])),
            "block_ids",
        ),
        (
            "block-ids-empty",
            with_meta(|m| m["block_ids"] = serde_json::json!([])),
            "block_ids",
        ),
        (
            "meta-not-json",
            with_header(|h| {
                h["__metadata__"]["fastlightgen"] = "{dims".into();
            }),
            "metadata",
        ),
        (
            "i32-tensor",
            with_header(|h| {
                let k = h
                    .keys()
                    .find(|k| k.ends_with("cross_attn.k.bias"))
                    .unwrap()
                    .clone();
                h[&k]["dtype"] = "I32".into();
            }),
            "I32",
        ),
        (
            // Same byte count, another shape: only the key check can tell.
            "shape-lie",
            with_header(|h| {
                h["text_embedding.0.weight"]["shape"] = serde_json::json!([32, 96]);
            }),
            "text_embedding.0.weight",
        ),
        (
            "offsets-past-end",
            with_header(|h| {
                let k = h
                    .keys()
                    .find(|k| k.as_str() == "patch_embedding.bias")
                    .unwrap()
                    .clone();
                h[&k]["data_offsets"] = serde_json::json!([0, 1u64 << 40]);
            }),
            "safetensors",
        ),
        (
            "missing-key",
            with_header(|h| {
                let v = h.remove("head.head.weight").unwrap();
                h.insert("head.head.weight_renamed".into(), v);
            }),
            "head.head.weight",
        ),
        (
            "header-len-huge",
            {
                let mut b = std::fs::read(shipped_teacher()).unwrap();
                b[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
                b
            },
            "safetensors",
        ),
        (
            "truncated",
            {
                let b = std::fs::read(shipped_teacher()).unwrap();
                b[..b.len() / 2].to_vec()
            },
            "safetensors",
        ),
        ("empty", Vec::new(), "safetensors"),
        // The prompt table and the sampler of a model file are inputs too.
        (
            "prompts-size-18",
            with_meta(|m| m["prompts"]["shapes"]["size"] = 18.into()),
            "prompts.shapes",
        ),
        (
            "prompts-size-negative",
            with_meta(|m| m["prompts"]["shapes"]["size"] = (-16).into()),
            "prompts.shapes.size",
        ),
        (
            "prompts-frames-zero",
            with_meta(|m| m["prompts"]["shapes"]["frames"] = 0.into()),
            "prompts.shapes.frames",
        ),
        (
            "prompts-text-len-zero",
            with_meta(|m| m["prompts"]["text_len"] = 0.into()),
            "prompts.text_len",
        ),
        (
            "sampler-times-outside",
            with_meta(|m| {
                m["sampler"] = serde_json::json!({"timesteps": [2.0, -1.0], "cfg": 1.0});
            }),
            "sampler.timesteps",
        ),
        (
            "sampler-cfg-huge",
            with_meta(|m| {
                m["sampler"] = serde_json::json!({"timesteps": [1.0, 0.5], "cfg": 1e300});
            }),
            "sampler.cfg",
        ),
    ];
    for (name, bytes, says) in &model_cases {
        let f = dir.join(format!("model-{name}.safetensors"));
        std::fs::write(&f, bytes).unwrap();
        let p = f.to_str().unwrap().to_string();
        let out = dir.join(format!("out-{name}"));
        probes.push(Probe {
            name: format!("model {name}"),
            args: vec![
                "sample".into(),
                "--model".into(),
                p.clone(),
                "--out".into(),
                out.to_str().unwrap().into(),
                "--num".into(),
                "1".into(),
            ],
            says: vec![p, says.to_string()],
        });
    }
    // A diffusers folder whose config.json is impossible, and an index leaving its folder.
    let folder = dir.join("diffusers-heads-zero");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("config.json"),
        r#"{"_class_name": "WanTransformer3DModel", "num_attention_heads": 0, "attention_head_dim": 128, "num_layers": 30}"#,
    )
    .unwrap();
    std::fs::write(
        folder.join("diffusion_pytorch_model.safetensors"),
        join_safetensors(&serde_json::json!({}), &[]),
    )
    .unwrap();
    let escape = dir.join("diffusers-escape");
    std::fs::create_dir_all(&escape).unwrap();
    std::fs::write(
        escape.join("diffusion_pytorch_model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"patch_embedding.weight": "../../../etc/passwd"}}"#,
    )
    .unwrap();
    for (name, f, says) in [
        ("config.json heads zero", &folder, "num_attention_heads"),
        ("index escapes its folder", &escape, "passwd"),
    ] {
        let p = f.to_str().unwrap().to_string();
        probes.push(Probe {
            name: format!("model {name}"),
            args: s(&[
                "sample",
                "--model",
                &p,
                "--preset",
                "wan2.1-t2v-1.3b",
                "--out",
                dir.join("o").to_str().unwrap(),
                "--num",
                "1",
            ]),
            says: vec![p, says.to_string()],
        });
    }
    // CLI arguments.
    let teacher = shipped_teacher().to_str().unwrap().to_string();
    for (arg, value, says) in [
        ("--steps", "0", "--steps"),
        ("--steps", "100000000", "--steps"),
        ("--cfg", "nan", "--cfg"),
        ("--shift", "inf", "--shift"),
        ("--num", "100000000000", "--num"),
        ("--labels", "99", "--labels"),
    ] {
        let out = dir.join("o");
        let mut args = s(&[
            "sample",
            "--model",
            &teacher,
            "--out",
            out.to_str().unwrap(),
            arg,
            value,
        ]);
        if arg != "--steps" {
            args.extend(s(&["--steps", "1"]));
        }
        probes.push(Probe {
            name: format!("sample {arg} {value}"),
            args,
            says: s(&[says]),
        });
    }

    assert!(probes.len() >= 50, "{} probes", probes.len());
    let mut failures = Vec::new();
    let mut peak = 0u64;
    for p in &probes {
        let (code, out, rss) = run_measured(&p.args);
        peak = peak.max(rss);
        let missing: Vec<&String> = p
            .says
            .iter()
            .filter(|w| !out.contains(w.as_str()))
            .collect();
        let panicked = out.contains("panicked") || out.contains("RUST_BACKTRACE");
        if code != Some(1) || !missing.is_empty() || panicked || rss > 1 << 30 {
            failures.push(format!(
                "{}: exit {code:?}, {:.0} MB, missing {missing:?}\n    {}",
                p.name,
                rss as f64 / 1e6,
                out.trim().replace('\n', "\n    ")
            ));
        }
    }
    println!(
        "{} hostile inputs, {} refused as expected, peak {:.0} MB",
        probes.len(),
        probes.len() - failures.len(),
        peak as f64 / 1e6
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
