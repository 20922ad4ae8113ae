"""Dynamic cross-modality interaction module, DCIM (spec §5): one per encoder stage.

PET is summarised into one token per 4×4 region (conv tokeniser, stride 4), CT is cut into 4×4
windows of 16 "words". A region SS2D runs over the grid of PET region tokens, a local SS2D runs
inside every CT window, and each region's PET token is added to its 16 CT words (the bridge).
"""

from __future__ import annotations

import torch
from torch import nn

from vmambax.model.encoder import _init_vmamba
from vmambax.model.ss2d import SS2D

REGION = 4  # words per region side: regions are 4×4 tokens of the stage map


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=True), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class DCIMTokenizer(nn.Module):
    """CT words: C -> C/4 -> C (stride 1). PET regions: C -> C/16 -> C/8 (s2) -> C/4 (s2) -> C."""

    def __init__(self, dim: int):
        super().__init__()
        self.inner = nn.Sequential(*_conv_bn_relu(dim, dim // 4, 1), *_conv_bn_relu(dim // 4, dim, 1))
        self.outer = nn.Sequential(
            *_conv_bn_relu(dim, dim // 16, 1), *_conv_bn_relu(dim // 16, dim // 8, 2),
            *_conv_bn_relu(dim // 8, dim // 4, 2), *_conv_bn_relu(dim // 4, dim, 1),
        )

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(ct), self.outer(pet)


class DCIM(nn.Module):
    def __init__(self, dim: int, d_state: int = 16, ssm_ratio: float = 2.0):
        super().__init__()
        words = REGION * REGION
        self.tokenizer = DCIMTokenizer(dim)
        self.region_norm = nn.LayerNorm(dim)
        self.region_ssm = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio)
        self.local_norm = nn.LayerNorm(words * dim)  # over all 16·C values of a window jointly
        self.local_ssm = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio)
        for module in (self.region_norm, self.region_ssm, self.local_norm, self.local_ssm):
            module.apply(_init_vmamba)

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> torch.Tensor:
        b, c, h, w = ct.shape
        r = REGION
        gh, gw = h // r, w // r
        words, regions = self.tokenizer(ct, pet)
        # Region Mamba over the (H/4)×(W/4) grid of PET region tokens.
        regions = regions.permute(0, 2, 3, 1)
        regions = regions + self.region_ssm(self.region_norm(regions))
        # Local Mamba inside each 4×4 CT window (batch B·N, words row-major in the window).
        windows = words.view(b, c, gh, r, gw, r).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, r * r * c)
        normed = self.local_norm(windows).view(b * gh * gw, r, r, c)
        windows = windows.view(b * gh * gw, r, r, c) + self.local_ssm(normed)
        # Bridge: each region's PET token joins all 16 CT words of its window.
        windows = windows + regions.reshape(b * gh * gw, 1, 1, c)
        # Reassemble (B, H, W, C) -> NCHW. The reference's final reshape swaps H and W, which is
        # only correct for square maps; this one keeps them apart (inputs are square anyway).
        return windows.view(b, gh, gw, r, r, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
