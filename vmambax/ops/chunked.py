"""The ``chunked`` backend: a vectorised selective scan in plain PyTorch, for CPU and any device.

Maths (spec §7), per channel d with state size n, dt = softplus(delta + delta_bias):

    h_t = exp(dt_t A[d]) * h_{t-1} + dt_t u_t B_t        (B_t, C_t of d's group)
    y_t = <h_t, C_t> + D[d] u_t

How it is computed
------------------
The sequence is cut into *segments* processed one after the other, carrying the state h between
them. Only one segment's (steps, b, d, n) states exist at a time, so memory stays bounded (the
naive (b, d, l, n) tensor is 0.8 GB at b=1, d=768, l=16384, n=16), and on CPU a segment's
buffers stay in cache. Everything per step -- bias, softplus, the D term, dtype casts -- is done
segment by segment for the same reason.

Inside a segment its ``nc`` *chunks* of ``T`` steps are scanned together (one tensor op per step
for all chunks); then each chunk's start state is chained from the previous chunk and added in
with the cumulative decay from the chunk start. Decays are only ever products of factors
exp(dt A) in (0, 1] (A < 0) -- never exp(+cumsum) * exp(-cumsum), which overflows.
On CPU one chunk per segment (``nc = 1``) is fastest: the per-step op is cache-resident and no
correction pass is needed. On GPUs many chunks keep the number of kernel launches low.

Gradients come from a hand-written backward (``_ChunkedScan``), not autograd through the loop:
autograd would keep every step's tensors alive -- several (b, d, l, n) tensors per call.
Backward recomputes each segment's states from the saved segment start states (b*d*n*l/S extra
memory) and runs the adjoint recurrence lam_t = exp(dt_{t+1} A) lam_{t+1} + gy_t C_t backwards
with the same machinery. It is first order only (no double backward), which is what training
needs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Elements (steps * b * d * n) per segment buffer. CPU: small enough to stay in cache, large
# enough to amortise per-op overhead (tuned with `vmambax bench scan`, see docs/benchmarks.md).
# GPU: large buffers and many chunks for few kernel launches.
_CPU_BUDGET = 1 << 20
_GPU_BUDGET = 1 << 25
_GPU_CHUNK = 64


def _plan(length: int, per_step: int, device: torch.device, segment: int | None, chunk: int | None):
    """Split ``length`` steps into segments ``(start, stop, T)`` of whole chunks of T steps."""
    cpu = device.type == "cpu"
    seg = segment or max(1, (_CPU_BUDGET if cpu else _GPU_BUDGET) // per_step)
    chunk = min(chunk or (seg if cpu else _GPU_CHUNK), seg)  # CPU: one chunk per segment
    if segment is None:
        seg = seg // chunk * chunk
    plan = []
    start = 0
    while start < length:
        stop = min(length, start + seg)
        steps = stop - start
        if steps >= chunk and steps % chunk:
            stop = start + steps // chunk * chunk  # whole chunks here, the rest in the next segment
        plan.append((start, stop, min(chunk, stop - start)))
        start = stop
    return tuple(plan)


def _time_major(x: torch.Tensor, T: int) -> torch.Tensor:
    """Contiguous (b, g, k, S) -> (T, nc, b, g, k): segment step c*T + t goes to [t, c]."""
    b, g, k, steps = x.shape
    if T == steps:  # a plain 2-D transpose, which torch copies in cache-friendly tiles
        return x.reshape(b * g * k, steps).t().contiguous().view(T, 1, b, g, k)
    return x.unflatten(-1, (-1, T)).permute(4, 3, 0, 1, 2).contiguous()


def _channel_major(x: torch.Tensor) -> torch.Tensor:
    """Contiguous (T, nc, b, g, k) -> contiguous (b, g, k, nc*T); inverse of ``_time_major``."""
    T, nc, b, g, k = x.shape
    if nc == 1:
        return x.view(T, b * g * k).t().contiguous().view(b, g, k, T)
    return x.permute(2, 3, 4, 1, 0).reshape(b, g, k, nc * T)


def _scan_(coef, x, h0, work):
    """In place, along the segment's steps s = c*T + t of (T, nc, ...) tensors:
    x_s <- coef_s * x_{s-1} + x_s, with x_{-1} = h0 (None: zeros). ``coef`` is kept; ``work`` is
    scratch, needed when nc > 1. Returns the final state (a view of x)."""
    T, nc = x.shape[:2]
    if h0 is not None:
        x[0, 0].addcmul_(coef[0, 0], h0)
    xs, cs = x.unbind(0), coef.unbind(0)
    for t in range(1, T):  # all chunks at once; chunk 0 is exact, the others start from 0 ...
        xs[t].addcmul_(cs[t], xs[t - 1])
    if nc > 1:  # ... so add each chunk's true start state, decayed to every step of the chunk
        decay = work  # decay[t] = coef[0] * ... * coef[t]; a loop, as CPU cumprod is ~10x slower
        decay[0].copy_(coef[0])
        for t in range(1, T):
            torch.mul(decay[t - 1], coef[t], out=decay[t])
        carries = [xs[T - 1][0]]  # the state entering chunk 1
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
        kappas = [coef[0, nc - 1] * xs[0][nc - 1]]  # carried into chunk nc-2 (chunk nc-1 is exact)
        for c in range(nc - 2, 0, -1):
            kappas.append(coef[0, c] * torch.addcmul(xs[0][c], decay[0, c], kappas[-1]))
        x[:, :-1].addcmul_(decay[:, :-1], torch.stack(kappas[::-1]))
    return coef[0, 0] * x[0, 0]


def _no_autocast(device: torch.device):
    """Keep the scan in fp32/fp64 under AMP (bmm would otherwise run in half precision)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support
        return contextlib.nullcontext()


