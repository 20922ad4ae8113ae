"""The ``chunked`` backend: a vectorised selective scan in plain PyTorch, for CPU and any device.

Maths (spec §7), per channel d with state size n, dt = softplus(delta + delta_bias):

    h_t = exp(dt_t A[d]) * h_{t-1} + dt_t u_t B_t        (B_t, C_t of d's group)
    y_t = <h_t, C_t> + D[d] u_t

How it is computed
------------------
The sequence is cut into *segments* processed one after the other, carrying the state h between
them. Only one segment's (steps, b, d, n) states exist at a time, so memory stays bounded (the
naive (b, d, l, n) tensor is 0.8 GB at b=1, d=768, l=16384, n=16).

On CPU (``_forward_cpu``) each segment is one chunk and runs one tensor op per step over the
b*d*n states, in cache-sized windows on one thread; see that function for the measured reasons.
On GPUs a segment holds ``nc`` *chunks* of ``T`` steps scanned together (one tensor op per step
for all chunks, so few kernel launches); then each chunk's start state is chained from the
previous chunk and added in with the cumulative decay from the chunk start. Decays are only ever
products of factors exp(dt A) in (0, 1] (A < 0) -- never exp(+cumsum) * exp(-cumsum), which
overflows. Passing ``chunk`` on CPU uses the GPU layout there too (the tests do).

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

from vmambax.utils import cpu_threads

# Elements (steps * b * d * n) per segment buffer. CPU: the backward's recompute unit (small
# enough to stay in cache, large enough to amortise per-op overhead; the forward works in its
# own windows below). GPU: large buffers and many chunks for few kernel launches.
_CPU_BUDGET = 1 << 20
_GPU_BUDGET = 1 << 25
_GPU_CHUNK = 64
# CPU forward: states per window (steps * b * d * n). The window's buffers (decays, states,
# 0.5 MB each) stay in one core's L2 cache while the step loop runs over them.
_CPU_WINDOW = 1 << 17
# CPU forward: elements (steps * b * d) of the time-major input block buffers.
_CPU_BLOCK = 1 << 22
# OpenMP splits an elementwise op over threads only from this many elements (ATen's GRAIN_SIZE).
_GRAIN = 32768
# Blocked transposes between (channels, steps) and (steps, channels): torch's one-shot transposed
# copy is 3-5x slower than copying blocks of 64 channels / 1024 steps (x86, `vmambax bench scan`).
_ROW_BLOCK = 64
_STEP_BLOCK = 1024


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
    if T == steps:  # a plain 2-D transpose
        rows = x.reshape(b * g * k, steps)
        return _to_time_major(rows, x.new_empty(steps, b * g * k)).view(T, 1, b, g, k)
    return x.unflatten(-1, (-1, T)).permute(4, 3, 0, 1, 2).contiguous()


def _channel_major(x: torch.Tensor) -> torch.Tensor:
    """Contiguous (T, nc, b, g, k) -> contiguous (b, g, k, nc*T); inverse of ``_time_major``."""
    T, nc, b, g, k = x.shape
    if nc == 1:
        return _to_channel_major(x.view(T, b * g * k), x.new_empty(b * g * k, T)).view(b, g, k, T)
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


def _to_time_major(x: torch.Tensor, out: torch.Tensor, add=None) -> torch.Tensor:
    """``out`` (steps, rows) = x.T (+ add, per row), for (rows, steps) ``x``; on CPU in blocks of
    rows, elsewhere in one op."""
    for i in range(0, x.shape[0], _ROW_BLOCK if x.is_cpu else x.shape[0]):
        j = slice(i, i + _ROW_BLOCK)
        if add is None:
            out[:, j].copy_(x[j].t())
        else:
            torch.add(x[j].t(), add[j], out=out[:, j])
    return out


def _to_channel_major(x: torch.Tensor, out: torch.Tensor, u=None, D=None) -> torch.Tensor:
    """``out`` (rows, steps) = x.T (+ D * u, for (rows,) ``D`` and (rows, steps) ``u``), for
    (steps, rows) ``x``; on CPU in blocks of steps, elsewhere in one op."""
    for s in range(0, x.shape[0], _STEP_BLOCK if x.is_cpu else x.shape[0]):
        j = slice(s, s + _STEP_BLOCK)
        if D is None:
            out[:, j].copy_(x[j].t())
        else:
            torch.addcmul(x[j].t(), u[:, j], D, out=out[:, j])
    return out


def _forward_cpu(p: _Problem, plan, keep_states):
    """The CPU forward for one-chunk segments; same result and saved states as ``_forward``.

    Why it is laid out like this (each point measured with ``vmambax bench scan``):
    * The sequence is prepared in *blocks* of ~``_CPU_BLOCK`` elements: dt (after bias and
      softplus) and x = dt * u are made time-major into two reused buffers, so memory stays
      O(b*d*block) and no fresh pages are touched per block.
    * States are computed in *windows* of ~``_CPU_WINDOW`` elements that stay in cache from the
      moment exp(dt A) and x B are written until the step loop and the C contraction read them.
    * A step touches b*d*n states; below ``_GRAIN`` OpenMP runs it on one thread anyway, so the
      whole window loop then runs on one thread: the data stays in that core's cache, and no op
      pays for waking the thread pool (about 80 us per op with OMP_WAIT_POLICY=PASSIVE, which
      the ``vmambax`` command sets).
    * y_t is written over dt_t once its window is done, then copied out channel-major.
    """
    b, g, dg, length = p.u4.shape
    n = p.At.shape[1]
    rows = b * g * dg
    window = max(8, _CPU_WINDOW // (rows * n))
    block = min(length, max(window, _CPU_BLOCK // rows))
    delta2, u2 = p.delta4.reshape(rows, length), p.u4.reshape(rows, length)
    bias = None if p.bias is None else p.bias.view(g * dg).repeat(b)  # per row of (b, g, dg)
    D = None if p.D is None else p.D.view(g * dg, 1).repeat(b, 1)
    y = torch.empty(rows, length, dtype=p.dtype)
    dt_buf = torch.empty(block, rows, dtype=p.dtype)
    x_buf = torch.empty_like(dt_buf)
    coef = torch.empty(window, b, g, n, dg, dtype=p.dtype)
    cs = coef.unbind(0)
    # States alternate between two buffers, so the last state of one window is read by the next
    # straight from where it was computed.
    Hs = (torch.empty_like(coef), torch.empty_like(coef))
    hss = (Hs[0].unbind(0), Hs[1].unbind(0))
    steps = [list(zip(hs[1:], cs[1:], hs[:-1])) for hs in hss]  # (h_t, coef_t, h_t-1), t >= 1
    h = None  # the state entering the next window (None: zeros)
    flip = 0
    seg_starts = {start for start, _, _ in plan} if keep_states else set()
    starts = []
    one_thread = rows * n < _GRAIN
    for b0 in range(0, length, block):
        b1 = min(length, b0 + block)
        k0 = b1 - b0
        dt = _to_time_major(delta2[:, b0:b1], dt_buf[:k0], add=bias)  # (steps, b*g*dg)
        if p.softplus:  # softplus(z) = log(exp(z) + 1); logaddexp is 2x faster than F.softplus
            torch.logaddexp(dt, dt.new_zeros(()), out=dt)
        x = _to_time_major(u2[:, b0:b1], x_buf[:k0]).mul_(dt)
        Bt = p.B[..., b0:b1].permute(3, 0, 1, 2).contiguous().unsqueeze(-1)  # (steps, b, g, n, 1)
        Ct = p.C[..., b0:b1].permute(3, 0, 1, 2).contiguous().view(k0 * b * g, 1, n)
        dt5, x5 = dt.view(k0, b, g, 1, dg), x.view(k0, b, g, 1, dg)
        y3 = dt.view(k0 * b * g, 1, dg)  # y_t is written over dt_t
        # With gradients, windows never straddle a segment start: the backward needs its state.
        cuts = [0] + sorted(c - b0 for c in seg_starts if b0 < c < b1) + [k0]
        windows = [(w0, min(c1, w0 + window)) for c0, c1 in zip(cuts, cuts[1:])
                   for w0 in range(c0, c1, window)]
        sizes = [w1 - w0 for w0, w1 in windows]
        pieces = zip(windows, dt5.split(sizes), x5.split(sizes), Bt.split(sizes),
                     Ct.split([k * b * g for k in sizes]), y3.split([k * b * g for k in sizes]))
        with cpu_threads(1 if one_thread else None):
            for (w0, w1), dt_w, x_w, B_w, C_w, y_w in pieces:
                if b0 + w0 in seg_starts:
                    starts.append(None if h is None else h.clone())
                k = w1 - w0
                H, hs, loop = Hs[flip], hss[flip], steps[flip]
                flip = 1 - flip
                torch.mul(dt_w, p.At, out=coef[:k]).exp_()  # exp(dt_t A)
                torch.mul(x_w, B_w, out=H[:k])  # dt_t u_t B_t
                if h is not None:
                    hs[0].addcmul_(cs[0], h)
                for h_t, c_t, h_prev in loop[:k - 1]:
                    h_t.addcmul_(c_t, h_prev)
                h = hs[k - 1]
                torch.bmm(C_w, H[:k].view(k * b * g, n, dg), out=y_w)  # <h_t, C_t>
        _to_channel_major(dt, y[:, b0:b1], u2[:, b0:b1], D)  # y + D u
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
            keep = any(ctx.needs_input_grad[:7])
            if u.device.type == "cpu" and all(stop - start == T for start, stop, T in plan):
                y, starts = _forward_cpu(p, plan, keep)
            else:
                y, starts = _forward(p, plan, A.shape[1], keep)
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
