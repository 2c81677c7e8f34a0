//! The vocabulary both sides of fastlightgen speak. The control plane (`flg-coordinator`) and
//! the tensor side (`flg-worker`) each depend on this crate and never on each other; it links
//! no libtorch and starts no process of its own.
//!
//! - [`config`]: the experiment file, its schema, checks and model presets.
//! - [`stage`]: the pipeline's stages, their step counts and global step offsets.
//! - [`run_dir`]: every path inside a run directory.
//! - [`events`]: `events.jsonl`, typed.
//! - [`checkpoint`], [`dataset`], [`formats`]: the files a run writes and reads.
//! - [`settings`]: which settings define a run, and their hash.
//! - [`memory`]: the per-rank memory estimate of `fastlightgen validate --estimate-memory`.
//! - [`launch`]: the worker binary and the `mpirun` command line.
//! - [`logging`]: log lines for terminals and log files, with the rank.
//! - [`weights`]: model weight files by their headers: names, forms, checks.

pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod durable;
pub mod events;
pub mod formats;
pub mod launch;
pub mod logging;
pub mod memory;
pub mod run_dir;
pub mod settings;
pub mod stage;
pub mod weights;

pub use run_dir::RunDir;
pub use stage::Stage;

pub use logging::init_logging;

/// This machine's host name (ranks report theirs when they register; the launcher ends only
/// the pids on its own host).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, as events and manifests record time.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
