#!/usr/bin/env bash
# Quality of the tiny teacher: the score of every EMA snapshot of its training run (quality
# against training time) and the score table of four samplers with their wall-clock time.
# Usage: bench/teacher-benchmarks.sh RUN_DIR OUT_DIR    (RUN_DIR = runs/teacher-cpu)
set -euo pipefail
run=${1:-runs/teacher-cpu}; out=${2:-bench/results/teacher}
bin=./target/release/fastlightgen
mkdir -p "$out"
for snap in "$run"/pretrain/snapshots/step-*.safetensors; do
  s=$(basename "$snap" .safetensors)
  [ -e "$out/curve/$s/eval.json" ] && continue
  "$bin" sample --model "$snap" --preset tiny --prompts-from "$run/data" --steps 50 --cfg 4 --num 32 --seed 7 --out "$out/curve/$s" --eval > /dev/null
done
teacher=teacher/tiny-teacher.safetensors
for spec in "50 4" "50 1" "8 4" "4 4"; do
  set -- $spec
  d="$out/table/steps$1-cfg$2"
  "$bin" sample --model "$teacher" --steps "$1" --cfg "$2" --num 64 --seed 11 --out "$d" --eval > /dev/null
done
python3 - "$out" "$run" <<'PY'
import json, sys, glob, os
out, run = sys.argv[1], sys.argv[2]
metrics = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
elapsed = {m["step"]: m["elapsed_s"] for m in metrics}
print("| step | training time (min) | samples seen | average | prompt | quality | background | smoothness | consistency | dynamic | Fréchet |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for d in sorted(glob.glob(os.path.join(out, "curve", "step-*"))):
    step = int(os.path.basename(d).split("-")[1]); e = json.load(open(os.path.join(d, "eval.json")))
    s = e["scores"]; mins = elapsed.get(step, float("nan")) / 60
    print(f"| {step} | {mins:.0f} | {step*32} | {e['average']:.3f} | {s['prompt_following']:.3f} | {s['frame_quality']:.3f} | {s['background']:.3f} | {s['motion_smoothness']:.3f} | {s['subject_consistency']:.3f} | {s['dynamic_degree']:.3f} | {e['frechet_distance']:.3f} |")
print()
print("| sampler | NFE | seconds (64 videos) | average | prompt | quality | background | smoothness | consistency | dynamic | Fréchet |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for d in sorted(glob.glob(os.path.join(out, "table", "*")), key=lambda p: (-json.load(open(os.path.join(p, "sample.json")))["nfe"])):
    e = json.load(open(os.path.join(d, "eval.json"))); i = json.load(open(os.path.join(d, "sample.json"))); s = e["scores"]
    print(f"| {i['steps']} steps, cfg {i['cfg']:g} | {i['nfe']} | {i['seconds']:.1f} | {e['average']:.3f} | {s['prompt_following']:.3f} | {s['frame_quality']:.3f} | {s['background']:.3f} | {s['motion_smoothness']:.3f} | {s['subject_consistency']:.3f} | {s['dynamic_degree']:.3f} | {e['frechet_distance']:.3f} |")
PY
# The curve as a picture.
python3 - "$out" "$run" > "$out/curve.json" <<'PY'
import json, sys, glob, os
out, run = sys.argv[1], sys.argv[2]
elapsed = {json.loads(l)["step"]: json.loads(l)["elapsed_s"] for l in open(os.path.join(run, "metrics.jsonl"))}
series = {k: [] for k in ["average", "prompt_following", "frame_quality", "motion_smoothness", "dynamic_degree"]}
for d in sorted(glob.glob(os.path.join(out, "curve", "step-*"))):
    step = int(os.path.basename(d).split("-")[1]); e = json.load(open(os.path.join(d, "eval.json")))
    x = elapsed.get(step, 0) / 60
    for k in series:
        series[k].append([x, e["average"] if k == "average" else e["scores"][k]])
print(json.dumps({"title": "Tiny teacher: 50-step CFG quality vs training time", "x": "training time (minutes, 2-core CPU)",
                  "y": "score", "series": [{"name": k, "points": v} for k, v in series.items()]}))
PY
"$bin" plot "$out/curve.json" "$out/curve.png"
