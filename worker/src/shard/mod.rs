//! FSDP-style sharding of a DiT across ranks (what PyTorch FSDP does, written for our model).
//!
//! - A *unit* is one transformer block; the stem (embeddings, time projection, head) is one
//!   more. Each unit's parameters are flattened into one buffer, padded to a multiple of W,
//!   and rank r keeps the r-th contiguous shard: an f32 master copy, its gradient, and (in the
//!   optimiser) its moments. So each rank holds 1/W of the parameters, gradients and state.
//! - Forward: a unit's parameters are all-gathered just before it runs and dropped after.
//! - Backward (activation checkpointing at block granularity): the forward keeps only each
//!   block's input; the backward walks the blocks in reverse, gathers a block again, recomputes
//!   it with autograd, backpropagates the incoming gradient, reduce-scatters the block's
//!   gradient into the local shard (mean over ranks), and drops the gathered copy.
//! - The losses are computed outside: `forward` returns the output and a tape, the caller
//!   computes its loss and `d loss / d output`, and `backward` takes that gradient. Any loss
//!   of the output (flow matching, self-distillation, DMD) uses the same path.
//!
//! **Rule for every caller: the active block set is part of the step's inputs and must be the
//! same on every rank (derive it from the seed and the step, never from a rank-local random
//! generator). A rank that skips a block another rank runs calls a different sequence of
//! collectives, and the job hangs.**
//!
//! Prefetching: the MPI backend's collectives are blocking, so a unit's gather is not
//! overlapped with the previous unit's compute on the CPU path.

use crate::collective::{all_reduce_scalar, Collective};
use crate::model::dit::{self, BlockInputs, Unit, UnitSource};
use crate::model::params::{block_specs, stem_specs, ParamSpec};
use crate::model::rope::Rope;
use crate::model::Dit;
use flg_core::config::ModelDims;
use prefetch::Prefetch;
use std::borrow::Cow;
use tch::{Device, Kind, Tensor};

/// Where each parameter of a unit sits in its flat buffer.
#[derive(Clone, Debug)]
pub struct UnitLayout {
    pub specs: Vec<ParamSpec>,
    offsets: Vec<i64>,
    /// Elements of the unit's parameters.
    pub numel: i64,
    /// Elements per rank (numel padded to a multiple of W, divided by W).
    pub shard_len: i64,
}

impl UnitLayout {
    pub fn new(specs: Vec<ParamSpec>, world: usize) -> UnitLayout {
        let mut offsets = Vec::with_capacity(specs.len());
        let mut numel = 0;
        for s in &specs {
            offsets.push(numel);
            numel += s.shape.iter().product::<i64>();
        }
        let w = world as i64;
        UnitLayout {
            specs,
            offsets,
            numel,
            shard_len: (numel + w - 1) / w,
        }
    }

    /// The unit's tensors (in `specs` order) as one flat f32 buffer padded to W shards.
    pub fn flatten(&self, tensors: &[Tensor], world: usize) -> Tensor {
        let mut parts: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.to_kind(Kind::Float).reshape([-1]))
            .collect();
        let pad = self.shard_len * world as i64 - self.numel;
        if pad > 0 {
            parts.push(Tensor::zeros([pad], (Kind::Float, tensors[0].device())));
        }
        Tensor::cat(&parts, 0)
    }

    /// Rank `rank`'s part of a padded flat buffer (a view).
    pub fn shard_of(&self, flat: &Tensor, rank: usize) -> Tensor {
        flat.narrow(0, rank as i64 * self.shard_len, self.shard_len)
    }

    /// Views of a full flat buffer as the unit's tensors.
    pub fn unflatten(&self, flat: &Tensor) -> Vec<Tensor> {
        self.specs
            .iter()
            .zip(&self.offsets)
            .map(|(s, &o)| {
                flat.narrow(0, o, s.shape.iter().product())
                    .view(s.shape.as_slice())
            })
            .collect()
    }

    /// 1 for elements of parameters that take weight decay (matrices and kernels), 0 for
    /// vectors (biases, norms), as a shard of this rank.
    pub fn decay_mask_shard(&self, rank: usize, world: usize) -> Tensor {
        let parts: Vec<Tensor> = self
            .specs
            .iter()
            .map(|s| {
                let v = if s.shape.len() >= 2 && !s.name.ends_with("modulation") {
                    1.0
                } else {
                    0.0
                };
                Tensor::full(
                    [s.shape.iter().product::<i64>()],
                    v,
                    (Kind::Float, Device::Cpu),
                )
            })
            .collect();
        self.shard_of(&self.flatten(&parts, world), rank).copy()
    }
}

