"""Resampling one image onto another's grid in physical (patient) space.

PET and CT of a PET/CT study share the scanner's patient coordinate system, so the PET is mapped
onto the CT voxels through physical coordinates (origin, spacing, direction), never through
voxel indices: linear interpolation for PET intensities, nearest neighbour for labels, 0
outside the PET's field of view. Before resampling, the physical bounding boxes are compared:
no overlap is an error (different studies, or unregistered images), partial overlap is reported.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from vmambax.errors import InputError

PARTIAL_OVERLAP_WARN = 0.9  # warn below this fraction of the reference covered


class PartialOverlapWarning(UserWarning):
    """The moving image covers only part of the reference grid."""


def physical_bounds(image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical box ``(lo, hi)`` in mm covering all voxels (to their outer edges)."""
    size = image.GetSize()
    corners = []
    for corner in itertools.product(*[(-0.5, s - 0.5) for s in size]):
        corners.append(image.TransformContinuousIndexToPhysicalPoint(corner))
    pts = np.array(corners)
    return pts.min(axis=0), pts.max(axis=0)


def _span(lo: np.ndarray, hi: np.ndarray) -> str:
    return " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(lo, hi)) + " mm"


def overlap_fraction(image, reference) -> float:
    """Fraction of ``reference``'s physical box covered by ``image``'s box (0..1)."""
    lo_r, hi_r = physical_bounds(reference)
    lo_i, hi_i = physical_bounds(image)
    inter = np.clip(np.minimum(hi_r, hi_i) - np.maximum(lo_r, lo_i), 0, None)
    vol_r = float(np.prod(hi_r - lo_r))
    return float(np.prod(inter)) / vol_r if vol_r > 0 else 0.0


def check_overlap(image, reference, names: tuple[str, str] = ("PET", "CT")) -> float:
    """Raise ``InputError`` when the two do not overlap; return the covered fraction."""
    fraction = overlap_fraction(image, reference)
    if fraction <= 0.0:
        lo_r, hi_r = physical_bounds(reference)
        lo_i, hi_i = physical_bounds(image)
        raise InputError(
            f"{names[0]} and {names[1]} do not overlap: {names[1]} spans {_span(lo_r, hi_r)}, "
            f"{names[0]} spans {_span(lo_i, hi_i)} (patient x, y, z). Are they from the same "
            "study and registered? Load the PET and CT of one PET/CT acquisition.")
    return fraction


def resample_to(image, reference, interpolator: str = "linear", *, default_value: float = 0.0,
                names: tuple[str, str] = ("PET", "CT"), warn_partial: bool = True):
    """``image`` resampled onto ``reference``'s grid in physical space.

    ``interpolator``: ``"linear"`` (float32 output, for intensities) or ``"nearest"`` (keeps the
    pixel type, for labels). Raises ``InputError`` when the two do not overlap; warns
    (``PartialOverlapWarning``) when ``image`` covers less than 90 % of ``reference``.
    """
    import SimpleITK as sitk

    modes = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
    if interpolator not in modes:
        raise InputError(f"Unknown interpolator {interpolator!r}; use 'linear' or 'nearest'.")
    fraction = check_overlap(image, reference, names)
    if warn_partial and fraction < PARTIAL_OVERLAP_WARN:
        warnings.warn(partial_overlap_message(fraction, names), PartialOverlapWarning,
                      stacklevel=2)
    if interpolator == "linear":
        image = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.Resample(image, reference, sitk.Transform(), modes[interpolator],
                         float(default_value), image.GetPixelID())


def partial_overlap_message(fraction: float, names: tuple[str, str] = ("PET", "CT")) -> str:
    return (f"The {names[0]} covers only {fraction:.0%} of the {names[1]} volume; outside it the "
            f"{names[0]} is taken as 0, so no tumour can be found there.")
