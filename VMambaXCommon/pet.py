"""PET volume -> body-weight SUV for the Slicer modules (the maths is ``vmambax.data.suv``).

Which units the voxels are in is decided in this order (``pet_node_to_suv``), and the rule that
decided is reported (status line, the output's ``VMambaX.PETUnitsRule`` attribute):

1. the units chosen by the user (``bqml`` / ``suv``), when not ``auto``;
2. the node's own voxel-value units / quantity (``vtkCodedEntry``): PETDICOMExtension's RWVM and
   SUV plugins load PET in SUVbw and say so there (units ``{SUVbw}g/ml`` UCUM, quantity 126400
   DCM), while its ``DICOM.instanceUIDs`` still point at the Bq/mL files; converting those
   voxels again with the files' factor would divide every SUV by ~1000;
3. the node's Real World Value Mapping object (``DICOM.RWV.instanceUID``), read from Slicer's
   DICOM database: its measurement units are the voxels' units;
4. the files' DICOM tags (``Units`` 0054,1001 and the SUV tags), via ``DICOM.instanceUIDs``;
5. the weight and dose entered, or values that can only be SUV.

In scripts and tests the tags, the RWVM file lookup and the weight and dose are passed in.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # numpy and SimpleITK are imported where used: Slicer loads this at start-up
    import SimpleITK as sitk

from vmambax.errors import ConfigError, InputError

from VMambaXCommon import dicom_tags

PET_UNITS = ("auto", "bqml", "suv")


def pet_units_labels() -> dict[str, str]:
    """The PET-units choices as the panel shows them (translated inside Slicer)."""
    from VMambaXCommon.i18n import translate

    return {"auto": translate("VMambaX", "Auto-detect"),
            "bqml": translate("VMambaX", "Bq/mL (convert to SUV)"),
            "suv": translate("VMambaX", "SUV (already converted)")}


_SUV_HINT = ("Choose PET units 'SUV (already converted)' in the Inputs section (Python: "
             "petUnits='suv'); a PET loaded by PETDICOMExtension is recognised with "
             "'Auto-detect'.")
_RELOAD_HINT = ("The volume itself holds these values: load the PET again (from DICOM in Bq/mL, "
                "or as SUVbw with PETDICOMExtension).")
_ENTER_HINT = ("enter the patient weight and the injected dose in the Inputs section (Python: "
               "weightKg=, doseMBq=), or load the PET from DICOM so its SUV tags can be read")


def pet_tags_from_node(pet_node) -> dict | None:
    """The PET series' DICOM tags via Slicer's DICOM database; None when not from DICOM.

    Reads the headers of all the series' files (the earliest acquisition time is the scan
    start, as QIBA specifies). Returns None outside Slicer or when the files are gone.
    """
    files = dicom_tags.node_dicom_files(pet_node)
    if not files:
        return None
    from vmambax.data.dicom import read_tags, series_tags

    return series_tags(read_tags(files))


def _positive(value) -> float | None:
    return float(value) if value is not None and float(value) > 0 else None


@dataclasses.dataclass(frozen=True)
class UnitsDecision:
    """What the node says its voxels are: ``units`` is ``suv`` or ``bqml``; ``rule`` says why."""

    units: str
    rule: str


@dataclasses.dataclass(frozen=True)
class PetSuv:
    """A PET converted to SUV: the image, how (``conversion``), and which rule set the units."""

    image: sitk.Image
    conversion: str
    rule: str


# UCUM units codes of the SUV family (DICOM CID 85) and of activity concentration.
_SUV_BW_UNITS = {"{suvbw}g/ml", "g/ml"}
_OTHER_SUV_UNITS = {"{suvlbm}g/ml": "SUVlbm", "{suvlbm(james128)}g/ml": "SUVlbm",
                    "{suvlbm(janma)}g/ml": "SUVlbm", "{suvbsa}cm2/ml": "SUVbsa",
                    "{suvibw}g/ml": "SUVibw"}
_ACTIVITY_UNITS = {"bq/ml"}
_SUV_QUANTITY = ("126400", "DCM")  # "Standardized Uptake Value"


def _code(entry) -> tuple[str, str, str] | None:
    """``(value, scheme, meaning)`` of a vtkCodedEntry (or a tuple), None when empty."""
    if entry is None:
        return None
    if isinstance(entry, (tuple, list)):
        value, scheme, meaning = (tuple(entry) + ("", "", ""))[:3]
    else:
        value, scheme, meaning = (entry.GetCodeValue(), entry.GetCodingSchemeDesignator(),
                                  entry.GetCodeMeaning())
    value, scheme, meaning = (str(x or "").strip() for x in (value, scheme, meaning))
    return (value, scheme, meaning) if value else None


def units_from_code(code, source: str) -> UnitsDecision | None:
    """The units a UCUM units code (e.g. ``{SUVbw}g/ml``) means; None when not a PET unit.

    SUV normalised to anything but body weight is refused: the network and the lesion table
    use body-weight SUV.
    """
    code = _code(code)
    if code is None:
        return None
    value, _scheme, meaning = code
    key = value.replace(" ", "").lower()
    if key in _SUV_BW_UNITS:
        return UnitsDecision("suv", f"{source} units {value}")
    if key in _OTHER_SUV_UNITS:
        raise InputError(
            f"the PET is in {_OTHER_SUV_UNITS[key]} ({value}{', ' + meaning if meaning else ''}), "
            f"but VMambaX needs body-weight SUV (SUVbw); load the SUVbw series instead (DICOM "
            f"browser: the 'Standardized Uptake Value body weight' item of PETDICOMExtension), "
            f"or the PET in Bq/mL")
    if key in _ACTIVITY_UNITS:
        return UnitsDecision("bqml", f"{source} units {value}")
    return None


def units_from_node(pet_node, rwvm_file: Callable[[str], str | None] | None = None
                    ) -> UnitsDecision | None:
    """What the node itself says about its voxels (rules 2 and 3 above); None: it says nothing.

    ``rwvm_file(uid)`` finds the file of the node's RWVM instance (default: Slicer's DICOM
    database; unavailable in slicer-core).
    """
    decision = units_from_code(pet_node.GetVoxelValueUnits(), "node voxel-value")
    if decision is not None:
        return decision
    quantity = _code(pet_node.GetVoxelValueQuantity())
    if quantity is not None and (quantity[0], quantity[1].upper()) == _SUV_QUANTITY:
        meaning = quantity[2] or "SUV"
        return UnitsDecision("suv", f"node voxel-value quantity {quantity[0]} ({meaning})")
    uid = (pet_node.GetAttribute("DICOM.RWV.instanceUID") or "").strip()
    if uid:
        path = (rwvm_file or dicom_tags.file_for_instance)(uid)
        if path:
            decision = units_from_code(rwvm_units_from_file(path), f"RWVM {uid}")
            if decision is not None:
                return decision
    return None


def rwvm_units_from_file(path) -> tuple[str, str, str] | None:
    """The measurement units of the first mapping of a Real World Value Mapping file."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        reference = ds.ReferencedImageRealWorldValueMappingSequence[0]
        units = reference.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
    except (AttributeError, IndexError, KeyError, OSError, pydicom.errors.InvalidDicomError):
        return None
    return _code((units.get("CodeValue"), units.get("CodingSchemeDesignator"),
                  units.get("CodeMeaning")))


