"""The training loss of spec §8: BCE-with-logits (pixel mean) + soft Dice, weighted 1:1."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean_b (2 sum(y p) + s) / (sum(y) + sum(p) + s), with p = sigmoid(logits), sums per sample.

    The +1 smoothing keeps the loss defined (and ~0) on slices with no tumour and no prediction.
    """
    p = torch.sigmoid(logits.float()).flatten(1)
    y = target.float().flatten(1)
    dice = (2 * (p * y).sum(1) + smooth) / (y.sum(1) + p.sum(1) + smooth)
    return 1 - dice.mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCEWithLogits (mean over all pixels) + soft Dice. Computed in float32 under autocast."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return bce + soft_dice_loss(logits, target)


def batch_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch as one volume (nnU-Net's "batch Dice" for 2-D): slices
    without tumour neither dominate nor vanish from the loss, and a small false positive on an
    empty slice costs in proportion to its size."""
    p = torch.sigmoid(logits.float())
    y = target.float()
    return 1 - (2 * (p * y).sum() + smooth) / (y.sum() + p.sum() + smooth)


def bce_batch_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return bce + batch_dice_loss(logits, target)


#: Training losses by name (``--loss``): "bce+dice" is spec §8's.
LOSSES = {"bce+dice": bce_dice_loss, "bce+batchdice": bce_batch_dice_loss}
