//! Which device the tensors live on and which collective backend moves them.
//!
//! CUDA and NCCL are loaded at run time (cudarc's dynamic loading), so the same binary builds
//! and runs on a machine without them. Before any GPU call we check that the libraries are
//! present: a missing driver or NCCL is a clear error, never a panic inside cudarc.

use flg_core::config::{Backend, Device};

/// The backend that carries tensor collectives for a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectiveBackend {
    /// OpenMPI on CPU tensors (sums in f32).
    Mpi,
    /// NCCL on CUDA tensors, one GPU per rank.
    Nccl,
}

/// What this machine offers for GPU work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuEnv {
    /// Why libtorch's CUDA part (libtorch_cuda.so) is present but failed to load, if it did.
    pub torch_cuda_error: Option<String>,
    /// The CUDA driver library (libcuda.so) could be loaded.
    pub cuda_driver: bool,
    /// libnccl.so could be loaded (the build links it to the torch wheel's NCCL).
    pub nccl: bool,
    /// CUDA devices libtorch sees.
    pub torch_cuda_devices: i64,
}

impl GpuEnv {
    /// Probes the machine. Loads no symbol and calls no GPU function.
    pub fn detect() -> GpuEnv {
        let torch_cuda_error = load_torch_cuda().err();
        // SAFETY: these only try to dlopen the libraries by name and report success.
        let cuda_driver = unsafe { cudarc::driver::sys::is_culib_present() };
        let nccl = unsafe { cudarc::nccl::sys::is_culib_present() };
        let torch_cuda_devices = if cuda_driver {
            tch::Cuda::device_count()
        } else {
            0
        };
        GpuEnv {
            torch_cuda_error,
            cuda_driver,
            nccl,
            torch_cuda_devices,
        }
    }
}

/// Makes libtorch's CUDA backend available to this process, once.
///
/// A binary linked against a CUDA libtorch already has libtorch_cuda.so loaded, and this is a
/// no-op. The GPU kit's binary (bench/gpu-kit/build.sh) links only libtorch's CPU part, so that
/// one build runs on machines with and without CUDA; loading libtorch_cuda.so here runs its
/// static initialisers, which register CUDA with ATen, exactly as `import torch` does. A
/// libtorch without a CUDA part (no such file) is not an error: the machine is CPU-only.
pub fn load_torch_cuda() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: dlopen with a valid C string; the handle is kept for the process lifetime.
            let handle = unsafe {
                libc::dlopen(
                    c"libtorch_cuda.so".as_ptr(),
                    libc::RTLD_NOW | libc::RTLD_GLOBAL,
                )
            };
            if !handle.is_null() {
                return Ok(());
            }
            // SAFETY: dlerror returns a thread-local C string or null.
            let err = unsafe {
                let e = libc::dlerror();
                if e.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                }
            };
            // "libtorch_cuda.so: cannot open ..." is the library itself missing (a CPU
            // libtorch); any other message is a present library whose dependencies fail.
            if err.starts_with("libtorch_cuda.so:") {
                Ok(())
            } else {
                Err(err)
            }
        })
        .clone()
}

/// The file a shared library of this process was loaded from (read from /proc/self/maps).
pub fn loaded_library(name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.rsplit('/').next() == Some(name))
        .map(str::to_string)
}

/// Chooses the collective backend for a config's device and backend on this machine.
/// `auto` is NCCL for CUDA and MPI for the CPU.
pub fn select_backend(
    device: Device,
    backend: Backend,
    env: &GpuEnv,
) -> Result<CollectiveBackend, String> {
    let chosen = match (device, backend) {
        (Device::Cpu, Backend::Auto | Backend::Mpi) => CollectiveBackend::Mpi,
        (Device::Cuda, Backend::Auto | Backend::Nccl) => CollectiveBackend::Nccl,
        (Device::Cpu, Backend::Nccl) => {
            return Err("cluster.backend = \"nccl\" needs cluster.device = \"cuda\"".into())
        }
        (Device::Cuda, Backend::Mpi) => {
            return Err(
                "cluster.backend = \"mpi\" moves CPU tensors; use \"nccl\" with CUDA".into(),
            )
        }
    };
    if chosen == CollectiveBackend::Nccl {
        if !env.cuda_driver {
            return Err(
                "cluster.device = \"cuda\" but no CUDA driver (libcuda.so) was found on this \
                        machine; run on a GPU node or set device = \"cpu\""
                    .into(),
            );
        }
        if env.torch_cuda_devices == 0 {
            return Err(
                "the CUDA driver loads but libtorch sees no GPU; check CUDA_VISIBLE_DEVICES \
                        and the driver version"
                    .into(),
            );
        }
        if !env.nccl {
            return Err(format!(
                "NCCL (libnccl.so) was not found; the build links it to the torch wheel's \
                 nvidia/nccl/lib/libnccl.so.2 ({}); reinstall with `make setup`",
                if env!("FLG_NCCL_LINK").is_empty() {
                    "no such file at build time"
                } else {
                    env!("FLG_NCCL_LINK")
                }
            ));
        }
    }
    Ok(chosen)
}

