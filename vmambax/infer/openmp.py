"""OpenMP wait policy for command-line runs (must be set before torch is first imported).

PyTorch's CPU kernels use OpenMP; by default its idle threads spin-wait. When the cores are
shared with other work (CI runners, shared servers, a busy laptop), spinning threads steal the
CPU from the threads doing the work: on the 2-core build machine the nano model ran 6x slower
with 2 threads than with ``OMP_WAIT_POLICY=PASSIVE`` (docs/benchmarks.md, Inference). Passive
waiting costs little on an idle machine, so the command line asks for it unless the user set
the variable. Inside a host application (3D Slicer) torch is already loaded and this cannot
apply; there the Segmenter's thread count (idle CPUs) is what avoids oversubscription.
"""

from __future__ import annotations

import os
import sys


def prefer_passive_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` if unset and torch is not loaded yet; True if it applies."""
    if "torch" in sys.modules:
        return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE"
