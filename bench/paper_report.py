#!/usr/bin/env python3
"""`make paper`'s report: bench/results/paper/report.md and the JSON specs of its figures
(drawn by `fastlightgen plot`), from the runs' eval.json files and the quality-against-cost
samplings. Rows whose run is missing say so, so a partial `make paper` still reports.

Usage: paper_report.py OUT_DIR MAIN_RUN_DIR
"""
import functools
import json
import math
import os
import subprocess
import sys

out, main = sys.argv[1], sys.argv[2]
BIN = "./target/release/fastlightgen"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def summary(run):
    """The run's numbers as its report states them (`fastlightgen report RUN --json`), or None
    for a run that has not finished its eval stage."""
    if not os.path.exists(os.path.join(run, "eval.json")):
        return None
    res = subprocess.run([BIN, "report", run, "--json"], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else None


def student(run):
    s = summary(run)
    return next((r for r in s["rows"] if r["name"] == "student"), None) if s else None


def held_out(run):
    """Stage II's held-out |P - U|^2 before and after."""
    s = summary(run)
    h = s and s["held_out"]
    return (h["gap_before"], h["gap_after"]) if h else None


if summary(main) is None:
    sys.exit(f"paper_report.py: {main} has no finished eval stage; run `make demo` first")
HEAD = summary(main)["score_header"]
COLS = summary(main)["score_columns"]


def missing(n):
    return " | ".join(["-"] * n) + " |"


lines = ["# `make paper`: FastLightGen's experiments on moving-shapes", ""]
lines += ["Every row is a real 2-rank run from the demo's shipped teacher with the demo's settings",
          "(`cluster-configs/demo-cpu.toml`) except the one the row is about; 64 videos per row,",
          "the same prompts and noise, scored 0-1 against the data set's definition (Fréchet:",
          "lower is better). `make paper` (bench/paper.sh) reproduces all of it.", ""]

lines += ["## Main table", ""]
table = os.path.join(out, "table.md")
lines += [open(table).read().strip() if os.path.exists(table) else "(not run yet)", ""]

# ---------------------------------------------------------------- alpha
lines += ["## Alpha ablation (Stage II)", "",
          "Stage II's loss is `alpha |P - sg(U)|^2 + (1 - alpha) flow(P)`; everything else as the demo "
          "(U from a frozen copy of the teacher, lr 3e-4, 750 steps); the last row takes U from the "
          "live weights, the paper's form. Held-out gap: `|P - U|^2` with all candidates removed, before and "
          "after Stage II; the score is the final student's, after Stage III.", "",
          "| alpha | held-out gap before -> after | " + HEAD[2:], "|---|---|" + "---|" * COLS]


def ablation(entries, lead=lambda run: []):
    """One table row per (x, label, run) with `lead(run)` cells first; returns the plotted
    (x, average) points of the rows that ran (x None: shown, not plotted)."""
    pts = []
    for x, label, run in entries:
        r = student(run)
        first = "".join(f"{c} | " for c in lead(run))
        lines.append(f"| {label} | {first}" + (r["score_cells"][2:] if r else missing(COLS)))
        if r and x is not None:
            pts.append([x, r["eval"]["average"]])
    lines.append("")
    return pts


def gap_cell(run):
    g = held_out(run)
    return [f"{g[0]:.4f} -> {g[1]:.4f}" if g else "-"]


alpha_pts = ablation([(0.0, "0.0", "runs/paper-alpha-0"), (0.5, "0.5", "runs/paper-alpha-0.5"),
                      (0.7, "0.7", "runs/paper-alpha-0.7"), (1.0, "1.0 (demo)", main),
                      (None, "1.0, live target", "runs/paper-alpha-1-self")],
                     gap_cell)
lines += ["![alpha ablation](figures/alpha.png)", ""]

# ---------------------------------------------------------------- b2
lines += ["## b2 ablation (Stage III)", "",
          "The real score is `P(null) + b1 (P(c) - P(null)) + b2 (U(c) - P(c))`; b2 weighs the intra "
          "guidance of the full model over the pruned one. Fixed values here; the demo draws b2 "
          "uniformly in [0, 0.5] each step.", "",
          "| b2 | " + HEAD[2:], "|---|" + "---|" * COLS]
b2_pts = ablation([(0.0, "0 (row e)", "runs/paper-b2-zero"), (0.25, "0.25", "runs/paper-b2-0.25"),
                   (0.75, "0.75", "runs/paper-b2-0.75"), (None, "U[0, 0.5] (demo)", main)])
lines += ["![b2 ablation](figures/b2.png)", ""]

# ---------------------------------------------------------------- remedies
lines += ["## Remedies against collapse (Stage III)", "",
          "The demo's Stage III (from its Stage I and II) with the few-step sampler's rule and the "
          "anti-collapse terms switched on one at a time (`cluster-configs/paper/remedy-*.toml`); the "
          "last row retrains Stage II as it was before (300 steps, alpha = 0.5, live target, lr 3e-5). "
          "Directions: distinct motion directions per class (real data: 8).", "",
          "| remedy | " + HEAD[2:], "|---|" + "---|" * COLS]
remedies = [("Euler sampler, no anti-collapse term", "remedy-none"),
            ("re-noising sampler", "remedy-renoise"),
            ("+ data forcing (no regression)", "remedy-data-forcing"),
            ("+ regression to the teacher's ODE: the demo's settings (FastLightGen row)", None),
            ("+ DMD2's GAN term (weight 1, capped at 0.2 of DMD's gradient)", "remedy-gan"),
            ("demo's Stage III after the former Stage II (300 steps, alpha 0.5, live target)", "remedy-stage2-before")]
ablation([(None, label, f"runs/paper-{name}" if name else main) for label, name in remedies])
grids = []
for label, name in remedies:
    run = f"runs/paper-{name}" if name else main
    src = os.path.join(run, "samples", "student", "grid.png")
    if os.path.exists(src):
        os.makedirs(os.path.join(out, "grids"), exist_ok=True)
        dst = os.path.join(out, "grids", f"{name or 'demo'}.png")
        with open(src, "rb") as a, open(dst, "wb") as b:
            b.write(a.read())
        grids.append(f"| {label} | ![{label}](grids/{name or 'demo'}.png) |")
if grids:
    lines += ["Sample grids (one video per row, frames left to right):", "",
              "| remedy | samples |", "|---|---|"] + grids + [""]

# ---------------------------------------------------------------- cost
lines += ["## Quality against cost (the paper's Figure 1)", "",
          "Each student (trained for 4 steps) sampled with 1, 2, 4 and 8 steps of its own sampler; the teacher "
          "with CFG 4 (2 network evaluations a step) at 1 to 50 steps. Cost = network evaluations "
          "x parameters, relative to the teacher's 50-step CFG sampler (100 evaluations of 1.59M "
          "parameters); sampling time measured on one process, 64 videos.", "",
          "| model | kept params | steps | NFE | relative cost | sampling (s) | average | Fréchet |",
          "|---|---|---|---|---|---|---|---|"]
teacher_ref = load(os.path.join(out, "cost", "teacher-s50", "sample.json"))
ref_cost = teacher_ref["nfe"] * teacher_ref["params"] if teacher_ref else None
series = []
for name, label, steps in [("teacher", "teacher, CFG 4", [1, 2, 4, 8, 16, 50]),
                           ("share-100", "plain DMD2 student (100%)", [1, 2, 4, 8]),
                           ("share-90", "student, 90% of blocks", [1, 2, 4, 8]),
                           ("share-70", "FastLightGen student, 70% (demo)", [1, 2, 4, 8]),
                           ("share-50", "student, 50% of blocks", [1, 2, 4, 8])]:
    pts = []
    for n in steps:
        d = os.path.join(out, "cost", f"{name}-s{n}")
        s, e = load(os.path.join(d, "sample.json")), load(os.path.join(d, "eval.json"))
        if not (s and e and ref_cost):
            lines.append(f"| {label} | - | {n} | - | - | - | - | - |")
            continue
        cost = s["nfe"] * s["params"] / ref_cost
        share = s["params"] / teacher_ref["params"]
        lines.append(f"| {label} | {share * 100:.0f}% | {n} | {s['nfe']} | {cost:.4f} | {s['seconds']:.2f} | "
                     f"{e['average']:.3f} | {e['frechet_distance']:.2f} |")
        pts.append([math.log10(cost), e["average"]])
    if pts:
        series.append({"name": label, "points": pts})
lines.append("")
lines += ["![quality against cost](figures/cost.png)", ""]

os.makedirs(os.path.join(out, "figures"), exist_ok=True)


def spec(name, title, x, y, ser):
    with open(os.path.join(out, "figures", name), "w") as f:
        json.dump({"title": title, "x": x, "y": y, "series": ser}, f)


spec("alpha.json", "Alpha ablation: student quality", "alpha (Stage II)", "average score",
     [{"name": "FastLightGen student", "points": alpha_pts}])
spec("b2.json", "b2 ablation: student quality", "b2 (Stage III intra guidance)", "average score",
     [{"name": "FastLightGen student", "points": b2_pts}])
spec("cost.json", "Quality against sampling cost", "log10 cost (1 = teacher, 50 steps + CFG)",
     "average score", series)

with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines).rstrip() + "\n")
print(f"wrote {os.path.join(out, 'report.md')}")
