"""Which loaded volumes are the CT and the PET: pre-selection of the panel's inputs (no Qt).

The DICOM Modality (0008,0060) of a volume's files decides first: ``CT`` or ``PT``. A volume
whose voxel-value units say PET (SUV, Bq/mL; PETDICOMExtension sets them) is a PET. Names are
only a fallback, for volumes with no DICOM modality, and match whole words: a series called
"PET CTAC" (PET attenuation-corrected with the CT) is no CT, and "corrected" has no "ct" in it.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from vmambax.errors import InputError

from VMambaXCommon import dicom_tags

MODALITY_TAG = "0008,0060"
CT_WORDS = frozenset({"ct"})
PET_WORDS = frozenset({"pet", "suv", "suvbw", "fdg"})  # not "pt": also "patient"
PET_PHRASES = ("standardized uptake value",)  # how PETDICOMExtension names SUV volumes

InstanceValue = Callable[[str, str], str]  # (SOP instance UID, "gggg,eeee") -> value


def name_words(name: str) -> list[str]:
    """The lower-case words of a volume name: split at anything but letters and digits, between
    letters and digits, and where a lower-case letter meets a capital (``"ctChest"`` -> ct,
    chest); never inside a run of letters otherwise (``CTAC``, ``SUVbw`` stay whole)."""
    humps = r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])"
    words = []
    for part in re.split(r"[^A-Za-z0-9]+", name or ""):
        words += re.split(humps, part)
    return [w.lower() for w in words if w]


def dicom_modality(node, instance_value: InstanceValue | None = None) -> str:
    """The DICOM Modality of the node's first file (``CT``, ``PT``...), "" when not from DICOM."""
    uids = dicom_tags.instance_uids(node)
    if not uids:
        return ""
    return (instance_value or dicom_tags.instance_value)(uids[0], MODALITY_TAG).strip().upper()


def _units_say_pet(node) -> bool:
    from VMambaXCommon.pet import units_from_code

    try:
        return units_from_code(node.GetVoxelValueUnits(), "node") is not None
    except InputError:  # SUV of another normalisation: still a PET (refused when segmenting)
        return True


def role_of(node, instance_value: InstanceValue | None = None) -> tuple[str, str]:
    """``(role, how)``: role ``CT``, ``PET`` or "" (unknown); how the role was found."""
    modality = dicom_modality(node, instance_value)
    if modality:
        role = {"CT": "CT", "PT": "PET"}.get(modality, "")
        return role, f"DICOM modality {modality}"
    if _units_say_pet(node):
        return "PET", "voxel-value units"
    words = name_words(node.GetName())
    if PET_WORDS.intersection(words) or any(p in " ".join(words) for p in PET_PHRASES):
        return "PET", "name"
    if CT_WORDS.intersection(words):
        return "CT", "name"
    return "", ""


def guess_pet_ct(nodes: Iterable, instance_value: InstanceValue | None = None):
    """``(ct, pet)`` among ``nodes`` (either may be None): the first volume of each role found
    by DICOM modality or units, else the first found by name. Label maps are skipped."""
    found: dict[str, dict[bool, object]] = {"CT": {}, "PET": {}}
    for node in nodes:
        if node is None or node.IsA("vtkMRMLLabelMapVolumeNode"):
            continue
        role, how = role_of(node, instance_value)
        if role:
            found[role].setdefault(how == "name", node)

    def pick(role):
        return found[role].get(False) or found[role].get(True)

    return pick("CT"), pick("PET")


def _sample(node, count: int = 200_000):
    """About ``count`` voxels of a volume node as a SimpleITK image (a strided view, no copy
    of the whole volume), for the cheap checks the panel makes on every change."""
    import SimpleITK as sitk
    from vtk.util import numpy_support

    image_data = node.GetImageData() if node is not None else None
    scalars = image_data.GetPointData().GetScalars() if image_data is not None else None
    if scalars is None or scalars.GetNumberOfComponents() != 1:
        return None
    values = numpy_support.vtk_to_numpy(scalars)
    values = values[:: max(1, values.size // count)]
    return sitk.GetImageFromArray(values.reshape(1, 1, -1).astype("float32"))


def swap_warning(ct_node, pet_node) -> str:
    """The swapped-inputs message when the CT looks like a PET and the PET like a CT, else ""
    (the same check as ``prepare`` makes before it works out the PET's units)."""
    from vmambax.data.case import check_not_swapped

    ct, pet = _sample(ct_node), _sample(pet_node)
    if ct is None or pet is None:
        return ""
    try:
        check_not_swapped(ct, pet)
    except InputError as exc:
        return str(exc)
    return ""


def pet_info_text(ct_node, pet_node, pet_units: str = "auto", weight_kg: float = 0.0,
                  dose_mbq: float = 0.0, rwvm_file=None) -> str:
    """The panel's note under the PET inputs. A swap is named first: swapped inputs must not
    read as a PET that needs a weight and a dose. Then what the PET's units will be."""
    from VMambaXCommon.pet import units_from_node

    if pet_node is None:
        return ""
    warning = swap_warning(ct_node, pet_node) if ct_node is not None else ""
    if warning:
        return warning
    if pet_units == "suv":
        return ""
    if pet_units == "auto":
        try:
            decision = units_from_node(pet_node, rwvm_file)
        except InputError as exc:
            return str(exc)
        if decision is not None and decision.units == "suv":
            return f"PET already in SUV ({decision.rule}): used as it is."
    if pet_node.GetAttribute("DICOM.instanceUIDs"):
        return "PET loaded from DICOM: SUV is computed from its tags."
    if weight_kg > 0 and dose_mbq > 0:
        return "SUV is computed from the weight and dose entered."
    return ("PET not loaded from DICOM: if it is in Bq/mL, enter the patient weight and the "
            "injected dose.")
