#!/usr/bin/env python3
"""Writes cluster-configs/paper/*.toml: each `make paper` experiment is cluster-configs/demo-cpu.toml
with the few keys its row is about changed (and its own name), so that "same keys as the demo
otherwise" holds by construction. Run it after changing demo-cpu.toml; `--check` fails when a
committed file differs from what it would write (bench/paper.sh runs the check first).

Usage: bench/paper_configs.py [--check]
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEMO = os.path.join(ROOT, "cluster-configs", "demo-cpu.toml")
OUT = os.path.join(ROOT, "cluster-configs", "paper")
TEACHER_ROWS = "false   # the teacher rows come from demo-cpu's run"

# name -> (what it is, {"section.key": TOML value text})
EXPERIMENTS = {
    # The main table's baselines.
    "dmd2": ("(c) plain DMD2: a full-size 4-step generator distilled from the teacher with CFG (b1), no\n"
             "# Stage I or II, nothing pruned (b2 has nothing to compare); the same sampler and\n"
             "# anti-collapse terms as FastLightGen.",
             {"experiment.stages": '["distill", "export", "eval"]', "distill.b2_range": "[0.0, 0.0]",
              "distill.prune_generator": "false"}),
    "no-stage2": ("(d) no Stage II: Stage I's candidates removed from the teacher, then Stage III directly.",
                  {"experiment.stages": '["importance", "distill", "export", "eval"]'}),
    "b2-zero": ("(e) FastLightGen without the intra (full-vs-pruned) guidance: b2 = 0.",
                {"distill.b2_range": "[0.0, 0.0]"}),
    # Stage II's alpha ablation.
    "alpha-0": ("Alpha ablation: Stage II with alpha = 0 (flow matching only, blocks skipped).",
                {"pruning.alpha": "0.0"}),
    "alpha-0.5": ("Alpha ablation: Stage II with alpha = 0.5.", {"pruning.alpha": "0.5"}),
    "alpha-0.7": ("Alpha ablation: Stage II with alpha = 0.7.", {"pruning.alpha": "0.7"}),
    "alpha-1-self": ("Alpha ablation: alpha = 1 (the demo's) with the unpruned target from the live weights,\n"
                     "# the paper's form (pruning.target = \"self\"), at the demo's learning rate.",
                     {"pruning.target": '"self"'}),
    # Stage III's b2 ablation.
    "b2-0.25": ("b2 ablation: intra guidance fixed at 0.25.", {"distill.b2_range": "[0.25, 0.25]"}),
    "b2-0.75": ("b2 ablation: intra guidance fixed at 0.75.", {"distill.b2_range": "[0.75, 0.75]"}),
    # Students of other sizes.
    "share-90": ("A student keeping about 90% of the block parameters.", {"importance.prune_ratio": "0.1"}),
    "share-50": ("A student keeping about 50% of the block parameters.", {"importance.prune_ratio": "0.5"}),
    # What each anti-collapse remedy bought (bench/paper.sh, "remedies"): the demo's Stage III
    # with the remedies added one at a time, from the demo's Stage I and II.
    "remedy-none": ("Remedies, row 1: Stage III as before issue 13 (Euler sampler, no anti-collapse term).",
                    {"distill.sampler": '"euler"', "distill.regression": "{ weight = 0.0 }",
                     "distill.data_forcing": "0.0"}),
    "remedy-renoise": ("Remedies, row 2: the re-noising sampler alone.",
                       {"distill.sampler": '"renoise"', "distill.regression": "{ weight = 0.0 }",
                        "distill.data_forcing": "0.0"}),
    "remedy-data-forcing": ("Remedies, row 3: re-noising sampler + data forcing (weight 1), no regression.",
                            {"distill.sampler": '"renoise"', "distill.regression": "{ weight = 0.0 }",
                             "distill.data_forcing": "1.0"}),
    "remedy-gan": ("Remedies: the demo's Stage III plus DMD2's GAN term (weight 1, capped at 0.2 of DMD's\n"
                   "# gradient), the setting measured in BENCHMARKS.md.",
                   {"distill.gan": "{ weight = 1.0, max_grad_ratio = 0.2 }"}),
    "remedy-stage2-before": ("Remedies: the Stage II of before issue 13's last change (300 steps, alpha = 0.5,\n"
                             "# live target, lr 3e-5), then the demo's Stage III.",
                             {"pruning.steps": "300", "pruning.alpha": "0.5", "pruning.target": '"self"',
                              "pruning.optim": "{ lr = 3e-5, warmup_steps = 20 }"}),
}


def render(name, what, overrides):
    lines = open(DEMO).read().splitlines()
    # Drop the demo's own header comment (up to the first blank line).
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    while lines and not lines[0].strip():
        lines.pop(0)
    overrides = dict(overrides)
    overrides["experiment.name"] = f'"paper-{name}"'
    overrides.setdefault("eval.compare_teacher", TEACHER_ROWS)
    section, out, done = None, [], set()

    def flush(sec):
        # Keys of `sec` the demo does not name go at the end of the section.
        for k, v in overrides.items():
            s, key = k.split(".", 1)
            if s == sec and k not in done:
                out.append(f"{key} = {v}")
                done.add(k)

    for line in lines:
        m = re.match(r"^\[(\w+)\]\s*$", line)
        if m:
            blanks = 0
            while out and out[-1] == "":
                out.pop()
                blanks += 1
            flush(section)
            out.extend([""] * blanks)
            section = m.group(1)
            out.append(line)
            continue
        km = re.match(r"^(\w+)\s*=", line)
        key = f"{section}.{km.group(1)}" if km and section else None
        if key in overrides:
            out.append(f"{km.group(1)} = {overrides[key]}")
            done.add(key)
        else:
            out.append(line)
    flush(section)
    missing = [k for k in overrides if k not in done]
    if missing:
        sys.exit(f"paper_configs.py: {name}: no section for {missing} in {DEMO}")
    head = [f"# {what}", "# Written by bench/paper_configs.py: demo-cpu.toml with the keys this row is about changed;",
            "# every other key is the demo's. `make paper` runs it.", ""]
    return "\n".join(head + out).rstrip() + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, (what, overrides) in EXPERIMENTS.items():
        path = os.path.join(OUT, f"{name}.toml")
        text = render(name, what, overrides)
        old = open(path).read() if os.path.exists(path) else None
        if old == text:
            continue
        if check:
            stale.append(path)
        else:
            with open(path, "w") as f:
                f.write(text)
            print(f"wrote {path}")
    if stale:
        sys.exit("out of date with cluster-configs/demo-cpu.toml (run bench/paper_configs.py): "
                 + ", ".join(stale))


if __name__ == "__main__":
    main()
