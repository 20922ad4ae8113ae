"""A PET/CT case ready for segmentation: CT in HU and PET in SUV on the CT grid.

``load_pet_ct`` reads both inputs (files or DICOM folders), converts the PET to SUV, checks that
the CT really is a CT and the PET a PET (swapped inputs are the commonest user error), checks
that the CT is axial (or axis-aligned), that its voxels are sane, that the PET covers enough of
it and (DICOM) is of the same patient, and resamples the PET onto the CT grid in physical space.
``make_case`` does the same for images already in memory (3D Slicer volumes, phantoms);
``inspect_pair`` runs the checks alone. Warnings are returned (``PetCtCase.warnings``) for the
caller to show: the command line prints them, the Slicer module shows them in its status.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vmambax.data.dicom import identity_tags
from vmambax.data.io import (CT_AIR_HU, PetRead, check_pet_not_ct, read_image_source,
                             read_pet_info, validate_volume)
from vmambax.data.orientation import image_axis_map
from vmambax.data.patient import check_same_patient
from vmambax.data.resample import (PARTIAL_OVERLAP_WARN, check_overlap,
                                   partial_overlap_message, resample_to)
from vmambax.data.suv import SuvFactor, check_suv_plausible
from vmambax.errors import InputError

CT_AIR_PERCENTILE_HU = CT_AIR_HU  # a CT's 1st percentile is air/lung, far below this
MIN_PET_COVERAGE = 0.10  # a PET covering less of the CT than this is refused
MAX_CT_PIXEL_MM = 20.0  # in-plane; diagnostic CTs have 0.5-1.5 mm pixels
NON_SQUARE_PIXEL_RATIO = 1.02  # warn above this ratio of the in-plane spacings


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

    check_not_swapped(ct, pet_suv)  # includes check_pet_not_ct
    check_suv_plausible(sitk.GetArrayViewFromImage(pet_suv), what="The PET input")


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


def check_ct_voxels(ct) -> list[str]:
    """Refuse absurd CT voxels; warn about non-square pixels. Returns the warnings.

    "In-plane" is the axial plane the network sees (a sagittal acquisition is re-oriented)."""
    _, sy, sx = image_axis_map(ct, what="The CT").axial_spacing(ct.GetSpacing())
    if max(sx, sy) > MAX_CT_PIXEL_MM:
        raise InputError(f"The CT has {sx:.3g} x {sy:.3g} mm pixels (more than "
                         f"{MAX_CT_PIXEL_MM:g} mm in-plane): that is not a diagnostic CT (a "
                         "scout, a down-sampled copy, or spacing in cm instead of mm?). Load the "
                         "original CT series.")
    ratio = max(sx, sy) / min(sx, sy)
    if ratio > NON_SQUARE_PIXEL_RATIO:
        return [f"The CT pixels are not square ({sx:.3g} x {sy:.3g} mm): slices are resized as "
                f"images, so the network sees the anatomy stretched {ratio:.2f}x along one "
                "axis, unlike its training data; check the result carefully."]
    return []


def inspect_pair(ct, pet_suv, *, ct_tags=None, pet_tags=None,
                 allow_different_patients: bool = False) -> tuple[float, list[str]]:
    """All the checks of a CT (HU) + PET (SUV, any grid) pair, without resampling.

    Raises ``InputError`` for unusable inputs (not 3-D, oblique CT, swapped, absurd CT voxels,
    no or too little overlap, another patient's PET); returns ``(fraction of the CT covered by
    the PET, warnings to show the user)``. ``ct_tags``/``pet_tags``: DICOM tag dicts for the
    identity checks (``patient.check_same_patient``), None when the input has none.
    """
    import SimpleITK as sitk

    validate_volume(ct, "The CT")
    validate_volume(pet_suv, "The PET")
    notes = check_ct_voxels(ct)  # also refuses oblique CTs (image_axis_map) before any work
    check_roles(ct, sitk.Cast(pet_suv, sitk.sitkFloat32))
    fraction = check_overlap(pet_suv, ct, ("PET", "CT"))
    if fraction < MIN_PET_COVERAGE:
        raise InputError(f"The PET covers only {fraction:.1%} of the CT volume (at least "
                         f"{MIN_PET_COVERAGE:.0%} needed): no tumour could be found in the rest. "
                         "Are they from one PET/CT acquisition? Load the matching PET, or crop the "
                         "CT to the PET's field of view.")
    if fraction < PARTIAL_OVERLAP_WARN:
        notes.append(partial_overlap_message(fraction))
    notes += check_same_patient(ct_tags, pet_tags,
                                allow_different_patients=allow_different_patients)
    return fraction, notes


def make_case(ct, pet_suv, *, ct_source: str | None = None, pet_source: str | None = None,
              pet_read: PetRead | None = None, ct_dicom_dir: Path | None = None,
              ct_series_uid: str | None = None, ct_tags=None, pet_tags=None,
              allow_different_patients: bool = False) -> PetCtCase:
    """Validate a CT (HU) and a PET (SUV, any grid) and resample the PET onto the CT.

    ``ct_tags``/``pet_tags`` (DICOM tag dicts; the PET's default to ``pet_read.tags``) enable
    the same-patient check; see ``inspect_pair``.
    """
    import SimpleITK as sitk

    if pet_tags is None and pet_read is not None:
        pet_tags = pet_read.tags
    fraction, checks = inspect_pair(ct, pet_suv, ct_tags=ct_tags, pet_tags=pet_tags,
                                    allow_different_patients=allow_different_patients)
    pet_suv = sitk.Cast(pet_suv, sitk.sitkFloat32)
    notes = (list(pet_read.notes) if pet_read is not None else []) + checks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported in case.warnings instead
        pet_on_ct = resample_to(pet_suv, ct, "linear", warn_partial=False)
    return PetCtCase(ct=ct, pet_suv=pet_on_ct, pet_suv_native=pet_suv, ct_source=ct_source,
                     pet_source=pet_source, ct_dicom_dir=ct_dicom_dir, ct_series_uid=ct_series_uid,
                     pet_is_dicom=bool(pet_read and pet_read.is_dicom),
                     suv=pet_read.suv if pet_read is not None else None, overlap=fraction,
                     warnings=notes)


def check_distinct_inputs(ct_path, pet_path) -> None:
    """Refuse one file given as both the CT and the PET (before anything is read: reading it
    twice would only end in "are the inputs swapped?"). One DICOM folder holding both series
    is fine; the series picker takes the CT and the PET from it."""
    import os

    ct, pet = Path(ct_path), Path(pet_path)
    try:
        same = ct.exists() and pet.exists() and os.path.samefile(ct, pet)
    except OSError:
        return
    if same and not ct.is_dir():
        raise InputError(f"The CT and the PET inputs are the same file ({ct}); give the CT "
                         "(Hounsfield units) as the CT and the PET as the PET: two different "
                         "files, or one DICOM folder holding both series.")


def load_pet_ct(ct_path, pet_path, pet_units: str = "auto", weight_kg: float | None = None,
                dose_mbq: float | None = None, *, uptake_minutes: float | None = None,
                ct_series_uid: str | None = None, pet_series_uid: str | None = None,
                allow_different_patients: bool = False) -> PetCtCase:
    """Read a CT and a PET (NIfTI/NRRD/MHA files or DICOM folders) into a ``PetCtCase``.

    The same DICOM folder may be given for both when it holds the CT and the PET series; a
    folder with several CT (or PET) series needs ``ct_series_uid`` (``pet_series_uid``).
    ``pet_units``/``weight_kg``/``dose_mbq``/``uptake_minutes``: see ``io.read_pet``. DICOM
    inputs of different patients are refused unless ``allow_different_patients``.
    """
    check_distinct_inputs(ct_path, pet_path)
    ct, series = read_image_source(ct_path, series_uid=ct_series_uid, modality="CT",
                                   what="The CT")
    pet = read_pet_info(pet_path, pet_units, weight_kg, dose_mbq, uptake_minutes=uptake_minutes,
                        series_uid=pet_series_uid)
    if series is not None and pet.series is not None and series.uid == pet.series.uid:
        raise InputError("The CT and PET inputs are the same DICOM series; give the CT series "
                         "and the PET series.")
    return make_case(ct, pet.image, ct_source=str(ct_path), pet_source=str(pet_path),
                     pet_read=pet, ct_dicom_dir=series.folder if series else None,
                     ct_series_uid=series.uid if series else None,
                     ct_tags=identity_tags(series) if series is not None else None,
                     allow_different_patients=allow_different_patients)
