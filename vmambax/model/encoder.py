"""Shared VMamba-T encoder (spec §2): patch embedding, VSS stages, patch merging, out-norms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vmambax.model.ss2d import SS2D, DropPath, linspace


class PatchEmbed(nn.Module):
    """Conv 4×4 stride 4 (with bias) -> channels-last -> LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch, bias=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))); VMamba-T has no MLP (mlp_ratio 0)."""

    def __init__(self, dim: int, d_state: int, ssm_ratio: float, drop_path: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ssm = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.ssm(self.norm(x)))


class PatchMerging(nn.Module):
    """2×2 neighbourhoods -> 4C (order: (0,0), (1,0), (0,1), (1,1)) -> LN -> Linear(4C -> 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        if h % 2 or w % 2:  # odd sizes are zero-padded
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class EncoderStage(nn.Module):
    def __init__(self, dim: int, depth: int, d_state: int, ssm_ratio: float, drop_paths, downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(VSSBlock(dim, d_state, ssm_ratio, p) for p in drop_paths)
        self.downsample = PatchMerging(dim) if downsample else None


class VMambaEncoder(nn.Module):
    """Returns the 4 stage outputs (NCHW), each taken before downsampling and passed through its
    own LayerNorm ``out_norms[i]``."""

    def __init__(self, dims, depths, d_state: int = 16, ssm_ratio: float = 2.0, drop_path: float = 0.0,
                 in_chans: int = 3):
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        self.patch_embed = PatchEmbed(in_chans, self.dims[0])
        rates = linspace(drop_path, sum(depths))
        self.stages = nn.ModuleList()
        start = 0
        for i, (dim, depth) in enumerate(zip(self.dims, depths)):
            self.stages.append(EncoderStage(dim, depth, d_state, ssm_ratio, rates[start:start + depth],
                                            downsample=i < len(self.dims) - 1))
            start += depth
        self.out_norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims)
        self.apply(_init_vmamba)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        features = []
        for stage, out_norm in zip(self.stages, self.out_norms):
            for block in stage.blocks:
                x = block(x)
            features.append(out_norm(x).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return features


def _init_vmamba(m: nn.Module) -> None:
    """VMamba's init: Linear trunc-normal(0.02) with zero bias, LayerNorm 1/0 (SS2D's own
    parameters are initialised in SS2D)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
