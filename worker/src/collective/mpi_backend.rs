//! The MPI backend: CPU tensors, with started all-gathers on a gather thread.

use super::{bytes, bytes_mut, Collective, Pending, PendingGather};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use std::cell::Cell;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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
                    let mut out =
                        Tensor::empty([local.numel() as i64 * w], (local.kind(), Device::Cpu));
                    // SAFETY: both contiguous CPU tensors, owned by this thread until sent.
                    unsafe { comm.0.all_gather_into(bytes(&local), bytes_mut(&mut out)) };
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
        let mut out = Tensor::empty(
            [local.numel() as i64 * self.world() as i64],
            (local.kind(), Device::Cpu),
        );
        // SAFETY: both tensors are contiguous, alive, and only MPI touches them here.
        self.timed(|| unsafe {
            self.comm
                .all_gather_into(bytes(&local), bytes_mut(&mut out))
        });
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
        let mut out = cpu_contiguous(t).copy();
        // SAFETY: `out` is our own contiguous copy.
        self.timed(|| unsafe {
            self.comm
                .process_at_rank(root as i32)
                .broadcast_into(bytes_mut(&mut out))
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
