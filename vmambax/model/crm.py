"""CIPA's channel-wise rectification module, CRM (spec §4): one per encoder stage.

The 2C channels of concat[CT, PET] are a sequence of 2C tokens whose features are the flattened
H_i·W_i maps, so LN(H_i·W_i) and Linear(H_i·W_i -> 96) fix the spatial size: a CRM is built for
one image size (``ModelConfig.img_size``, 512 for ``cipa``) and the model refuses other sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vmambax.model.ss2d import init_a_log, init_dt_bias, run_scan


class SS1D(nn.Module):
    """Single-direction Mamba without conv; SiLU over the whole in_proj output, then split x, z."""

    def __init__(self, d_model: int = 96, d_state: int = 16, expand: int = 2):
        super().__init__()
        d_inner = expand * d_model
        self.d_state, self.dt_rank = d_state, math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        r = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -r, r)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(d_inner))
        self.A_log = nn.Parameter(init_a_log(d_inner, d_state))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d_model)
        xs, z = F.silu(self.in_proj(x)).chunk(2, dim=-1)
        dt, b, c = torch.split(self.x_proj(xs), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # the bias goes to the scan as delta_bias
        y = run_scan(xs.transpose(1, 2).contiguous(), delta.transpose(1, 2).contiguous(),
                     -torch.exp(self.A_log.float()), b.transpose(1, 2).contiguous(),
                     c.transpose(1, 2).contiguous(), self.D.float(), self.dt_proj.bias.float())
        return self.out_proj(self.out_norm(y.transpose(1, 2)) * z)


class CRM(nn.Module):
    """w = σ(Linear(LN(SS1D(GELU(Linear(LN(tokens))))))) ∈ (B, 2C); X_m · (1 + w_m)."""

    def __init__(self, dim: int, spatial: int, hidden: int = 96, d_state: int = 16):
        super().__init__()
        self.spatial = spatial  # H_i·W_i this module was built for
        self.norm_in = nn.LayerNorm(spatial)
        self.proj_in = nn.Linear(spatial, hidden)
        self.ssm = SS1D(hidden, d_state)
        self.norm_out = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, 1)

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.cat([ct, pet], dim=1).flatten(2)  # (B, 2C, H·W)
        h = self.ssm(F.gelu(self.proj_in(self.norm_in(tokens))))
        w = torch.sigmoid(self.proj_out(self.norm_out(h)))[..., None]  # (B, 2C, 1, 1)
        w_ct, w_pet = w.chunk(2, dim=1)
        return ct * (1 + w_ct), pet * (1 + w_pet)
