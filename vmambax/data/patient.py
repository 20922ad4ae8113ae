"""Is the PET of the same patient, study and frame of reference as the CT? (DICOM identity tags)

A CT and a PET of different patients line up in scanner coordinates just as well as a real pair,
so nothing in the images gives the mix-up away: the lesion table would silently be built from
another patient's PET. When both inputs carry DICOM tags (DICOM files, or the Slicer nodes' DICOM
instances), PatientID must match; a different StudyInstanceUID or FrameOfReferenceUID is
reported, since a PET/CT pair normally shares both and their coordinates are only comparable
within one frame of reference. Inputs without tags (NIfTI, NRRD) cannot be checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmambax.errors import InputError

_TAG_NUMBERS = {"PatientID": "0010,0020", "StudyInstanceUID": "0020,000D",
                "FrameOfReferenceUID": "0020,0052"}
ALLOW_HINT = ("pass --allow-different-patients (Python: allow_different_patients=True; Slicer: "
              "confirm the dialog)")


class DifferentPatientsError(InputError):
    """CT and PET carry different PatientIDs; the caller may confirm and retry with
    ``allow_different_patients=True`` (the Slicer module asks the user)."""


def identity_value(tags: Mapping[str, Any] | None, keyword: str) -> str | None:
    """``keyword``'s value (or its ``gggg,eeee`` form) as stripped text; None when absent/empty."""
    if not tags:
        return None
    number = _TAG_NUMBERS.get(keyword, "")
    for key in (keyword, number, number.lower(), f"({number})"):
        value = tags.get(key) if key else None
        if value is not None:
            text = str(getattr(value, "value", value)).strip().strip("\0").strip()
            return text or None
    return None


def check_same_patient(ct_tags: Mapping[str, Any] | None, pet_tags: Mapping[str, Any] | None, *,
                       allow_different_patients: bool = False) -> list[str]:
    """Compare the CT's and the PET's identity tags; return the warnings to show.

    Raises ``DifferentPatientsError`` for different PatientIDs unless
    ``allow_different_patients`` (then that is a warning too). Tags missing on either side are
    not compared.
    """
    notes: list[str] = []
    ct_id, pet_id = identity_value(ct_tags, "PatientID"), identity_value(pet_tags, "PatientID")
    if ct_id and pet_id and ct_id != pet_id:
        message = f"The CT is of patient {ct_id!r} and the PET of patient {pet_id!r}"
        if not allow_different_patients:
            raise DifferentPatientsError(
                f"{message} (DICOM PatientID): the lesion table would be built from another "
                "patient's PET. Load the CT and the PET of one patient; if they are the same "
                f"person under two IDs (e.g. exported with different anonymisation), {ALLOW_HINT}.")
        notes.append(f"{message}; used anyway because different patients were allowed.")
    ct_study, pet_study = (identity_value(ct_tags, "StudyInstanceUID"),
                           identity_value(pet_tags, "StudyInstanceUID"))
    if ct_study and pet_study and ct_study != pet_study:
        notes.append(f"The CT and the PET belong to different studies (StudyInstanceUID "
                     f"{ct_study} vs {pet_study}); check that they were acquired together, since "
                     "the PET is placed on the CT by scanner coordinates only.")
    ct_frame, pet_frame = (identity_value(ct_tags, "FrameOfReferenceUID"),
                           identity_value(pet_tags, "FrameOfReferenceUID"))
    if ct_frame and pet_frame and ct_frame != pet_frame:
        notes.append(f"The CT and the PET are not in the same frame of reference "
                     f"(FrameOfReferenceUID {ct_frame} vs {pet_frame}), so their coordinates need "
                     "not match: check the fused overlay, or register the PET to the CT first.")
    return notes
