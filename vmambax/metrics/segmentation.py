"""Segmentation metrics: the papers' 2-D set metrics (spec §10/§13) and 3-D per-case metrics.

Masks are arrays where non-zero means tumour (threshold probabilities / 0-255 PNGs before).

2-D set metrics over a list of slices (``set_metrics`` / ``SetMetrics``):

* micro ("global", what CIPA and the vMambaX checkpoint monitor report): TP/FP/FN/TN pooled over
  all slices, then IoU = TP/(TP+FP+FN), Dice = 2TP/(2TP+FP+FN), balanced accuracy ("Acc") =
  (TP/(TP+FN) + TN/(TN+FP))/2; a ratio with a zero denominator is 1, as in ``pred.py``.
* macro (per-image mean, what vMambaX's "Dice" is): each slice's IoU/Dice, averaged. A slice with
  empty prediction and empty ground truth scores ``empty_score`` = 1 by default (a correct "no
  tumour"); the reference Lightning module scores it 0 (smooth 1e-7) - pass ``empty_score=0``
  to reproduce that.
* HD95 per slice (pixels, and mm when the spacing is known), averaged over the slices where both
  masks are non-empty. Deviation from the reference: it does not invent a pixel for slices where
  exactly one mask is empty (that turns a miss into the distance to the image centre); those
  slices are counted instead (``n_missed``: tumour not found, ``n_false_alarm``: tumour where
  there is none), and empty/empty slices (nothing to measure) are left out of the mean.
  ``hd95_px_reference`` gives the reference convention too, for comparison with the papers.

3-D per case (``case_metrics``): Dice, IoU, HD95 in mm, volumes, and lesion-level detection
(connected components, 26-connectivity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from vmambax.metrics.surface import hd95, hd95_reference_2d


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else float(num) / float(den)


@dataclass(frozen=True)
class Confusion:
    """Foreground-class confusion counts."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def dice(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def sensitivity(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def balanced_accuracy(self) -> float:
        return 0.5 * (self.sensitivity + self.specificity)


def _binary(a) -> np.ndarray:
    return np.asarray(a) != 0


def confusion(pred, gt) -> Confusion:
    """Confusion counts of two same-shaped masks (non-zero = foreground)."""
    p, g = _binary(pred), _binary(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction and ground truth differ in shape: {p.shape} vs {g.shape}")
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(g)) - tp
    return Confusion(tp, fp, fn, int(p.size) - tp - fp - fn)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class SetMetrics:
    """Accumulates 2-D slices one at a time (training validation loops, large test sets)."""

    def __init__(self, empty_score: float = 1.0, keep_rows: bool = True):
        self.empty_score = float(empty_score)
        self.keep_rows = keep_rows
        self.total = Confusion()
        self.rows: list[dict] = []
        self._iou: list[float] = []
        self._dice: list[float] = []
        self._hd_px: list[float] = []
        self._hd_mm: list[float] = []
        self._hd_ref: list[float] = []
        self._mm_known = True
        self.n_both_empty = self.n_missed = self.n_false_alarm = 0

    def add(self, pred, gt, spacing: Sequence[float] | None = None, image_id: str | None = None) -> dict:
        """Add one slice. ``spacing`` = (row, column) pixel size in mm, if known."""
        p, g = _binary(pred), _binary(gt)
        if p.ndim != 2:
            raise ValueError(f"set metrics take 2-D slices, got shape {p.shape}")
        c = confusion(p, g)
        self.total = self.total + c
        p_any, g_any = c.tp + c.fp > 0, c.tp + c.fn > 0
        row: dict = dict(id=image_id, tp=c.tp, fp=c.fp, fn=c.fn, tn=c.tn)
        if not p_any and not g_any:
            self.n_both_empty += 1
            iou = dice = self.empty_score
        else:
            iou, dice = c.iou, c.dice
        self._iou.append(iou)
        self._dice.append(dice)
        row.update(iou=iou, dice=dice, hd95_px=None, hd95_mm=None)
        if p_any and g_any:
            row["hd95_px"] = hd95(p, g)
            self._hd_px.append(row["hd95_px"])
            if spacing is not None:
                row["hd95_mm"] = hd95(p, g, spacing)
                self._hd_mm.append(row["hd95_mm"])
            else:
                self._mm_known = False
        elif g_any:
            self.n_missed += 1
        elif p_any:
            self.n_false_alarm += 1
        row["hd95_px_reference"] = hd95_reference_2d(p, g)
        self._hd_ref.append(row["hd95_px_reference"])
        if self.keep_rows:
            self.rows.append(row)
        return row

    def result(self) -> dict:
        t = self.total
        return dict(
            n_images=len(self._iou), n_both_empty=self.n_both_empty, n_missed=self.n_missed,
            n_false_alarm=self.n_false_alarm, n_hd95=len(self._hd_px),
            tp=t.tp, fp=t.fp, fn=t.fn, tn=t.tn,
            iou_micro=t.iou, dice_micro=t.dice, balanced_accuracy=t.balanced_accuracy,
            sensitivity_micro=t.sensitivity, specificity_micro=t.specificity,
            iou_macro=_mean(self._iou), dice_macro=_mean(self._dice), empty_score=self.empty_score,
            hd95_px=_mean(self._hd_px),
            hd95_mm=_mean(self._hd_mm) if self._mm_known else None,
            hd95_px_reference=_mean(self._hd_ref),
        )


