//! Multi-process integration tests: real `mpirun` ranks, the real `fastlightgen` binary, real
//! files. One test binary for all of them (each extra binary links libtorch again).
//!
//! `make test` builds the release binaries first; these tests find them next to this test
//! executable's directory (target/release/).
//!
//! Topic modules: `cli`, `equivalence`, `stages`, `faults`, `control`, `recovery` (lost outputs,
//! a stopped launcher, SIGTERM, the run lock, hand-started workers), `hostile` (the table of
//! hostile inputs), `report`, `interop` (diffusers, through the project's Python), `observe` (log
//! files, `watch`, the status page in Chromium, gRPC health, TensorBoard, `--set`); helpers in
//! `util`.

mod cli;
mod control;
mod equivalence;
mod faults;
mod hostile;
mod interop;
mod observe;
mod recovery;
mod report;
mod stages;
mod util;
