//! The NCCL backend: CUDA tensors, one GPU per rank, every collective on an NCCL stream of
//! its own fenced by CUDA events.

use super::{Collective, Pending, PendingGather};
use mpi::traits::{Communicator, Root};
use std::cell::Cell;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// NCCL on CUDA tensors, one GPU per rank.
///
/// Every collective runs on one NCCL stream of its own (so the communicator's operations keep
/// their order), fenced by events: the NCCL stream first waits for the work queued so far on
/// libtorch's stream (the legacy default stream, where the inputs are made), and libtorch's
/// stream waits for the collective before it uses the result. A started all-gather (unit
/// prefetch) defers that second wait to `finish_all_gather`, so the gather runs while the
/// current unit computes. Nothing waits on the host unless timing is on (`set_timing`).
pub struct NcclCollective {
    comm: cudarc::nccl::sys::ncclComm_t,
    rank: usize,
    world: usize,
    device: usize,
    waited: Cell<f64>,
    timing: Cell<bool>,
    /// Started gathers overlap with compute (cluster.prefetch).
    prefetch: bool,
    /// libtorch's stream (the null stream) and the NCCL stream.
    compute: std::sync::Arc<cudarc::driver::CudaStream>,
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    /// Keeps the CUDA primary context of our GPU current for NCCL.
    _ctx: std::sync::Arc<cudarc::driver::CudaContext>,
}