@dataclass
class _Problem:
    """The inputs viewed per group: u4, delta4 (b, g, dg, l) as given; the rest in ``dtype``."""

    u4: torch.Tensor
    delta4: torch.Tensor
    At: torch.Tensor  # (g, n, dg): A transposed so channels are innermost
    B: torch.Tensor  # (b, g, n, l)
    C: torch.Tensor
    D: torch.Tensor | None  # (g, dg, 1)
    bias: torch.Tensor | None  # (g, dg, 1)
    softplus: bool
    dtype: torch.dtype

    @classmethod
    def make(cls, u, delta, A, B, C, D, bias, softplus, dtype):
        b, d, length = u.shape
        g, n = B.shape[1], A.shape[1]
        dg = d // g
        return cls(
            u4=u.reshape(b, g, dg, length), delta4=delta.reshape(b, g, dg, length),
            At=A.to(dtype).reshape(g, dg, n).transpose(1, 2).contiguous(),
            B=B.to(dtype).contiguous(), C=C.to(dtype).contiguous(),
            D=None if D is None else D.to(dtype).reshape(g, dg, 1),
            bias=None if bias is None else bias.to(dtype).reshape(g, dg, 1),
            softplus=softplus, dtype=dtype)

    def segment(self, start, stop, T):
        """One segment's inputs: u (a view), pre-softplus z and dt as (b, g, dg, S), and the
        time-major dt, x = dt * u, B and C shaped to broadcast against (T, nc, b, g, n, dg)."""
        u = self.u4[..., start:stop].to(self.dtype)
        z = self.delta4[..., start:stop].to(self.dtype)
        z = z + self.bias if self.bias is not None else z.contiguous()
        dt = F.softplus(z) if self.softplus else z
        return u, z, dt, _Segment(
            dt=_time_major(dt, T).unsqueeze(-2), x=_time_major(dt * u, T).unsqueeze(-2),
            B=_time_major(self.B[..., start:stop], T).unsqueeze(-1),
            C=_time_major(self.C[..., start:stop], T).unsqueeze(-1))


