//! Tensor collectives across the ranks of an `mpirun` job, with two backends behind one
//! interface: MPI (OpenMPI, CPU tensors) and NCCL (cudarc, CUDA tensors, one GPU per rank).
//!
//! Every rank must call the same collectives in the same order with the same sizes; the
//! sharding layer guarantees that by deriving everything that shapes a step (batch split,
//! skip masks) from the seed and the step, never from rank-local state.

use crate::device::{CollectiveBackend, GpuEnv};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use std::cell::Cell;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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

enum Pending {
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
unsafe fn bytes(t: &Tensor) -> &[u8] {
    std::slice::from_raw_parts(
        t.data_ptr() as *const u8,
        t.numel() * t.kind().elt_size_in_bytes(),
    )
}

/// # Safety
/// As [`bytes`], and nothing else may read the tensor meanwhile.
unsafe fn bytes_mut(t: &Tensor) -> &mut [u8] {
    std::slice::from_raw_parts_mut(
        t.data_ptr() as *mut u8,
        t.numel() * t.kind().elt_size_in_bytes(),
    )
}

// ------------------------------------------------------------------------------------- MPI

/// MPI on CPU tensors. Data moves straight from and to tensor memory.
///
/// Started all-gathers (unit prefetch) run on a gather thread with its own duplicate of the
/// world communicator, so they proceed while the main thread computes or runs its own
/// collectives; that needs MPI_THREAD_MULTIPLE (`ranks::init` asks for it). Without it, or
/// with prefetch off, started gathers run at once.
pub struct MpiCollective {
    comm: SimpleCommunicator,
    waited: Cell<f64>,
    gather_thread: Option<GatherThread>,
}

/// A communicator handed to the gather thread. MPI_THREAD_MULTIPLE makes calls from that
/// thread legal; only that thread uses this communicator.
struct ThreadComm(SimpleCommunicator);
// SAFETY: see above; the handle is used by one thread at a time (the gather thread).
unsafe impl Send for ThreadComm {}

type GatherJob = (Tensor, std::sync::mpsc::Sender<Tensor>);

struct GatherThread {
    jobs: Option<std::sync::mpsc::Sender<GatherJob>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl GatherThread {
    fn start(world: &SimpleCommunicator) -> GatherThread {
        use mpi::topology::Communicator as _;
        let comm = ThreadComm(world.duplicate());
        let (jobs, rx) = std::sync::mpsc::channel::<GatherJob>();
        let handle = std::thread::Builder::new()
            .name("flg-gather".into())
            .spawn(move || {
                let comm = comm;
                let w = comm.0.size() as i64;
                while let Ok((local, reply)) = rx.recv() {
                    let out =
                        Tensor::empty([local.numel() as i64 * w], (local.kind(), Device::Cpu));
                    // SAFETY: both contiguous CPU tensors, owned by this thread until sent.
                    unsafe { comm.0.all_gather_into(bytes(&local), bytes_mut(&out)) };
                    let _ = reply.send(out);
                }
            })
            .expect("starting the gather thread");
        GatherThread {
            jobs: Some(jobs),
            handle: Some(handle),
        }
    }
}

impl Drop for GatherThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread; join it before MPI can be finalised.
        self.jobs.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl MpiCollective {
    pub fn new(universe: &mpi::environment::Universe, prefetch: bool) -> MpiCollective {
        let comm = universe.world();
        let multiple = mpi::environment::threading_support() == mpi::Threading::Multiple;
        let gather_thread = (prefetch && multiple).then(|| GatherThread::start(&comm));
        MpiCollective {
            comm,
            waited: Cell::new(0.0),
            gather_thread,
        }
    }

    fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        self.waited
            .set(self.waited.get() + start.elapsed().as_secs_f64());
        r
    }
}

fn cpu_contiguous(t: &Tensor) -> Tensor {
    assert_eq!(t.device(), Device::Cpu, "the MPI backend moves CPU tensors");
    t.contiguous()
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn world(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_gather(&self, local: &Tensor) -> Tensor {
        let local = cpu_contiguous(local).view(-1);
        let out = Tensor::empty(
            [local.numel() as i64 * self.world() as i64],
            (local.kind(), Device::Cpu),
        );
        // SAFETY: both tensors are contiguous, alive, and only MPI touches them here.
        self.timed(|| unsafe { self.comm.all_gather_into(bytes(&local), bytes_mut(&out)) });
        out
    }

    fn reduce_scatter_mean(&self, full: &Tensor) -> Tensor {
        let full = cpu_contiguous(&full.to_kind(Kind::Float)).view(-1);
        let n = full.numel() / self.world();
        assert_eq!(
            n * self.world(),
            full.numel(),
            "reduce-scatter of a length not divisible by W"
        );
        let out = Tensor::empty([n as i64], (Kind::Float, Device::Cpu));
        // SAFETY: f32 tensors, contiguous, alive.
        self.timed(|| unsafe {
            let send = std::slice::from_raw_parts(full.data_ptr() as *const f32, full.numel());
            let recv = std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, n);
            self.comm
                .reduce_scatter_block_into(send, recv, SystemOperation::sum());
        });
        out / self.world() as f64
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Tensor {
        let kind = if t.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let src = cpu_contiguous(&t.to_kind(kind));
        let out = Tensor::empty_like(&src);
        // SAFETY: same kind and length on both sides, contiguous, alive.
        self.timed(|| unsafe {
            match kind {
                Kind::Double => {
                    let s = std::slice::from_raw_parts(src.data_ptr() as *const f64, src.numel());
                    let r = std::slice::from_raw_parts_mut(out.data_ptr() as *mut f64, src.numel());
                    self.comm.all_reduce_into(s, r, SystemOperation::sum());
                }
                _ => {
                    let s = std::slice::from_raw_parts(src.data_ptr() as *const f32, src.numel());
                    let r = std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, src.numel());
                    self.comm.all_reduce_into(s, r, SystemOperation::sum());
                }
            }
        });
        out
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Tensor {
        let out = cpu_contiguous(t).copy();
        // SAFETY: `out` is our own contiguous copy.
        self.timed(|| unsafe {
            self.comm
                .process_at_rank(root as i32)
                .broadcast_into(bytes_mut(&out))
        });
        out
    }

    fn barrier(&self) {
        self.timed(|| self.comm.barrier());
    }

    fn seconds_waiting(&self) -> f64 {
        self.waited.get()
    }

    fn overlaps_gathers(&self) -> bool {
        self.gather_thread.is_some()
    }

    fn start_all_gather(&self, local: &Tensor) -> PendingGather {
        let Some(jobs) = self.gather_thread.as_ref().and_then(|g| g.jobs.as_ref()) else {
            return PendingGather(Pending::Done(self.all_gather(local)));
        };
        let local = cpu_contiguous(local).view(-1).copy();
        let (reply, result) = std::sync::mpsc::channel();
        jobs.send((local, reply)).expect("the gather thread ended");
        PendingGather(Pending::Thread(result))
    }

    fn finish_all_gather(&self, pending: PendingGather) -> Tensor {
        match pending.0 {
            Pending::Done(t) => t,
            Pending::Thread(rx) => self.timed(|| rx.recv().expect("the gather thread ended")),
            Pending::Cuda { .. } => unreachable!("an NCCL gather on the MPI backend"),
        }
    }
}

// ------------------------------------------------------------------------------------ NCCL

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

/// This rank's index among the ranks on its node (OpenMPI sets it), for picking its GPU.
pub fn local_rank() -> usize {
    std::env::var("OMPI_COMM_WORLD_LOCAL_RANK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Gives this rank its share of the node's cores for libtorch's thread pool: the ranks on one
/// node (OpenMPI says how many) split the cores evenly, at least one thread each.
pub fn share_cores_among_local_ranks() {
    let local_size: i32 = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as i32)
        .unwrap_or(1);
    tch::set_num_threads((cores / local_size.max(1)).max(1));
}
