"""MambaDecoder (spec §6): PatchExpand, 3 stages of CVSS blocks with skip additions, ×4 tail, head.

Tensors are channels-last ``(B, H, W, C)`` inside; skips and the output are NCHW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vmambax.model.ss2d import SS2D, DropPath, linspace


def _bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of a channels-last map."""
    return F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear",
                         align_corners=False).permute(0, 2, 3, 1)


class PatchExpand(nn.Module):
    """Linear C -> 2C (no bias), 2×2 pixel-shuffle with channel order (p1, p2, c), LN(C/2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = self.expand(x).view(b, h, w, 2, 2, c // 2).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(b, 2 * h, 2 * w, c // 2))


class UpsampleExpand(nn.Module):
    """Linear C -> C/2 (no bias), bilinear ×2, LN(C/2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim // 2, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        return self.norm(_bilinear(self.linear(x), (2 * h, 2 * w)))


class FinalUpsampleX4(nn.Module):
    """Linear -> bilinear ×2 -> Linear -> bilinear ×2 -> LN (linears without bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim, bias=False)
        self.linear2 = nn.Linear(dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        x = _bilinear(self.linear1(x), (2 * h, 2 * w))
        x = _bilinear(self.linear2(x), (4 * h, 4 * w))
        return self.norm(x)


class CAB(nn.Module):
    """Channel attention block: conv3×3 C -> C//3, GELU, conv3×3 -> C, then
    σ(M(avgpool) + M(maxpool)) ⊙ features with M = conv1×1 C -> C//30, SiLU, conv1×1 -> C."""

    def __init__(self, dim: int, compress: int = 3, squeeze: int = 30):
        super().__init__()
        mid, small = dim // compress, max(dim // squeeze, 1)
        self.conv1 = nn.Conv2d(dim, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, dim, 3, padding=1)
        self.attn = nn.Sequential(nn.Conv2d(dim, small, 1, bias=False), nn.SiLU(),
                                  nn.Conv2d(small, dim, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # NCHW
        x = self.conv2(F.gelu(self.conv1(x)))
        gate = self.attn(F.adaptive_avg_pool2d(x, 1)) + self.attn(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(gate)


class CVSSBlock(nn.Module):
    """x₁ = s₁⊙x + DropPath(SS2D(LN₁(x))); y = CAB(LN₂(x₁)) + s₂⊙x₁."""

    def __init__(self, dim: int, d_state: int, ssm_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.ssm = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio)
        self.drop_path = DropPath(drop_path)
        self.scale1 = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.cab = CAB(dim)
        self.scale2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale1 * x + self.drop_path(self.ssm(self.norm1(x)))
        y = self.cab(self.norm2(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return y + self.scale2 * x


class DecoderStage(nn.Module):
    def __init__(self, dim: int, depth: int, d_state: int, ssm_ratio: float, drop_paths, upsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(CVSSBlock(dim, d_state, ssm_ratio, p) for p in drop_paths[:depth])
        self.upsample = UpsampleExpand(dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.upsample(x) if self.upsample is not None else x


class MambaDecoder(nn.Module):
    """F4 -> PatchExpand -> (+F3, stage C3, up) -> (+F2, stage C2, up) -> (+F1, stage C1) -> LN ->
    ×4 -> 1×1 conv head. ``depths`` = CVSS blocks of the C3, C2, C1 stages."""

    def __init__(self, dims, depths=(4, 4, 4), d_state: int = 4, ssm_ratio: float = 2.0,
                 drop_path: float = 0.1, num_classes: int = 1):
        super().__init__()
        dims = tuple(int(d) for d in dims)
        # The reference spreads linspace(0, drop_path) over 4 stages of which only 3 are built
        # (16 rates, the C3 stage uses 8–11, C2 4–7, C1 0–3); keep those rates.
        shallow_first = list(reversed(depths))  # C1, C2, C3
        rates = linspace(drop_path, sum(depths) + depths[0])
        starts = [sum(shallow_first[:i]) for i in range(3)]
        self.expand = PatchExpand(dims[3])
        self.stages = nn.ModuleList(
            DecoderStage(dims[2 - i], depths[i], d_state, ssm_ratio,
                         rates[starts[2 - i]:starts[2 - i] + depths[i]], upsample=i < 2)
            for i in range(3)
        )
        self.norm = nn.LayerNorm(dims[0])
        self.final_up = FinalUpsampleX4(dims[0])
        self.head = nn.Conv2d(dims[0], num_classes, 1, bias=False)
        for m in self.modules():  # the reference's init_weight: kaiming-normal (fan_in, relu) convs
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.expand(features[3].permute(0, 2, 3, 1))
        for i, stage in enumerate(self.stages):
            skip = features[2 - i].permute(0, 2, 3, 1)
            if x.shape[1:3] != skip.shape[1:3]:
                x = _bilinear(x, skip.shape[1:3])
            x = stage(x + skip)
        x = self.final_up(self.norm(x))
        return self.head(x.permute(0, 3, 1, 2))
