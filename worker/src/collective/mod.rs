//! Tensor collectives across the ranks of an `mpirun` job, with two backends behind one
//! interface: MPI (OpenMPI, CPU tensors) and NCCL (cudarc, CUDA tensors, one GPU per rank).
//!
//! Every rank must call the same collectives in the same order with the same sizes; the
//! sharding layer guarantees that by deriving everything that shapes a step (batch split,
//! skip masks) from the seed and the step, never from rank-local state.

mod mpi_backend;
mod nccl_backend;
mod solo;

pub use mpi_backend::MpiCollective;
pub use nccl_backend::NcclCollective;
pub use solo::Solo;

use crate::device::{CollectiveBackend, GpuEnv};
use tch::Tensor;

/// Collectives over flat tensors. Reductions happen in f32 (bf16 inputs are widened first).
pub trait Collective {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Every rank's `local` (same length everywhere) concatenated in rank order.
    fn all_gather(&self, local: &Tensor) -> Tensor;
    /// `full` (length W n) summed over ranks; this rank's n-long part, divided by W.
    fn reduce_scatter_mean(&self, full: &Tensor) -> Tensor;
    /// Element-wise sum over ranks (f32 or f64).
    fn all_reduce_sum(&self, t: &Tensor) -> Tensor;
    /// The root's tensor, on every rank (same shape and kind everywhere).
    fn broadcast(&self, t: &Tensor, root: usize) -> Tensor;
    fn barrier(&self);
    /// Seconds the caller spent waiting on collectives so far: inside blocking ones, and in
    /// `finish_all_gather` for started ones (the exposed, not overlapped, part).
    fn seconds_waiting(&self) -> f64;
    /// Starts an all-gather of `local` that proceeds while the caller computes (unit
    /// prefetch); `finish_all_gather` returns its result. Started gathers finish in the order
    /// they were started, on every rank. The default runs it at once.
    fn start_all_gather(&self, local: &Tensor) -> PendingGather {
        PendingGather(Pending::Done(self.all_gather(local)))
    }
    fn finish_all_gather(&self, pending: PendingGather) -> Tensor {
        match pending.0 {
            Pending::Done(t) => t,
            _ => unreachable!("a gather started by another backend"),
        }
    }
    /// Measure the time collectives take on the device (NCCL: synchronise after each one);
    /// off by default, so that GPU collectives overlap with compute. MPI always measures.
    fn set_timing(&self, _on: bool) {}
    /// Whether started all-gathers overlap with the caller's work on this backend now.
    fn overlaps_gathers(&self) -> bool {
        false
    }
}

/// An all-gather that may still be running ([`Collective::start_all_gather`]).
pub struct PendingGather(Pending);

pub(crate) enum Pending {
    Done(Tensor),
    /// MPI: the result comes from the gather thread.
    Thread(std::sync::mpsc::Receiver<Tensor>),
    /// NCCL: the result is complete when `done` has happened on the NCCL stream; `local`
    /// stays alive until then.
    Cuda {
        out: Tensor,
        local: Tensor,
        done: cudarc::driver::CudaEvent,
    },
}

/// Sums a scalar over ranks.
pub fn all_reduce_scalar(c: &dyn Collective, v: f64) -> f64 {
    c.all_reduce_sum(&Tensor::from_slice(&[v]))
        .double_value(&[0])
}

/// The mean over ranks of each of `values` (one collective for all of them).
pub fn all_reduce_mean(c: &dyn Collective, values: &[f64]) -> Vec<f64> {
    let sum = c.all_reduce_sum(&Tensor::from_slice(values));
    let w = c.world() as f64;
    Vec::<f64>::try_from(sum)
        .expect("f64 sums")
        .into_iter()
        .map(|v| v / w)
        .collect()
}

/// The bytes of a contiguous CPU tensor.
///
/// # Safety
/// The tensor must stay alive and unmodified while the slice is used.
pub(crate) unsafe fn bytes(t: &Tensor) -> &[u8] {
    std::slice::from_raw_parts(
        t.data_ptr() as *const u8,
        t.numel() * t.kind().elt_size_in_bytes(),
    )
}

/// The bytes of a contiguous CPU tensor, to write into. Taking the tensor by `&mut` lets the
/// borrow checker see the write: no other borrow of this handle can read it meanwhile.
///
/// # Safety
/// As [`bytes`], and no other handle sharing the tensor's storage may read it meanwhile.
pub(crate) unsafe fn bytes_mut(t: &mut Tensor) -> &mut [u8] {
    std::slice::from_raw_parts_mut(
        t.data_ptr() as *mut u8,
        t.numel() * t.kind().elt_size_in_bytes(),
    )
}

