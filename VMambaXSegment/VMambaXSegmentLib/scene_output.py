"""Writing a segmentation result into the MRML scene: segment, terminology, lesion table, study.

Main thread only (MRML). Works in full Slicer and in ``slicer-core`` (no global scene:
the scene is always taken from the nodes).
"""

from __future__ import annotations

import math

import numpy as np

from vmambax.errors import InputError
from VMambaXCommon.mrml_sitk import ijk_to_ras, oriented_image_from_array

SEGMENT_NAME = "Lung tumour"
SEGMENT_COLOR = (0.85, 0.1, 0.1)  # red, as PET/CT reading tools show tumour
LESION_TABLE_REFERENCE_ROLE = "vmambaxLesionTable"  # segmentation node -> its lesion table
# On segmentations VMambaX made: the ID of the CT it made the node for. On every output: the ID
# of the CT last written into it. Saved with the scene, so the choice survives a reload.
CREATED_FOR_CT_ATTRIBUTE = "VMambaX.createdForCT"
WRITTEN_FOR_CT_ATTRIBUTE = "VMambaX.CT"

# Standard terminology of the segment: category "Morphologically Altered Structure"
# (SCT 49755003), type "Neoplasm" (SCT 108369006), anatomic region "Lung" (SCT 39607008).
# The context must be one that holds that type: Slicer's "DICOM master list" does, its
# "3D Slicer General Anatomy list" does not (no Neoplasm under Morphologically Altered
# Structure there; the tests look both up in Slicer's own terminology files). Serialised in
# Slicer's vtkSlicerTerminologiesModuleLogic format:
#   context~category~type~typeModifier~anatomicContext~region~regionModifier
# with each code as codingScheme^codeValue^codeMeaning (empty parts as "^^").
# Slicer's SerializeTerminologyEntry produces exactly this string (checked in the tests); it is
# what the DICOM SEG export turns into SegmentedPropertyCategory/Type and AnatomicRegion codes.
TERMINOLOGY_ENTRY = (
    "Segmentation category and type - DICOM master list"
    "~SCT^49755003^Morphologically Altered Structure"
    "~SCT^108369006^Neoplasm"
    "~^^"
    "~Anatomic codes - DICOM master list"
    "~SCT^39607008^Lung"
    "~^^"
)

# Column title, unit, description, and the lesion-dict key (vmambax.metrics.quantify_lesions).
TABLE_COLUMNS = (
    ("Lesion", "", "Lesion number (connected component), largest first; Total = all lesions", None),
    ("Voxels", "voxels", "Number of CT voxels in the lesion", "voxels"),
    ("MTV (mL)", "mL", "Metabolic tumour volume", "mtv_ml"),
    ("SUVmax", "g/mL", "Maximum body-weight SUV in the lesion", "suv_max"),
    ("SUVmean", "g/mL", "Mean body-weight SUV in the lesion", "suv_mean"),
    ("SUVpeak", "g/mL", "Highest mean SUV in a 1 mL sphere inside the lesion", "suv_peak"),
    ("TLG (g)", "g", "Total lesion glycolysis = SUVmean x MTV", "tlg"),
)


def subject_hierarchy(scene):
    import slicer

    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def _item_of(sh, node) -> int:
    """The node's subject-hierarchy item (full Slicer creates these automatically, slicer-core
    does not, so create one under the scene when missing)."""
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    return item


def study_item_of(node) -> int:
    """The item the node sits under (the DICOM study for loaded DICOM, else its folder/scene)."""
    sh = subject_hierarchy(node.GetScene())
    return sh.GetItemParent(_item_of(sh, node))


def place_next_to(node, reference_node) -> int:
    """Put ``node`` in the subject-hierarchy study (parent item) of ``reference_node``."""
    sh = subject_hierarchy(node.GetScene())
    parent = study_item_of(reference_node)
    item = _item_of(sh, node)
    if sh.GetItemParent(item) != parent:
        sh.SetItemParent(item, parent)
    return parent


