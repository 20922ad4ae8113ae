"""The ``native`` backend: the selective scan as a compiled C loop (vmambax/ops/_native/scan.c).

The library is plain C99 (no Python C-API, no torch ABI) loaded with ctypes, which releases the
GIL during the call. It is built by ``pip install`` (setup.py), by the Slicer extension's CMake,
or by ``python -m vmambax.ops.build_native``; ``VMAMBAX_NATIVE_LIB`` points the loader at another
file. When it is missing or does not load, ``unavailable_reason()`` says why and ``auto`` uses
``chunked``.

What the wrapper does around the C calls: float32 contiguous copies where needed (float64 inputs
go to ``chunked``), A padded by zeros to np = 4, 8 or a multiple of 16 states (the C side makes
B and C time-major and padded the same way; padded states have A = B = C = 0 and stay 0), and
the thread count from ``torch.get_num_threads()``. Threads split the channels; the result does
not depend on their number. The backward (``_NativeScan``) recomputes the states channel by channel and
returns the gradients of u, delta, A, B, C, D and delta_bias, like the chunked backend.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from vmambax.ops.build_native import ENV_LIB  # noqa: E402 - one name for the loader and the builder

ENV_ISA = "VMAMBAX_NATIVE_ISA"  # "baseline" forces the portable kernels (tests compare both); see ISA_CODES
ABI_VERSION = 2
# Channel-steps x states per thread below which extra threads cost more than they save.
_MIN_WORK_PER_THREAD = 1 << 18

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int


def library_path() -> Path:
    """Where the loader looks: ``$VMAMBAX_NATIVE_LIB``, else next to the C sources."""
    from vmambax.ops.build_native import SOURCE_DIR, library_name  # lazily: it is also a __main__

    env = os.environ.get(ENV_LIB, "").strip()
    # Absolute, so that dlopen never searches LD_LIBRARY_PATH or the system folders for a bare name.
    return Path(env).expanduser().resolve() if env else (SOURCE_DIR / library_name()).resolve()


def _from_env() -> str | None:
    return os.environ.get(ENV_LIB, "").strip() or None


@functools.lru_cache(maxsize=None)
def _load_path(path: str, from_env: str | None = None):
    """``(library, None)`` or ``(None, reason)`` for one file; loaded once per process.
    ``from_env``: the value of VMAMBAX_NATIVE_LIB the path came from (named in the reasons:
    rebuilding cannot fix a variable that points at the wrong file)."""
    if from_env is not None:
        where = f"{ENV_LIB}={from_env} (the file {path})"
        fix = (f"point {ENV_LIB} at a library built by `python -m vmambax.ops.build_native "
               f"--out-dir DIR`, or unset it to use the one installed with vmambax")
    else:
        where = f"the compiled library {path}"
        fix = "build it with `python -m vmambax.ops.build_native`"
    if not os.path.isfile(path):
        missing = "does not exist" if from_env is not None else "is missing (no C compiler at install time?)"
        return None, f"{where} {missing}; {fix}"
    try:
        lib = ctypes.CDLL(path)
        lib.vmx_scan_abi_version.restype = _INT
        version = lib.vmx_scan_abi_version()
    except (OSError, AttributeError) as exc:
        return None, f"{where} does not load ({exc}); {fix.replace('build it', 'rebuild it')}"
    if version != ABI_VERSION:
        return None, (f"{where} is version {version}, this vmambax needs {ABI_VERSION}; "
                      f"{fix.replace('build it', 'rebuild it')}")
    lib.vmx_scan_exp.restype = None
    lib.vmx_scan_exp.argtypes = [_P, _P, _I64, _INT]
    lib.vmx_scan_isa.restype = ctypes.c_char_p
    lib.vmx_scan_isa.argtypes = [_INT]
    lib.vmx_scan_forward.restype = _INT
    lib.vmx_scan_forward.argtypes = [_P] * 8 + [_I64] * 6 + [_INT] * 3
    lib.vmx_scan_backward.restype = _INT
    lib.vmx_scan_backward.argtypes = [_P] * 15 + [_I64] * 6 + [_INT] * 3
    return lib, None


def _load():
    return _load_path(str(library_path()), _from_env())


def unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """Why ``native`` cannot run (None when it can); it runs on CPU tensors only."""
    if device is not None and torch.device(device).type != "cpu":
        return f"native runs on CPU tensors only (tensors are on {torch.device(device).type})"
    return _load()[1]


#: VMAMBAX_NATIVE_ISA values: the kernels' code in the C library (-1: the best this CPU runs).
ISA_CODES = {"auto": -1, "baseline": 0, "avx2": 1, "avx2+fma": 1}


def _isa_setting() -> str:
    return os.environ.get(ENV_ISA, "").strip().lower() or "auto"


def supported_isas() -> list[str]:
    """The instruction sets the library's kernels can use on this CPU ("baseline" always)."""
    lib = _load()[0]
    found = ["baseline"]
    if lib is not None and lib.vmx_scan_isa(1).decode() == "avx2+fma":
        found.append("avx2+fma")
    return found