def set_metrics(preds: Iterable, gts: Iterable, spacing=None, empty_score: float = 1.0) -> dict:
    """2-D set metrics over paired slices (see the module docstring).

    ``spacing``: None, one (row, column) pixel size in mm for all slices, or a sequence with one
    per slice."""
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} ground-truth masks")
    per_image = spacing is not None and len(spacing) == len(preds) and np.ndim(spacing[0]) == 1
    acc = SetMetrics(empty_score, keep_rows=False)
    for i, (p, g) in enumerate(zip(preds, gts)):
        acc.add(p, g, spacing[i] if per_image else spacing)
    return acc.result()


def dice_3d(pred, gt) -> float:
    """Volume Dice (1.0 when both are empty)."""
    return confusion(pred, gt).dice


def hd95_3d_mm(pred, gt, spacing: Sequence[float]) -> float:
    """Volume HD95 in mm; ``spacing`` per array axis ``(z, y, x)``. NaN when exactly one is empty."""
    return hd95(pred, gt, spacing)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def lesion_detection(pred, gt) -> dict:
    """Lesion-level counts: a ground-truth lesion (26-connected component) is detected when the
    prediction overlaps it; a predicted component overlapping no ground truth is a false positive."""
    p, g = _binary(pred), _binary(gt)
    gl, ng = _components(g)
    pl, npred = _components(p)
    detected = len(np.setdiff1d(np.unique(gl[p]), [0]))
    matched_pred = len(np.setdiff1d(np.unique(pl[g]), [0]))
    return dict(lesions_gt=int(ng), lesions_detected=int(detected), lesions_pred=int(npred),
                false_positive_lesions=int(npred - matched_pred),
                lesion_sensitivity=_ratio(detected, ng))


def case_metrics(pred, gt, spacing: Sequence[float]) -> dict:
    """3-D metrics of one case; arrays ``(z, y, x)`` and ``spacing`` in mm per array axis."""
    p, g = _binary(pred), _binary(gt)
    c = confusion(p, g)
    vox_ml = float(np.prod(spacing)) / 1000.0
    v_p, v_g = (c.tp + c.fp) * vox_ml, (c.tp + c.fn) * vox_ml
    hd = hd95_3d_mm(p, g, spacing)
    return dict(dice=c.dice, iou=c.iou, hd95_mm=None if math.isnan(hd) else hd,
                volume_pred_ml=v_p, volume_gt_ml=v_g,
                volume_error_pct=None if v_g == 0 else 100.0 * (v_p - v_g) / v_g,
                sensitivity=c.sensitivity, **lesion_detection(p, g))
