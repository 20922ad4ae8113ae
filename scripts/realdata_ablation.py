#!/usr/bin/env python3
"""Ablation of the small-data recipe by 5-fold cross-validation on real PET/CT cases.

Each variant is one `vmambax train --folds 5` run (the product's own cross-validation: the same
patient-level folds for every variant, out-of-fold 3-D Dice on the CT grid, SUV baselines beside
it), trained for a fixed number of steps per fold so that variants compare fairly on a shared,
noisy machine (a time budget would give a variant fewer steps whenever other jobs ran). Minutes
are reported as measured. Runs are resumable: rerun the same command to continue.

    python scripts/realdata_ablation.py --data ../shared/realdata/sts_train --out runs/ablation \
        --steps 600 --variants base,lung-window,three-windows --parallel 2
    python scripts/realdata_ablation.py --out runs/ablation --report   # the Markdown table

Variants are options on top of the small-data recipe (vmambax/train/recipes.py); `--list`
prints them. The table (docs/benchmarks.md, "Learning real tumours") comes from --report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 6  # validated rounds per fold (a time budget plans 10 or more; fewer here to save time)

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "paper-window": ["--ct-windows", "lung-paper"],
    "three-windows": ["--ct-windows", "soft,lung,bone"],
    "context-1": ["--context-slices", "1", "--suv-windows", "0:20"],
    "suv-0-15": ["--suv-windows", "0:15"],
    "suv-0-30": ["--suv-windows", "0:30"],
    "aug-paper": ["--augmentation", "paper"],
    "aug-flip": ["--augmentation", "flip"],
    "lr-3e-4": ["--lr", "3e-4"],
    "lr-3e-3": ["--lr", "3e-3"],
    "batchdice": ["--loss", "bce+batchdice"],
    "small": ["--config", "vmambax-nano", "--override", "dims=[32,64,128,256]"],
    "crop-256-128": ["--image-size", "256", "--crop-size", "128"],
    "init-phantom": ["--init", "default"],
    "no-tta": ["--tta", "none"],
    "pp-none": ["--postprocess", "none"],
    "pp-largest": ["--postprocess", "largest"],
}


def run_variant(name: str, args) -> int:
    out = Path(args.out) / name
    per_round = max(args.steps // ROUNDS, 1)
    cmd = [sys.executable, "-m", "vmambax", "train", "--data", str(args.data), "--out", str(out),
           "--folds", str(args.folds), "--epochs", str(ROUNDS), "--limit-train-batches",
           str(per_round), "--no-progress-bar", "--num-workers", "0", *VARIANTS[name]]
    if (out / "crossval-state.json").is_file():
        if (out / "crossval.json").is_file():
            print(f"[{name}] done already", flush=True)
            return 0
        cmd = [sys.executable, "-m", "vmambax", "train", "--out", str(out), "--resume",
               "--no-progress-bar", "--num-workers", "0"]
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.time()
    with open(out / "ablation.log", "a") as log:
        print(f"[{name}] {' '.join(cmd)}", flush=True)
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    minutes = (time.time() - t0) / 60
    with open(out / "minutes.json", "w") as fh:
        json.dump({"minutes": round(minutes, 1), "threads": args.threads, "rc": rc,
                   "steps_per_fold": per_round * ROUNDS}, fh)
    print(f"[{name}] exit {rc} after {minutes:.1f} min", flush=True)
    return rc


def report(out: Path) -> str:
    lines = ["| variant | options | out-of-fold 3-D Dice (SE) | vs SUV 2.5 (SE), wins | "
             "vs 41 % SUVmax (SE), wins | minutes |", "|---|---|---|---|---|---|"]
    for name, opts in VARIANTS.items():
        cv = out / name / "crossval.json"
        if not cv.is_file():
            continue
        s = json.loads(cv.read_text())["summary"]
        mins = json.loads((out / name / "minutes.json").read_text()) if (out / name / "minutes.json").is_file() else {}
        m, a, b = s["dice_model"], s["model_minus_suv25"], s["model_minus_pct41"]
        lines.append(f"| {name} | `{' '.join(opts) or '(recipe)'}` | {m['mean']:.3f} ({m['se']:.3f}) | "
                     f"{a['mean']:+.3f} ({a['se']:.3f}), {a['wins']}/{a['cases']} | "
                     f"{b['mean']:+.3f} ({b['se']:.3f}), {b['wins']}/{b['cases']} | "
                     f"{mins.get('minutes', '?')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/realdata/sts_train")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--variants", default="base")
    p.add_argument("--steps", type=int, default=600, help="training steps per fold")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--parallel", type=int, default=1, help="variants at once (threads each: --threads)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", action="store_true")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()
    if args.list:
        for k, v in VARIANTS.items():
            print(f"{k:16s} {' '.join(v)}")
        return 0
    if args.report:
        print(report(Path(args.out)))
        return 0
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; --list shows them")
    if args.parallel <= 1:
        return max([run_variant(n, args) for n in names] or [0])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.parallel) as pool:
        return max(list(pool.map(lambda n: run_variant(n, args), names)) or [0])


if __name__ == "__main__":
    sys.exit(main())