/// One unit's local state.
pub struct ShardedUnit {
    pub layout: UnitLayout,
    /// This rank's shard of the parameters (f32 master copy), on the compute device.
    pub shard: Tensor,
    /// Gradient accumulated into this rank's shard since the last `zero_grad`.
    pub grad: Option<Tensor>,
}

/// A model role (teacher, student, fake score) sharded across the ranks.
pub struct ShardedDit {
    pub dims: ModelDims,
    /// Original indices of the blocks this model holds (all, or the kept ones when pruned).
    pub block_ids: Vec<usize>,
    /// Unit 0 is the stem; unit 1 + k holds `block_ids[k]`.
    pub units: Vec<ShardedUnit>,
    pub device: Device,
    /// Kind the gathered parameters compute in (f32, or bf16 on CUDA).
    pub compute_kind: Kind,
    /// Recompute each block in the backward from its saved input (activation checkpointing:
    /// memory for one block's activations, one more forward of compute) instead of keeping
    /// every block's autograd graph from the forward. cluster.activation_checkpoint.
    pub recompute: bool,
    /// What `backward` multiplies the output gradient by: a micro-batch's share of the
    /// rank's batch under gradient accumulation (the losses are means over the micro-batch),
    /// else 1.
    pub grad_scale: f64,
}

/// One block's autograd graph kept from the forward (no recompute): its output and the
/// leaves the backward asks gradients for.
struct BlockGraph {
    y: Tensor,
    h_in: Tensor,
    params: Vec<Tensor>,
}

/// What `forward` keeps for `backward`.
pub struct Tape {
    x: Tensor,
    t: Tensor,
    text: Tensor,
    active: Vec<usize>,
    /// The input of each active block, then the input of the head.
    inputs: Vec<Tensor>,
    e: Tensor,
    /// Leaves (requires_grad) when `graphs` holds the blocks' graphs, which use them.
    e0: Tensor,
    context: Tensor,
    grid: [i64; 3],
    /// Each active block's graph, in order, when the model does not recompute; else empty.
    graphs: Vec<BlockGraph>,
}

impl Tape {
    /// The token states [B, N, D] (compute precision) after each active block, in order: what
    /// Stage II's feature loss compares.
    pub fn block_outputs(&self) -> &[Tensor] {
        &self.inputs[1..]
    }
}

fn leaf(t: &Tensor) -> Tensor {
    t.detach().set_requires_grad(true)
}

fn grad_or_zeros(g: &Tensor, like: &Tensor) -> Tensor {
    if g.defined() {
        g.shallow_clone()
    } else {
        like.zeros_like()
    }
}

impl ShardedDit {
    /// Shards a whole model: every rank passes the same full model and keeps its own shards.
    pub fn from_dit(
        model: &Dit,
        comm: &dyn Collective,
        device: Device,
        compute_kind: Kind,
    ) -> ShardedDit {
        let (rank, world) = (comm.rank(), comm.world());
        let mut units = Vec::new();
        let mut add = |specs: Vec<ParamSpec>, u: &Unit| {
            let layout = UnitLayout::new(specs, world);
            let tensors = dit::unit_tensors(u, &layout.specs);
            let flat = layout.flatten(&tensors, world);
            let shard = layout.shard_of(&flat, rank).to_device(device).copy();
            units.push(ShardedUnit {
                layout,
                shard,
                grad: None,
            });
        };
        add(stem_specs(&model.dims), &model.stem);
        for u in &model.blocks {
            add(block_specs(&model.dims), u);
        }
        ShardedDit {
            dims: model.dims.clone(),
            block_ids: model.block_ids.clone(),
            units,
            device,
            compute_kind,
            recompute: true,
            grad_scale: 1.0,
        }
    }

    /// A role that is not a DiT but is sharded, optimised and checkpointed like one: a single
    /// unit of `specs` holding `tensors` (the same on every rank), no blocks (Stage III's GAN
    /// classifier). `dims` are the DiT's it reads features of.
    pub fn single_unit(
        dims: &ModelDims,
        specs: Vec<ParamSpec>,
        tensors: &[Tensor],
        comm: &dyn Collective,
        device: Device,
        compute_kind: Kind,
    ) -> ShardedDit {
        let layout = UnitLayout::new(specs, comm.world());
        let flat = layout.flatten(tensors, comm.world());
        let shard = layout.shard_of(&flat, comm.rank()).to_device(device).copy();
        ShardedDit {
            dims: dims.clone(),
            block_ids: Vec::new(),
            units: vec![ShardedUnit {
                layout,
                shard,
                grad: None,
            }],
            device,
            compute_kind,
            recompute: true,
            grad_scale: 1.0,
        }
    }

