"""A PET/CT case ready for segmentation: CT in HU and PET in SUV on the CT grid.

``load_pet_ct`` reads both inputs (files or DICOM folders), converts the PET to SUV, checks that
the CT really is a CT and the PET a PET (swapped inputs are the commonest user error), checks
that the CT is axial (or axis-aligned), and resamples the PET onto the CT grid in physical space.
``make_case`` does the same for images already in memory (3D Slicer volumes, phantoms).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vmambax.data.io import (PetRead, check_pet_not_ct, check_pet_values, read_image_source,
                             read_pet_info, validate_volume)
from vmambax.data.orientation import image_axis_map
from vmambax.data.resample import (PARTIAL_OVERLAP_WARN, check_overlap,
                                   partial_overlap_message, resample_to)
from vmambax.data.suv import SuvFactor
from vmambax.errors import InputError

CT_AIR_PERCENTILE_HU = -500.0  # a CT's 1st percentile is air/lung, far below this


@dataclasses.dataclass
class PetCtCase:
    """CT (HU) and PET (SUVbw, float32) on the CT grid, plus where they came from."""

    ct: Any  # sitk.Image in HU, original pixel type and geometry
    pet_suv: Any  # sitk.Image float32, on the CT grid
    pet_suv_native: Any  # sitk.Image float32, on the PET's own grid
    ct_source: str | None = None
    pet_source: str | None = None
    ct_dicom_dir: Path | None = None  # set when the CT came from DICOM (enables DICOM SEG)
    ct_series_uid: str | None = None
    pet_is_dicom: bool = False
    suv: SuvFactor | None = None  # None: the PET was given in SUV
    overlap: float = 1.0  # fraction of the CT covered by the PET
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ct_is_dicom(self) -> bool:
        return self.ct_dicom_dir is not None

    @property
    def suv_factor(self) -> float | None:
        return None if self.suv is None else self.suv.factor


def _percentile(array: np.ndarray, q: float) -> float:
    sample = array.ravel()[:: max(1, array.size // 2_000_000)]
    return float(np.percentile(sample, q))


def check_roles(ct, pet_suv) -> None:
    """Raise ``InputError`` if the CT does not look like a CT, or the PET like a PET."""
    import SimpleITK as sitk

    check_not_swapped(ct, pet_suv)
    check_pet_values(sitk.GetArrayViewFromImage(pet_suv), "The PET input")


def check_not_swapped(ct, pet) -> None:
    """The role checks that hold whatever the PET's units (Bq/mL or SUV): run them before the
    PET is converted to SUV, so swapped inputs are reported as swapped, not as a PET that
    needs a weight and a dose."""
    import SimpleITK as sitk

    ct_p1 = _percentile(sitk.GetArrayViewFromImage(ct), 1)
    pet_p1 = _percentile(sitk.GetArrayViewFromImage(pet), 1)
    if ct_p1 > CT_AIR_PERCENTILE_HU:
        if pet_p1 < CT_AIR_PERCENTILE_HU:
            raise InputError("The CT input looks like a PET and the PET input like a CT; are "
                             "they swapped? Pass the CT as CT and the PET as PET.")
        raise InputError(f"The CT input has no air or lung values (1st percentile {ct_p1:.4g}, "
                         f"expected below {CT_AIR_PERCENTILE_HU:g} HU): it does not look like a "
                         "CT in Hounsfield units. Did you pass the PET as CT (swapped inputs), "
                         "or a CT without its rescale intercept?")
    check_pet_not_ct(sitk.GetArrayViewFromImage(pet), "The PET input")


def make_case(ct, pet_suv, *, ct_source: str | None = None, pet_source: str | None = None,
              pet_read: PetRead | None = None, ct_dicom_dir: Path | None = None,
              ct_series_uid: str | None = None) -> PetCtCase:
    """Validate a CT (HU) and a PET (SUV, any grid) and resample the PET onto the CT."""
    import SimpleITK as sitk

    validate_volume(ct, "The CT")
    validate_volume(pet_suv, "The PET")
    image_axis_map(ct, what="The CT")  # refuses oblique CTs before any work
    pet_suv = sitk.Cast(pet_suv, sitk.sitkFloat32)
    check_roles(ct, pet_suv)
    fraction = check_overlap(pet_suv, ct, ("PET", "CT"))
    notes = list(pet_read.notes) if pet_read is not None else []
    if fraction < PARTIAL_OVERLAP_WARN:
        notes.append(partial_overlap_message(fraction))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported in case.warnings instead
        pet_on_ct = resample_to(pet_suv, ct, "linear", warn_partial=False)
    return PetCtCase(ct=ct, pet_suv=pet_on_ct, pet_suv_native=pet_suv, ct_source=ct_source,
                     pet_source=pet_source, ct_dicom_dir=ct_dicom_dir, ct_series_uid=ct_series_uid,
                     pet_is_dicom=bool(pet_read and pet_read.is_dicom),
                     suv=pet_read.suv if pet_read is not None else None, overlap=fraction,
                     warnings=notes)


def load_pet_ct(ct_path, pet_path, pet_units: str = "auto", weight_kg: float | None = None,
                dose_mbq: float | None = None, *, uptake_minutes: float | None = None,
                ct_series_uid: str | None = None, pet_series_uid: str | None = None) -> PetCtCase:
    """Read a CT and a PET (NIfTI/NRRD/MHA files or DICOM folders) into a ``PetCtCase``.

    The same DICOM folder may be given for both when it holds the CT and the PET series.
    ``pet_units``/``weight_kg``/``dose_mbq``/``uptake_minutes``: see ``io.read_pet``.
    """
    ct, series = read_image_source(ct_path, series_uid=ct_series_uid, modality="CT",
                                   what="The CT")
    pet = read_pet_info(pet_path, pet_units, weight_kg, dose_mbq, uptake_minutes=uptake_minutes,
                        series_uid=pet_series_uid)
    if series is not None and pet.series is not None and series.uid == pet.series.uid:
        raise InputError("The CT and PET inputs are the same DICOM series; give the CT series "
                         "and the PET series.")
    return make_case(ct, pet.image, ct_source=str(ct_path), pet_source=str(pet_path),
                     pet_read=pet, ct_dicom_dir=series.folder if series else None,
                     ct_series_uid=series.uid if series else None)
