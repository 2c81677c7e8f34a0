//! A run as the coordinator sees it: its settings, its history (`events.jsonl`), its
//! committed checkpoints, the state machine that answers the ranks and the people watching,
//! and the gRPC services over it.

pub mod checkpoints;
pub mod events;
pub mod service;
pub mod settings;
pub mod state;

#[cfg(test)]
mod tests;

pub use state::{Phase, RunHub};
