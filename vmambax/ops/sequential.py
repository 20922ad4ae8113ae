"""The test oracle: the selective scan as a plain loop over the sequence, one step at a time.

It is the spec's reference maths (§7) written as directly as possible, and it always computes
in float64 (float32 only on devices without float64, such as Apple MPS), so that the fast
backends can be checked against it. The result is cast back to u's dtype; pass float64 inputs to
get the float64 result. It is differentiable through ordinary autograd, but slow and
memory-hungry under autograd: use it in tests and benchmarks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequential_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Same arguments and result as :func:`vmambax.ops.selective_scan`."""
    dtype = u.dtype
    work = torch.float32 if u.device.type == "mps" else torch.float64
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    batch, channels, length = u.shape
    groups, state = B.shape[1], A.shape[1]

    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    # Channel d belongs to group d // (channels // groups): view channels as (group, member) so
    # each group's B_t and C_t broadcast over its members.
    shape = (batch, groups, channels // groups)
    A = A.reshape(groups, channels // groups, state)
    dt = delta.reshape(*shape, length)
    x = (delta * u).reshape(*shape, length)

    h = u.new_zeros(*shape, state)
    ys = []
    for t in range(length):
        # h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t ;  y_t = <h_t, C_t>
        h = torch.exp(dt[..., t, None] * A) * h + x[..., t, None] * B[:, :, None, :, t]
        ys.append((h * C[:, :, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1).reshape(batch, channels, length)

    if D is not None:
        y = y + D.to(work)[:, None] * u
    return y.to(dtype)