    /// The same model with block recompute on or off (see [`ShardedDit::recompute`]).
    pub fn with_recompute(mut self, recompute: bool) -> ShardedDit {
        self.recompute = recompute;
        self
    }

    /// Model FLOPs of a forward over input `x` [B, C, T, H, W] with `text` [B, L, D].
    fn forward_flops(&self, x: &Tensor, text: &Tensor, blocks: usize) -> f64 {
        let seq = crate::throughput::tokens_per_video(&self.dims, &x.size());
        crate::throughput::forward_flops(&self.dims, x.size()[0], seq, text.size()[1], blocks)
    }

    /// The unit holding block `block_id` (original index); panics when the model lacks it.
    pub fn unit_index(&self, block_id: usize) -> usize {
        1 + self
            .block_ids
            .iter()
            .position(|&b| b == block_id)
            .unwrap_or_else(|| {
                panic!(
                    "block {block_id} is not in this model ({:?})",
                    self.block_ids
                )
            })
    }

    /// All-gathers unit `i` into full tensors of the compute kind.
    pub fn gather_unit(&self, i: usize, comm: &dyn Collective) -> Vec<Tensor> {
        let u = &self.units[i];
        let full = comm.all_gather(&u.shard.to_kind(self.compute_kind));
        u.layout.unflatten(&full.narrow(0, 0, u.layout.numel))
    }

    fn gathered(&self, i: usize, comm: &dyn Collective) -> Unit {
        Unit::from_specs(&self.units[i].layout.specs, self.gather_unit(i, comm))
    }

    /// The whole model, unsharded, on every rank (for export and sampling).
    pub fn to_dit(&self, comm: &dyn Collective) -> Dit {
        Dit {
            dims: self.dims.clone(),
            block_ids: self.block_ids.clone(),
            stem: self.gathered(0, comm),
            blocks: (1..self.units.len())
                .map(|i| self.gathered(i, comm))
                .collect(),
        }
    }

    /// The same model with other local shards (e.g. an EMA's), sharing the layouts.
    pub fn with_shards(&self, shards: Vec<Tensor>) -> ShardedDit {
        assert_eq!(shards.len(), self.units.len());
        ShardedDit {
            dims: self.dims.clone(),
            block_ids: self.block_ids.clone(),
            units: self
                .units
                .iter()
                .zip(shards)
                .map(|(u, shard)| ShardedUnit {
                    layout: u.layout.clone(),
                    shard,
                    grad: None,
                })
                .collect(),
            device: self.device,
            compute_kind: self.compute_kind,
            recompute: self.recompute,
            grad_scale: 1.0,
        }
    }

    /// Parameters, gradients and optimizer-free state held by this rank, in bytes.
    pub fn local_bytes(&self) -> i64 {
        self.units
            .iter()
            .map(|u| {
                let g = u.grad.as_ref().map_or(0, |g| g.numel() as i64 * 4);
                u.shard.numel() as i64 * 4 + g
            })
            .sum()
    }

