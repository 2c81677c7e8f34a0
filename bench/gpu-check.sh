#!/usr/bin/env bash
# The GPU check kit's checks. Runs from the kit folder that `make gpu-kit` builds
# (target/gpu-kit), on a machine with PyTorch and no Rust, MPI or project virtual environment:
#
#   ./gpu-check.sh cuda [OUT]    on a CUDA machine (NCCL backend, bf16 and fp32)
#   ./gpu-check.sh cpu  [OUT]    the same checks on the CPU (MPI backend, fp32)
#
# Checks, each with its own time limit and all within 8 minutes (FLG_CHECK_SECONDS, 480: a
# check that would run past it is cut short, one that cannot start is skipped); a failing check
# does not stop the others:
#   env      the machine (nvidia-smi, torch) and what the worker finds (libtorch and its CUDA
#            part, CUDA driver, GPUs, NCCL, MPI)
#   forward  the tiny teacher's forward on the device in f32 and bf16 against the CPU's f32
#   stages   Stage I, a few Stage II and Stage III steps and export of the tiny teacher, one
#            rank under the kit's mpirun (NCCL on cuda), in bf16 and fp32 on cuda
#   step     forward + backward of a Wan 2.1 1.3B-shaped model in bf16 (tiny in fp32 on the
#            CPU): seconds per step, device memory, model TFLOP/s and MFU
# Writes OUT/<check>.log for each, OUT/summary.jsonl (one line per check) and OUT/all.log;
# exits 1 if any check failed.
#
# libtorch comes from the machine's torch (python3 -c 'import torch'), or from FLG_TORCH_LIB
# (a folder holding libtorch_cpu.so) where python3 has no torch.
set -uo pipefail
KIT=$(cd "$(dirname "$0")" && pwd)
DEV=${1:-cuda}
OUT=${2:-$KIT/out}
case "$DEV" in cuda | cpu) ;; *) echo "usage: $0 cuda|cpu [OUT]" >&2; exit 2 ;; esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/summary.jsonl"

# libtorch, its CUDA part and NCCL from the machine's torch wheel.
TORCH_LIB=${FLG_TORCH_LIB:-$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)}
if [ -z "$TORCH_LIB" ] || [ ! -f "$TORCH_LIB/libtorch_cpu.so" ]; then
  echo "gpu-check: no libtorch found: python3 has no torch and FLG_TORCH_LIB is unset" >&2
  exit 1
fi
LD=$KIT/lib:$TORCH_LIB
# cudarc opens NCCL as libnccl.so; the wheel ships libnccl.so.2 (site-packages/nvidia/nccl).
NCCL=$(ls "$TORCH_LIB"/../../nvidia/nccl/lib/libnccl.so.2 2>/dev/null | head -1)
if [ -n "$NCCL" ]; then
  mkdir -p "$OUT/nccl" && ln -sfn "$(readlink -f "$NCCL")" "$OUT/nccl/libnccl.so"
  LD=$LD:$OUT/nccl
fi
export LD_LIBRARY_PATH=$LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# OpenMPI from the kit: every folder it would look for under its build prefix, redirected.
export OPAL_PREFIX=$KIT/mpi OPAL_EXEC_PREFIX=$KIT/mpi OPAL_BINDIR=$KIT/mpi/bin \
  OPAL_LIBDIR=$KIT/lib OPAL_PKGLIBDIR=$KIT/mpi/components OPAL_DATAROOTDIR=$KIT/mpi/share \
  OPAL_DATADIR=$KIT/mpi/share OPAL_PKGDATADIR=$KIT/mpi/share/openmpi \
  OPAL_SYSCONFDIR=$KIT/mpi/etc
export OMPI_MCA_mca_base_component_path=$KIT/mpi/components
export OMPI_MCA_mca_base_component_show_load_errors=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PATH=$KIT/mpi/bin:$KIT/bin:$PATH
# The run's charts need a font; GPU machines rarely have Debian's fonts-dejavu-core.
export FLG_FONT=${FLG_FONT:-$KIT/data/DejaVuSans.ttf}
WORKER=$KIT/bin/flg-worker
FAILED=0
DEADLINE=$(($(date +%s) + ${FLG_CHECK_SECONDS:-480}))

