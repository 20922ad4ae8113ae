"""Evaluate predictions against ground truth: volumes, sets of volume cases, or PCLT-style PNGs.

* Volumes (``evaluate_volumes``): both metric families - the 2-D slice-wise set metrics of the
  papers over axial slices (``slices="gt"``: only slices with tumour, as PCLT20K holds; ``"all"``:
  every slice), and 3-D per-case metrics; with a PET (SUV), lesion quantification of prediction
  and ground truth. Several cases pool their slices into one set and list per-case 3-D metrics.
* PNG folders (``evaluate_png_folders``): ground truth ``<ID>_mask.png`` anywhere under the GT
  folder (PCLT20K layout); prediction ``<ID>_pred.png`` or ``<ID>.png`` (what CIPA's pred.py
  writes, prob x 255) anywhere under the prediction folder, which may be the GT folder itself.
  Pixels > 127 are tumour, as in pred.py (prob > 0.5, mask > 127.5); a 0/1 PNG (maximum 1)
  counts non-zero pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vmambax.errors import InputError
from vmambax.metrics.quantification import quantify_lesions
from vmambax.metrics.segmentation import SetMetrics, case_metrics

SLICE_MODES = ("gt", "all")


def _slice_indices(gt: np.ndarray, mode: str) -> list[int]:
    if mode == "all":
        return list(range(gt.shape[0]))
    return [int(k) for k in np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))]


def evaluate_volumes(cases: Sequence[tuple[str, object, object, object | None]], slices: str = "gt",
                     empty_score: float = 1.0) -> dict:
    """``cases``: (case_id, pred label, gt label, pet SUV or None) with SimpleITK images; pred and gt
    on the same grid (uint8 0/1), the PET on any overlapping grid (resampled onto the label)."""
    import SimpleITK as sitk

    from vmambax.data.resample import resample_to

    if slices not in SLICE_MODES:
        raise InputError(f"unknown slice selection {slices!r}: use one of {', '.join(SLICE_MODES)}.")
    acc = SetMetrics(empty_score)
    per_case = []
    for case_id, pred, gt, pet in cases:
        p, g = sitk.GetArrayFromImage(pred) != 0, sitk.GetArrayFromImage(gt) != 0
        sx, sy, sz = gt.GetSpacing()
        for k in _slice_indices(g, slices):
            acc.add(p[k], g[k], (sy, sx), f"{case_id}:{k}")
        entry = dict(case=case_id, **case_metrics(p, g, (sz, sy, sx)))
        if pet is not None:
            pet_on_label = resample_to(pet, gt, "linear", names=("PET", "label"))
            entry["quantification"] = dict(pred=quantify_lesions(pred, pet_on_label),
                                           gt=quantify_lesions(gt, pet_on_label))
        per_case.append(entry)
    keys = ("dice", "iou", "hd95_mm", "lesion_sensitivity")
    means = {k: _mean_of(per_case, k) for k in keys}
    return dict(kind="volumes", slice_selection=slices, slices=acc.result(), slice_rows=acc.rows,
                cases=per_case, case_means=means)


def _mean_of(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def read_mask_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read PNG mask {path}: {exc}. Re-export it as an 8-bit PNG.") from None
    return a != 0 if a.max() <= 1 else a > 127


def find_png_pairs(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    """Pair ``<ID>_mask.png`` ground truths with ``<ID>.png`` / ``<ID>_pred.png`` predictions."""
    gts: dict[str, Path] = {}
    for path in sorted(gt_dir.rglob("*_mask.png")):
        image_id = path.name[: -len("_mask.png")]
        if image_id in gts:
            raise InputError(f"ground-truth ID {image_id!r} appears twice ({gts[image_id]} and {path}); "
                             "IDs must be unique.")
        gts[image_id] = path
    if not gts:
        raise InputError(f"no ground-truth masks (*_mask.png) under {gt_dir}: give the PCLT20K-style "
                         "folder holding <ID>_mask.png files, or a label volume.")
    preds: dict[str, Path] = {}
    for path in sorted(pred_dir.rglob("*.png")):
        name = path.name[:-4]
        if name.endswith("_pred") and name[:-5] in gts:
            preds[name[:-5]] = path  # the explicit <ID>_pred.png wins over <ID>.png
        elif name in gts:
            preds.setdefault(name, path)
    missing = [i for i in gts if i not in preds]
    if missing:
        raise InputError(f"{len(missing)} of {len(gts)} ground-truth masks have no prediction under "
                         f"{pred_dir} (e.g. {', '.join(missing[:3])}): expected <ID>.png or <ID>_pred.png.")
    return [(i, preds[i], gts[i]) for i in gts]


def evaluate_png_folders(pred_dir, gt_dir, empty_score: float = 1.0,
                         pixel_spacing: Sequence[float] | None = None) -> dict:
    """2-D set metrics over PCLT-style PNG masks (``pixel_spacing`` (row, col) mm, if known)."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    acc = SetMetrics(empty_score)
    for image_id, p_path, g_path in find_png_pairs(pred_dir, gt_dir):
        p, g = read_mask_png(p_path), read_mask_png(g_path)
        if p.shape != g.shape:
            raise InputError(f"prediction {p_path.name} is {p.shape[1]}x{p.shape[0]} but the ground truth "
                             f"{g_path.name} is {g.shape[1]}x{g.shape[0]}; predictions must have the mask's size.")
        acc.add(p, g, pixel_spacing, image_id)
    return dict(kind="png", slices=acc.result(), slice_rows=acc.rows)
