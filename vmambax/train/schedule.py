"""Per-step learning-rate schedule of spec §8 (cosine to min_factor*lr, optional linear warm-up).

``total_steps`` must be the number of optimiser steps *this process* takes, i.e. computed from the
per-process loader length. The reference used floor(N_train / batch) and ignored the GPU count, so
on N GPUs its cosine only covered 1/N of its length (spec §12.5); the engine passes Lightning's
``trainer.estimated_stepping_batches``, which accounts for world size, accumulation and limits.
"""

from __future__ import annotations

import math

WARMUP_START = 1e-3  # warm-up starts at 1e-3 * lr, as the reference's warm-up did


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, min_factor: float = 1e-6) -> float:
    """Multiplier of the base lr before optimiser step ``step`` (0-based)."""
    if total_steps <= 0:
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0), span)  # hold the floor if a run goes past its length
    return 0.5 * (1 + math.cos(math.pi * t / span)) * (1 - min_factor) + min_factor