def isa_problem() -> str | None:
    """Why ``VMAMBAX_NATIVE_ISA`` cannot be honoured (None when it can): an unknown value, or an
    instruction set this CPU (or this build of the library) does not have. The kernels would
    otherwise fall back to the baseline without a word."""
    value = _isa_setting()
    if value not in ISA_CODES:
        return (f"{ENV_ISA}={os.environ.get(ENV_ISA, '').strip()!r} is not one of "
                f"{', '.join(sorted(ISA_CODES))}; set one of these, or unset it (auto: the best "
                f"this CPU runs)")
    if ISA_CODES[value] == 1 and _load()[0] is not None and "avx2+fma" not in supported_isas():
        return (f"{ENV_ISA}={value} asks for AVX2+FMA kernels, which this CPU (or this build of "
                f"the library) does not have; it runs: {', '.join(supported_isas())}. Unset "
                f"{ENV_ISA} or set it to baseline")
    return None


def _isa_code() -> int:
    problem = isa_problem()
    if problem:
        from vmambax.errors import ConfigError

        raise ConfigError(problem)
    return ISA_CODES[_isa_setting()]


def describe() -> str:
    """The library file and the instruction set its kernels use on this CPU."""
    lib, reason = _load()
    if lib is None:
        return f"unavailable: {reason}"
    problem = isa_problem()
    if problem:
        return f"{library_path()}; {problem}"
    return f"{library_path()}, {lib.vmx_scan_isa(_isa_code()).decode()} kernels"


def kernel_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) computed by the library's own exp (float32, CPU); for tests."""
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(reason)
    x = x.detach().to(torch.float32).contiguous()
    y = torch.empty_like(x)
    lib.vmx_scan_exp(x.data_ptr(), y.data_ptr(), x.numel(), _isa_code())
    return y


def _padded(n: int) -> int:
    return 4 if n <= 4 else 8 if n <= 8 else -(-n // 16) * 16


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _f32(t: torch.Tensor | None):
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _threads(work: int) -> int:
    return max(1, min(torch.get_num_threads(), work // _MIN_WORK_PER_THREAD))


def _check(rc: int, what: str) -> None:
    if rc == 2:
        raise MemoryError(f"native selective scan {what}: out of memory for the per-thread buffers")
    if rc != 0:
        raise RuntimeError(f"native selective scan {what}: the library rejected the sizes (code {rc})")


class _NativeScan(torch.autograd.Function):
    """y = selective_scan(u, delta, A, B, C, D, delta_bias, softplus) with B, C 4-D; float32."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus):
        lib = _load()[0]
        b, d, length = u.shape
        g, n = B.shape[1], A.shape[1]
        np_ = _padded(n)
        u32, delta32 = _f32(u), _f32(delta)
        A32 = A.detach().new_zeros((d, np_), dtype=torch.float32)
        A32[:, :n] = A.detach()
        B32, C32 = _f32(B), _f32(C)
        D32, bias32 = _f32(D), _f32(delta_bias)
        y = torch.empty(b, d, length, dtype=torch.float32)
        threads = _threads(b * d * length * np_)
        _check(lib.vmx_scan_forward(u32.data_ptr(), delta32.data_ptr(), A32.data_ptr(), B32.data_ptr(),
                                    C32.data_ptr(), _ptr(D32), _ptr(bias32), y.data_ptr(),
                                    b, d, g, n, length, np_, int(softplus), threads, _isa_code()), "forward")
        ctx.softplus = softplus
        ctx.save_for_backward(u32, delta32, A32, B32, C32, D32, bias32)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        lib = _load()[0]
        u32, delta32, A32, B32, C32, D32, bias32 = ctx.saved_tensors
        b, d, length = u32.shape
        g, n, np_ = B32.shape[1], B32.shape[2], A32.shape[1]
        gy32 = _f32(gy)
        gu, gdelta = torch.empty_like(u32), torch.empty_like(u32)
        gA = torch.empty_like(A32)
        gB, gC = torch.empty_like(B32), torch.empty_like(C32)
        gD = None if D32 is None else torch.empty_like(D32)
        gbias = None if bias32 is None else torch.empty_like(bias32)
        threads = _threads(3 * b * d * length * np_)
        _check(lib.vmx_scan_backward(
            u32.data_ptr(), delta32.data_ptr(), A32.data_ptr(), B32.data_ptr(), C32.data_ptr(),
            _ptr(D32), _ptr(bias32), gy32.data_ptr(), gu.data_ptr(), gdelta.data_ptr(),
            gA.data_ptr(), gB.data_ptr(), gC.data_ptr(), _ptr(gD), _ptr(gbias),
            b, d, g, n, length, np_, int(ctx.softplus), threads, _isa_code()), "backward")
        return gu, gdelta, gA[:, :n], gB, gC, gD, gbias, None


def native_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Same arguments and result as :func:`vmambax.ops.selective_scan`; CPU tensors.

    float64 inputs are computed by the chunked backend (the C kernels are float32 only).
    """
    from vmambax.ops.selective_scan import _check as check_inputs  # lazily: it imports this module

    # Direct calls too: the C code trusts the shapes (C read with B's group count, etc.).
    check_inputs(u, delta, A, B, C, D, delta_bias)
    inputs = (u, delta, A, B, C, D, delta_bias)
    if any(t is not None and t.dtype == torch.float64 for t in inputs):
        from vmambax.ops.chunked import chunked_selective_scan

        return chunked_selective_scan(u, delta, A, B, C, D=D, delta_bias=delta_bias,
                                      delta_softplus=delta_softplus)
    reason = unavailable_reason(u.device)
    if reason is not None:  # callers check first; a direct call gets the reason
        raise RuntimeError(reason)
    B4 = B.unsqueeze(1) if B.dim() == 3 else B
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
    with torch.autocast("cpu", enabled=False):
        y = _NativeScan.apply(u, delta, A, B4, C4, D, delta_bias, bool(delta_softplus))
    return y.to(u.dtype)
