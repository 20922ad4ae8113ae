"""PET quantification of segmented lesions: SUVmax, SUVmean, SUVpeak, MTV and TLG.

Lesions are the 26-connected components of the mask. Per lesion:

* SUVmax, SUVmean over the lesion's voxels; MTV (metabolic tumour volume) = voxel count x voxel
  volume, in mL; TLG (total lesion glycolysis) = SUVmean x MTV.
* SUVpeak (PERCIST 1.0, Wahl et al. 2009): the highest mean SUV in a 1 cm^3 sphere (radius
  6.2 mm) centred on any voxel of the lesion. The sphere average uses every voxel whose centre
  lies within 6.2 mm, inside the lesion or not (as PERCIST and 3D Slicer's PET-IndiC do); near
  the image border only voxels inside the image count.

Totals: number of lesions, summed MTV and TLG, SUVmax and SUVpeak over all lesions, and SUVmean
over all lesion voxels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PEAK_RADIUS_MM = 6.2  # (3 / (4 pi) cm^3)^(1/3) = 0.620 cm: a 1 cm^3 sphere


def sphere_kernel(spacing: Sequence[float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean kernel of the voxels whose centres lie within ``radius_mm`` of the centre voxel."""
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(g * g for g in grids) <= radius_mm ** 2 + 1e-9


def _as_arrays(mask, pet_suv, spacing):
    """Accept SimpleITK images (same grid) or numpy arrays + spacing per array axis."""
    origin_info = None
    if hasattr(mask, "GetSize"):
        import SimpleITK as sitk

        if not hasattr(pet_suv, "GetSize"):
            raise ValueError("give both the mask and the PET as SimpleITK images, or both as arrays")
        if mask.GetSize() != pet_suv.GetSize() or not np.allclose(mask.GetSpacing(), pet_suv.GetSpacing(), rtol=1e-4) \
                or not np.allclose(mask.GetOrigin(), pet_suv.GetOrigin(), atol=1e-2):
            raise ValueError("the mask and the PET must be on the same grid (resample the PET onto the mask first)")
        spacing = mask.GetSpacing()[::-1]
        origin_info = mask
        mask, pet_suv = sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(pet_suv)
    mask, pet = np.asarray(mask) != 0, np.asarray(pet_suv, dtype=np.float64)
    if mask.shape != pet.shape:
        raise ValueError(f"mask {mask.shape} and PET {pet.shape} differ in shape")
    if spacing is None:
        raise ValueError("spacing (mm per array axis) is needed to compute volumes and SUVpeak")
    return mask, pet, tuple(float(s) for s in spacing), origin_info


def _peak(pet: np.ndarray, region: np.ndarray, sl: tuple[slice, ...], kernel: np.ndarray) -> float:
    """Max over the region's voxels of the kernel-mean SUV (normalised by the in-image voxels)."""
    from scipy.signal import fftconvolve

    half = [k // 2 for k in kernel.shape]
    lo = [s.start - h for s, h in zip(sl, half)]
    hi = [s.stop + h for s, h in zip(sl, half)]
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, pet.shape))
    pad = [(max(a, 0) - a, b - min(b, n)) for a, b, n in zip(lo, hi, pet.shape)]
    vals = np.pad(pet[src], pad)
    valid = np.pad(np.ones(pet[src].shape), pad)  # 0 outside the image: those voxels do not count
    k = kernel.astype(np.float64)
    num = fftconvolve(vals, k, mode="same")
    den = fftconvolve(valid, k, mode="same")
    inner = tuple(slice(h, h + (s.stop - s.start)) for h, s in zip(half, sl))
    mean = num[inner] / np.maximum(den[inner], 1e-9)
    return float(mean[region].max())


def quantify_lesions(mask, pet_suv, spacing: Sequence[float] | None = None,
                     peak_radius_mm: float = PEAK_RADIUS_MM) -> dict:
    """Per-lesion and total PET quantification (see the module docstring).

    ``mask`` and ``pet_suv``: SimpleITK images on the same grid, or arrays ``(z, y, x)`` with
    ``spacing`` in mm per array axis. Returns ``{"lesions": [...], "total": {...}}``; lesions are
    sorted by decreasing MTV and carry their centroid (mm, LPS, for images; voxel index otherwise)."""
    from scipy import ndimage

    mask, pet, spacing, ref = _as_arrays(mask, pet_suv, spacing)
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    vox_ml = float(np.prod(spacing)) / 1000.0
    kernel = sphere_kernel(spacing, peak_radius_mm)
    lesions = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        region = labels[sl] == i
        v = pet[sl][region]
        mtv = v.size * vox_ml
        centroid = np.array([np.mean(ix) + s.start for ix, s in zip(np.nonzero(region), sl)])
        if ref is not None:
            centre = list(ref.TransformContinuousIndexToPhysicalPoint([float(c) for c in centroid[::-1]]))
        else:
            centre = centroid.tolist()
        suv_mean = float(v.mean())
        lesions.append(dict(voxels=int(v.size), mtv_ml=mtv, suv_max=float(v.max()), suv_mean=suv_mean,
                            suv_peak=_peak(pet, region, sl, kernel), tlg=suv_mean * mtv,
                            centroid=[round(c, 2) for c in centre]))
    lesions.sort(key=lambda d: -d["mtv_ml"])
    for k, les in enumerate(lesions, start=1):
        les["id"] = k
    all_v = pet[mask]
    total = dict(n_lesions=n, mtv_ml=float(sum(d["mtv_ml"] for d in lesions)),
                 tlg=float(sum(d["tlg"] for d in lesions)),
                 suv_max=float(all_v.max()) if n else None, suv_mean=float(all_v.mean()) if n else None,
                 suv_peak=max((d["suv_peak"] for d in lesions), default=None))
    return dict(lesions=lesions, total=total, peak_radius_mm=peak_radius_mm)
