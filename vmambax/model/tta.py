"""Test-time flips: the mean tumour probability of a network over flipped copies of its input.

``FlipTTA(net, "hflip")`` averages the plain and the left-right flipped prediction (each flipped
back); ``"hvflip"`` adds the up-down and the doubly flipped ones. Like ``Ensemble`` it returns a
logit (of the mean probability), so it composes with ensembles and the Segmenter's threshold.
The spec's ``tta`` field (``vmambax.data.input_spec``) says which a model was validated with.
"""

from __future__ import annotations

import torch
from torch import nn

from vmambax.model.ensemble import probability_logit

FLIPS = {"none": ((),), "hflip": ((), (-1,)), "hvflip": ((), (-1,), (-2,), (-2, -1))}


class FlipTTA(nn.Module):
    def __init__(self, net: nn.Module, mode: str = "hflip"):
        super().__init__()
        if mode not in FLIPS:
            raise ValueError(f"unknown test-time flip mode {mode!r}; use {', '.join(FLIPS)}")
        self.net, self.mode = net, mode
        self.config = getattr(net, "config", None)

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> torch.Tensor:
        flips = FLIPS[self.mode]
        if len(flips) == 1:
            return self.net(ct, pet)
        total = None
        for dims in flips:
            if dims:
                logits = self.net(ct.flip(dims), pet.flip(dims)).flip(dims)
            else:
                logits = self.net(ct, pet)
            p = torch.sigmoid(logits.float())
            total = p if total is None else total + p
        return probability_logit(total / len(flips))