def output_for(ct_node, picked=None):
    """The segmentation a run on ``ct_node`` writes into; None: create a new one.

    The user's pick wins. Otherwise the segmentation VMambaX made for this CT, if its last run
    was on this CT too (a re-run updates it in place) and it sits under the CT's transform (else
    writing would be refused after the network ran: a new output is made instead); never the
    output of another CT, so a run on a second CT gets its own segmentation and lesion table.
    """
    if picked is not None and picked.GetScene() is not None:
        return picked
    scene, ct_id = ct_node.GetScene(), ct_node.GetID()
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    for i in reversed(range(nodes.GetNumberOfItems())):  # the newest first
        node = nodes.GetItemAsObject(i)
        if (node.GetAttribute(CREATED_FOR_CT_ATTRIBUTE) == ct_id
                and node.GetAttribute(WRITTEN_FOR_CT_ATTRIBUTE) == ct_id
                and node.GetTransformNodeID() == ct_node.GetTransformNodeID()):
            return node
    return None


def new_output(ct_node):
    """A new segmentation for ``ct_node``'s result (no display nodes yet)."""
    segmentation = ct_node.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                        f"{ct_node.GetName()} vMambaX")
    segmentation.SetAttribute(CREATED_FOR_CT_ATTRIBUTE, ct_node.GetID())
    segmentation.SetAndObserveTransformNodeID(ct_node.GetTransformNodeID())
    return segmentation


class OutputOfAnotherCT(InputError):
    """The chosen output holds the tumour segmented on another CT (the widget asks first)."""


def check_other_ct_output(segmentation_node, ct_node) -> None:
    """Refuse to overwrite the "Lung tumour" another CT's run wrote into a picked output, unless
    the caller confirmed (the user chose it explicitly; replacing it silently lost that CT's
    result). Outputs never written by VMambaX, or last written for this CT, pass."""
    written_for = segmentation_node.GetAttribute(WRITTEN_FOR_CT_ATTRIBUTE)
    if not written_for or written_for == ct_node.GetID():
        return
    if not segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(SEGMENT_NAME):
        return
    other = ct_node.GetScene().GetNodeByID(written_for)
    other_name = repr(other.GetName()) if other is not None else "a CT no longer in the scene"
    raise OutputOfAnotherCT(
        f"the output segmentation {segmentation_node.GetName()!r} holds the {SEGMENT_NAME!r} "
        f"segmented on {other_name}; segmenting {ct_node.GetName()!r} into it replaces that "
        f"result (its other segments are kept). Confirm, or leave the output empty to create "
        f"a new segmentation for this CT")


def check_output_transform(segmentation_node, ct_node) -> None:
    """Refuse a picked output under another transform than the CT (before the run)."""
    if segmentation_node is None or segmentation_node.GetScene() is None:
        return
    if segmentation_node.GetTransformNodeID() != ct_node.GetTransformNodeID():
        raise InputError(
            f"the output segmentation {segmentation_node.GetName()!r} and the CT "
            f"{ct_node.GetName()!r} are under different transforms; put them under the same "
            f"transform (Data module) or leave the output empty to create a new segmentation")


def geometry_state(segmentation_node) -> tuple:
    """What ``adopt_ct_geometry`` changes, to put back if writing the result fails."""
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    return (segmentation_node.GetSegmentation().GetConversionParameter(
        _geometry_parameter()), segmentation_node.GetNodeReferenceID(role),
        segmentation_node.GetAttribute(WRITTEN_FOR_CT_ATTRIBUTE))


def restore_geometry(segmentation_node, state: tuple) -> None:
    geometry, reference_id, written_for = state
    segmentation_node.GetSegmentation().SetConversionParameter(_geometry_parameter(), geometry)
    segmentation_node.SetNodeReferenceID(
        segmentation_node.GetReferenceImageGeometryReferenceRole(), reference_id)
    if written_for is None:
        segmentation_node.RemoveAttribute(WRITTEN_FOR_CT_ATTRIBUTE)
    else:
        segmentation_node.SetAttribute(WRITTEN_FOR_CT_ATTRIBUTE, written_for)


def _geometry_parameter() -> str:
    import slicer

    return slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()


