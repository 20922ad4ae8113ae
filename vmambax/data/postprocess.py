"""Label post-processing a model may ask for (its ``InputSpec.postprocess``)."""

from __future__ import annotations

import numpy as np


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a 0/1 volume (ties: the first found); an empty
    mask stays empty. For models trained where each case holds one tumour: it removes the
    scattered false positives that such a model's threshold lets through."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask.astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(np.argmax(sizes))).astype(np.uint8)


def apply_postprocess(mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "none":
        return mask
    if mode == "largest":
        return keep_largest_component(mask)
    raise ValueError(f"unknown post-processing {mode!r}")
