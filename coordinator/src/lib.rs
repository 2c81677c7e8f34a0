//! fastlightgen's control plane. This crate never links libtorch: it reads and checks configs,
//! keeps the run's state, serves the gRPC control API, commits checkpoints and launches the
//! workers. The `fastlightgen` command is its binary.

pub mod client;
pub mod config;
pub mod dataset;
pub mod launch;
pub mod memory;
pub mod progress;
pub mod run;
pub mod supervise;

/// Sets up `tracing` output on stderr; `RUST_LOG` picks the level (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