def pet_node_to_suv(pet_node, units: str = "auto", tags=None, weight_kg: float | None = None,
                    dose_mbq: float | None = None, name: str | None = None,
                    tag_lookup: Callable = None, rwvm_file: Callable = None,
                    image: sitk.Image | None = None) -> PetSuv:
    """The PET volume node in SUV, its units decided by the rules of the module docstring.

    ``tags``: the files' DICOM tags (default: looked up with ``tag_lookup``, which is
    ``pet_tags_from_node``, only when the node does not say what its voxels are).
    ``image``: the node's voxels already read with ``volume_node_to_image`` (read here if None).
    """
    from VMambaXCommon.mrml_sitk import volume_node_to_image

    units = _check_units(units)
    name = name or f"PET {pet_node.GetName()!r}"
    image = image if image is not None else volume_node_to_image(pet_node)
    decision = units_from_node(pet_node, rwvm_file) if units == "auto" else None
    if decision is not None and decision.units == "suv":
        result = convert_pet(image, "suv", name=name)
        return PetSuv(result.image, f"PET already in SUVbw ({decision.rule}); used as is",
                      decision.rule)
    if tags is None and units != "suv":
        tags = (tag_lookup or pet_tags_from_node)(pet_node)
    if decision is not None:  # Bq/mL by the node: the factor from the tags or weight and dose
        return convert_pet(image, "bqml", tags, weight_kg, dose_mbq, name=name,
                           decided_by=decision.rule)
    return convert_pet(image, units, tags, weight_kg, dose_mbq, name=name)


