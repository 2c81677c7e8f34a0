#!/usr/bin/env bash
# Loss curves of a run's Stage II and Stage III from its metrics.jsonl (moving averages over
# 20 steps), drawn with `fastlightgen plot`.
# Usage: bench/stage-curves.sh RUN_DIR OUT_DIR     e.g. runs/demo-cpu bench/results/paper
set -euo pipefail
run=${1:-runs/demo-cpu}; out=${2:-bench/results/paper}
mkdir -p "$out"
python3 - "$run" "$out" <<'PY'
import json, sys, os
run, out = sys.argv[1], sys.argv[2]
lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
def smooth(points, w=20):
    return [[points[i][0], sum(p[1] for p in points[max(0, i - w + 1):i + 1]) / len(points[max(0, i - w + 1):i + 1])]
            for i in range(len(points))]
def series(stage, key, name):
    pts = [[l["step"], l[key]] for l in lines if l.get("stage") == stage and key in l and "step" in l]
    return {"name": name, "points": smooth(pts)}
specs = {
    "stage2-losses.json": {"title": "Stage II: the pruned pass catches up (20-step mean)", "x": "step", "y": "loss",
        "series": [series("pruning", "flow_full", "flow loss, all blocks (U)"),
                   series("pruning", "flow_pruned", "flow loss, mask applied (P)"),
                   series("pruning", "gap", "|P - U|^2")]},
    "stage3-losses.json": {"title": "Stage III: DMD2 generator loss and fake-score flow loss (20-step mean)", "x": "step", "y": "loss",
        "series": [series("distill", "generator_loss", "generator (DMD2)"),
                   series("distill", "fake_loss", "fake score (flow)")]},
}
for name, spec in specs.items():
    json.dump(spec, open(os.path.join(out, name), "w"))
PY
for s in stage2-losses stage3-losses; do
  ./target/release/fastlightgen plot "$out/$s.json" "$out/$s.png"
  rm "$out/$s.json"
done
echo "wrote $out/stage2-losses.png $out/stage3-losses.png"
