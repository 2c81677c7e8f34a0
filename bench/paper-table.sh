#!/usr/bin/env bash
# docs/method.md's comparison on moving-shapes: FastLightGen (cluster-configs/demo-cpu.toml) and the
# baselines of cluster-configs/paper/, each a real 2-rank run from the demo's shipped teacher,
# then one Markdown table of every `fastlightgen eval` score from their eval.json files.
# Usage: bench/paper-table.sh [OUT_DIR]   (default bench/results/paper). A row whose eval.json
# exists and whose config is unchanged (bench/paper-runs.sh) is not run again, so the script
# resumes where it stopped.
set -euo pipefail
out=${1:-bench/results/paper}
bin=./target/release/fastlightgen
mkdir -p "$out"
. bench/paper-runs.sh
main=$(run_dir cluster-configs/demo-cpu.toml)
[ -e "$main/eval.json" ] || "$bin" run cluster-configs/demo-cpu.toml
# Plain DMD2 and no Stage II start from the teacher (all their stages); b2 = 0 shares Stages I
# and II with FastLightGen (same seed, same keys) and reruns the later stages alone.
for cfg in cluster-configs/paper/dmd2.toml cluster-configs/paper/no-stage2.toml cluster-configs/paper/b2-zero.toml; do
  if grep -q '"pruning"' "$cfg"; then reuse "$cfg" distill export eval; else full "$cfg"; fi
done
# Each run's numbers as its report states them (`fastlightgen report DIR --json`); this only
# puts their rows side by side.
json_of() { "$bin" report "$1" --json; }
python3 - "$out" "$(json_of "$main")" "$(json_of runs/paper-dmd2)" "$(json_of runs/paper-no-stage2)" \
  "$(json_of runs/paper-b2-zero)" <<'PY'
import json, sys, os
out = sys.argv[1]
main, dmd2, no2, b2z = (json.loads(a) for a in sys.argv[2:6])
row = lambda summary, name: next(r for r in summary["rows"] if r["name"] == name)
table = [("(a) teacher, Euler + CFG", row(main, "teacher")),
         ("(b) teacher, 4 steps + CFG", row(main, "teacher-few-step")),
         ("(c) plain DMD2", row(dmd2, "student")), ("(d) no Stage II", row(no2, "student")),
         ("(e) FastLightGen, b2 = 0", row(b2z, "student")), ("**FastLightGen**", row(main, "student"))]
teacher_s = row(main, "teacher")["seconds"]
COLS = main["score_columns"]
lines = [f"| method | steps | NFE | block params {main['score_header']} sampling (s) | speedup |",
         "|---|---|---|---|" + "---|" * COLS + "---|---|"]
for label, r in table:
    lines.append(f"| {label} | {r['steps']} | {r['nfe']} | {r['block_param_share']*100:.0f}% {r['score_cells']} "
                 f"{r['seconds']:.2f} | {teacher_s / r['seconds']:.1f}x |")
h = main["headline"]
lines += ["", f"FastLightGen student over the teacher (same {main['num_videos']} videos, same run): "
          f"{h['speedup_measured']:.1f}x measured, {h['speedup_theoretical']:.2f}x theoretical."]
text = "\n".join(lines) + "\n"
open(os.path.join(out, "table.md"), "w").write(text)
print(text)
PY
