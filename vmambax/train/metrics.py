"""Validation metrics accumulated on the device and reduced across ranks.

Micro IoU/Dice and balanced accuracy come from one global confusion matrix; macro Dice/IoU are
per-image means. Across processes the *sums* (TP, FP, FN, TN, per-image score sums and the image
count) are all-reduced before any ratio is taken, so N ranks give exactly the single-process
numbers on the whole validation set. (The reference averaged per-rank ratios, spec §10.)

Per-image convention: an image with no tumour and no prediction scores Dice = IoU = 1, the same
choice as ``vmambax.metrics`` (the reference Lightning module scored it 0, which punishes correct
negatives and is not what its own test script does).
"""

from __future__ import annotations

from typing import Callable

import torch

FIELDS = ("tp", "fp", "fn", "tn", "dice_sum", "iou_sum", "images")


class SegmentationCounts:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(FIELDS), dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """``logits``, ``target`` (B, 1, H, W); prediction = sigmoid > 0.5 = logit > 0."""
        pred = (logits > 0).flatten(1)
        gt = (target > 0.5).flatten(1)
        tp = (pred & gt).sum(1).double()
        fp = (pred & ~gt).sum(1).double()
        fn = (~pred & gt).sum(1).double()
        tn = (~pred & ~gt).sum(1).double()
        d_den, i_den = 2 * tp + fp + fn, tp + fp + fn
        dice = torch.where(d_den > 0, 2 * tp / d_den.clamp(min=1), torch.ones_like(tp))
        iou = torch.where(i_den > 0, tp / i_den.clamp(min=1), torch.ones_like(tp))
        batch = torch.stack([tp.sum(), fp.sum(), fn.sum(), tn.sum(), dice.sum(), iou.sum(),
                             torch.tensor(float(len(tp)), dtype=torch.float64, device=tp.device)])
        self.sums = self.sums.to(batch.device) + batch

    def compute(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """Ratios from the (optionally cross-rank summed) counts. ``reduce_sum`` must be a
        collective every rank calls, e.g. ``lambda t: trainer.strategy.reduce(t, reduce_op="sum")``."""
        s = reduce_sum(self.sums.clone()) if reduce_sum else self.sums
        tp, fp, fn, tn, dice_sum, iou_sum, n = s.double().tolist()

        def ratio(a, b):
            return a / b if b > 0 else 1.0

        return {
            "val_dice": ratio(2 * tp, 2 * tp + fp + fn),
            "val_iou": ratio(tp, tp + fp + fn),
            "val_dice_macro": ratio(dice_sum, n),
            "val_iou_macro": ratio(iou_sum, n),
            "val_balanced_acc": 0.5 * (ratio(tp, tp + fn) + ratio(tn, tn + fp)),
            "val_images": n,
        }


class CaseCounts:
    """Per-case voxel sums (TP, predicted, true) over whole validation cases, for the mean 3-D
    Dice per case: what a clinic's cases are judged by (``vmambax train`` on volume cases
    monitors it as ``val_dice_3d``). Reduced across ranks as sums, like SegmentationCounts.
    A case with no tumour and no prediction scores 1."""

    def __init__(self, n_cases: int):
        self.n_cases = int(n_cases)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros((self.n_cases, 3), dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, cases: torch.Tensor,
               threshold_logit: float = 0.0) -> None:
        pred = (logits > threshold_logit).flatten(1)
        gt = (target > 0.5).flatten(1)
        rows = torch.stack([(pred & gt).sum(1), pred.sum(1), gt.sum(1)], 1).double()
        sums = self.sums.to(rows.device)
        sums.index_add_(0, cases.to(rows.device).long(), rows)
        self.sums = sums

    def per_case(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[float]:
        s = reduce_sum(self.sums.clone()) if reduce_sum else self.sums
        tp, pred, gt = s.double().unbind(1)
        den = pred + gt
        return torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.ones_like(tp)).tolist()
