//! Helpers every topic module uses: the binaries, configs, data, mpirun, file comparisons,
//! a run in the background.

pub use flg_core::launch::MpiLaunch;
pub use flg_worker::data::{self, shapes::ShapesSpec, DataSet, Loader};
pub use std::collections::HashSet;
pub use std::path::{Path, PathBuf};
pub use std::process::{Command, Output};
pub use std::sync::Arc;

/// target/<profile>/, where cargo puts the binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn fastlightgen(args: &[&str]) -> Output {
    let bin = bin_dir().join("fastlightgen");
    assert!(
        bin.is_file(),
        "{} missing: run `make build` (make test does)",
        bin.display()
    );
    Command::new(bin).args(args).output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn write_config(dir: &Path, world_size: u32, batch: u64) -> PathBuf {
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        format!(
            "[experiment]\nname = \"probe\"\nseed = 5\nstages = [\"pretrain\"]\n\
             [cluster]\nworld_size = {world_size}\n[model]\npreset = \"tiny\"\n\
             [pretrain]\nbatch_size = {batch}\n"
        ),
    )
    .unwrap();
    path
}

pub fn shapes_spec() -> ShapesSpec {
    ShapesSpec {
        frames: 8,
        size: 16,
        text_len: 4,
        text_dim: 32,
        seed: 9,
        text_seed: 1,
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A pretraining config for the equivalence runs: 20 steps, global batch 8, no EMA.
pub fn equivalence_config(dir: &Path, world: u32, data_dir: &Path) -> PathBuf {
    let path = dir.join(format!("w{world}.toml"));
    std::fs::write(
        &path,
        format!(
            "[experiment]\nname = \"eq-w{world}\"\nseed = 3\noutput_dir = {out:?}\nstages = [\"pretrain\"]\n\
             [cluster]\nworld_size = {world}\n[model]\npreset = \"tiny\"\n\
             [data]\npath = {data:?}\nnum_samples = 64\n\
             [pretrain]\nsteps = 20\nbatch_size = 8\nema_decay = 0.0\nlog_every = 1\n\
             [pretrain.optim]\nlr = 1e-3\nwarmup_steps = 5\n",
            out = dir.join("runs"),
            data = data_dir,
        ),
    )
    .unwrap();
    path
}

/// Largest difference between two models' tensors, relative to each tensor's largest entry.
pub fn max_relative_difference(a: &Path, b: &Path) -> f64 {
    let a: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(a)
        .unwrap()
        .into_iter()
        .collect();
    let b: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(b)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, ta)| {
            let tb = &b[k];
            let scale = ta.abs().max().double_value(&[]).max(1e-12);
            (ta - tb).abs().max().double_value(&[]) / scale
        })
        .fold(0.0, f64::max)
}

pub fn run_mpi(np: u32, program: &Path, args: &[std::ffi::OsString]) {
    let res = MpiLaunch::single_node(np)
        .command(program, args)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "mpirun -np {np} failed:\n{}\n{}",
        text(&res.stdout),
        text(&res.stderr)
    );
}

/// Moving-shapes data with the shipped teacher's prompt table.
pub fn teacher_data(dir: &Path, n: u64) -> PathBuf {
    let data_dir = dir.join("data");
    data::write_moving_shapes(
        &data_dir,
        &ShapesSpec {
            seed: 0,
            text_seed: 20260301,
            ..shapes_spec()
        },
        n,
        n,
        false,
    )
    .unwrap();
    data_dir
}

/// A config for the stage probe: the shipped teacher, a small batch, a few steps.
pub fn stage_probe_config(dir: &Path, world: u32, data_dir: &Path) -> PathBuf {
    let path = dir.join(format!("stages-w{world}.toml"));
    std::fs::write(
        &path,
        format!(
            "[experiment]\nname = \"stages-w{world}\"\nseed = 3\noutput_dir = {out:?}\nstages = [\"pruning\", \"distill\"]\n\
             [cluster]\nworld_size = {world}\n[model]\npreset = \"tiny\"\nweights = {teacher:?}\n\
             [data]\npath = {data:?}\nnum_samples = 64\n\
             [pruning]\nsteps = 12\nbatch_size = 8\nskip_prob = 0.5\nalpha = 1.0\n\
             [pruning.optim]\nlr = 1e-5\nwarmup_steps = 0\n\
             [distill]\nsteps = 6\nbatch_size = 4\ngenerator_every = 1\nb1_range = [3.0, 4.0]\nb2_range = [0.0, 0.5]\n\
             [distill.generator_optim]\nlr = 1e-4\n[distill.fake_optim]\nlr = 1e-4\n",
            out = dir.join("runs"),
            teacher = shipped_teacher(),
            data = data_dir,
        ),
    )
    .unwrap();
    path
}

