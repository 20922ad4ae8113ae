"""The cross-validation table: out-of-fold 3-D Dice per case, the SUV baselines beside it, and
the summary a clinic reads ("does the model beat a threshold on our cases?")."""

from __future__ import annotations

import csv
import io
import math
from typing import Sequence

COLUMNS = ("case", "fold", "dice_model", "dice_suv25", "dice_pct41", "gt_ml", "model_ml",
           "suv_max")
BASELINES = {"dice_suv25": "SUV >= 2.5", "dice_pct41": "41 % SUVmax"}


def _mean_se(values: Sequence[float]) -> tuple[float, float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, sd, sd / math.sqrt(n)


def summarise(rows: Sequence[dict]) -> dict:
    """Mean, SD and standard error of each method's Dice; for each baseline the paired
    difference (model - baseline), its standard error and how many cases the model wins."""
    out: dict = {"cases": len(rows)}
    for key in ("dice_model", *BASELINES):
        mean, sd, se = _mean_se([float(r[key]) for r in rows])
        out[key] = {"mean": mean, "sd": sd, "se": se}
    for key, name in BASELINES.items():
        diffs = [float(r["dice_model"]) - float(r[key]) for r in rows]
        mean, sd, se = _mean_se(diffs)
        out[f"model_minus_{key[5:]}"] = {"baseline": name, "mean": mean, "se": se,
                                          "wins": sum(d > 0 for d in diffs), "cases": len(diffs)}
    return out


def to_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def to_markdown(rows: Sequence[dict], summary: dict) -> str:
    """The per-case table and the summary lines, as Markdown (docs, the Slicer panel)."""
    lines = ["| case | fold | vMambaX | SUV >= 2.5 | 41 % SUVmax | tumour mL |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['fold']} | {_f(r['dice_model'])} | {_f(r['dice_suv25'])} "
                     f"| {_f(r['dice_pct41'])} | {_f(r['gt_ml'], 1)} |")
    m = summary["dice_model"]
    lines.append(f"| **mean (SE)** | | **{_f(m['mean'])} ({_f(m['se'])})** | "
                 f"{_f(summary['dice_suv25']['mean'])} ({_f(summary['dice_suv25']['se'])}) | "
                 f"{_f(summary['dice_pct41']['mean'])} ({_f(summary['dice_pct41']['se'])}) | |")
    lines.append("")
    lines += summary_lines(summary)
    return "\n".join(lines) + "\n"


def summary_lines(summary: dict) -> list[str]:
    """Plain sentences: what a physician reads first."""
    m = summary["dice_model"]
    out = [f"Out-of-fold 3-D Dice over {summary['cases']} cases: vMambaX {_f(m['mean'])} "
           f"(SE {_f(m['se'])})."]
    for key in ("model_minus_suv25", "model_minus_pct41"):
        d = summary[key]
        out.append(f"vs {d['baseline']}: {'+' if d['mean'] >= 0 else ''}{_f(d['mean'])} "
                   f"(paired SE {_f(d['se'])}); the model is better on {d['wins']} of {d['cases']} cases.")
    return out
