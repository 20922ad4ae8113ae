"""Keep large freed buffers in the process instead of handing them back to the OS (glibc).

Why: glibc's malloc serves every block above its mmap threshold (128 KiB, adapting up to
32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` on free. A vMambaX forward
allocates and frees buffers of 10-50 MB per layer, so each one is page-faulted in again, page
by page: on the 2-core build machine writing a freshly allocated 12 MB tensor took 6.3 ms,
against 0.6 ms once the memory is reused, and the full model at 512² ran 25-30 % faster with
the allocator tuned (docs/benchmarks.md, "Near the compute floor"). Raising the mmap and trim
thresholds keeps freed blocks on the heap for the next layer, at the price of the process's
resident memory staying at its peak until it exits.

So this is applied by vmambax's own processes only (the command line, the segmentation worker),
never inside a host application such as 3D Slicer, whose memory behaviour is not ours to change.
``VMAMBAX_MALLOC=default`` leaves glibc's defaults (for comparisons, or to return memory early).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "VMAMBAX_MALLOC"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB come from the heap; the heap is trimmed only when 2 GiB at its top are free.
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2 << 30
_applied: bool | None = None


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are in effect.

    A no-op (False) off Linux, on a libc without ``mallopt`` (musl), or with
    ``VMAMBAX_MALLOC=default``; never raises.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").strip().lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the trim threshold is an int, so 2 GiB is clipped to INT_MAX.
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, min(TRIM_THRESHOLD, 2**31 - 1)) == 1 and ok
    _applied = ok
    return ok
