#!/usr/bin/env bash
# Loss curves of a run's Stage II and Stage III: the report's own charts (moving averages of
# metrics.jsonl, drawn by `fastlightgen report`), copied next to the other figures.
# Usage: bench/stage-curves.sh RUN_DIR OUT_DIR     e.g. runs/demo-cpu bench/results/paper
set -euo pipefail
run=${1:-runs/demo-cpu}; out=${2:-bench/results/paper}
mkdir -p "$out"
./target/release/fastlightgen report "$run" > /dev/null
cp "$run/report/pruning-losses.png" "$out/stage2-losses.png"
cp "$run/report/distill-losses.png" "$out/stage3-losses.png"
echo "wrote $out/stage2-losses.png $out/stage3-losses.png"
