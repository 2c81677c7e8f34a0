//! MPI start-up for a worker rank: who am I, how many are we, and does that match the config.

use flg_core::config::{Config, ConfigError};
use mpi::traits::Communicator;
use std::path::Path;

/// This process's place in the `mpirun` job.
pub struct Ranks {
    pub universe: mpi::environment::Universe,
    pub rank: u32,
    pub world: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error("MPI could not be initialised (was MPI already initialised in this process?)")]
    NoMpi,
    #[error("{0}")]
    WorldSize(ConfigError),
}

/// Initialises MPI with full thread support where the library has it: the MPI backend's unit
/// prefetch runs its all-gathers on a thread of its own (collective.rs). An MPI without it
/// still works, without the overlap.
/// From here on, this process's log lines carry its rank.
pub fn init_mpi() -> Option<mpi::environment::Universe> {
    let universe = mpi::initialize_with_threading(mpi::Threading::Multiple).map(|(u, _)| u)?;
    flg_core::logging::set_rank(universe.world().rank() as u32);
    Some(universe)
}

/// Initialises MPI and checks the job's size against `cluster.world_size` before any
/// collective runs (a mismatch would hang the first collective instead of failing).
pub fn init(config: &Config, config_path: &Path) -> Result<Ranks, RankError> {
    let universe = init_mpi().ok_or(RankError::NoMpi)?;
    let world = universe.world();
    let (rank, size) = (world.rank() as u32, world.size() as u32);
    config
        .check_world_size(config_path, size)
        .map_err(RankError::WorldSize)?;
    Ok(Ranks {
        universe,
        rank,
        world: size,
    })
}
