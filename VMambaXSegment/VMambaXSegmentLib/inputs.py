"""Which loaded volumes are the CT and the PET: pre-selection of the panel's inputs (no Qt).

The DICOM Modality (0008,0060) of a volume's files decides first: ``CT`` or ``PT``. A volume
whose voxel-value units say PET (SUV, Bq/mL; PETDICOMExtension sets them) is a PET. Names are
only a fallback, for volumes with no DICOM modality, and match whole words: a series called
"PET CTAC" (PET attenuation-corrected with the CT) is no CT, and "corrected" has no "ct" in it.
Among several: the largest CT series that is not a localizer (ImageType LOCALIZER, a scout
name, or a handful of slices), and the attenuation-corrected PET (CorrectedImage ATTN; "NAC"
in the name or series description marks the uncorrected one); ``choose_pet_ct`` says which
and why, for the panel's status line.
"""

from __future__ import annotations

import dataclasses
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


IMAGE_TYPE_TAG = "0008,0008"  # LOCALIZER for scout / topogram images
CORRECTED_IMAGE_TAG = "0028,0051"  # ATTN when the PET is attenuation-corrected
SERIES_DESCRIPTION_TAG = "0008,103E"
LOCALIZER_WORDS = frozenset({"localizer", "localiser", "scout", "topogram", "surview", "scanogram"})
NAC_WORDS = frozenset({"nac", "noac", "uncorrected", "nonac"})  # not attenuation-corrected
MIN_SLICES = 3  # a CT of fewer slices is a scout or a single image (3-plane scouts load apart)


@dataclasses.dataclass
class PetCtChoice:
    """The pre-selected CT and PET (either may be None) and, in words, why those."""

    ct: object
    pet: object
    note: str = ""


def _slices(node) -> int | None:
    data = node.GetImageData() if node is not None else None
    return data.GetDimensions()[2] if data is not None else None


def _voxels(node) -> int:
    data = node.GetImageData() if node is not None else None
    if data is None:
        return 0
    x, y, z = data.GetDimensions()
    return x * y * z


def _tag(node, tag, instance_value) -> str:
    uids = dicom_tags.instance_uids(node)
    return (instance_value or dicom_tags.instance_value)(uids[0], tag) if uids else ""


def _words(node, instance_value) -> set[str]:
    """The node's name and its DICOM series description, as words (with "non AC" as "nonac")."""
    text = f"{node.GetName()} {_tag(node, SERIES_DESCRIPTION_TAG, instance_value)}"
    words = name_words(text)
    joined = {a + b for a, b in zip(words, words[1:]) if a in ("non", "no") and b == "ac"}
    return set(words) | joined


def is_localizer(node, instance_value: InstanceValue | None = None) -> bool:
    """A scout / topogram: DICOM ImageType LOCALIZER, such a word in its name, or too few slices."""
    image_type = _tag(node, IMAGE_TYPE_TAG, instance_value).upper()
    slices = _slices(node)
    return ("LOCALIZER" in image_type or bool(LOCALIZER_WORDS & _words(node, instance_value))
            or (slices is not None and slices < MIN_SLICES))


def attenuation_corrected(node, instance_value: InstanceValue | None = None) -> bool | None:
    """True / False from DICOM CorrectedImage (ATTN) or words like "NAC"; None when unknown."""
    corrected = _tag(node, CORRECTED_IMAGE_TAG, instance_value).upper()
    if corrected:
        return "ATTN" in corrected
    if NAC_WORDS & _words(node, instance_value):
        return False
    return None


def choose_pet_ct(nodes: Iterable, instance_value: InstanceValue | None = None) -> PetCtChoice:
    """The CT and PET to pre-select among ``nodes``, and a note naming them and why.

    Roles by DICOM modality or units first, names only when nothing else says (label maps are
    skipped). Among the CTs: never a localizer, then the largest series (most voxels). Among
    the PETs: the attenuation-corrected one (a non-attenuation-corrected PET is a PET of
    wrong uptake values; taken only when it is the only PET, and then said).
    """
    found: dict[str, list] = {"CT": [], "PET": []}
    for order, node in enumerate(nodes):
        if node is None or node.IsA("vtkMRMLLabelMapVolumeNode"):
            continue
        role, how = role_of(node, instance_value)
        if role:
            found[role].append((how == "name", order, node))
    cts = [(is_localizer(n, instance_value), by_name, -_voxels(n), order, n)
           for by_name, order, n in found["CT"]]
    pets = [(attenuation_corrected(n, instance_value) is False, by_name,
             attenuation_corrected(n, instance_value) is not True, order, n)
            for by_name, order, n in found["PET"]]
    best_ct = min(cts, key=lambda c: c[:4]) if cts else None
    ct = best_ct[-1] if best_ct is not None and not best_ct[0] else None  # never a localizer
    pet = min(pets, key=lambda p: p[:4])[-1] if pets else None
    return PetCtChoice(ct, pet, _choice_note(ct, pet, cts, pets, instance_value))


def _choice_note(ct, pet, cts, pets, instance_value) -> str:
    parts = []
    if ct is not None:
        why = []
        others = [c[-1] for c in cts if c[-1] is not ct]
        if others:
            why.append(f"the largest of {len(cts)} CT series, {_slices(ct)} slices")
        skipped = [c[-1].GetName() for c in cts if c[0]]
        if skipped:
            why.append("not the localizer " + ", ".join(repr(n) for n in skipped))
        parts.append(f"CT {ct.GetName()!r}" + (f" ({'; '.join(why)})" if why else ""))
    elif cts:
        parts.append("no CT: " + ", ".join(repr(c[-1].GetName()) for c in cts)
                     + " look like localizers; choose the CT by hand")
    if pet is not None:
        corrected = attenuation_corrected(pet, instance_value)
        why = []
        if corrected:
            why.append("attenuation-corrected")
        elif corrected is False:
            why.append("NOT attenuation-corrected: the only PET; load the corrected series")
        nac = [p[-1].GetName() for p in pets if p[-1] is not pet and p[0]]
        if nac:
            why.append("not the non-attenuation-corrected " + ", ".join(repr(n) for n in nac))
        parts.append(f"PET {pet.GetName()!r}" + (f" ({'; '.join(why)})" if why else ""))
    return ("Chosen: " + "; ".join(parts) + ".") if parts else ""


def guess_pet_ct(nodes: Iterable, instance_value: InstanceValue | None = None):
    """``(ct, pet)`` of ``choose_pet_ct`` (either may be None)."""
    choice = choose_pet_ct(nodes, instance_value)
    return choice.ct, choice.pet


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
