"""A volume node's DICOM header, through Slicer's DICOM database (identity checks).

A volume loaded from DICOM keeps its instances' UIDs in the ``DICOM.instanceUIDs`` attribute;
the database maps them to files. Outside the Slicer application (slicer-core, scripts) there is
no database, and scripts pass tag dicts instead (``ctTags=`` / ``petTags=`` of the logic).
"""

from __future__ import annotations


def node_dicom_files(node) -> list[str]:
    """The node's DICOM files (empty when it was not loaded from DICOM or the files are gone)."""
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split() if node is not None else []
    if not uids:
        return []
    try:
        import slicer

        database = slicer.dicomDatabase
    except AttributeError:  # slicer-core: no application, no DICOM database
        return []
    if database is None:
        return []
    return [f for f in (database.fileForInstance(uid) for uid in uids) if f]


def identity_tags_from_node(node) -> dict | None:
    """The first DICOM file's tags (PatientID, StudyInstanceUID, FrameOfReferenceUID, ...)."""
    files = node_dicom_files(node)
    if not files:
        return None
    from vmambax.data.dicom import read_tags

    return read_tags(files[:1])[0]
