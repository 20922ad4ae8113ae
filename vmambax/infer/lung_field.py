"""Which axial slices can hold a lung tumour: the lung field of a CT, plus a margin.

A whole-body PET/CT has 250-400 axial slices, of which the thorax is about a third; the network
is a lung-tumour segmenter, so running it on the head, abdomen, pelvis and legs costs two thirds
of the time and can only add false positives (brain, bladder and kidneys are FDG-avid).

The field: air-like voxels (< -400 HU) enclosed by the body in their own slice (so the air
around the patient and inside the table never counts), in 3-D components large enough to be a
lung (>= 100 mL and >= 20 % of the largest: stomach and bowel gas are dropped), closed with
scikit-image morphology so vessels and tumours inside the lung stay in it. A slice runs when it
lies within ``margin_mm`` (2 cm by default) of that field along the patient axis. The work is done
on a copy subsampled to about 4 mm in-plane: the field decides whole slices, not voxels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vmambax.errors import InputError

AIR_HU = -400.0  # lung parenchyma is -950..-600 HU; fat (-100) and soft tissue are above this
BODY_HU = -500.0  # body outline: anything denser than this (skin, fat, muscle, bone)
MIN_LUNG_ML = 100.0  # one adult lung is 1-3 L; stomach/bowel gas pockets are usually smaller
MIN_FRACTION_OF_LARGEST = 0.2
DEFAULT_MARGIN_MM = 20.0
MIN_SLICE_AREA_CM2 = 5.0
WORK_PIXEL_MM = 4.0  # in-plane resolution of the analysis
CLOSING_RADIUS_MM = 8.0


@dataclasses.dataclass(frozen=True)
class LungField:
    """The outcome of :func:`lung_field`, in the axial (network) slice order."""

    run: np.ndarray  # bool (z,): slices to segment
    lung: np.ndarray  # bool (z,): slices that contain the lung field itself
    lung_volume_ml: float
    margin_mm: float

    @property
    def n_run(self) -> int:
        return int(self.run.sum())

    def summary(self) -> dict:
        """For reports: how many slices ran and where the lungs are."""
        idx = np.flatnonzero(self.lung)
        return {"mode": "lung field", "slices_total": int(self.run.size),
                "slices_run": self.n_run, "margin_mm": self.margin_mm,
                "lung_slices": [int(idx[0]), int(idx[-1])] if idx.size else None,
                "lung_volume_ml": round(self.lung_volume_ml, 1)}


def lung_field(ct_axial_hu: np.ndarray, spacing_zyx, margin_mm: float = DEFAULT_MARGIN_MM
               ) -> LungField:
    """The lung field of an axial ``(z, y, x)`` CT in HU with ``spacing_zyx`` in mm.

    Raises ``InputError`` when the CT shows no lungs (e.g. a head or pelvis scan, or a PET passed
    as the CT): segmenting it would give an empty result that looks like "no tumour".
    """
    from scipy import ndimage
    from skimage import morphology

    ct = np.asarray(ct_axial_hu)
    if ct.ndim != 3:
        raise InputError(f"lung field: expected a 3-D (z, y, x) CT, got shape {ct.shape}")
    sz, sy, sx = (float(v) for v in spacing_zyx)
    if margin_mm < 0:
        raise InputError(f"lung-field margin must be >= 0 mm, got {margin_mm}")
    step_y = max(1, int(round(WORK_PIXEL_MM / sy)))
    step_x = max(1, int(round(WORK_PIXEL_MM / sx)))
    work = np.asarray(ct[:, ::step_y, ::step_x], dtype=np.float32)
    vy, vx = sy * step_y, sx * step_x

    # Body per slice: the dense tissue and what it encloses in-plane (lungs, airways, bowel gas).
    # The largest 3-D body component drops the table (its foam core is enclosed air too).
    body = work > BODY_HU
    filled = np.empty_like(body)
    for k in range(body.shape[0]):
        filled[k] = ndimage.binary_fill_holes(body[k])
    labels, n = ndimage.label(filled)
    if n == 0:
        raise _no_lungs("the CT contains no body (no voxel above -500 HU)")
    sizes = np.bincount(labels.ravel())[1:]
    filled = labels == (1 + int(np.argmax(sizes)))

    air = filled & (work < AIR_HU)
    # Closing (skimage) fills vessels, nodules and tumours inside the lung, and bridges thin gaps,
    # so a lung is one component; the ellipsoid footprint is in mm, whatever the voxel size.
    air = morphology.closing(air, _ellipsoid(CLOSING_RADIUS_MM, (sz, vy, vx))).astype(bool)
    labels, n = ndimage.label(air)
    voxel_ml = sz * vy * vx / 1000.0
    volumes = np.bincount(labels.ravel())[1:] * voxel_ml if n else np.zeros(0)
    keep = np.flatnonzero((volumes >= MIN_LUNG_ML)
                          & (volumes >= MIN_FRACTION_OF_LARGEST * (volumes.max() if n else 0)))
    if keep.size == 0:
        largest = f"{volumes.max():.0f} mL" if n else "none"
        raise _no_lungs(f"no air-filled region inside the body is large enough to be a lung "
                        f"(largest {largest}; a lung is >= {MIN_LUNG_ML:.0f} mL)")
    lung_mask = np.isin(labels, keep + 1)
    # A slice is lung when it holds a few cm^2 of it: the trachea (2-3 cm^2) joins the lungs
    # through the bronchi but is no reason to run the neck.
    lung = lung_mask.sum(axis=(1, 2)) * (vy * vx / 100.0) >= MIN_SLICE_AREA_CM2
    if not lung.any():  # never run nothing and report "no tumour"
        raise _no_lungs(f"the air-filled regions inside the body cover less than "
                        f"{MIN_SLICE_AREA_CM2:g} cm^2 on every slice")
    reach = int(np.floor(margin_mm / sz + 1e-6))
    run = ndimage.binary_dilation(lung, iterations=reach) if reach > 0 else lung.copy()
    return LungField(run=run, lung=lung, lung_volume_ml=float(volumes[keep].sum()),
                     margin_mm=float(margin_mm))


def all_slices(n: int) -> dict:
    """The report entry when every slice ran (``--all-slices``)."""
    return {"mode": "all slices", "slices_total": int(n), "slices_run": int(n)}


def _ellipsoid(radius_mm: float, spacing_zyx) -> np.ndarray:
    r = [max(1, int(round(radius_mm / s))) for s in spacing_zyx]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    dist = sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing_zyx))
    return dist <= 1.0


def _no_lungs(why: str) -> InputError:
    return InputError(f"no lungs found in the CT: {why}. VMambaX segments lung tumours and runs "
                      f"only on the slices around the lungs; check that the CT is a chest or "
                      f"whole-body CT (not a PET, and not a head or pelvis scan), or pass "
                      f"--all-slices (Slicer: tick 'Segment all slices') to run every slice")
