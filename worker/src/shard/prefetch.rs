//! One-ahead unit gathers: the next unit's all-gather starts while the current one computes.

use super::{ShardedDit, UnitLayout};
use crate::collective::Collective;
use tch::{Kind, Tensor};

/// Gathers a model's units in a known order, one ahead: the next unit's all-gather runs
/// (on the backend's gather thread or NCCL stream) while the caller computes with the
/// current one. At most two gathered units are alive at a time.
/// It holds its own handles on the shards (not a borrow of the model), so that the backward
/// can add gradients to the model meanwhile.
pub(super) struct Prefetch<'a> {
    comm: &'a dyn Collective,
    kind: Kind,
    /// (unit index, its shard, its layout) in the order of use.
    order: Vec<(usize, Tensor, UnitLayout)>,
    next: usize,
    pending: Option<crate::collective::PendingGather>,
}

impl<'a> Prefetch<'a> {
    pub(super) fn new(
        model: &ShardedDit,
        comm: &'a dyn Collective,
        order: Vec<usize>,
    ) -> Prefetch<'a> {
        let order = order
            .into_iter()
            .map(|i| {
                let u = &model.units[i];
                (i, u.shard.shallow_clone(), u.layout.clone())
            })
            .collect();
        let mut p = Prefetch {
            comm,
            kind: model.compute_kind,
            order,
            next: 0,
            pending: None,
        };
        p.start_next();
        p
    }

    pub(super) fn start_next(&mut self) {
        if let Some((_, shard, _)) = self.order.get(self.next) {
            self.pending = Some(self.comm.start_all_gather(&shard.to_kind(self.kind)));
        }
    }

    /// The full tensors of the next unit in the order (and starts the gather after it).
    pub(super) fn take(&mut self) -> (usize, Vec<Tensor>) {
        let full = self
            .comm
            .finish_all_gather(self.pending.take().expect("a gather in flight"));
        let (i, _, layout) = &self.order[self.next];
        let unit = (*i, layout.unflatten(&full.narrow(0, 0, layout.numel)));
        self.next += 1;
        self.start_next();
        unit
    }
}
