//! A run as the coordinator sees it: its committed checkpoints, the hub that answers the ranks
//! and the people watching (split by concern: liveness, control, commit, status), and the
//! gRPC services over it. The run's history is `flg_core::events`.

pub mod checkpoints;
mod commit;
mod control;
pub mod hub;
mod liveness;
pub mod service;
mod status;

#[cfg(test)]
mod tests;

pub use hub::{random_hex, Phase, RunHub};
pub use liveness::registration_window_s;
pub use status::{status_json, PageView, RankView};
