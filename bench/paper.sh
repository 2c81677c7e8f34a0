#!/usr/bin/env bash
# `make paper`: docs/method.md's experiments on moving-shapes with the same code as the demo, each a
# real 2-rank run from the demo's shipped teacher (cluster-configs/demo-cpu.toml's model.weights):
#   1. the main table: teacher 50-step CFG, teacher 4-step, plain DMD2, no Stage II, b2 = 0,
#      FastLightGen (bench/paper-table.sh);
#   2. the alpha ablation of Stage II: alpha = 0, 0.5, 0.7, 1.0 (the demo, frozen target), and
#      1.0 with the live target (the paper's form);
#   3. the b2 ablation of Stage III: b2 = 0 (row e), 0.25, 0.75 (the demo draws b2 in [0, 0.5]);
#   4. quality against cost (the paper's Figure 1): students keeping 100% (plain DMD2), 90%, 70%
#      (the demo) and 50% of the block parameters, each sampled with 1, 2, 4 and 8 steps, next
#      to the teacher with CFG at 1 to 50 steps;
#   5. the remedies against collapse: the demo's Stage III with its sampler and anti-collapse
#      terms switched on one at a time (cluster-configs/paper/remedy-*.toml), and the demo's
#      Stage III after the former Stage II (300 steps, alpha 0.5, live target);
# then one report, bench/results/paper/report.md (+ PNG figures), also copied into
# BENCHMARKS.md between its "make paper" markers.
#
# Resumable: a run whose eval.json exists and whose config is unchanged (bench/paper-runs.sh),
# or a sampling whose eval.json is newer than its model, is not done again; stop it any time
# and start it again. Took about 3 hours on a 2-core CPU after the demo with the tiny teacher;
# the demo's teacher since 2026-11-29 has a 1600-step Stage II, so expect longer (not yet measured).
# Usage: bench/paper.sh [OUT_DIR]   (default bench/results/paper)
set -euo pipefail
out=${1:-bench/results/paper}
bin=./target/release/fastlightgen
python3 bench/paper_configs.py --check
. bench/paper-runs.sh
mkdir -p "$out/cost" "$out/figures"
main=$(run_dir cluster-configs/demo-cpu.toml)
# The teacher rows sample the demo's own teacher (its model.weights).
teacher=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["model"]["weights"])' cluster-configs/demo-cpu.toml)
step() { echo; echo "== make paper: $* =="; }

step "main table (FastLightGen and the baselines)"
bench/paper-table.sh "$out"

step "alpha ablation (Stage II)"
for a in 0 0.5 0.7 1-self; do reuse "cluster-configs/paper/alpha-$a.toml" pruning distill export eval; done
step "b2 ablation (Stage III)"
for b in 0.25 0.75; do reuse "cluster-configs/paper/b2-$b.toml" distill export eval; done
step "students of other sizes"
for s in 90 50; do full "cluster-configs/paper/share-$s.toml"; done

step "remedies against collapse (Stage III)"
for r in none renoise data-forcing gan; do reuse "cluster-configs/paper/remedy-$r.toml" distill export eval; done
reuse cluster-configs/paper/remedy-stage2-before.toml pruning distill export eval

step "quality against cost: sampling every student and the teacher at several step counts"
sample() { # name, model, steps, cfg
  local dir="$out/cost/$1-s$3"
  # Done when its scores are newer than the model they score.
  [ "$dir/eval.json" -nt "$2" ] && return
  "$bin" sample --model "$2" --steps "$3" --cfg "$4" --num 64 --seed 0 --batch 32 --out "$dir" --eval > /dev/null
  echo "$dir: $(python3 -c "import json;print(json.load(open('$dir/eval.json'))['average'])")"
}
for n in 1 2 4 8 16 50; do sample teacher "$teacher" "$n" 4; done
for st in "share-100:runs/paper-dmd2" "share-90:runs/paper-share-90" "share-70:$main" "share-50:runs/paper-share-50"; do
  for n in 1 2 4 8; do sample "${st%%:*}" "${st#*:}/export/student.safetensors" "$n" 1; done
done

step "report"
python3 bench/paper_report.py "$out" "$main"
"$bin" plot "$out/figures/alpha.json" "$out/figures/alpha.png"
"$bin" plot "$out/figures/b2.json" "$out/figures/b2.png"
"$bin" plot "$out/figures/cost.json" "$out/figures/cost.png"
python3 - "$out/report.md" BENCHMARKS.md <<'PY'
import sys, re
report, bench = sys.argv[1], sys.argv[2]
body = open(report).read().split("\n", 1)[1]  # without its title
body = body.replace("(figures/", "(bench/results/paper/figures/").replace("(grids/", "(bench/results/paper/grids/")
text = open(bench).read()
start, end = "<!-- make paper: start -->", "<!-- make paper: end -->"
block = f"{start}\n{body.strip()}\n{end}"
if start in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n## `make paper`: the paper's experiments on moving-shapes (issue 7)\n\n" + block + "\n"
open(bench, "w").write(text)
PY
echo "report: $out/report.md (and BENCHMARKS.md)"