# check NAME SECONDS CMD...: runs CMD with a time limit, logs it, records the outcome.
check() {
  local name=$1 limit=$2; shift 2
  local log=$OUT/$name.log start end rc
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 15 ]; then
    echo "== $name: skipped, the checks' time is up" | tee -a "$OUT/all.log"
    printf '{"check":"%s","device":"%s","status":"skipped","rc":null,"seconds":0,"result":null}\n' \
      "$name" "$DEV" >>"$OUT/summary.jsonl"
    FAILED=$((FAILED + 1))
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name: $*" | tee -a "$OUT/all.log"
  start=$(date +%s.%N)
  # bash -c so that CMD may be one of the functions below (exported).
  timeout --kill-after=10 "$limit" bash -c '"$@"' check "$@" >"$log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  sed 's/^/   /' "$log" | tail -40 | tee -a "$OUT/all.log"
  local secs
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  local status=pass
  if [ "$rc" -ne 0 ]; then
    status=fail; FAILED=$((FAILED + 1))
    [ "$rc" -eq 124 ] && status="fail (over ${limit}s)"
  fi
  echo "   -> $name: $status, rc $rc, ${secs}s" | tee -a "$OUT/all.log"
  # The check's JSON result, where it printed one.
  local result
  result=$(grep -E '^\{.*\}$' "$log" | tail -1)
  printf '{"check":"%s","device":"%s","status":"%s","rc":%d,"seconds":%s,"result":%s}\n' \
    "$name" "$DEV" "$status" "$rc" "$secs" "${result:-null}" >>"$OUT/summary.jsonl"
}

machine() {
  echo "kit commit $(cat "$KIT/COMMIT"), built against libtorch $(cat "$KIT/LIBTORCH_VERSION")"
  uname -srm
  if [ "$DEV" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  fi
  python3 -c 'import torch; print("python3 torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || true
  "$WORKER" env
}

# stages PRECISION BACKEND: the tiny pipeline on one rank; the exported student must exist.
stages() {
  local precision=$1 backend=$2
  local cfg=$OUT/gpu-check-$DEV-$precision.toml
  sed -e "s#@DEVICE@#$DEV#g; s#@BACKEND@#$backend#g; s#@PRECISION@#$precision#g" \
    -e "s#@OUT@#$OUT/runs#g; s#@KIT@#$KIT#g" "$KIT/gpu-check.toml" >"$cfg"
  rm -rf "$OUT/runs/gpu-check-$DEV-$precision"
  mpirun -np 1 "$WORKER" run --config "$cfg" || return 1
  local student=$OUT/runs/gpu-check-$DEV-$precision/export/student.safetensors
  [ -s "$student" ] || { echo "no exported student at $student"; return 1; }
  # The per-step lines of the run, as metrics.jsonl recorded them (first and last of each stage).
  grep -h '"step"' "$OUT/runs/gpu-check-$DEV-$precision/metrics.jsonl" | head -2
  grep -h '"step"' "$OUT/runs/gpu-check-$DEV-$precision/metrics.jsonl" | tail -2
}

export KIT DEV OUT WORKER
export -f machine stages
check env 60 machine
check forward 120 "$WORKER" bench device forward --model "$KIT/data/tiny-teacher.safetensors" --device "$DEV"
if [ "$DEV" = cuda ]; then
  check stages-bf16 150 stages bf16 nccl
  check stages-fp32 120 stages fp32 nccl
  # Wan 2.1 1.3B at 480x832: 33 frames (9 latent frames, 14,040 tokens), then 81 (21, 32,760).
  check step-wan-33f 120 "$WORKER" bench device step --preset wan2.1-t2v-1.3b --device cuda \
    --precision bf16 --frames 9 --height 60 --width 104 --warmup 2 --steps 5
  check step-wan-81f 150 "$WORKER" bench device step --preset wan2.1-t2v-1.3b --device cuda \
    --precision bf16 --frames 21 --height 60 --width 104 --warmup 1 --steps 3
else
  check stages-fp32 240 stages fp32 mpi
  check step-tiny 120 "$WORKER" bench device step --preset tiny --device cpu --precision fp32 \
    --batch 8 --frames 8 --height 16 --width 16 --text-len 4 --warmup 1 --steps 3
fi

echo "gpu-check: $FAILED check(s) failed; $OUT/summary.jsonl" | tee -a "$OUT/all.log"
[ "$FAILED" -eq 0 ]