@dataclass
class _Segment:
    dt: torch.Tensor  # (T, nc, b, g, 1, dg)
    x: torch.Tensor  # dt * u, (T, nc, b, g, 1, dg)
    B: torch.Tensor  # (T, nc, b, g, n, 1)
    C: torch.Tensor  # (T, nc, b, g, n, 1)


# State tensors are laid out (T, nc, b, g, n, dg): one step's states are contiguous (the loop
# runs on them), and channels are innermost so that products with A, dt and u vectorise over
# the d/g channels rather than over n = 16 states.


def _buffers(p: _Problem, plan, count):
    """Flat scratch buffers big enough for the largest segment's (steps, b, g, n, dg) states."""
    b, g, dg = p.u4.shape[:3]
    size = max(stop - start for start, stop, _ in plan) * b * g * dg * p.At.shape[1]
    return [torch.empty(size, dtype=p.dtype, device=p.u4.device) for _ in range(count)]


def _views(bufs, p: _Problem, start, stop, T):
    b, g, dg = p.u4.shape[:3]
    n = p.At.shape[1]
    shape = (T, (stop - start) // T, b, g, n, dg)
    size = (stop - start) * b * g * n * dg
    return [None if buf is None else buf[:size].view(shape) for buf in bufs]


def _forward(p: _Problem, plan, n, keep_states):
    b, g, dg, length = p.u4.shape
    y = torch.empty(b, g, dg, length, dtype=p.dtype, device=p.u4.device)
    need_work = any(stop - start > T for start, stop, T in plan)  # only with several chunks
    bufs = _buffers(p, plan, 3 if need_work else 2) + ([] if need_work else [None])
    h, starts = None, []
    for start, stop, T in plan:
        coef, H, work = _views(bufs, p, start, stop, T)
        u, _, _, s = p.segment(start, stop, T)
        torch.mul(s.dt, p.At, out=coef).exp_()
        torch.mul(s.x, s.B, out=H)
        if keep_states:
            starts.append(h)
        h = _scan_(coef, H, h, work).clone()
        m = H.shape[0] * H.shape[1] * b * g
        ys = torch.bmm(s.C.view(m, 1, n), H.view(m, n, dg))  # y_t = <h_t, C_t>
        ys = _channel_major(ys.view(H.shape[:4] + (dg,)))
        if p.D is not None:
            ys.addcmul_(p.D, u)
        y[..., start:stop] = ys
    return y.view(b, g * dg, length), starts


def _backward(gy, p: _Problem, plan, n, starts, u_dtype, delta_dtype):
    b, g, dg, length = p.u4.shape
    device = gy.device
    gy4 = gy.reshape(b, g, dg, length)
    gu = torch.empty(b, g, dg, length, dtype=u_dtype, device=device)
    gdelta = torch.empty(b, g, dg, length, dtype=delta_dtype, device=device)
    gB, gC = torch.empty_like(p.B), torch.empty_like(p.C)
    gAt = torch.zeros_like(p.At)
    gD = None if p.D is None else torch.zeros_like(p.D)
    gbias = None if p.bias is None else torch.zeros_like(p.bias)
    bufs = _buffers(p, plan, 4)
    rho = None
    for (start, stop, T), h0 in zip(reversed(plan), reversed(starts)):
        coef, H, lam, work = _views(bufs, p, start, stop, T)
        nc = H.shape[1]
        u, z, dt, s = p.segment(start, stop, T)
        gy_s = gy4[..., start:stop].to(p.dtype).contiguous()
        gys = _time_major(gy_s, T).unsqueeze(-2)
        xs = s.x

        # Recompute the segment's states h_t (H), keeping the decays exp(dt A) (coef).
        torch.mul(s.dt, p.At, out=coef).exp_()
        torch.mul(xs, s.B, out=H)
        _scan_(coef, H, h0, work)
        # Adjoint lam_t = dL/dh_t = exp(dt_{t+1} A) lam_{t+1} + gy_t C_t, run backwards.
        torch.mul(gys, s.C, out=lam)
        rho = _reverse_scan_(coef, lam, rho, work)

        m = T * nc * b * g
        gCs = torch.bmm(H.view(m, n, dg), gys.view(m, dg, 1))  # sums over the group's channels
        gBs = torch.bmm(lam.view(m, n, dg), xs.view(m, dg, 1))
        gxs = torch.bmm(s.B.view(m, 1, n), lam.view(m, n, dg)).view(xs.shape)
        # q_t = lam_t * exp(dt_t A) * h_{t-1}: the gradient with respect to (dt_t A).
        q = torch.mul(lam, coef, out=work)
        q[1:].mul_(H[:-1])
        q[0, 1:].mul_(H[T - 1, :-1])
        if h0 is None:
            q[0, 0].zero_()
        else:
            q[0, 0].mul_(h0)
        gdts = torch.mul(q, p.At, out=H).sum(-2)  # (T, nc, b, g, dg)
        gAt += q.mul_(s.dt).sum(dim=(0, 1, 2))

        gx = _channel_major(gxs.squeeze(-2))
        gdt = _channel_major(gdts).addcmul_(gx, u)
        gu_s = gx.mul_(dt)
        if p.D is not None:
            gu_s.addcmul_(gy_s, p.D)
            gD += (gy_s * u).sum(dim=(0, 3)).unsqueeze(-1)
        if p.softplus:  # d softplus(z)/dz, linear above torch's threshold of 20
            gdt.mul_(torch.sigmoid(z).masked_fill_(z > 20, 1))
        if gbias is not None:
            gbias += gdt.sum(dim=(0, 3)).unsqueeze(-1)
        gu[..., start:stop] = gu_s
        gdelta[..., start:stop] = gdt
        gB[..., start:stop] = _channel_major(gBs.view(T, nc, b, g, n))
        gC[..., start:stop] = _channel_major(gCs.view(T, nc, b, g, n))
    gA = gAt.transpose(1, 2).reshape(g * dg, n)
    flat = (lambda t: None if t is None else t.reshape(g * dg))
    return gu.view(b, g * dg, length), gdelta.view(b, g * dg, length), gA, gB, gC, flat(gD), flat(gbias)


class _ChunkedScan(torch.autograd.Function):
    """y = selective_scan(u, delta, A, B, C, D, delta_bias, softplus) with B, C 4-D."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus, dtype, plan):
        p = _Problem.make(u, delta, A, B, C, D, delta_bias, softplus, dtype)
        with _no_autocast(u.device):
            y, starts = _forward(p, plan, A.shape[1], keep_states=any(ctx.needs_input_grad[:7]))
        ctx.args = (softplus, dtype, plan, len(starts), D is not None, delta_bias is not None)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, *[s for s in starts if s is not None])
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        u, delta, A, B, C, D, delta_bias, *saved = ctx.saved_tensors
        softplus, dtype, plan, n_starts, has_d, has_bias = ctx.args
        starts = [None] * (n_starts - len(saved)) + list(saved)  # only the first segment starts at 0
        p = _Problem.make(u, delta, A, B, C, D if has_d else None, delta_bias if has_bias else None,
                          softplus, dtype)
        with _no_autocast(u.device):
            gu, gdelta, gA, gB, gC, gD, gbias = _backward(gy, p, plan, A.shape[1], starts,
                                                          u.dtype, delta.dtype)
        cast = (lambda g, t: None if g is None else g.to(t.dtype))
        return (gu, gdelta, cast(gA, A), cast(gB, B), cast(gC, C), cast(gD, D), cast(gbias, delta_bias),
                None, None, None)


def chunked_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *,
                           segment: int | None = None, chunk: int | None = None):
    """Same arguments and result as :func:`vmambax.ops.selective_scan`.

    ``segment`` (steps processed together) and ``chunk`` (steps per chunk inside a segment)
    override the device defaults; they change speed and memory, never the result.
    """
    inputs = (u, delta, A, B, C)
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    b, d, length = u.shape
    plan = _plan(length, b * d * A.shape[1], u.device, segment, chunk)
    y = _ChunkedScan.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), dtype, plan)
    return y.to(u.dtype)
