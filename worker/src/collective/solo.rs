//! A world of one process.

use super::Collective;
use tch::{Kind, Tensor};

/// A world of one process: collectives are identities. Used by single-process training and
/// tests; the same sharded code path runs unchanged.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_gather(&self, local: &Tensor) -> Tensor {
        local.reshape([-1])
    }
    fn reduce_scatter_mean(&self, full: &Tensor) -> Tensor {
        full.to_kind(Kind::Float).reshape([-1])
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Tensor {
        t.shallow_clone()
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Tensor {
        t.shallow_clone()
    }
    fn barrier(&self) {}
    fn seconds_waiting(&self) -> f64 {
        0.0
    }
}
