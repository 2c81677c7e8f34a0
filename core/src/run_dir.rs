//! A run directory, `<experiment.output_dir>/<experiment.name>/`, and every path in it.
//!
//! The one place that spells the run's file names: the coordinator, the ranks, the report and
//! the tests all ask a [`RunDir`] where a file is.

use crate::stage::Stage;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn new(dir: impl Into<PathBuf>) -> RunDir {
        RunDir(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The resolved config the run was started with (absolute paths).
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }

    /// The run's history, one event a line (coordinator only).
    pub fn events(&self) -> PathBuf {
        self.0.join("events.jsonl")
    }

    /// Rank 0's step lines (losses, rates) of every training stage.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }

    /// The coordinator's address while it runs (for `watch`, `status`, ...).
    /// TensorBoard event files (`tensorboard --logdir <run dir>/tensorboard`).
    pub fn tensorboard(&self) -> PathBuf {
        self.0.join("tensorboard")
    }

    pub fn coordinator_info(&self) -> PathBuf {
        self.0.join("coordinator.json")
    }

    /// The token mutating control calls must carry (mode 0600).
    pub fn control_token(&self) -> PathBuf {
        self.0.join("control-token")
    }

    /// The launch secret for workers started by hand (`fastlightgen coordinator`; mode 0600).
    /// The launcher of `run` hands its ranks the secret in their environment instead.
    pub fn launch_secret(&self) -> PathBuf {
        self.0.join("launch-secret")
    }

    /// The lock a coordinator holds on the run directory while it serves the run; it
    /// names the holder (pid, host).
    pub fn lock(&self) -> PathBuf {
        self.0.join("coordinator.lock")
    }

    /// Committed checkpoints `step-<N>/`, the `latest` link and uncommitted `tmp-*`.
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }

    /// Generated moving-shapes data when `data.path` is unset.
    pub fn data(&self) -> PathBuf {
        self.0.join("data")
    }

    /// A stage's own output directory (`pretrain/`, `pruning/`, `distill/`, `export/`).
    pub fn stage_dir(&self, stage: Stage) -> PathBuf {
        self.0.join(stage.name())
    }

    /// The pretrained teacher (`pretrain` stage).
    pub fn pretrained_teacher(&self) -> PathBuf {
        self.stage_dir(Stage::Pretrain).join("teacher.safetensors")
    }

    /// Stage I's table of block scores and removal candidates.
    pub fn importance(&self) -> PathBuf {
        self.0.join("importance.json")
    }

    /// Stage I's bar chart.
    pub fn importance_chart(&self) -> PathBuf {
        self.0.join("importance.png")
    }

    /// Stage II's model (every block, trained to tolerate skipping the candidates).
    pub fn pruned_model(&self) -> PathBuf {
        self.stage_dir(Stage::Pruning).join("model.safetensors")
    }

    /// Stage III's generator (its EMA).
    pub fn generator(&self) -> PathBuf {
        self.stage_dir(Stage::Distill).join("generator.safetensors")
    }

    /// Stage III's regression pairs (noise -> the teacher's ODE sample).
    pub fn ode_pairs(&self) -> PathBuf {
        self.stage_dir(Stage::Distill).join("ode-pairs.safetensors")
    }

    /// The exported student.
    pub fn student(&self) -> PathBuf {
        self.stage_dir(Stage::Export).join("student.safetensors")
    }

    /// The exported student in diffusers form (`WanTransformer3DModel.from_pretrained`), with
    /// `sampler.json`.
    pub fn student_diffusers(&self) -> PathBuf {
        self.stage_dir(Stage::Export).join("diffusers")
    }

    /// `student.json` beside the exported student.
    pub fn student_info(&self) -> PathBuf {
        self.stage_dir(Stage::Export).join("student.json")
    }

    /// The eval stage's table.
    pub fn eval(&self) -> PathBuf {
        self.0.join("eval.json")
    }

    /// The files a finished stage leaves for later stages and the report: if one is
    /// missing or unreadable, the stage is not finished.
    pub fn stage_outputs(&self, stage: Stage) -> Vec<PathBuf> {
        match stage {
            Stage::Pretrain => vec![self.pretrained_teacher()],
            Stage::Importance => vec![self.importance()],
            Stage::Pruning => vec![self.pruned_model()],
            Stage::Distill => vec![self.generator()],
            Stage::Export => vec![self.student(), self.student_info()],
            Stage::Eval => vec![self.eval()],
        }
    }

    /// One eval row's samples (`videos.npy`, `labels.npy`, `grid.png`).
    pub fn samples(&self, row: &str) -> PathBuf {
        self.0.join("samples").join(row)
    }

    /// The run's report.
    pub fn report(&self) -> PathBuf {
        self.0.join("report.md")
    }

    /// The report's images and `summary.json`.
    pub fn report_assets(&self) -> PathBuf {
        self.0.join("report")
    }
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// Files inside one sample directory (`RunDir::samples`, `fastlightgen sample --out`).
pub mod sample_files {
    pub const VIDEOS: &str = "videos.npy";
    pub const LABELS: &str = "labels.npy";
    pub const GRID: &str = "grid.png";
}
