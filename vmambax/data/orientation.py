"""Bringing volumes to axial slices and back, exactly.

The network works on axial slices displayed the radiological way: array ``(z, y, x)`` with x
towards the patient's left, y towards posterior, z towards superior, i.e. the identity direction
("LPS" in SimpleITK's DICOMOrient naming). A volume stored in any other axis order or sign
(sagittal/coronal acquisitions, flipped axes) is a permutation + flips of that, which
``AxisMap`` applies to arrays and undoes exactly, so predictions land on the CT's own voxels
and the output label keeps the CT's size, spacing, origin and direction.

Oblique volumes (axes more than ``MAX_OBLIQUE_DEG`` away from the patient axes) are refused
rather than silently resampled: resampling would blur the CT and move the label off its grid,
and the user should decide how to resample. Small obliquities (a few degrees, e.g. from
couch alignment) are kept as they are: slicing along the nearest axis changes nothing the
network cares about, and the label still maps voxel-for-voxel onto the CT.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vmambax.errors import InputError

MAX_OBLIQUE_DEG = 5.0


@dataclasses.dataclass(frozen=True)
class AxisMap:
    """Array-level map from a volume's ``(k, j, i)`` array to the axial ``(z, y, x)`` array."""

    perm: tuple[int, int, int] = (0, 1, 2)  # axial axis m takes original array axis perm[m]
    flip: tuple[bool, bool, bool] = (False, False, False)  # then axial axis m is reversed
    oblique_deg: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    def to_axial(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.perm)
        axes = tuple(m for m in range(3) if self.flip[m])
        return np.flip(out, axes) if axes else out

    def from_axial(self, array: np.ndarray) -> np.ndarray:
        axes = tuple(m for m in range(3) if self.flip[m])
        out = np.flip(array, axes) if axes else array
        return np.transpose(out, np.argsort(self.perm))

    def axial_spacing(self, spacing_xyz) -> tuple[float, float, float]:
        """The (z, y, x) voxel spacing of the axial array, from the image's (x, y, z) spacing."""
        array_spacing = tuple(spacing_xyz)[::-1]  # array axis n <-> index axis 2-n
        return tuple(float(array_spacing[p]) for p in self.perm)  # type: ignore[return-value]


def axis_map(direction, *, what: str = "The CT") -> AxisMap:
    """The ``AxisMap`` for a 3x3 direction matrix (row-major, as SimpleITK gives it)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    phys = np.argmax(np.abs(d), axis=0)  # index axis a points mostly along physical axis phys[a]
    cosines = np.abs(d[phys, np.arange(3)])
    oblique = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
    if len(set(phys.tolist())) != 3 or oblique > MAX_OBLIQUE_DEG:
        raise InputError(
            f"{what} is oblique ({oblique:.1f} degrees from the patient axes; direction "
            f"{np.round(d, 3).tolist()}). VMambaX segments axial slices and tolerates up to "
            f"{MAX_OBLIQUE_DEG:g} degrees; resample the volume to an axial grid first (e.g. "
            "3D Slicer: Resample Scalar/Vector/DWI Volume, or Crop Volume with the reference "
            "oriented to patient axes).")
    perm = [0, 0, 0]
    flip = [False, False, False]
    for a in range(3):  # index axis a is array axis 2-a; physical axis p is axial axis 2-p
        m = 2 - int(phys[a])
        perm[m] = 2 - a
        flip[m] = bool(d[phys[a], a] < 0)
    return AxisMap(tuple(perm), tuple(flip), oblique)  # type: ignore[arg-type]


def image_axis_map(image, *, what: str = "The CT") -> AxisMap:
    """``axis_map`` of a SimpleITK image (3-D)."""
    return axis_map(image.GetDirection(), what=what)

