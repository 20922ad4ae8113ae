"""Selective scan (Mamba S6) with the reference signature.

TEMPORARY STUB written to unblock the model work: a straightforward loop over L.
The ops work item replaces the internals (chunked scan, mamba-ssm backend, oracle) but keeps
this public API exactly.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "chunked", "mamba_ssm", "sequential")
ENV_VAR = "VMAMBAX_SCAN_BACKEND"


def available_backends() -> list[str]:
    return ["sequential"]


def active_backend(device: torch.device | str | None = None) -> str:
    return "sequential"


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend=None):
    """u, delta: (b, d, l); A: (d, n); B, C: (b, g, n, l) or (b, n, l); D, delta_bias: (d,).

    Returns (b, d, l) in u's dtype. Channel d uses group d // (d_total // g).
    """
    dtype = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    b, d, l = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    g = B.shape[1]
    B = B.repeat_interleave(d // g, dim=1)  # (b, d, n, l)
    C = C.repeat_interleave(d // g, dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[None, :, None] * u
    return y.to(dtype)
