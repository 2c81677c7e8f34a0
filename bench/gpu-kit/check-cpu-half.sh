#!/usr/bin/env bash
# Proves the GPU kit's CPU half on this machine with the kit alone: runs
# `target/gpu-kit/gpu-check.sh cpu` in a private mount namespace where the system's OpenMPI
# (libraries, components, mpirun, help files) and the project's virtual environment are
# hidden, with libtorch from the unpacked torch 2.11 wheel that `make gpu-kit` downloaded.
# Needs root (unshare -m). usage: bench/gpu-kit/check-cpu-half.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${1:-/tmp/gpu-kit-cpu}
[ -x target/gpu-kit/gpu-check.sh ] || { echo "no kit: run make gpu-kit first" >&2; exit 1; }
exec unshare -m bash -c '
  set -e
  for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/share/openmpi /etc/openmpi "$1/.venv"; do
    [ -d "$d" ] && mount -t tmpfs none "$d"
  done
  for f in /usr/lib/x86_64-linux-gnu/libmpi.so.40* /usr/lib/x86_64-linux-gnu/libopen-rte.so.40* \
           /usr/lib/x86_64-linux-gnu/libopen-pal.so.40* /usr/bin/orterun /usr/bin/orted; do
    if [ -e "$f" ] && [ ! -L "$f" ]; then mount --bind /dev/null "$f"; fi
  done
  exec env -u VIRTUAL_ENV -u LIBTORCH_USE_PYTORCH PATH=/usr/local/bin:/usr/bin:/bin \
    FLG_TORCH_LIB="$1/target/gpu-kit-deps/site-packages/torch/lib" \
    "$1/target/gpu-kit/gpu-check.sh" cpu "$2"
' check "$ROOT" "$OUT"