    /// The stem, gathered, and the gathers of the blocks `active` in order, one ahead.
    fn gather_in_order<'a>(
        &self,
        comm: &'a dyn Collective,
        active: &[usize],
    ) -> (Unit, Prefetch<'a>) {
        let order = std::iter::once(0)
            .chain(active.iter().map(|&id| self.unit_index(id)))
            .collect();
        let mut units = Prefetch::new(self, comm, order);
        let stem = Unit::from_specs(&self.units[0].layout.specs, units.take().1);
        (stem, units)
    }

    /// Runs the model for a `backward`: keeps each block's input (recompute), or each block's
    /// graph (`recompute` off).
    pub fn forward(
        &self,
        comm: &dyn Collective,
        x: &Tensor,
        t: &Tensor,
        text: &Tensor,
        active: &[usize],
    ) -> (Tensor, Tape) {
        self.run(comm, x, t, text, active, !self.recompute)
    }

    /// Runs the model for its output only (a target, a rollout, an evaluation): no graph is
    /// built whatever `recompute` says.
    pub fn output(
        &self,
        comm: &dyn Collective,
        x: &Tensor,
        t: &Tensor,
        text: &Tensor,
        active: &[usize],
    ) -> Tensor {
        self.run(comm, x, t, text, active, false).0
    }

    /// The output and the token states after each of the blocks `active` (as
    /// [`Tape::block_outputs`]), without a graph: a target for Stage II's feature loss.
    pub fn output_and_states(
        &self,
        comm: &dyn Collective,
        x: &Tensor,
        t: &Tensor,
        text: &Tensor,
        active: &[usize],
    ) -> (Tensor, Vec<Tensor>) {
        let (out, tape) = self.run(comm, x, t, text, active, false);
        (
            out,
            tape.block_outputs()
                .iter()
                .map(Tensor::shallow_clone)
                .collect(),
        )
    }

    /// The token features [B, N, D] (f32) after the blocks `active` (a prefix of a pass's
    /// blocks), for Stage III's GAN classifier. The parameters are constants here: when `x`
    /// requires grad the autograd graph from `x` is kept, so that a loss on the features can be
    /// differentiated with respect to the input alone (the generator's GAN gradient through the
    /// fake score); else nothing is kept.
    pub fn features(
        &self,
        comm: &dyn Collective,
        x: &Tensor,
        t: &Tensor,
        text: &Tensor,
        active: &[usize],
    ) -> Tensor {
        let kind = self.compute_kind;
        let with_graph = x.requires_grad();
        let passes = if with_graph { 3.0 } else { 1.0 }; // + the input backward's 2x
        crate::throughput::count(passes * self.forward_flops(x, text, active.len()));
        let (stem, mut units) = self.gather_in_order(comm, active);
        let mut body = || {
            let emb = dit::embed(&stem, &x.to_kind(kind), t, &text.to_kind(kind), &self.dims);
            let rope = Rope::new(&self.dims, emb.grid, self.device);
            let bi = BlockInputs {
                e0: &emb.e0,
                context: &emb.context,
                rope: &rope,
            };
            let mut h = emb.tokens;
            for _ in active {
                let (ui, gathered) = units.take();
                let u = Unit::from_specs(&self.units[ui].layout.specs, gathered);
                h = dit::block_forward(&u, &h, &bi, &self.dims);
            }
            h.to_kind(Kind::Float)
        };
        if with_graph {
            tch::with_grad(body)
        } else {
            let _guard = tch::no_grad_guard();
            body()
        }
    }

    /// Adds `grads` (full tensors of unit `i`, in its specs' order, times `grad_scale`) to this
    /// rank's shard gradient, the mean over ranks: for a role whose backward is not
    /// [`ShardedDit::backward`] (Stage III's GAN classifier).
    pub fn add_unit_grad(&mut self, i: usize, grads: &[Tensor], comm: &dyn Collective) {
        let scaled: Vec<Tensor>;
        let grads = if self.grad_scale == 1.0 {
            grads
        } else {
            scaled = grads.iter().map(|g| g * self.grad_scale).collect();
            &scaled
        };
        self.accumulate(i, grads, comm, comm.world());
    }

    fn run(
        &self,
        comm: &dyn Collective,
        x: &Tensor,
        t: &Tensor,
        text: &Tensor,
        active: &[usize],
        keep_graphs: bool,
    ) -> (Tensor, Tape) {
        let _guard = tch::no_grad_guard();
        let kind = self.compute_kind;
        crate::throughput::count(self.forward_flops(x, text, active.len()));
        let (stem, mut units) = self.gather_in_order(comm, active);
        let emb = dit::embed(&stem, &x.to_kind(kind), t, &text.to_kind(kind), &self.dims);
        let rope = Rope::new(&self.dims, emb.grid, self.device);
        let mut inputs = Vec::with_capacity(active.len() + 1);
        let mut graphs = Vec::new();
        let mut h = emb.tokens;
        let (e0, context) = if keep_graphs {
            (leaf(&emb.e0), leaf(&emb.context))
        } else {
            (emb.e0, emb.context)
        };
        {
            let bi = BlockInputs {
                e0: &e0,
                context: &context,
                rope: &rope,
            };
            for _ in active {
                let (ui, gathered) = units.take();
                inputs.push(h.shallow_clone());
                if !keep_graphs {
                    let u = Unit::from_specs(&self.units[ui].layout.specs, gathered);
                    h = dit::block_forward(&u, &h, &bi, &self.dims);
                } else {
                    // The block's graph from leaves, kept for the backward.
                    let params: Vec<Tensor> = gathered.iter().map(leaf).collect();
                    let u = Unit::from_specs(
                        &self.units[ui].layout.specs,
                        params.iter().map(|t| t.shallow_clone()).collect(),
                    );
                    let h_in = leaf(&h);
                    let y = tch::with_grad(|| dit::block_forward(&u, &h_in, &bi, &self.dims));
                    h = y.detach();
                    graphs.push(BlockGraph { y, h_in, params });
                }
            }
        }
        inputs.push(h.shallow_clone());
        let out = dit::head(&stem, &h, &emb.e, emb.grid, &self.dims).to_kind(Kind::Float);
        let tape = Tape {
            x: x.shallow_clone(),
            t: t.shallow_clone(),
            text: text.shallow_clone(),
            active: active.to_vec(),
            inputs,
            e: emb.e,
            e0,
            context,
            grid: emb.grid,
            graphs,
        };
        (out, tape)
    }

    /// Backpropagates `grad_out` (d loss / d output, same shape as the output) through the
    /// taped forward, adding each unit's gradient (mean over ranks) to its local shard.
    pub fn backward(&mut self, comm: &dyn Collective, tape: Tape, grad_out: &Tensor) {
        self.backward_with_states(comm, tape, grad_out, &[]);
    }

    /// [`ShardedDit::backward`] for a loss that also reads the token states after some blocks:
    /// `state_grads` holds `(k, d loss / d state)` for the state after the `k`-th active block
    /// ([`Tape::block_outputs`]`[k]`), added where the backward passes that state.
    pub fn backward_with_states(
        &mut self,
        comm: &dyn Collective,
        tape: Tape,
        grad_out: &Tensor,
        state_grads: &[(usize, Tensor)],
    ) {
        let scaled;
        let grad_out = if self.grad_scale == 1.0 {
            grad_out
        } else {
            scaled = grad_out * self.grad_scale;
            &scaled
        };
        let kind = self.compute_kind;
        let world = comm.world();
        // The backward is twice the forward's model FLOPs (recompute is not counted).
        crate::throughput::count(2.0 * self.forward_flops(&tape.x, &tape.text, tape.active.len()));
        // The stem, then (when recomputing) the active blocks from last to first.
        let mut order = vec![0];
        if tape.graphs.is_empty() {
            order.extend(tape.active.iter().rev().map(|&id| self.unit_index(id)));
        }
        let mut units = Prefetch::new(self, comm, order);
        let stem_tensors: Vec<Tensor> = units.take().1.iter().map(leaf).collect();
        let stem = Unit::from_specs(
            &self.units[0].layout.specs,
            stem_tensors.iter().map(|t| t.shallow_clone()).collect(),
        );
        let mut stem_grads: Vec<Tensor> = stem_tensors.iter().map(|t| t.zeros_like()).collect();
        let grad_out = grad_out.to_kind(kind);

        // Head.
        let h_last = leaf(tape.inputs.last().unwrap());
        let e = leaf(&tape.e);
        let out = dit::head(&stem, &h_last, &e, tape.grid, &self.dims);
        let mut wrt = vec![h_last.shallow_clone(), e.shallow_clone()];
        wrt.extend(stem_tensors.iter().map(|t| t.shallow_clone()));
        let g = Tensor::run_backward(&[(out * &grad_out).sum(Kind::Float)], &wrt, false, false);
        let mut g_h = g[0].shallow_clone();
        let g_e = grad_or_zeros(&g[1], &e);
        for (acc, gi) in stem_grads.iter_mut().zip(&g[2..]) {
            if gi.defined() {
                *acc += gi;
            }
        }

        // Blocks, last to first: each recomputed from its saved input, or its kept graph.
        let mut graphs = tape.graphs;
        let (e0, ctx) = if graphs.is_empty() {
            (leaf(&tape.e0), leaf(&tape.context))
        } else {
            (tape.e0.shallow_clone(), tape.context.shallow_clone())
        };
        let rope = Rope::new(&self.dims, tape.grid, self.device);
        let mut g_e0 = e0.zeros_like();
        let mut g_ctx = ctx.zeros_like();
        for (k, &id) in tape.active.iter().enumerate().rev() {
            for (_, g) in state_grads.iter().filter(|(j, _)| *j == k) {
                g_h += g.to_kind(kind) * self.grad_scale;
            }
            let ui = self.unit_index(id);
            let (y, h_in, params) = match graphs.pop() {
                Some(BlockGraph { y, h_in, params }) => (y, h_in, params),
                None => {
                    let (gathered_ui, gathered) = units.take();
                    debug_assert_eq!(gathered_ui, ui);
                    let params: Vec<Tensor> = gathered.iter().map(leaf).collect();
                    let u = Unit::from_specs(
                        &self.units[ui].layout.specs,
                        params.iter().map(|t| t.shallow_clone()).collect(),
                    );
                    let h_in = leaf(&tape.inputs[k]);
                    let bi = BlockInputs {
                        e0: &e0,
                        context: &ctx,
                        rope: &rope,
                    };
                    (dit::block_forward(&u, &h_in, &bi, &self.dims), h_in, params)
                }
            };
            let mut wrt = vec![
                h_in.shallow_clone(),
                e0.shallow_clone(),
                ctx.shallow_clone(),
            ];
            wrt.extend(params.iter().map(|t| t.shallow_clone()));
            let g = Tensor::run_backward(&[(y * &g_h).sum(Kind::Float)], &wrt, false, false);
            g_h = g[0].shallow_clone();
            g_e0 += grad_or_zeros(&g[1], &e0);
            g_ctx += grad_or_zeros(&g[2], &ctx);
            let grads: Vec<Tensor> = g[3..]
                .iter()
                .zip(&params)
                .map(|(gi, p)| grad_or_zeros(gi, p))
                .collect();
            self.accumulate(ui, &grads, comm, world);
        }

        // Embeddings: the token, time and text paths all lead back to the stem.
        let emb = dit::embed(
            &stem,
            &tape.x.to_kind(kind),
            &tape.t,
            &tape.text.to_kind(kind),
            &self.dims,
        );
        let total = (emb.tokens * &g_h).sum(Kind::Float)
            + (emb.e * &g_e).sum(Kind::Float)
            + (emb.e0 * &g_e0).sum(Kind::Float)
            + (emb.context * &g_ctx).sum(Kind::Float);
        let g = Tensor::run_backward(&[total], &stem_tensors, false, false);
        for (acc, gi) in stem_grads.iter_mut().zip(&g) {
            if gi.defined() {
                *acc += gi;
            }
        }
        self.accumulate(0, &stem_grads, comm, world);
    }

    /// Reduce-scatters a unit's full gradient and adds this rank's part to its shard gradient.
    fn accumulate(&mut self, i: usize, grads: &[Tensor], comm: &dyn Collective, world: usize) {
        let _guard = tch::no_grad_guard();
        let flat = self.units[i].layout.flatten(grads, world);
        let part = comm.reduce_scatter_mean(&flat);
        let u = &mut self.units[i];
        u.grad = Some(match u.grad.take() {
            Some(g) => g + part,
            None => part,
        });
    }

    pub fn zero_grad(&mut self) {
        for u in &mut self.units {
            u.grad = None;
        }
    }

    /// The global gradient norm over all ranks' shards.
    pub fn grad_norm(&self, comm: &dyn Collective) -> f64 {
        let local: f64 = self
            .units
            .iter()
            .filter_map(|u| u.grad.as_ref())
            .map(|g| {
                g.to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum();
        all_reduce_scalar(comm, local).sqrt()
    }

    /// The local shards (parameters to optimise), stem first.
    pub fn shards(&self) -> Vec<Tensor> {
        self.units.iter().map(|u| u.shard.shallow_clone()).collect()
    }

    /// The local gradient shards (`None` for units that got no gradient this step).
    pub fn grads(&self) -> Vec<Option<Tensor>> {
        self.units
            .iter()
            .map(|u| u.grad.as_ref().map(|g| g.shallow_clone()))
            .collect()
    }

    /// Weight-decay masks of the local shards.
    pub fn decay_masks(&self, comm: &dyn Collective) -> Vec<Tensor> {
        self.units
            .iter()
            .map(|u| {
                u.layout
                    .decay_mask_shard(comm.rank(), comm.world())
                    .to_device(self.device)
            })
            .collect()
    }
}

/// Gathers units on demand for inference (sampling, a frozen teacher): `dit::forward` over a
/// sharded model.
pub struct Gathering<'a> {
    pub model: &'a ShardedDit,
    pub comm: &'a dyn Collective,
}

impl UnitSource for Gathering<'_> {
    fn stem(&self) -> Cow<'_, Unit> {
        Cow::Owned(self.model.gathered(0, self.comm))
    }

    fn block(&self, id: usize) -> Cow<'_, Unit> {
        Cow::Owned(self.model.gathered(self.model.unit_index(id), self.comm))
    }
}

mod prefetch;
#[cfg(test)]
mod tests;
