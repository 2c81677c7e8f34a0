//! The FastLightGen stages (docs/method.md). Each reads the previous stage's output from the run
//! directory and writes its own there, so any stage can be rerun alone:
//!
//! | stage      | reads                                   | writes                          |
//! |------------|-----------------------------------------|---------------------------------|
//! | pretrain   | `model.weights` or a fresh model        | `pretrain/teacher.safetensors`  |
//! | importance | the teacher                             | `importance.json`, `.png`       |
//! | pruning    | the teacher, `importance.json`          | `pruning/model.safetensors`     |
//! | distill    | `pruning/model.safetensors` (or the teacher when the run has no pruning stage), `importance.json` | `distill/generator.safetensors` |
//! | export     | `distill/generator.safetensors`         | `export/student.{safetensors,json}` |
//! | eval       | the teacher, `export/student.safetensors` | `samples/*`, `eval.json`      |
//!
//! The training stages (pretrain, pruning, distill) implement `trainer::TrainingStage` and
//! run in the one training loop, `trainer::train`.

pub mod distill;
pub mod evaluate;
pub mod export;
pub mod gan;
pub mod importance;
pub mod monitor;
pub mod ode_pairs;
pub mod pretrain;
pub mod pruning;

pub use crate::context::{model_meta, StageCtx};

/// The blocks of `all` that are not `removed`, in order.
pub fn kept_blocks(all: &[usize], removed: &[usize]) -> Vec<usize> {
    all.iter()
        .copied()
        .filter(|b| !removed.contains(b))
        .collect()
}