def _check_units(units: str) -> str:
    units = (units or "auto").lower()
    if units not in PET_UNITS:
        raise ConfigError(f"unknown PET units {units!r}; choose one of {', '.join(PET_UNITS)}")
    return units


def pet_to_suv(pet: sitk.Image, units: str = "auto", tags=None, weight_kg: float | None = None,
               dose_mbq: float | None = None, name: str = "PET") -> tuple[sitk.Image, str]:
    """``(PET in SUV as float32, how it was converted)``; see ``convert_pet``."""
    result = convert_pet(pet, units, tags, weight_kg, dose_mbq, name)
    return result.image, result.conversion


def convert_pet(pet: sitk.Image, units: str = "auto", tags=None, weight_kg: float | None = None,
                dose_mbq: float | None = None, name: str = "PET", decided_by: str = "") -> PetSuv:
    """A PET image in SUV (float32), how it was converted and which rule set its units.

    units: ``suv`` (use as is), ``bqml`` (needs DICOM SUV tags or weight + dose), ``auto``: the
    DICOM Units tag decides when present; without tags, values that can only be SUV (99.9th
    percentile <= 100) are used as they are, anything else needs the weight and dose.
    Weight/dose of 0 or None mean "not entered"; entered values override the DICOM tags.
    ``decided_by``: the rule that already found the values in Bq/mL (the node's units).
    """
    from vmambax.data.suv import check_suv_plausible, suv_factor_from_tags, suv_factor_manual

    import numpy as np
    import SimpleITK as sitk

    units = _check_units(units)
    weight_kg, dose_mbq = _positive(weight_kg), _positive(dose_mbq)
    values = sitk.GetArrayViewFromImage(pet).astype(np.float32)
    has_units_tag = bool(tags) and any(k in tags for k in ("Units", "0054,1001"))
    bqml_by = decided_by or ("PET units chosen: Bq/mL" if units == "bqml" else "")

    factor = None
    if units == "suv":
        description, rule = "PET used as SUV (as selected)", "PET units chosen: SUV"
    elif has_units_tag:
        factor = suv_factor_from_tags(tags, weight_kg=weight_kg, dose_mbq=dose_mbq)
        rule = f"DICOM Units tag {factor.units} of the PET files"
        if bqml_by:
            rule = f"{bqml_by}; factor from the {rule}"
    elif units == "auto" and _looks_like_suv(values, check_suv_plausible):
        description = f"PET values already look like SUV (max {float(values.max()):.3g}); used as SUV"
        rule = "value range (no units on the node or in DICOM; values only SUV can have)"
    elif weight_kg and dose_mbq:
        factor = suv_factor_manual(weight_kg, dose_mbq)
        rule = (f"{bqml_by}; weight and dose entered" if bqml_by else
                "weight and dose entered (no units on the node or in DICOM)")
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
                        hint=f"Choose PET units 'Bq/mL' and {_ENTER_HINT}.",
                        low_hint=_SUV_HINT if factor else _RELOAD_HINT)
    image = sitk.GetImageFromArray(np.ascontiguousarray(suv, dtype=np.float32))
    image.CopyInformation(pet)
    return PetSuv(image, description, rule)


def _looks_like_suv(values, check) -> bool:
    try:
        check(values)
    except InputError:
        return False
    return True