impl NcclCollective {
    /// Joins the NCCL communicator: rank 0 makes the unique id and MPI carries it to all ranks.
    /// The caller has checked (`device::select_backend`) that CUDA and NCCL are present.
    pub fn new(
        universe: &mpi::environment::Universe,
        local_gpu: usize,
        prefetch: bool,
    ) -> Result<NcclCollective, String> {
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let ctx = cudarc::driver::CudaContext::new(local_gpu)
            .map_err(|e| format!("CUDA device {local_gpu}: {e:?}"))?;
        ctx.bind_to_thread()
            .map_err(|e| format!("CUDA device {local_gpu}: {e:?}"))?;
        let mut id_bytes = [0u8; 128];
        if rank == 0 {
            let id = cudarc::nccl::result::get_uniqueid()
                .map_err(|e| format!("ncclGetUniqueId: {e:?}"))?;
            for (b, c) in id_bytes.iter_mut().zip(id.internal) {
                *b = c as u8;
            }
        }
        world.process_at_rank(0).broadcast_into(&mut id_bytes[..]);
        let mut id = cudarc::nccl::sys::ncclUniqueId { internal: [0; 128] };
        for (c, b) in id.internal.iter_mut().zip(id_bytes) {
            *c = b as _;
        }
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; every rank calls this with the same id and size.
        unsafe { cudarc::nccl::result::comm_init_rank(&mut comm, size as i32, id, rank as i32) }
            .map_err(|e| format!("ncclCommInitRank: {e:?}"))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("CUDA device {local_gpu}: creating the NCCL stream: {e:?}"))?;
        Ok(NcclCollective {
            comm,
            rank,
            world: size,
            device: local_gpu,
            waited: Cell::new(0.0),
            timing: Cell::new(false),
            prefetch,
            compute: ctx.default_stream(),
            stream,
            _ctx: ctx,
        })
    }

    /// An event recorded now on `stream` (no timing data: cheaper).
    fn event(stream: &cudarc::driver::CudaStream) -> cudarc::driver::CudaEvent {
        stream
            .record_event(Some(
                cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING,
            ))
            .expect("cuEventRecord")
    }

    /// Queues `f` (an NCCL call given the NCCL stream) after the work queued so far on
    /// libtorch's stream; returns the event that marks its end on the NCCL stream.
    fn enqueue<T>(
        &self,
        f: impl FnOnce(cudarc::nccl::sys::cudaStream_t) -> Result<T, cudarc::nccl::result::NcclError>,
        what: &str,
    ) -> cudarc::driver::CudaEvent {
        self.stream
            .wait(&Self::event(&self.compute))
            .expect("cuStreamWaitEvent");
        if let Err(e) = f(self.stream.cu_stream() as _) {
            panic!("{what}: {e:?}");
        }
        Self::event(&self.stream)
    }

    /// Makes libtorch's stream wait for `done`; with timing on, waits on the host and counts
    /// the seconds since `start`.
    fn join(&self, done: &cudarc::driver::CudaEvent, start: Instant) {
        self.compute.wait(done).expect("cuStreamWaitEvent");
        if self.timing.get() {
            tch::Cuda::synchronize(self.device as i64);
            self.waited
                .set(self.waited.get() + start.elapsed().as_secs_f64());
        }
    }

    /// A blocking collective: queued on the NCCL stream, joined at once.
    fn run<T>(
        &self,
        f: impl FnOnce(cudarc::nccl::sys::cudaStream_t) -> Result<T, cudarc::nccl::result::NcclError>,
        what: &str,
    ) {
        let start = Instant::now();
        let done = self.enqueue(f, what);
        self.join(&done, start);
    }

    fn nccl_kind(kind: Kind) -> cudarc::nccl::sys::ncclDataType_t {
        use cudarc::nccl::sys::ncclDataType_t as T;
        match kind {
            Kind::Float => T::ncclFloat32,
            Kind::Double => T::ncclFloat64,
            Kind::BFloat16 => T::ncclBfloat16,
            Kind::Half => T::ncclFloat16,
            Kind::Uint8 | Kind::Bool => T::ncclUint8,
            Kind::Int64 => T::ncclInt64,
            Kind::Int => T::ncclInt32,
            other => panic!("NCCL cannot move {other:?} tensors"),
        }
    }

    /// Queues the all-gather of `local` into a new tensor; returns (out, end event).
    fn queue_all_gather(&self, local: &Tensor) -> (Tensor, Tensor, cudarc::driver::CudaEvent) {
        let local = local.contiguous().view(-1);
        let out = Tensor::empty(
            [local.numel() as i64 * self.world as i64],
            (local.kind(), local.device()),
        );
        let done = self.enqueue(
            |stream| unsafe {
                cudarc::nccl::result::all_gather(
                    local.data_ptr(),
                    out.data_ptr(),
                    local.numel(),
                    Self::nccl_kind(local.kind()),
                    self.comm,
                    stream,
                )
            },
            "ncclAllGather",
        );
        (out, local, done)
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_gather(&self, local: &Tensor) -> Tensor {
        let start = Instant::now();
        let (out, _local, done) = self.queue_all_gather(local);
        self.join(&done, start);
        out
    }

    fn start_all_gather(&self, local: &Tensor) -> PendingGather {
        if !self.prefetch {
            return PendingGather(Pending::Done(self.all_gather(local)));
        }
        let (out, local, done) = self.queue_all_gather(local);
        PendingGather(Pending::Cuda { out, local, done })
    }

    fn finish_all_gather(&self, pending: PendingGather) -> Tensor {
        match pending.0 {
            Pending::Done(t) => t,
            Pending::Cuda { out, local, done } => {
                self.join(&done, Instant::now());
                // libtorch's stream now runs after the gather read `local`, so its memory may
                // go back to the caching allocator.
                drop(local);
                out
            }
            Pending::Thread(_) => unreachable!("an MPI gather on the NCCL backend"),
        }
    }

    fn set_timing(&self, on: bool) {
        self.timing.set(on);
    }

    fn overlaps_gathers(&self) -> bool {
        self.prefetch
    }

    fn reduce_scatter_mean(&self, full: &Tensor) -> Tensor {
        let full = full.to_kind(Kind::Float).contiguous().view(-1);
        let n = full.numel() / self.world;
        let out = Tensor::empty([n as i64], (Kind::Float, full.device()));
        self.run(
            |stream| unsafe {
                cudarc::nccl::result::reduce_scatter(
                    full.data_ptr(),
                    out.data_ptr(),
                    n,
                    Self::nccl_kind(Kind::Float),
                    cudarc::nccl::sys::ncclRedOp_t::ncclAvg,
                    self.comm,
                    stream,
                )
            },
            "ncclReduceScatter",
        );
        out
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Tensor {
        let kind = if t.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let src = t
            .to_kind(kind)
            .to_device(Device::Cuda(self.device))
            .contiguous();
        let out = Tensor::empty_like(&src);
        self.run(
            |stream| unsafe {
                cudarc::nccl::result::all_reduce(
                    src.data_ptr(),
                    out.data_ptr(),
                    src.numel(),
                    Self::nccl_kind(kind),
                    cudarc::nccl::sys::ncclRedOp_t::ncclSum,
                    self.comm,
                    stream,
                )
            },
            "ncclAllReduce",
        );
        // A copy to the CPU (for a scalar) runs on libtorch's stream, after the join.
        out.to_device(t.device())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Tensor {
        let src = t.to_device(Device::Cuda(self.device)).contiguous();
        let out = Tensor::empty_like(&src);
        self.run(
            |stream| unsafe {
                cudarc::nccl::result::broadcast(
                    src.data_ptr(),
                    out.data_ptr(),
                    src.numel() * src.kind().elt_size_in_bytes(),
                    Self::nccl_kind(Kind::Uint8),
                    root as i32,
                    self.comm,
                    stream,
                )
            },
            "ncclBroadcast",
        );
        out.to_device(t.device())
    }

    fn barrier(&self) {
        // An all-reduce of one value orders every rank like a barrier; reading it on the host
        // waits for it.
        let one = Tensor::zeros([1], (Kind::Float, Device::Cuda(self.device)));
        let _ = self.all_reduce_sum(&one).double_value(&[0]);
    }

    fn seconds_waiting(&self) -> f64 {
        self.waited.get()
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // Collectives still queued on the NCCL stream finish before the communicator goes.
        let _ = self.stream.synchronize();
        // SAFETY: the communicator was created by comm_init_rank and is not used after this.
        unsafe {
            let _ = cudarc::nccl::result::comm_destroy(self.comm);
        }
    }
}
