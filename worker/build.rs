// Makes the worker binaries run without `LD_LIBRARY_PATH`, on CPU and GPU machines:
// - embeds libtorch's directory (reported by torch-sys) as an rpath;
// - NCCL: cudarc loads `libnccl.so` at run time, but the torch wheel ships only
//   `nvidia/nccl/lib/libnccl.so.2`, so we link `libnccl.so` to it in a folder of this build
//   and put that folder on the rpath too. Without a wheel NCCL (or without CUDA) nothing
//   breaks: the worker checks `is_culib_present()` and says NCCL is missing.
//
// With FLG_GPU_KIT set (bench/gpu-kit/build.sh), the binary is built to travel: it finds
// libtorch through LD_LIBRARY_PATH on the machine it lands on (bench/gpu-check.sh sets it to
// that machine's torch wheel), OpenMPI in the kit's own lib/ folder, and libtorch's CUDA part
// by dlopen at start-up (device.rs), so it links only libtorch's CPU part here.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=FLG_GPU_KIT");
    let Ok(torch_lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's directory; no rpath embedded");
        return;
    };
    let torch_lib = PathBuf::from(torch_lib);
    if std::env::var_os("FLG_GPU_KIT").is_some() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
        println!("cargo:rustc-env=FLG_LIBTORCH_DIR=(LD_LIBRARY_PATH: GPU kit build)");
        println!("cargo:rustc-env=FLG_NCCL_LINK=");
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", torch_lib.display());
    // tch only references libtorch_cpu's symbols, so the linker's --as-needed would drop
    // libtorch_cuda and a GPU machine would see no CUDA. Keep libtorch (which pulls in the CUDA
    // part) as a real dependency.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    println!("cargo:rustc-env=FLG_LIBTORCH_DIR={}", torch_lib.display());

    // <site-packages>/torch/lib -> <site-packages>/nvidia/nccl/lib/libnccl.so.2
    let nccl = torch_lib
        .parent()
        .and_then(Path::parent)
        .map(|sp| sp.join("nvidia/nccl/lib/libnccl.so.2"));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("nccl");
    match nccl {
        Some(nccl) if nccl.is_file() => {
            std::fs::create_dir_all(&out).unwrap();
            let link = out.join("libnccl.so");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&nccl, &link).unwrap();
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", out.display());
            println!("cargo:rustc-env=FLG_NCCL_LINK={}", link.display());
        }
        _ => println!("cargo:rustc-env=FLG_NCCL_LINK="),
    }
}
