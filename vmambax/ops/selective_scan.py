"""Selective scan (Mamba S6) with the reference signature and interchangeable backends.

Backends (all compute the same function, spec §7):

* ``native``    -- a compiled C loop over the sequence (``vmambax.ops.native``); CPU, float32
  (float64 inputs go to ``chunked``). Present when its library was built (pip install, CMake or
  ``python -m vmambax.ops.build_native``); ``available_backends`` lists it only then.
* ``chunked``   -- vectorised, memory-bounded PyTorch (``vmambax.ops.chunked``); any device.
* ``mamba_ssm`` -- mamba-ssm's CUDA kernel (``vmambax.ops.mamba_cuda``); CUDA + package only.
* ``sequential`` -- a plain loop over the sequence (``vmambax.ops.sequential``); the test oracle.
* ``auto``      -- ``mamba_ssm`` for CUDA tensors when the package imports; ``native`` for CPU
  tensors when its library loads; else ``chunked``.

Choose with ``selective_scan(..., backend=NAME)`` or the environment variable
``VMAMBAX_SCAN_BACKEND=NAME``; the argument wins. ``active_backend(device)`` reports the choice.
"""

from __future__ import annotations

import os

import torch

from vmambax.errors import ConfigError, InputError
from vmambax.ops import mamba_cuda, native
from vmambax.ops.chunked import chunked_selective_scan
from vmambax.ops.native import native_selective_scan
from vmambax.ops.sequential import sequential_selective_scan

BACKENDS = ("auto", "chunked", "mamba_ssm", "native", "sequential")
ENV_VAR = "VMAMBAX_SCAN_BACKEND"

