"""The device choices both panels offer (one list, so Segment and Train never disagree)."""

from __future__ import annotations


def available_devices() -> list[str]:
    """``auto`` and ``cpu``, plus ``cuda`` only where PyTorch sees a GPU."""
    from vmambax.deps import cuda_available

    return ["auto", "cpu"] + (["cuda"] if cuda_available() else [])
