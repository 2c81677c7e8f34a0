#!/usr/bin/env bash
# Builds the GPU check kit (`make gpu-kit`): a folder of at most 60 MB that runs fastlightgen's
# worker on a CUDA machine that has PyTorch but no Rust toolchain, no MPI and no network
# (such as the machines the `device` tool lends: torch 2.11.0+cu130 in /opt/torch/.venv).
#
#   target/gpu-kit/
#     bin/flg-worker        the worker, linked against libtorch 2.11's CPU part; it finds the
#                           machine's libtorch through LD_LIBRARY_PATH and loads its CUDA part
#                           at start-up (worker/src/device.rs)
#     lib/                  OpenMPI 4.1's run-time libraries (libmpi and what it needs)
#     mpi/                  mpirun, OpenMPI's components, help texts and settings
#     data/                 the shipped tiny teacher; DejaVu Sans for the run's charts (FLG_FONT)
#     gpu-check.sh          the checks (bench/gpu-check.sh); gpu-check.toml their stage config
#
# Why libtorch 2.11 and a patched torch-sys: tch 0.26 is generated for libtorch 2.13; the kit
# must run against the machine's torch (2.11 there). We compile tch 0.26's C wrapper against
# the torch 2.11.0 wheel's headers with torch-sys's version check bypassed; the 15 wrappers of
# operators that 2.11 lacks are replaced by errors (stub_missing_ops.py; fastlightgen calls
# none of them). The build links only libtorch_cpu and libc10, so the link needs no CUDA
# libraries beyond cudart and cupti (two small wheels), and the same binary runs on the CPU.
#
# Downloads (once, into target/gpu-kit-deps): the torch 2.11.0 cp312 wheel (530 MB) and the
# nvidia-cuda-runtime / nvidia-cuda-cupti wheels. Idempotent: a second run rebuilds only what
# changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DEPS=$ROOT/target/gpu-kit-deps
BUILD=$ROOT/target/gpu-kit-build
KIT=$ROOT/target/gpu-kit
TORCH=2.11.0
MAX_MB=60

say() { echo "gpu-kit: $*"; }

# 1. Wheels: libtorch 2.11 (headers and CPU libraries) and the CUDA runtime pieces that
#    libtorch_cpu.so links (libcudart, libcupti); laid out as a site-packages folder so that
#    the wheels' own RUNPATHs ($ORIGIN/../../nvidia/cu13/lib) resolve as on a real install.
SITE=$DEPS/site-packages
mkdir -p "$DEPS/wheels" "$SITE"
fetch() { # NAME==VERSION [platform...]
  local spec=$1; shift
  if ! ls "$DEPS/wheels/$(echo "${spec%%==*}" | tr - _)-${spec##*==}"*.whl >/dev/null 2>&1; then
    say "downloading $spec"
    local plats=()
    for p in "$@"; do plats+=(--platform "$p"); done
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp "${plats[@]}" -d "$DEPS/wheels" "$spec"
  fi
}
fetch torch==$TORCH manylinux_2_28_x86_64
fetch nvidia-cuda-runtime==13.0.96 manylinux_2_17_x86_64
fetch nvidia-cuda-cupti==13.0.85 manylinux_2_25_x86_64
if [ ! -f "$SITE/torch/lib/libtorch_cpu.so" ]; then
  say "unpacking libtorch $TORCH (headers and CPU libraries)"
  unzip -q -o "$DEPS/wheels/torch-$TORCH-"*.whl 'torch/include/*' 'torch/lib/libc10.so' \
    'torch/lib/libtorch_cpu.so' 'torch/lib/libtorch.so' 'torch/lib/libgomp.so.1' -d "$SITE"
  unzip -q -o "$DEPS/wheels/nvidia_cuda_runtime-"*.whl 'nvidia/cu13/lib/libcudart.so.13' -d "$SITE"
  unzip -q -o "$DEPS/wheels/nvidia_cuda_cupti-"*.whl 'nvidia/cu13/lib/libcupti.so.13' -d "$SITE"
fi

# 2. The libtorch folder torch-sys builds against: the wheel's headers, and a lib/ with only
#    the CPU part. libtorch.so is an empty stand-in: torch-sys names it on the link line, but
#    tch uses none of its symbols and the real one would pull in libtorch_cuda.
LIBTORCH=$DEPS/libtorch
mkdir -p "$LIBTORCH/lib"
ln -sfn "$SITE/torch/include" "$LIBTORCH/include"
for f in libc10.so libtorch_cpu.so; do ln -sfn "$SITE/torch/lib/$f" "$LIBTORCH/lib/$f"; done
ln -sfn "$SITE/torch/lib/libgomp.so.1" "$LIBTORCH/lib/libgomp.so"
[ -f "$LIBTORCH/lib/libtorch.so" ] && [ ! -L "$LIBTORCH/lib/libtorch.so" ] ||
  { rm -f "$LIBTORCH/lib/libtorch.so"; echo "" | cc -shared -x c -o "$LIBTORCH/lib/libtorch.so" -; }