/// The collective for a chosen backend. `local_gpu` is this rank's GPU on its node;
/// `prefetch`: started all-gathers overlap with compute.
pub fn connect(
    backend: CollectiveBackend,
    universe: &mpi::environment::Universe,
    local_gpu: usize,
    prefetch: bool,
) -> Result<Box<dyn Collective>, String> {
    match backend {
        CollectiveBackend::Mpi => Ok(Box::new(MpiCollective::new(universe, prefetch))),
        CollectiveBackend::Nccl => {
            // Checked again here: no cudarc call may run without the libraries.
            let env = GpuEnv::detect();
            if !env.cuda_driver || !env.nccl {
                return Err(
                    "NCCL needs the CUDA driver and libnccl.so; see `fastlightgen env`".into(),
                );
            }
            Ok(Box::new(NcclCollective::new(
                universe, local_gpu, prefetch,
            )?))
        }
    }
}

/// Where a rank sits on its node: its index among the node's ranks (which GPU it drives) and
/// how many ranks share the node (how its cores are split), with where that was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlace {
    pub local_rank: usize,
    pub local_size: usize,
    /// `OMPI_COMM_WORLD_LOCAL_RANK`, `SLURM_LOCALID` or `MPI shared-memory split`.
    pub source: &'static str,
}

impl std::fmt::Display for NodePlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "local rank {} of {} on this node (from {})",
            self.local_rank, self.local_size, self.source
        )
    }
}

/// The local rank the launcher announces, with the variable it came from, in this order:
/// OpenMPI (`mpirun`), then Slurm (`srun`, which sets no OpenMPI variables); `None` when
/// neither does. `env` reads a variable.
pub fn local_rank_from_env(env: impl Fn(&str) -> Option<String>) -> Option<(usize, &'static str)> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"]
        .into_iter()
        .find_map(|name| Some((env(name)?.trim().parse().ok()?, name)))
}

/// This rank's place on its node. The ranks that share it come from MPI itself: the world
/// split into the ranks that share memory (one node), ordered by world rank; the local rank
/// is the launcher's ([`local_rank_from_env`]) when it says, else the split's. Collective:
/// every rank calls it.
pub fn node_place(universe: &mpi::environment::Universe) -> NodePlace {
    let split = shared_memory_place(universe);
    match local_rank_from_env(|v| std::env::var(v).ok()) {
        Some((local_rank, source)) => NodePlace {
            local_rank,
            local_size: split.local_size.max(local_rank + 1),
            source,
        },
        None => split,
    }
}

/// The node place MPI gives: the world split into ranks that share memory. Collective.
pub fn shared_memory_place(universe: &mpi::environment::Universe) -> NodePlace {
    use mpi::topology::Communicator;
    let world = universe.world();
    let node = world.split_shared(world.rank());
    NodePlace {
        local_rank: node.rank() as usize,
        local_size: node.size() as usize,
        source: "MPI shared-memory split",
    }
}

/// Gives this rank its share of the node's cores for libtorch's thread pool: the ranks on one
/// node split the cores evenly, at least one thread each.
pub fn share_cores_among_local_ranks(place: &NodePlace) {
    let local_size = place.local_size as i32;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as i32)
        .unwrap_or(1);
    tch::set_num_threads((cores / local_size.max(1)).max(1));
}

#[cfg(test)]
mod node_place_tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn openmpi_then_slurm_then_nothing() {
        let both = [("OMPI_COMM_WORLD_LOCAL_RANK", "3"), ("SLURM_LOCALID", "5")];
        assert_eq!(
            local_rank_from_env(env_of(&both)),
            Some((3, "OMPI_COMM_WORLD_LOCAL_RANK"))
        );
        let srun = [("SLURM_LOCALID", " 5 ")];
        assert_eq!(
            local_rank_from_env(env_of(&srun)),
            Some((5, "SLURM_LOCALID"))
        );
        // A value that is not a number is passed over, to the next source.
        let odd = [("OMPI_COMM_WORLD_LOCAL_RANK", "x"), ("SLURM_LOCALID", "1")];
        assert_eq!(
            local_rank_from_env(env_of(&odd)),
            Some((1, "SLURM_LOCALID"))
        );
        assert_eq!(local_rank_from_env(env_of(&[("SLURM_LOCALID", "x")])), None);
        assert_eq!(local_rank_from_env(env_of(&[])), None);
    }
}
