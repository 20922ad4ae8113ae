"""The ``chunked`` backend: a vectorised selective scan in plain PyTorch, for CPU and any device.

Maths (spec §7), per channel d with state size n:

    h_t = exp(dt_t A[d]) * h_{t-1} + dt_t u_t B_t        (B_t, C_t of d's group)
    y_t = <h_t, C_t>

How it is computed
------------------
The sequence is cut into *segments* that are processed one after the other, carrying the state
h between them; only one segment's worth of (b, d, n) states exists at a time, so memory stays
bounded (the naive (b, d, l, n) tensor is 0.8 GB at b=1, d=768, l=16384, n=16; see
``_segment_length``). Inside a segment, its ``nc`` *chunks* of ``T`` steps are scanned in
parallel (one tensor op per step for all chunks), then the chunk start states are chained and
each chunk is corrected with the cumulative decay from its start. All decays are products of
factors exp(dt A) in (0, 1] (A < 0), never the overflowing exp(+cumsum) * exp(-cumsum).

On CPU one chunk per segment (``nc = 1``) is fastest: the per-step op stays in cache and needs no
correction pass. On GPUs many chunks per segment keep the number of kernel launches low.

Gradients come from a hand-written backward (an ``autograd.Function``), not from autograd
through the loop: autograd would keep every step's (b, d, n) tensors alive -- several
(b, d, l, n) tensors per call. Backward instead recomputes each segment's states from the saved
segment start states (O(b d n l / S) memory) and runs the adjoint recurrence
``lam_t = exp(dt_{t+1} A) lam_{t+1} + gy_t C_t`` backwards with the same machinery. It is first
order only (no double backward), which is all training needs.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Elements (b * d * n * steps) per segment buffer. CPU: small enough to stay in cache, large
# enough to amortise per-op overhead (tuned with `vmambax bench scan`, see docs/benchmarks.md).
# GPU: large buffers, few launches.
_CPU_BUDGET = 1 << 20
_GPU_BUDGET = 1 << 25
_GPU_CHUNK = 64


def _plan(length: int, per_step: int, device: torch.device, segment: int | None, chunk: int | None):
    """Split ``length`` steps into segments ``(start, stop, T)``: each segment is stop-start = nc * T steps."""
    if device.type == "cpu":
        seg = segment or max(8, _CPU_BUDGET // per_step)
        chunk = chunk or seg  # one chunk per segment
    else:
        chunk = chunk or _GPU_CHUNK
        seg = segment or max(chunk, (_GPU_BUDGET // per_step) // chunk * chunk)
    chunk = min(chunk, seg)
    plan = []
    start = 0
    while start < length:
        stop = min(length, start + seg)
        steps = stop - start
        if steps >= chunk and steps % chunk:
            stop = start + steps // chunk * chunk  # whole chunks here; the rest is the next segment
        plan.append((start, stop, min(chunk, stop - start)))
        start = stop
    return plan


def _time_major(x: torch.Tensor, start: int, stop: int, T: int) -> torch.Tensor:
    """(b, g, k, l) -> steps [start, stop) as (T, nc, b, g, k): step c*T + t of the segment at [t, c]."""
    return x[..., start:stop].unflatten(-1, (-1, T)).permute(4, 3, 0, 1, 2)


def _scan_(coef, x, h0, work):
    """In place, along the segment's steps s = c*T + t of (T, nc, ...) tensors:
    x_s <- coef_s * x_{s-1} + x_s, with x_{-1} = h0 (None: zeros). ``coef`` is kept; ``work`` is
    scratch (needed when nc > 1). Returns the final state (a view of x)."""
    T, nc = x.shape[:2]
    if h0 is not None:
        x[0, 0].addcmul_(coef[0, 0], h0)
    xs, cs = x.unbind(0), coef.unbind(0)
    for t in range(1, T):  # all chunks at once; chunk 0 is already exact, the others start from 0
        xs[t].addcmul_(cs[t], xs[t - 1])
    if nc > 1:
        decay = torch.cumprod(coef, dim=0, out=work)  # decay from each chunk's start to step t
        carries = [xs[T - 1][0]]  # exact state before chunk 1
        for c in range(1, nc - 1):
            carries.append(torch.addcmul(xs[T - 1][c], decay[T - 1, c], carries[-1]))
        x[:, 1:].addcmul_(decay[:, 1:], torch.stack(carries))
    return x[T - 1, nc - 1]


def _reverse_scan_(coef, x, rho, work):
    """In place, backwards: x_s <- coef_{s+1} * x_{s+1} + x_s, with x_last += rho (None: 0).
    Returns coef_0 * x_0, the ``rho`` of the previous segment."""
    T, nc = x.shape[:2]
    if rho is not None:
        x[T - 1, nc - 1].add_(rho)
    xs, cs = x.unbind(0), coef.unbind(0)
    for t in range(T - 2, -1, -1):
        xs[t].addcmul_(cs[t + 1], xs[t + 1])
    if nc > 1:
        # decay[t] = coef[t+1] * ... * coef[T-1]: from the chunk's end back to step t.
        decay = work
        decay[T - 1].fill_(1)
        for t in range(T - 2, -1, -1):
            torch.mul(decay[t + 1], coef[t + 1], out=decay[t])
        kappas = [coef[0, nc - 1] * xs[0][nc - 1]]  # carry into chunk nc-2 (chunk nc-1 is exact)
        for c in range(nc - 2, 0, -1):
            kappas.append(coef[0, c] * torch.addcmul(xs[0][c], decay[0, c], kappas[-1]))
        x[:, :-1].addcmul_(decay[:, :-1], torch.stack(kappas[::-1]))
    return coef[0, 0] * x[0, 0]


def _no_autocast(device: torch.device):
    """Keep the scan in fp32/fp64 under AMP (bmm would otherwise run in half precision)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        return contextlib.nullcontext()


