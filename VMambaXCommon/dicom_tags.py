"""A volume node's DICOM files and tags, through Slicer's DICOM database: the one place the
modules look it up (identity checks, the PET's SUV tags and RWVM, the CT/PET pre-selection).

A volume loaded from DICOM keeps its instances' UIDs in the ``DICOM.instanceUIDs`` attribute;
the database maps them to files and tag values. Outside the Slicer application (slicer-core,
scripts) there is no database: the lookups find nothing, and scripts pass tag dicts instead
(``ctTags=`` / ``petTags=`` of the logic).
"""

from __future__ import annotations


def dicom_database():
    """Slicer's DICOM database; None outside the Slicer application or when it is not open."""
    try:
        import slicer

        return slicer.dicomDatabase
    except AttributeError:  # slicer-core: no application, no DICOM database
        return None


def instance_uids(node) -> list[str]:
    """The SOP instance UIDs the node was loaded from (empty when not from DICOM)."""
    return (node.GetAttribute("DICOM.instanceUIDs") or "").split() if node is not None else []


def file_for_instance(uid: str) -> str | None:
    """The file of a DICOM instance in the database; None when unknown or there is none."""
    database = dicom_database()
    return (database.fileForInstance(uid) or None) if database is not None and uid else None


def instance_value(uid: str, tag: str) -> str:
    """A tag (``"gggg,eeee"``) of a DICOM instance from the database ("" when there is none)."""
    database = dicom_database()
    return (database.instanceValue(uid, tag) or "") if database is not None and uid else ""


def node_dicom_files(node) -> list[str]:
    """The node's DICOM files (empty when it was not loaded from DICOM or the files are gone)."""
    uids = instance_uids(node)
    if not uids or dicom_database() is None:
        return []
    return [f for f in (file_for_instance(uid) for uid in uids) if f]


def identity_tags_from_node(node) -> dict | None:
    """The first DICOM file's tags (PatientID, StudyInstanceUID, FrameOfReferenceUID, ...)."""
    files = node_dicom_files(node)
    if not files:
        return None
    from vmambax.data.dicom import read_tags

    return read_tags(files[:1])[0]
