"""The ``mamba_ssm`` backend: the CUDA kernel of the mamba-ssm package, when it is installed.

mamba-ssm's ``selective_scan_fn`` takes the same arguments as ours, with B and C grouped as
``(b, g, n, l)`` and channel d in group ``d // (channels // g)`` -- the same convention.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def _load():
    """Return ``(selective_scan_fn, None)`` or ``(None, reason)``; imported once per process."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, but also OSError/RuntimeError from CUDA libraries
        return None, f"{type(exc).__name__}: {exc}"
    return selective_scan_fn, None


def unavailable_reason(device: torch.device) -> str | None:
    """Why the backend cannot run on ``device`` (None when it can)."""
    if device.type != "cuda":
        return f"mamba_ssm runs on CUDA devices only (tensors are on {device.type})"
    if not torch.cuda.is_available():
        return "CUDA is not available in this PyTorch build or machine"
    fn, reason = _load()
    if fn is None:
        return (f"the mamba-ssm package does not import ({reason}); build it with "
                "`MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation mamba-ssm causal-conv1d`")
    return None


def mamba_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Same arguments and result as :func:`vmambax.ops.selective_scan`; CUDA tensors only."""
    fn, reason = _load()
    if fn is None:  # callers check unavailable_reason() first
        raise RuntimeError(reason)
    dtype = u.dtype
    # Run the kernel in fp32 whatever the input dtype, as VMamba's wrapper does under AMP.
    f32 = [None if t is None else t.float() for t in (u, delta, A, B, C, D, delta_bias)]
    u, delta, A, B, C, D, delta_bias = f32
    y = fn(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=bool(delta_softplus))
    return y.to(dtype)
