#!/usr/bin/env bash
# Collective bandwidth, and step time / collective share / per-rank memory of the sharded
# training step for several world sizes (each an mpirun job on this machine).
# Usage: bench/distributed-benchmarks.sh [OUT_DIR]
set -euo pipefail
out=${1:-bench/results/distributed}
bin=./target/release/fastlightgen
mkdir -p "$out"
"$bin" bench collectives --out "$out/collectives.json"
"$bin" bench scaling --preset tiny --worlds 1,2 --batch 32 --warmup 2 --steps 5 --out "$out/scaling-tiny.json"
"$bin" bench scaling --preset small-100m --worlds 1,2,4 --batch 8 --warmup 1 --steps 2 --out "$out/scaling-100m.json"
