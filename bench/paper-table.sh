#!/usr/bin/env bash
# METHOD.md's comparison on moving-shapes: FastLightGen (cluster-configs/demo-cpu.toml) and the
# baselines of cluster-configs/paper/, each a real 2-rank run from the shipped tiny teacher,
# then one Markdown table of every `fastlightgen eval` score from their eval.json files.
# Usage: bench/paper-table.sh [OUT_DIR]   (default bench/results/paper). A row whose eval.json
# exists is not run again, so the script resumes where it stopped.
set -euo pipefail
out=${1:-bench/results/paper}
bin=./target/release/fastlightgen
mkdir -p "$out"
run_dir() { sed -n 's/^name = "\(.*\)"/\1/p' "$1" | head -1; }
main=runs/$(run_dir cluster-configs/demo-cpu.toml)
[ -e "$main/eval.json" ] || "$bin" run cluster-configs/demo-cpu.toml
for cfg in cluster-configs/paper/dmd2.toml cluster-configs/paper/no-stage2.toml cluster-configs/paper/b2-zero.toml; do
  dir=runs/$(run_dir "$cfg")
  [ -e "$dir/eval.json" ] && continue
  if grep -q '"pruning"' "$cfg"; then
    # Stages I and II are the same as FastLightGen's (same seed, same keys): reuse their files
    # and rerun the later stages alone, as any stage can be.
    mkdir -p "$dir/pruning"
    cp "$main/importance.json" "$main/importance.png" "$dir/"
    cp "$main/pruning/model.safetensors" "$dir/pruning/"
    "$bin" workers "$cfg" --stage distill --stage export --stage eval
  else
    "$bin" workers "$cfg"
  fi
done
python3 - "$main" "$out" <<'PY'
import json, sys, os
main, out = sys.argv[1], sys.argv[2]
def rows(run, names):
    e = json.load(open(os.path.join(run, "eval.json")))
    return [(r, e) for r in e["rows"] if r["name"] in names]
m = json.load(open(os.path.join(main, "eval.json")))
table = [("(a) teacher, Euler + CFG", *rows(main, ["teacher"])[0]),
         ("(b) teacher, 4 steps + CFG", *rows(main, ["teacher-few-step"])[0])]
for label, run in [("(c) plain DMD2", "runs/paper-dmd2"), ("(d) no Stage II", "runs/paper-no-stage2"),
                   ("(e) FastLightGen, b2 = 0", "runs/paper-b2-zero"), ("**FastLightGen**", main)]:
    table += [(label, *rows(run, ["student"])[0])]
teacher_s = rows(main, ["teacher"])[0][0]["seconds"]
keys = ["prompt_following", "frame_quality", "background", "motion_smoothness", "subject_consistency", "dynamic_degree"]
lines = ["| method | steps | NFE | block params | prompt | quality | background | smoothness | consistency | dynamic | **average** | Fréchet | sampling (s) | speedup |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for label, r, _ in table:
    s = r["eval"]["scores"]
    lines.append(f"| {label} | {r['steps']} | {r['nfe']} | {r['block_param_share']*100:.0f}% | " +
                 " | ".join(f"{s[k]:.3f}" for k in keys) +
                 f" | **{r['eval']['average']:.3f}** | {r['eval']['frechet_distance']:.2f} | {r['seconds']:.2f} | {teacher_s / r['seconds']:.1f}x |")
lines.append("")
lines.append(f"FastLightGen student over the teacher (same {m['num_videos']} videos, same run): "
             f"{m['speedup_measured']:.1f}x measured, {m['speedup_theoretical']:.2f}x theoretical.")
text = "\n".join(lines) + "\n"
open(os.path.join(out, "table.md"), "w").write(text)
print(text)
PY