pub fn probe(np: u32, cfg: &Path, out: &Path, stage: &[&str]) -> Output {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--config".into(),
        cfg.into(),
        "--candidates".into(),
        "3,4,5".into(),
        "--out".into(),
        out.into(),
    ];
    args.extend(stage.iter().map(|s| s.into()));
    MpiLaunch::single_node(np)
        .command(Path::new(env!("CARGO_BIN_EXE_stage-probe")), &args)
        .output()
        .unwrap()
}

pub fn json_file<T: serde::de::DeserializeOwned>(p: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

pub fn assert_ok(res: &Output) {
    assert!(
        res.status.success(),
        "{}\n{}",
        text(&res.stdout),
        text(&res.stderr)
    );
}

/// ||a - b|| / ||a|| over all tensors of two files.
pub fn global_relative_difference(a: &Path, b: &Path) -> f64 {
    let b: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(b)
        .unwrap()
        .into_iter()
        .collect();
    let (mut diff, mut norm) = (0.0, 0.0);
    for (k, ta) in tch::Tensor::read_safetensors(a).unwrap() {
        diff += (&ta - &b[&k])
            .square()
            .sum(tch::Kind::Double)
            .double_value(&[]);
        norm += ta.square().sum(tch::Kind::Double).double_value(&[]);
    }
    (diff / norm).sqrt()
}

/// The shipped tiny teacher.
pub fn shipped_teacher() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../teacher/tiny-teacher.safetensors");
    assert!(p.is_file(), "{} is part of the repository", p.display());
    p
}

/// A pipeline config for `fastlightgen run`: Stage II and III on the shipped teacher, short.
pub fn run_config(
    dir: &Path,
    name: &str,
    world: u32,
    pruning_steps: u64,
    interval: u64,
    data: &Path,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[experiment]\nname = \"{name}\"\nseed = 3\noutput_dir = {out:?}\nstages = [\"importance\", \"pruning\", \"distill\", \"export\"]\n\
             [cluster]\nworld_size = {world}\nheartbeat_interval_s = 0.5\nheartbeat_timeout_s = 4.0\nmax_restarts = 3\n\
             [model]\npreset = \"tiny\"\nweights = {teacher:?}\n\
             [data]\npath = {data:?}\nnum_samples = 64\n\
             [importance]\ncalibration_samples = 16\ntimesteps_per_sample = 1\nbatch_size = 16\n\
             [pruning]\nsteps = {pruning_steps}\nbatch_size = 8\n\
             [distill]\nsteps = 8\nbatch_size = 4\ngenerator_every = 2\n\
             [checkpoint]\ninterval_steps = {interval}\nkeep_last = 2\n",
            out = dir.join("runs"),
            teacher = shipped_teacher(),
        ),
    )
    .unwrap();
    path
}

pub fn run_with_faults(cfg: &Path, faults: &str) -> Output {
    let mut cmd = Command::new(bin_dir().join("fastlightgen"));
    cmd.arg("run").arg(cfg);
    if !faults.is_empty() {
        cmd.env("FLG_FAULT", faults);
    }
    cmd.output().unwrap()
}

pub fn file_sha(p: &Path) -> String {
    flg_core::checkpoint::file_sha256(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn events(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn of_kind<'a>(ev: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    ev.iter().filter(|e| e["kind"] == kind).collect()
}

/// `fastlightgen <args>` with the control target.
pub fn control(args: &[&str]) -> Output {
    fastlightgen(args)
}

pub fn status_json(run: &Path) -> serde_json::Value {
    let res = control(&["status", "--coordinator", run.to_str().unwrap(), "--json"]);
    assert_ok(&res);
    serde_json::from_slice(&res.stdout).unwrap()
}

/// A background `fastlightgen run` that is killed if the test fails halfway.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn run_in_background(cfg: &Path, log: &Path) -> Background {
    let log = std::fs::File::create(log).unwrap();
    Background(
        Command::new(bin_dir().join("fastlightgen"))
            .arg("run")
            .arg(cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

pub fn wait_for(what: &str, secs: f64, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed().as_secs_f64() < secs,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
