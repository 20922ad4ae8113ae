"""Context-Gated cross-Modal module, CGM (vMambaX, spec §3): one per encoder stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ModalityGate(nn.Module):
    """Gate G_m = channel gate (B, C, 1, 1) ⊙ spatial gate (B, 1, H, W) from concat[X_other, X_m]."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # Indices 0, 1, 3 hold parameters, as in the reference's Sequential (2 is the GELU).
        self.channel = nn.Sequential(
            nn.Conv2d(2 * dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.GELU(),
            nn.Conv2d(hidden, dim, 1, bias=True),
        )
        self.spatial = nn.Conv2d(2 * dim, 1, 3, padding=1, bias=False)

    def forward(self, x_self: torch.Tensor, x_other: torch.Tensor) -> torch.Tensor:
        f = torch.cat([x_other, x_self], dim=1)  # the other modality comes first
        channel = torch.sigmoid(self.channel(F.adaptive_avg_pool2d(f, 1)))
        return channel * torch.sigmoid(self.spatial(f))


class CGM(nn.Module):
    """Y_m = X_m ⊙ (1 + G_m) (``residual=True``, the default) or X_m ⊙ G_m, with separate
    parameters for the CT and the PET gate. Hidden width h = max(C // reduction, min_channels)."""

    def __init__(self, dim: int, reduction: int = 4, min_channels: int = 32, residual: bool = True):
        super().__init__()
        hidden = max(dim // reduction, min_channels)
        self.residual = residual
        self.gate_ct = ModalityGate(dim, hidden)
        self.gate_pet = ModalityGate(dim, hidden)

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g_ct = self.gate_ct(ct, pet)
        g_pet = self.gate_pet(pet, ct)
        if self.residual:
            return ct * (1 + g_ct), pet * (1 + g_pet)
        return ct * g_ct, pet * g_pet
