"""PET volume -> body-weight SUV for the Slicer modules (the maths is ``vmambax.data.suv``).

In Slicer the PET's DICOM header is found through the volume's ``DICOM.instanceUIDs`` attribute
and the application's DICOM database; in scripts and tests the tags (or the weight and dose)
are passed in directly.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from vmambax.errors import ConfigError, InputError

PET_UNITS = ("auto", "bqml", "suv")
PET_UNITS_LABELS = {
    "auto": "Auto-detect",
    "bqml": "Bq/mL (convert to SUV)",
    "suv": "SUV (already converted)",
}
_ENTER_HINT = ("enter the patient weight and the injected dose in the Inputs section (Python: "
               "weightKg=, doseMBq=), or load the PET from DICOM so its SUV tags can be read")


def pet_tags_from_node(pet_node) -> dict | None:
    """The PET series' DICOM tags via Slicer's DICOM database; None when not from DICOM.

    Reads the headers of all the series' files (the earliest acquisition time is the scan
    start, as QIBA specifies). Returns None outside Slicer or when the files are gone.
    """
    uids = (pet_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        return None
    try:
        import slicer

        database = slicer.dicomDatabase
    except AttributeError:  # slicer-core: no application, no DICOM database
        return None
    if database is None:
        return None
    files = [f for f in (database.fileForInstance(uid) for uid in uids) if f]
    if not files:
        return None
    from vmambax.data.dicom import read_tags, series_tags

    return series_tags(read_tags(files))


def _positive(value) -> float | None:
    return float(value) if value is not None and float(value) > 0 else None


def pet_to_suv(pet: sitk.Image, units: str = "auto", tags=None, weight_kg: float | None = None,
               dose_mbq: float | None = None, name: str = "PET") -> tuple[sitk.Image, str]:
    """``(PET in SUV as float32, how it was converted)``.

    units: ``suv`` (use as is), ``bqml`` (needs DICOM SUV tags or weight + dose), ``auto``: the
    DICOM Units tag decides when present; without tags, values that can only be SUV (99.9th
    percentile <= 100) are used as they are, anything else needs the weight and dose.
    Weight/dose of 0 or None mean "not entered"; entered values override the DICOM tags.
    """
    from vmambax.data.suv import check_suv_plausible, suv_factor_from_tags, suv_factor_manual

    units = (units or "auto").lower()
    if units not in PET_UNITS:
        raise ConfigError(f"unknown PET units {units!r}; choose one of {', '.join(PET_UNITS)}")
    weight_kg, dose_mbq = _positive(weight_kg), _positive(dose_mbq)
    values = sitk.GetArrayViewFromImage(pet).astype(np.float32)
    has_units_tag = bool(tags) and any(k in tags for k in ("Units", "0054,1001"))

    factor = None
    if units == "suv":
        description = "PET used as SUV (as selected)"
    elif has_units_tag:
        factor = suv_factor_from_tags(tags, weight_kg=weight_kg, dose_mbq=dose_mbq)
    elif units == "auto" and _looks_like_suv(values, check_suv_plausible):
        description = f"PET values already look like SUV (max {float(values.max()):.3g}); used as SUV"
    elif weight_kg and dose_mbq:
        factor = suv_factor_manual(weight_kg, dose_mbq)
    elif units == "bqml":
        raise InputError(f"{name} is in Bq/mL but has no DICOM SUV information; {_ENTER_HINT}")
    else:
        raise InputError(f"{name} looks like activity in Bq/mL (max {float(values.max()):.4g}) and "
                         f"has no DICOM SUV information, so it cannot be turned into SUV; "
                         f"{_ENTER_HINT}")
    suv = values * np.float32(factor.factor) if factor is not None else values
    if factor is not None:
        description = factor.method
    check_suv_plausible(suv, what=f"{name} after conversion to SUV" if factor else name,
                        hint=f"Choose PET units 'Bq/mL' and {_ENTER_HINT}.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(suv, dtype=np.float32))
    image.CopyInformation(pet)
    return image, description


def _looks_like_suv(values: np.ndarray, check) -> bool:
    try:
        check(values)
    except InputError:
        return False
    return True
