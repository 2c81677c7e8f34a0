//! Batches for one rank: shuffled per epoch from the seed, split across ranks, resumable.
//!
//! Step `s` of epoch `e` uses the global batch `perm_e[s*B .. (s+1)*B]` (B = global batch
//! size), and rank `r` of `W` takes the `r`-th contiguous `B/W` of it. So:
//! - ranks get disjoint shares, and together exactly the samples one rank would get with the
//!   same global batch: training on W ranks sees the same data as on one;
//! - the position is just `(epoch, step)`, independent of W, so a run resumed on a different
//!   world size continues with the same samples.
//!
//! The tail of an epoch that does not fill a global batch is dropped (it is a different tail
//! every epoch, since the order is reshuffled).

use super::shards::{DataSet, Sample};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Stream tag of the per-epoch permutation.
const EPOCH_STREAM: u64 = 0x4550_4f43_4800_0000; // "EPOCH"

/// Where a loader stands: the next batch it serves is step `step` of epoch `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub step: u64,
}

/// One rank's share of one global batch, decoded to f32.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Data-set indices of the samples, in batch order.
    pub indices: Vec<u64>,
    /// [b, C, T, H, W] flattened.
    pub latents: Vec<f32>,
    /// [b, L, D] flattened.
    pub text: Vec<f32>,
    /// [b], when the data set has labels.
    pub labels: Option<Vec<i64>>,
    /// The position this batch was served at.
    pub position: DataPosition,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// The samples `indices` of `data` as one batch (position: the start).
    pub fn gather(data: &DataSet, indices: &[u64]) -> Batch {
        let samples: Vec<Sample> = indices.iter().map(|&i| data.sample(i)).collect();
        Batch {
            latents: samples
                .iter()
                .flat_map(|s| s.latents.iter().copied())
                .collect(),
            text: samples
                .iter()
                .flat_map(|s| s.text.iter().copied())
                .collect(),
            labels: data
                .manifest
                .has_labels
                .then(|| samples.iter().map(|s| s.label.unwrap_or(-1)).collect()),
            indices: indices.to_vec(),
            position: DataPosition { epoch: 0, step: 0 },
        }
    }

    fn at(mut self, position: DataPosition) -> Batch {
        self.position = position;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("the global batch {batch} does not split evenly over {world} ranks")]
    Uneven { batch: u64, world: u64 },
    #[error("the global batch {batch} is larger than the data set ({len} samples)")]
    TooLarge { batch: u64, len: u64 },
    #[error("rank {rank} is not below the world size {world}")]
    BadRank { rank: u64, world: u64 },
}

pub struct Loader {
    data: Arc<DataSet>,
    seed: u64,
    global_batch: u64,
    rank: u64,
    world: u64,
    position: DataPosition,
    /// The permutation of `position.epoch`, computed once per epoch.
    perm: Vec<u64>,
    perm_epoch: Option<u64>,
}

impl Loader {
    pub fn new(
        data: Arc<DataSet>,
        seed: u64,
        global_batch: u64,
        rank: u64,
        world: u64,
    ) -> Result<Loader, LoaderError> {
        if world == 0 || global_batch == 0 || global_batch % world != 0 {
            return Err(LoaderError::Uneven {
                batch: global_batch,
                world,
            });
        }
        if rank >= world {
            return Err(LoaderError::BadRank { rank, world });
        }
        if global_batch > data.len() {
            return Err(LoaderError::TooLarge {
                batch: global_batch,
                len: data.len(),
            });
        }
        Ok(Loader {
            data,
            seed,
            global_batch,
            rank,
            world,
            position: DataPosition::default(),
            perm: Vec::new(),
            perm_epoch: None,
        })
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.data.len() / self.global_batch
    }

    pub fn local_batch(&self) -> u64 {
        self.global_batch / self.world
    }

    /// The position of the next batch.
    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Continue from a saved position (from any world size with the same global batch).
    pub fn restore(&mut self, position: DataPosition) {
        self.position = position;
        if position.step >= self.steps_per_epoch() {
            // Saved at the very end of an epoch by a loader that had not rolled over yet.
            self.position = DataPosition {
                epoch: position.epoch + 1,
                step: 0,
            };
        }
    }

    /// The permutation of all sample indices for an epoch.
    pub fn epoch_order(&self, epoch: u64) -> Vec<u64> {
        let mut perm: Vec<u64> = (0..self.data.len()).collect();
        Rng::derive(self.seed, &[EPOCH_STREAM, epoch]).shuffle(&mut perm);
        perm
    }

    /// The data-set indices of this rank's share of the batch at `position`.
    fn indices_at(&mut self, position: DataPosition) -> Vec<u64> {
        if self.perm_epoch != Some(position.epoch) {
            self.perm = self.epoch_order(position.epoch);
            self.perm_epoch = Some(position.epoch);
        }
        let local = self.local_batch();
        let start = position.step * self.global_batch + self.rank * local;
        self.perm[start as usize..(start + local) as usize].to_vec()
    }

    /// Serves the next batch and advances (rolling over to the next epoch at its end).
    pub fn next_batch(&mut self) -> Batch {
        let position = self.position;
        let indices = self.indices_at(position);
        self.position.step += 1;
        if self.position.step == self.steps_per_epoch() {
            self.position = DataPosition {
                epoch: position.epoch + 1,
                step: 0,
            };
        }
        Batch::gather(&self.data, &indices).at(position)
    }
}