def adopt_ct_geometry(segmentation_node, ct_node) -> bool:
    """Make ``ct_node`` the segmentation's reference geometry; True when it changed CT.

    The tumour is written on the CT's voxel grid in the CT's own frame, so the segmentation
    must sit under the CT's transform (a picked one under another transform is refused).
    """
    check_output_transform(segmentation_node, ct_node)
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    changed = segmentation_node.GetNodeReference(role) is not ct_node
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
    segmentation_node.SetNodeReferenceID(role, ct_node.GetID())
    segmentation_node.SetAttribute(WRITTEN_FOR_CT_ATTRIBUTE, ct_node.GetID())
    return changed


def write_tumour_segment(segmentation_node, label_array: np.ndarray, ct_node) -> str:
    """Set the "Lung tumour" segment to ``label_array`` (CT voxel grid, (z, y, x), 0/1).

    An existing segment of that name is overwritten in place (its ID, colour and the other
    segments are kept); otherwise the segment is added. Returns the segment ID.
    """
    import slicer

    dims = ct_node.GetImageData().GetDimensions()
    if tuple(label_array.shape) != (dims[2], dims[1], dims[0]):
        raise RuntimeError(f"internal error: label of shape {tuple(label_array.shape)} does not "
                           f"match the CT grid {(dims[2], dims[1], dims[0])}")
    labelmap = oriented_image_from_array(np.asarray(label_array, dtype=np.uint8),
                                         ijk_to_ras(ct_node, world=False))
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
    if segment_id:
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id,
                                                logic.MODE_REPLACE):
            raise RuntimeError(f"could not update segment {SEGMENT_NAME!r}")
    else:
        segment_id = segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(
            labelmap, SEGMENT_NAME, list(SEGMENT_COLOR))
        if not segment_id:
            raise RuntimeError(f"could not add segment {SEGMENT_NAME!r}")
    segment = segmentation.GetSegment(segment_id)
    segment.SetColor(*SEGMENT_COLOR)
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), TERMINOLOGY_ENTRY)
    segment.SetTag("vmambax", "automatic")  # marks machine-made contours for reviewers
    return segment_id


def _cell(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value if math.isfinite(value) else float("nan")


def lesion_rows(lesions: list[dict], totals: dict) -> list[list]:
    """Table rows: one per lesion, then "Total" (MTV, TLG and voxels summed; SUVmax and SUVpeak
    the highest; SUVmean over all lesion voxels, as ``vmambax.metrics`` computes them)."""
    rows = []
    for index, lesion in enumerate(lesions, start=1):
        rows.append([str(lesion.get("id", index))]
                    + [_cell(lesion.get(key)) for _title, _unit, _desc, key in TABLE_COLUMNS[1:]])
    totals = dict(totals or {})
    totals.setdefault("voxels", sum(int(lesion.get("voxels", 0)) for lesion in lesions))
    rows.append(["Total"] + [_cell(totals.get(key)) for _t, _u, _d, key in TABLE_COLUMNS[1:]])
    return rows


def write_lesion_table(table_node, lesions: list[dict], totals: dict) -> None:
    """Replace the table's content with the lesion statistics."""
    import vtk

    rows = lesion_rows(lesions, totals)
    table = vtk.vtkTable()
    for col, (title, _unit, _desc, _key) in enumerate(TABLE_COLUMNS):
        array = vtk.vtkStringArray() if col == 0 else vtk.vtkDoubleArray()
        array.SetName(title)
        array.SetNumberOfValues(len(rows))
        for r, row in enumerate(rows):
            array.SetValue(r, row[col])
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)
    for title, unit, description, _key in TABLE_COLUMNS:
        if unit:
            table_node.SetColumnUnitLabel(title, unit)
        table_node.SetColumnDescription(title, description)
    table_node.Modified()


def lesion_table_for(segmentation_node, name: str, rename: bool = False):
    """The segmentation's lesion table node (referenced), created when it has none yet;
    ``rename``: an existing table takes ``name`` (its segmentation moved to another CT)."""
    table_node = segmentation_node.GetNodeReference(LESION_TABLE_REFERENCE_ROLE)
    if table_node is None or table_node.GetScene() is None:
        table_node = segmentation_node.GetScene().AddNewNodeByClass("vtkMRMLTableNode", name)
        segmentation_node.SetNodeReferenceID(LESION_TABLE_REFERENCE_ROLE, table_node.GetID())
    elif rename:
        table_node.SetName(name)
    return table_node
