"""Several trained networks used as one: the mean of their tumour probabilities.

Cross-validation (``vmambax train --folds K``) trains K models on different folds; used together
they predict better than any one of them. ``Ensemble(models)(ct, pet)`` returns the logit of the
members' mean sigmoid probability, so everything that takes a network's logits (the Segmenter's
sigmoid and threshold, test-time flips) works unchanged. Model files store the members' weights
(``checkpoint.save_model_file`` / ``load_model_file``).
"""

from __future__ import annotations

import torch
from torch import nn

#: Probabilities are clamped to [EPS, 1 - EPS] before the logit (float32: 1 - 1e-7 rounds to 1).
EPS = 1e-6


def probability_logit(p: torch.Tensor) -> torch.Tensor:
    """logit(p), finite for p in [0, 1] (clamped to [EPS, 1 - EPS])."""
    return torch.logit(p.clamp(EPS, 1 - EPS))


class Ensemble(nn.Module):
    """Members of one configuration; ``forward`` = logit(mean_i sigmoid(member_i(ct, pet)))."""

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError("an Ensemble needs at least two members")
        configs = {getattr(m, "config", None) for m in members}
        if len(configs) != 1:
            raise ValueError("ensemble members must share one model configuration")
        self.members = nn.ModuleList(members)
        self.config = members[0].config
        self.config_name = getattr(members[0], "config_name", None)

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            p = torch.sigmoid(member(ct, pet).float())
            total = p if total is None else total + p
        return probability_logit(total / len(self.members))
