//! fastlightgen's control plane. This crate never links libtorch: it keeps the run's state, serves the gRPC control API, commits checkpoints and launches the
//! workers. The `fastlightgen` command is its binary.

pub mod client;
pub mod http;
pub mod processes;
pub mod progress;
pub mod run;
pub mod run_lock;
pub mod supervise;

pub use flg_core::init_logging;
