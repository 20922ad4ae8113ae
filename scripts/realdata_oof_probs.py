"""Inference-only ablation of a finished cross-validation run: threshold and post-processing.

``vmambax train --folds K`` leaves one model per fold. This script segments each fold's
held-out cases once with its fold model, keeping the probability map (``--collect``; npz files
under RUN/oof-probs/), then scores every decision threshold x post-processing on those maps
(``--analyse``) without running the network again. Besides the plain out-of-fold mean of each
setting (optimistic when the best is picked from it), it reports the honest nested figure:
for each fold, the setting that scores best on the *other* folds' cases, applied to this fold.

    python scripts/realdata_oof_probs.py --run runs/cv --collect --analyse
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6)
POSTPROCESS = ("none", "largest", "fill2d", "largest+fill2d")


def collect(run: Path, threads: int) -> None:
    import SimpleITK as sitk

    from vmambax.data.case import make_case
    from vmambax.data.pclt_export import load_case_folder
    from vmambax.data.volume_export import read_export_info
    from vmambax.infer import Segmenter

    state = json.loads((run / "crossval-state.json").read_text())
    info = read_export_info(run / "data")["cases"]
    out = run / "oof-probs"
    out.mkdir(exist_ok=True)
    for k, cases in enumerate(state["folds"]):
        todo = [c for c in cases if not (out / f"{c}.npz").is_file()]
        if not todo:
            continue
        seg = Segmenter(run / f"fold-{k + 1}" / "model.pt", device="cpu", all_slices=True,
                        keep_probability=True, threads=threads)
        for cid in todo:
            paths = {key: Path(v) for key, v in info[cid]["source"].items()}
            case = load_case_folder(info[cid]["source_id"], paths)
            pct = make_case(case.ct, case.pet_suv)
            result = seg.segment(pct.ct, pct.pet_suv)
            prob = sitk.GetArrayFromImage(result.probability).astype(np.float16)
            gt = sitk.GetArrayFromImage(case.label) > 0
            tmp = out / f".{cid}.tmp.npz"
            np.savez_compressed(tmp, prob=prob, gt=gt, fold=k + 1)
            tmp.replace(out / f"{cid}.npz")
            print(f"fold {k + 1} {cid} saved", flush=True)


def _post(mask: np.ndarray, mode: str) -> np.ndarray:
    from scipy import ndimage

    from vmambax.data.postprocess import keep_largest_component

    if "largest" in mode:
        mask = keep_largest_component(mask) > 0
    if "fill2d" in mode:
        mask = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    return mask


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def analyse(run: Path) -> str:
    files = sorted((run / "oof-probs").glob("STS-*.npz")) or sorted((run / "oof-probs").glob("[!.]*.npz"))
    settings = [(t, p) for t in THRESHOLDS for p in POSTPROCESS]
    scores, folds, names = [], [], []
    for f in files:
        z = np.load(f)
        prob, gt = z["prob"].astype(np.float32), z["gt"]
        scores.append([_dice(_post(prob >= t, p), gt) for t, p in settings])
        folds.append(int(z["fold"]))
        names.append(f.stem)
    s, folds = np.array(scores), np.array(folds)
    base = settings.index((0.5, "none"))
    lines = ["| threshold | post-processing | out-of-fold mean Dice | vs 0.5/none (paired SE) |",
             "|---|---|---|---|"]
    for j, (t, p) in enumerate(settings):
        d = s[:, j] - s[:, base]
        lines.append(f"| {t} | {p} | {s[:, j].mean():.3f} | {d.mean():+.3f} ({d.std(ddof=1) / np.sqrt(len(d)):.3f}) |")
    nested = np.empty(len(s))
    chosen = {}
    for k in sorted(set(folds)):
        inner = s[folds != k].mean(axis=0)
        j = int(np.argmax(inner))
        chosen[k] = settings[j]
        nested[folds == k] = s[folds == k, j]
    d = nested - s[:, base]
    lines.append("")
    lines.append(f"Nested choice (best on the other folds, applied to each fold): mean {nested.mean():.3f} "
                 f"(SE {nested.std(ddof=1) / np.sqrt(len(nested)):.3f}), vs 0.5/none {d.mean():+.3f} "
                 f"(paired SE {d.std(ddof=1) / np.sqrt(len(d)):.3f}); choices {chosen}; {len(s)} cases.")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished `vmambax train --folds K` run folder")
    p.add_argument("--collect", action="store_true", help="segment the held-out cases, keep probabilities")
    p.add_argument("--analyse", action="store_true", help="score thresholds x post-processing")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    run = Path(args.run)
    if not (run / "crossval-state.json").is_file():
        print(f"error: {run} is not a cross-validation run (no crossval-state.json)", file=sys.stderr)
        return 2
    if args.collect:
        collect(run, args.threads)
    if args.analyse:
        text = analyse(run)
        (run / "oof-thresholds.md").write_text(text + "\n")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