/// The tch device for a rank: CPU, or the rank's local GPU.
pub fn tch_device(device: Device, local_rank: usize) -> tch::Device {
    match device {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda => tch::Device::Cuda(local_rank),
    }
}

/// Device memory in use, in bytes, as the CUDA driver reports it (total - free); `None` on
/// the CPU. libtorch's caching allocator keeps what it once took, so read after the timed
/// steps this is the peak the steps reserved (plus the CUDA context).
pub fn device_memory_used(device: tch::Device) -> Option<u64> {
    let tch::Device::Cuda(i) = device else {
        return None;
    };
    let ctx = cudarc::driver::CudaContext::new(i).ok()?;
    ctx.bind_to_thread().ok()?;
    let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
    Some((total - free) as u64)
}

/// A memory figure of this process from /proc/self/status (e.g. "VmHWM:"), in bytes.
fn proc_status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(key)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    proc_status_bytes("VmHWM:")
}

/// Resident memory of this process now (VmRSS), in bytes.
pub fn rss_bytes() -> u64 {
    proc_status_bytes("VmRSS:")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_GPU: GpuEnv = GpuEnv {
        torch_cuda_error: None,
        cuda_driver: false,
        nccl: true,
        torch_cuda_devices: 0,
    };
    const GPU: GpuEnv = GpuEnv {
        torch_cuda_error: None,
        cuda_driver: true,
        nccl: true,
        torch_cuda_devices: 8,
    };

    #[test]
    fn auto_picks_mpi_on_cpu_and_nccl_on_cuda() {
        assert_eq!(
            select_backend(Device::Cpu, Backend::Auto, &NO_GPU),
            Ok(CollectiveBackend::Mpi)
        );
        assert_eq!(
            select_backend(Device::Cuda, Backend::Auto, &GPU),
            Ok(CollectiveBackend::Nccl)
        );
        assert_eq!(
            select_backend(Device::Cuda, Backend::Nccl, &GPU),
            Ok(CollectiveBackend::Nccl)
        );
    }

    #[test]
    fn nccl_without_gpu_or_library_is_a_clear_error() {
        let e = select_backend(Device::Cuda, Backend::Nccl, &NO_GPU).unwrap_err();
        assert!(e.contains("no CUDA driver"), "{e}");
        let no_nccl = GpuEnv { nccl: false, ..GPU };
        let e = select_backend(Device::Cuda, Backend::Auto, &no_nccl).unwrap_err();
        assert!(e.contains("libnccl.so"), "{e}");
        let e = select_backend(Device::Cpu, Backend::Nccl, &GPU).unwrap_err();
        assert!(e.contains("cluster.backend"), "{e}");
    }

    #[test]
    fn detection_on_this_machine_agrees_with_libtorch() {
        // Runs on any machine: it must not panic, and it must agree with libtorch.
        let env = GpuEnv::detect();
        assert_eq!(env.torch_cuda_devices > 0, tch::Cuda::is_available());
        if !env.cuda_driver {
            assert!(select_backend(Device::Cuda, Backend::Auto, &env).is_err());
        }
        // libtorch_cuda.so, where this libtorch has one, loads with all its dependencies.
        assert_eq!(env.torch_cuda_error, None);
        assert!(loaded_library("libtorch_cpu.so").is_some());
        // The build links libnccl.so to the torch wheel's NCCL, so it must load here too.
        assert!(
            env.nccl || env!("FLG_NCCL_LINK").is_empty(),
            "libnccl.so link exists but does not load"
        );
    }
}