def _segment_inputs(u4, dt4, B, C, start, stop, T):
    dts = _time_major(dt4, start, stop, T)
    us = _time_major(u4, start, stop, T)
    return dts, us, _time_major(B, start, stop, T), _time_major(C, start, stop, T)


def _forward(u, dt, A, B, C, plan, keep_states):
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    dg = d // g
    u4, dt4 = u.view(b, g, dg, length), dt.view(b, g, dg, length)
    A6 = A.view(g, dg, n)
    y = u.new_empty(b, g, dg, length)
    biggest = max(stop - start for start, stop, _ in plan) * b * d * n
    buf_a, buf_h = u.new_empty(biggest), u.new_empty(biggest)
    buf_w = u.new_empty(biggest) if any(stop - start > T for start, stop, T in plan) else None
    h, starts = None, []
    for start, stop, T in plan:
        shape = (T, (stop - start) // T, b, g, dg, n)
        size = (stop - start) * b * d * n
        coef, H = buf_a[:size].view(shape), buf_h[:size].view(shape)
        work = None if buf_w is None else buf_w[:size].view(shape)
        dts, us, Bs, Cs = _segment_inputs(u4, dt4, B, C, start, stop, T)
        torch.mul(dts.unsqueeze(-1), A6, out=coef).exp_()
        torch.mul((dts * us).unsqueeze(-1), Bs.unsqueeze(-2), out=H)
        if keep_states:
            starts.append(h)
        h = _scan_(coef, H, h, work).clone()
        ys = torch.bmm(H.view(-1, dg, n), Cs.reshape(-1, n, 1))
        y[..., start:stop].unflatten(-1, (-1, T)).copy_(ys.view(shape[:-1]).permute(2, 3, 4, 1, 0))
    return y.view(b, d, length), starts


def _backward(gy, u, dt, A, B, C, plan, starts):
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    dg = d // g
    u4, dt4, gy4 = u.view(b, g, dg, length), dt.view(b, g, dg, length), gy.view(b, g, dg, length)
    A6 = A.view(g, dg, n)
    gu, gdt = torch.empty_like(u4), torch.empty_like(dt4)
    gB, gC = torch.empty_like(B), torch.empty_like(C)
    gA = torch.zeros_like(A6)
    biggest = max(stop - start for start, stop, _ in plan) * b * d * n
    bufs = [u.new_empty(biggest) for _ in range(4)]
    rho = None
    for (start, stop, T), h0 in zip(reversed(plan), reversed(starts)):
        nc = (stop - start) // T
        shape = (T, nc, b, g, dg, n)
        size = (stop - start) * b * d * n
        coef, H, lam, work = (buf[:size].view(shape) for buf in bufs)
        dts, us, Bs, Cs = _segment_inputs(u4, dt4, B, C, start, stop, T)
        gys = _time_major(gy4, start, stop, T)
        xs = dts * us

        # Recompute the segment's states h_t (H), keeping the decays exp(dt A) (coef).
        torch.mul(dts.unsqueeze(-1), A6, out=coef).exp_()
        torch.mul(xs.unsqueeze(-1), Bs.unsqueeze(-2), out=H)
        _scan_(coef, H, h0, work)
        # Adjoint lam_t = dL/dh_t = exp(dt_{t+1} A) lam_{t+1} + gy_t C_t, run backwards.
        torch.mul(gys.unsqueeze(-1), Cs.unsqueeze(-2), out=lam)
        rho = _reverse_scan_(coef, lam, rho, work)

        m = T * nc * b * g
        gCs = torch.bmm(gys.reshape(m, 1, dg), H.view(m, dg, n))  # sum over the group's channels
        gBs = torch.bmm(xs.reshape(m, 1, dg), lam.view(m, dg, n))
        gxs = torch.bmm(lam.view(m, dg, n), Bs.reshape(m, n, 1)).view(T, nc, b, g, dg)
        # q_t = lam_t * exp(dt_t A) * h_{t-1}: the gradient w.r.t. (dt_t A).
        q = torch.mul(lam, coef, out=work)
        q[1:].mul_(H[:-1])
        q[0, 1:].mul_(H[T - 1, :-1])
        if h0 is None:
            q[0, 0].zero_()
        else:
            q[0, 0].mul_(h0)
        gdts = torch.mul(q, A6, out=H).sum(-1).addcmul_(gxs, us)
        gA += q.mul_(dts.unsqueeze(-1)).sum(dim=(0, 1, 2))

        def put(dst, src):  # (T, nc, b, g, k) -> dst[..., start:stop] of (b, g, k, l)
            dst[..., start:stop].unflatten(-1, (-1, T)).copy_(src.permute(2, 3, 4, 1, 0))

        put(gu, gxs * dts)
        put(gdt, gdts)
        put(gB, gBs.view(T, nc, b, g, n))
        put(gC, gCs.view(T, nc, b, g, n))
    return gu.view(b, d, length), gdt.view(b, d, length), gA.view(d, n), gB, gC


class _ChunkedScan(torch.autograd.Function):
    """y = scan(u, dt, A, B, C) with dt already biased/softplus'd and B, C 4-D, one dtype."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, plan):
        with _no_autocast(u.device):
            y, starts = _forward(u, dt, A, B, C, plan, keep_states=any(ctx.needs_input_grad[:5]))
        ctx.plan = plan
        ctx.n_starts = len(starts)
        ctx.save_for_backward(u, dt, A, B, C, *[s for s in starts if s is not None])
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        u, dt, A, B, C, *saved = ctx.saved_tensors
        starts = [None] * (ctx.n_starts - len(saved)) + list(saved)  # the first segment starts at 0
        with _no_autocast(u.device):
            grads = _backward(gy.contiguous(), u, dt, A, B, C, ctx.plan, starts)
        return (*grads, None)


def chunked_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *,
                           segment: int | None = None, chunk: int | None = None):
    """Same arguments and result as :func:`vmambax.ops.selective_scan`.

    ``segment`` (steps processed together) and ``chunk`` (steps per chunk inside a segment)
    override the device defaults; they change speed and memory, not the result.
    """
    dtype = u.dtype
    work = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype) else torch.float32
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    plan = _plan(length, b * d * A.shape[1], u.device, segment, chunk)
    y = _ChunkedScan.apply(u, delta, A, B, C, plan)
    if D is not None:
        y = y + D.to(work)[:, None] * u
    return y.to(dtype)
