//! fastlightgen's worker: everything that touches tensors.
//!
//! Started by `mpirun` (one process per rank) or by the `fastlightgen` command for single-process
//! tools (data generation, sampling, evaluation).

pub mod bench;
pub mod bench_device;
pub mod bench_memory;
pub mod bench_recompute;
pub mod checkpoint;
pub mod collective;
pub mod context;
pub mod control;
pub mod data;
pub mod device;
pub mod eval;
pub mod faults;
pub mod flow;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod progress;
pub mod ranks;
pub mod rng;
pub mod sample;
pub mod shard;
pub mod stages;
#[doc(hidden)]
pub mod testing;
pub mod throughput;
pub mod train;
pub mod trainer;
