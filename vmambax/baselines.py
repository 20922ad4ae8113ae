"""Classic PET threshold segmenters, the clinical baselines the network is compared with.

* ``suv_threshold``: every voxel with SUV >= 2.5 (fixed-threshold MTV, e.g. in lymphoma and
  lung-cancer MTV studies).
* ``percent_max``: 41 % of SUVmax per lesion (EANM tumour-imaging guideline 2.0 for MTV): seeds
  are the 26-connected components of SUV >= ``seed_threshold`` (2.5); each is segmented as the
  region connected to its hottest voxel where SUV >= 41 % of that component's SUVmax - the 41 %
  iso-contour around the maximum, as clinical tools draw it, which may be larger than the seed
  component for lesions whose SUVmax is below 2.5/0.41 = 6.1. Growth is limited to within
  ``margin_mm`` (20 mm) of the seed component, like the bounding VOI a reader draws, so a faint
  lesion next to the liver or heart cannot flood into the organ. Components are processed from
  the hottest down; one whose maximum already lies in a region is part of that lesion.

Both segment whatever is hot - heart, brain, kidneys, bladder, inflamed nodes, brown fat - which
is exactly why they are baselines. They operate on the grid of the PET they are given; pass the
PET resampled onto the CT (``segment_pet(..., reference=ct)``) for a label in CT geometry.
"""

from __future__ import annotations

import numpy as np

from vmambax.errors import ConfigError

METHODS = ("suv2.5", "pct41")


def _check_threshold(value: float, name: str, lo: float, hi: float) -> float:
    v = float(value)
    if not np.isfinite(v) or not lo < v <= hi:
        raise ConfigError(f"{name} must be in ({lo:g}, {hi:g}], got {value!r}.")
    return v


def suv_threshold(suv: np.ndarray, threshold: float = 2.5) -> np.ndarray:
    """uint8 mask of SUV >= ``threshold``."""
    threshold = _check_threshold(threshold, "the SUV threshold", 0.0, 1000.0)
    return (np.asarray(suv) >= threshold).astype(np.uint8)


def percent_max(suv: np.ndarray, spacing, percent: float = 41.0, seed_threshold: float = 2.5,
                margin_mm: float = 20.0) -> np.ndarray:
    """uint8 mask: the ``percent`` % of SUVmax iso-contour around each hot spot (module docstring).
    ``spacing``: mm per array axis, for the growth margin."""
    from scipy import ndimage

    percent = _check_threshold(percent, "the percentage of SUVmax", 0.0, 100.0)
    seed_threshold = _check_threshold(seed_threshold, "the seed SUV threshold", 0.0, 1000.0)
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise ConfigError(f"the growth margin must be >= 0 mm, got {margin_mm!r}.")
    suv = np.asarray(suv, dtype=np.float32)
    spacing = np.asarray(spacing, dtype=float)
    structure = np.ones((3,) * suv.ndim, dtype=bool)
    seeds, n = ndimage.label(suv >= seed_threshold, structure=structure)
    out = np.zeros(suv.shape, dtype=np.uint8)
    if n == 0:
        return out
    objects = ndimage.find_objects(seeds)
    peak, maxima = [], []  # per component (ndimage.maximum_position is very slow on big volumes)
    for i, o in enumerate(objects):
        vals = np.where(seeds[o] == i + 1, suv[o], -np.inf)
        j = np.unravel_index(int(np.argmax(vals)), vals.shape)
        peak.append(float(vals[j]))
        maxima.append(tuple(int(a + s.start) for a, s in zip(j, o)))
    grow = [int(np.ceil(margin_mm / s)) for s in spacing]
    for i in np.argsort(-np.asarray(peak), kind="stable"):
        top = maxima[i]
        if out[top]:
            continue  # already inside a hotter lesion's contour
        sl = tuple(slice(max(o.start - g, 0), min(o.stop + g, n_)) for o, g, n_ in zip(objects[i], grow, suv.shape))
        seed = seeds[sl] == i + 1
        # limit growth to margin_mm around the seed component (distance in mm)
        near = ndimage.distance_transform_edt(~seed, sampling=spacing) <= margin_mm
        cand = (suv[sl] >= peak[i] * percent / 100.0) & near
        lab, _ = ndimage.label(cand, structure=structure)
        local_top = tuple(t - s.start for t, s in zip(top, sl))
        out[sl] |= (lab == lab[local_top]).astype(np.uint8)
    return out


def segment_pet(pet_suv, method: str = "suv2.5", *, threshold: float = 2.5, percent: float = 41.0,
                reference=None):
    """Run a baseline on a SimpleITK PET in SUV. With ``reference`` (e.g. the CT), the PET is first
    resampled (linear) onto that grid, so the label comes out in its geometry.
    Returns a uint8 sitk.Image (0/1)."""
    import SimpleITK as sitk

    if method not in METHODS:
        raise ConfigError(f"unknown baseline method {method!r}: use one of {', '.join(METHODS)}.")
    if reference is not None:
        from vmambax.data.resample import resample_to

        pet_suv = resample_to(pet_suv, reference, "linear")
    arr = sitk.GetArrayFromImage(pet_suv)
    if method == "suv2.5":
        mask = suv_threshold(arr, threshold)
    else:
        mask = percent_max(arr, pet_suv.GetSpacing()[::-1], percent=percent, seed_threshold=threshold)
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(pet_suv)
    return out