_IMPLEMENTATIONS = {
    "chunked": chunked_selective_scan,
    "mamba_ssm": mamba_cuda.mamba_selective_scan,
    "native": native_selective_scan,
    "sequential": sequential_selective_scan,
}


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Concrete backends that can run on ``device`` (default: CUDA if available, else CPU), the
    one ``auto`` prefers first."""
    device = torch.device(device) if device is not None else _default_device()
    names = ["chunked", "sequential"]
    if native.unavailable_reason(device) is None:
        names.insert(0, "native")
    if mamba_cuda.unavailable_reason(device) is None:
        names.insert(0, "mamba_ssm")
    return names


def unavailable_reasons(device: torch.device | str | None = None) -> dict[str, str]:
    """Why the optional backend made for ``device``'s type (native: CPU, mamba_ssm: CUDA) cannot
    run there: {name: reason}, empty when it can."""
    device = torch.device(device) if device is not None else _default_device()
    module = {"cpu": ("native", native), "cuda": ("mamba_ssm", mamba_cuda)}.get(device.type)
    reason = module[1].unavailable_reason(device) if module else None
    return {} if reason is None else {module[0]: reason}


def _requested(backend: str | None) -> tuple[str, str]:
    """The requested name, normalised, and where it came from (for error messages)."""
    if backend is not None:
        source, name = "backend=", backend
    else:
        source, name = ENV_VAR, os.environ.get(ENV_VAR, "")
        if not name.strip():
            return "auto", "default"
    key = str(name).strip().lower().replace("-", "_")
    if key not in BACKENDS:
        raise ConfigError(f"unknown selective-scan backend {name!r} (from {source}); "
                          f"choose one of: {', '.join(BACKENDS)}")
    return key, source


def _resolve(backend: str | None, device: torch.device) -> str:
    name, source = _requested(backend)
    if name == "auto":
        if mamba_cuda.unavailable_reason(device) is None:
            return "mamba_ssm"
        return "native" if native.unavailable_reason(device) is None else "chunked"
    if name in ("mamba_ssm", "native"):
        reason = (mamba_cuda if name == "mamba_ssm" else native).unavailable_reason(device)
        if reason is not None:
            raise ConfigError(f"selective-scan backend '{name}' (from {source}) is not available: "
                              f"{reason}. Available here: {', '.join(available_backends(device))}; "
                              f"or use 'auto'.")
    return name


def _checked(name: str) -> str:
    """``name``, after refusing a VMAMBAX_NATIVE_ISA the native kernels cannot honour."""
    problem = native.isa_problem() if name == "native" else None
    if problem:
        raise ConfigError(problem)
    return name


def fallback_note(device: torch.device | str | None = None) -> str | None:
    """What the user should be told when ``auto`` fell back to the slower ``chunked`` scan on
    this device because its fast backend is missing (None otherwise): on a CPU the native
    library is several times faster, so its absence is worth a warning, not only "scan: chunked"."""
    device = torch.device(device) if device is not None else _default_device()
    if _requested(None)[0] != "auto" or device.type != "cpu":
        return None
    reason = native.unavailable_reason(device)
    if reason is None:
        return None
    return (f"the native CPU selective scan is not available, so the slower chunked scan runs "
            f"(several times slower): {reason}")


def active_backend(device: torch.device | str | None = None) -> str:
    """The backend ``selective_scan`` uses for tensors on ``device`` (default: CUDA if available,
    else CPU), honouring ``VMAMBAX_SCAN_BACKEND``."""
    return _checked(_resolve(None, torch.device(device) if device is not None else _default_device()))


def _check(u, delta, A, B, C, D, delta_bias):
    def fail(what):
        raise InputError(f"selective_scan: {what}. Expected u, delta (b, d, l); A (d, n); "
                         f"B, C (b, g, n, l) or (b, n, l) with g dividing d; D, delta_bias (d,).")

    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "delta_bias": delta_bias}
    for name, t in tensors.items():
        if t is not None and not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            fail(f"{name} must be a floating-point tensor, got {type(t).__name__}"
                 + (f" of {t.dtype}" if isinstance(t, torch.Tensor) else ""))
    if u.dim() != 3:
        fail(f"u has shape {tuple(u.shape)}")
    b, d, length = u.shape
    if 0 in u.shape or 0 in A.shape:
        fail(f"empty input: u has shape {tuple(u.shape)}, A {tuple(A.shape)}")
    if delta.shape != u.shape:
        fail(f"delta has shape {tuple(delta.shape)} but u has {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        fail(f"A has shape {tuple(A.shape)} for d = {d}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() not in (3, 4) or t.shape[0] != b or t.shape[-2] != n or t.shape[-1] != length:
            fail(f"{name} has shape {tuple(t.shape)} for b = {b}, n = {n}, l = {length}")
        if t.dim() == 4 and (t.shape[1] < 1 or d % t.shape[1]):
            fail(f"{name} has {t.shape[1]} groups, which does not divide d = {d}")
    groups_b, groups_c = (t.shape[1] if t.dim() == 4 else 1 for t in (B, C))
    if groups_b != groups_c:  # the backends index C with B's group count
        fail(f"B has {groups_b} group{'s' * (groups_b != 1)} but C has {groups_c} "
             f"(a 3-D B or C counts as 1); give both the same number of groups")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d,):
            fail(f"{name} has shape {tuple(t.shape)} for d = {d}")
    devices = {t.device for t in tensors.values() if t is not None}
    if len(devices) > 1:
        raise InputError(f"selective_scan: inputs are on different devices ({', '.join(map(str, devices))}); "
                         f"move them to one device.")


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend=None):
    """u, delta: (b, d, l); A: (d, n); B, C: (b, g, n, l) or (b, n, l); D, delta_bias: (d,).

    Computes dt = softplus(delta + delta_bias) (softplus only if ``delta_softplus``),
    h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, y_t = <h_t, C_t> + D u_t, with channel d using
    group d // (d / g) of B and C. Works in fp32 (fp64 if an input is fp64) and returns (b, d, l)
    in u's dtype. Differentiable with respect to every tensor argument.
    """
    _check(u, delta, A, B, C, D, delta_bias)
    name = _resolve(backend, u.device)
    return _IMPLEMENTATIONS[name](u, delta, A, B, C, D=D, delta_bias=delta_bias,
                                  delta_softplus=delta_softplus)