# 3. torch-sys 0.26 with the wrappers of operators missing from 2.11 stubbed out.
cargo fetch -q --manifest-path "$ROOT/Cargo.toml"
TS_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/torch-sys-0.26.0 | head -1)
if [ ! -f "$BUILD/torch-sys/.stubbed" ]; then
  rm -rf "$BUILD/torch-sys"; mkdir -p "$BUILD"
  cp -r "$TS_SRC" "$BUILD/torch-sys"
  python3 "$ROOT/bench/gpu-kit/stub_missing_ops.py" "$BUILD/torch-sys/libtch/torch_api_generated.cpp"
  touch "$BUILD/torch-sys/.stubbed"
fi

# 4. Build the worker from a copy of the sources (the patch rewrites that copy's Cargo.lock,
#    never the repository's), with its own target folder.
rm -rf "$BUILD/src.new"; mkdir -p "$BUILD/src.new"
tar -C "$ROOT" -c Cargo.toml Cargo.lock proto core media report coordinator worker tests | tar -C "$BUILD/src.new" -x
# Keep unchanged files' timestamps so cargo rebuilds only what changed.
mkdir -p "$BUILD/src"
(cd "$BUILD/src.new" && find . -type f) | while read -r f; do
  cmp -s "$BUILD/src.new/$f" "$BUILD/src/$f" || { mkdir -p "$(dirname "$BUILD/src/$f")"; cp "$BUILD/src.new/$f" "$BUILD/src/$f"; }
done
# Files the repository no longer has go too (a module moved from x.rs to x/mod.rs would
# otherwise be found twice). Cargo.lock is left: the patch below rewrites it.
(cd "$BUILD/src" && find . -type f) | while read -r f; do
  [ "$f" = ./Cargo.lock ] || [ -e "$BUILD/src.new/$f" ] || rm -f "$BUILD/src/$f"
done
rm -rf "$BUILD/src.new"
say "building flg-worker against libtorch $TORCH"
(
  cd "$BUILD/src"
  unset LIBTORCH_USE_PYTORCH VIRTUAL_ENV
  export LIBTORCH="$LIBTORCH" LIBTORCH_BYPASS_VERSION_CHECK=1 LIBTORCH_CXX11_ABI=1 FLG_GPU_KIT=1
  export RUSTFLAGS="-C link-arg=-Wl,-rpath-link,$SITE/nvidia/cu13/lib"
  cargo build --release -p flg-worker --bin flg-worker --target-dir "$BUILD/target" \
    --config "patch.crates-io.torch-sys.path=\"$BUILD/torch-sys\""
)

# 5. Assemble the kit.
rm -rf "$KIT"; mkdir -p "$KIT/bin" "$KIT/lib" "$KIT/mpi/bin" "$KIT/mpi/share" "$KIT/mpi/etc" "$KIT/data"
strip -o "$KIT/bin/flg-worker" "$BUILD/target/release/flg-worker"
# OpenMPI: the libraries libmpi needs beyond glibc (resolved here by the loader), mpirun,
# the components it loads at run time, its help texts and its default settings.
MPI_LIBS=$(ldd /usr/lib/x86_64-linux-gnu/libmpi.so.40 | awk '/=>/ {print $3}' |
  grep -v -E '/(libc|libm|libdl|libpthread|librt)\.so' )
for f in /usr/lib/x86_64-linux-gnu/libmpi.so.40 $MPI_LIBS; do cp -L "$f" "$KIT/lib/"; done
cp -L "$(readlink -f /usr/bin/mpirun)" "$KIT/mpi/bin/mpirun"
cp -r /usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3 "$KIT/mpi/components"
cp -r /usr/share/openmpi "$KIT/mpi/share/openmpi"
cp /etc/openmpi/openmpi-mca-params.conf "$KIT/mpi/etc/"
cp teacher/tiny-teacher.safetensors "$KIT/data/"
cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf "$KIT/data/"
cp bench/gpu-check.sh bench/gpu-kit/gpu-check.toml "$KIT/"
git -C "$ROOT" rev-parse HEAD > "$KIT/COMMIT" 2>/dev/null || echo unknown > "$KIT/COMMIT"
echo "$TORCH" > "$KIT/LIBTORCH_VERSION"

MB=$(du -sm "$KIT" | cut -f1)
say "$KIT: ${MB} MB ($(du -sh "$KIT/bin/flg-worker" | cut -f1) worker, $(du -sh "$KIT/lib" | cut -f1) libraries, $(du -sh "$KIT/mpi" | cut -f1) OpenMPI)"
if [ "$MB" -gt "$MAX_MB" ]; then
  echo "gpu-kit: the kit is ${MB} MB, over the ${MAX_MB} MB it must fit in" >&2
  exit 1
fi
say "run it on a CUDA machine: cd target/gpu-kit && ./gpu-check.sh cuda   (CPU half: ./gpu-check.sh cpu)"
