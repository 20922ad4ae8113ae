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

MODALITY_TAG = "0008,0060"
CT_WORDS = frozenset({"ct"})
PET_WORDS = frozenset({"pet", "suv", "suvbw", "fdg"})  # not "pt": also "patient"
PET_PHRASES = ("standardized uptake value",)  # how PETDICOMExtension names SUV volumes

InstanceValue = Callable[[str, str], str]  # (SOP instance UID, "gggg,eeee") -> value


def name_words(name: str) -> list[str]:
    """The lower-case words of a volume name: split at anything but letters and digits, between
    letters and digits, and where a lower-case letter meets a capital (``"ctChest"`` -> ct,
    chest); never inside a run of letters otherwise (``CTAC``, ``SUVbw`` stay whole)."""
    words = []
    for part in re.split(r"[^A-Za-z0-9]+", name or ""):
        words += re.split(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])", part)
    return [w.lower() for w in words if w]


def _database_instance_value(uid: str, tag: str) -> str:
    """A tag of a DICOM instance from Slicer's DICOM database ("" outside Slicer)."""
    try:
        import slicer

        database = slicer.dicomDatabase
    except AttributeError:  # slicer-core: no application, no DICOM database
        return ""
    return (database.instanceValue(uid, tag) or "") if database is not None else ""


def dicom_modality(node, instance_value: InstanceValue | None = None) -> str:
    """The DICOM Modality of the node's first file (``CT``, ``PT``...), "" when not from DICOM."""
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        return ""
    return (instance_value or _database_instance_value)(uids[0], MODALITY_TAG).strip().upper()


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
