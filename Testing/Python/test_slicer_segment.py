"""VMambaX Segment logic against real MRML (slicer-core): geometry, SUV, scene output, cancel.

The module's Lib has no Qt, so it runs here exactly as in Slicer; the scene is built from
synthetic phantoms and segmented with a small randomly initialised vmambax-nano model file.
"""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]

import slicer  # noqa: E402  (slicer-core)
import vtk  # noqa: E402

from vmambax.errors import Cancelled, InputError  # noqa: E402
from VMambaXCommon import mrml_sitk  # noqa: E402
from VMambaXSegmentLib import scene_output  # noqa: E402
from VMambaXSegmentLib.logic import VMambaXSegmentLogic  # noqa: E402
from VMambaXCommon.pet import pet_to_suv  # noqa: E402
from VMambaXCommon.testing import add_phantom_case, phantom_pet_tags as _phantom_tags  # noqa: E402

SIZE = 128
N_SLICES = 12


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _oblique_image(dtype=np.int16):
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (7, 9, 11)).astype(dtype))
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((12.5, -40.0, 310.0))
    rotation = sitk.VersorTransform((0.3, -0.2, 0.9), 0.5)
    image.SetDirection(rotation.GetMatrix())
    return image


@pytest.fixture(scope="module")
def model_file(nano_file):
    """The shared random-init nano model file (128 px), as the path string Slicer code gets."""
    return str(nano_file)


@pytest.fixture(scope="module")
def phantom_scene():
    """One scene shared by the end-to-end tests: CT in a DICOM-like patient/study, PET in Bq/mL."""
    scene = slicer.vtkMRMLScene()
    ct, pet, phantom, _ = add_phantom_case(scene, seed=5, size=SIZE, n_slices=N_SLICES,
                                           pet_units="bqml", prefix="Phantom ")
    sh = scene_output.subject_hierarchy(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Phantom patient")
    study = sh.CreateStudyItem(patient, "PET/CT study")
    for node in (ct, pet):
        sh.SetItemParent(scene_output._item_of(sh, node), study)
    return scene, ct, pet, phantom, study


# -- geometry ------------------------------------------------------------------------------------
def test_volume_node_round_trip_keeps_voxels_and_geometry():
    image = _oblique_image()
    scene = slicer.vtkMRMLScene()
    node = mrml_sitk.add_volume_node_from_image(scene, image, "oblique")
    back = mrml_sitk.volume_node_to_image(node)
    assert back.GetPixelID() == image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    # The same voxel is at the same physical point: LPS in SimpleITK = RAS with x, y negated.
    ijk = (3, 5, 2)
    lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
    ras = mrml_sitk.ijk_to_ras(node) @ np.array([*ijk, 1.0])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


def test_parent_transform_is_applied_and_nonlinear_refused():
    scene = slicer.vtkMRMLScene()
    image = _oblique_image(np.float32)
    node = mrml_sitk.add_volume_node_from_image(scene, image, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)  # 10 mm towards patient left (RAS +x)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = mrml_sitk.volume_node_to_image(node)
    np.testing.assert_allclose(np.array(world.GetOrigin()) - image.GetOrigin(), [-10.0, 0, 0],
                               atol=1e-9)  # LPS x = -RAS x
    local = mrml_sitk.volume_node_to_image(node, world=False)
    np.testing.assert_allclose(local.GetOrigin(), image.GetOrigin(), atol=1e-9)

    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="harden the transform"):
        mrml_sitk.volume_node_to_image(node)


def test_segment_to_array_resamples_onto_the_reference_grid():
    scene = slicer.vtkMRMLScene()
    ref = mrml_sitk.add_volume_node_from_image(scene, _oblique_image(), "ref")
    label = np.zeros((7, 9, 11), np.uint8)
    label[2:5, 3:7, 4:9] = 1
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ref)
    first = seg.AddSegmentFromBinaryLabelmapRepresentation(
        mrml_sitk.oriented_image_from_array(label, mrml_sitk.ijk_to_ras(ref)), "tumour", [1, 0, 0])
    other = seg.AddSegmentFromBinaryLabelmapRepresentation(
        mrml_sitk.oriented_image_from_array(1 - label, mrml_sitk.ijk_to_ras(ref)), "lung", [0, 1, 0])
    np.testing.assert_array_equal(mrml_sitk.segment_to_array(seg, first, ref), label)
    np.testing.assert_array_equal(mrml_sitk.segment_to_array(seg, other, ref), 1 - label)


def test_invalid_volumes_are_refused():
    scene = slicer.vtkMRMLScene()
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxel data"):
        mrml_sitk.volume_node_to_image(empty)


# -- terminology and PET units -------------------------------------------------------------------
def test_terminology_entry_is_slicers_serialisation_of_lung_neoplasm():
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    expected = logic.SerializeTerminologyEntry(
        "Segmentation category and type - DICOM master list",
        "49755003", "SCT", "Morphologically Altered Structure",
        "108369006", "SCT", "Neoplasm", "", "", "",
        "Anatomic codes - DICOM master list", "39607008", "SCT", "Lung", "", "", "")
    assert scene_output.TERMINOLOGY_ENTRY == expected
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(scene_output.TERMINOLOGY_ENTRY, entry)
    assert entry.GetTypeObject().GetCodeValue() == "108369006"
    assert entry.GetRegionObject().GetCodeMeaning() == "Lung"


def test_pet_units(phantom_scene):
    _scene, _ct, pet_node, phantom, _study = phantom_scene
    bqml = mrml_sitk.volume_node_to_image(pet_node)
    expected = sitk.GetArrayFromImage(phantom.pet_suv)
    # From DICOM tags (what the widget reads from Slicer's DICOM database).
    suv, how = pet_to_suv(bqml, "auto", _phantom_tags(phantom))
    np.testing.assert_allclose(sitk.GetArrayFromImage(suv), expected, rtol=1e-4, atol=1e-4)
    assert "BQML" in how and suv.GetOrigin() == bqml.GetOrigin()
    # By hand: weight and dose decay-corrected to the scan start.
    decayed_mbq = phantom.dose_bq * 2 ** (-phantom.uptake_s / 6586.2) / 1e6
    suv, how = pet_to_suv(bqml, "bqml", None, phantom.weight_kg, decayed_mbq)
    np.testing.assert_allclose(sitk.GetArrayFromImage(suv), expected, rtol=1e-4, atol=1e-4)
    assert "by hand" in how
    # Already SUV: used as is in auto mode.
    suv_in = sitk.Cast(phantom.pet_suv, sitk.sitkFloat32)
    suv, how = pet_to_suv(suv_in, "auto")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(suv), expected)
    assert "already look like SUV" in how
    # Bq/mL without any SUV information: a clear error, in both modes.
    for units in ("auto", "bqml"):
        with pytest.raises(InputError, match="weight and the injected dose"):
            pet_to_suv(bqml, units)
    with pytest.raises(InputError, match="far too high for SUV"):
        pet_to_suv(bqml, "suv")


# -- segmentation, end to end --------------------------------------------------------------------
def _node_count(scene):
    return scene.GetNumberOfNodes()


def test_segment_writes_segmentation_table_and_study(phantom_scene, model_file):
    scene, ct, pet, phantom, study = phantom_scene
    progress = []
    logic = VMambaXSegmentLogic()
    out = logic.segment(ct, pet, model=model_file, device="cpu", petTags=_phantom_tags(phantom),
                        progress=lambda f, m: progress.append((f, m)))
    seg = out.segmentationNode
    assert seg.GetScene() is scene and seg.GetName() == "Phantom CT vMambaX"
    # Reference geometry is the CT's: the labelmap lines up with the CT voxel for voxel.
    ref = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
    assert ref is ct
    geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(
        mrml_sitk.oriented_image_from_array(np.zeros(sitk.GetArrayFromImage(phantom.ct).shape,
                                                     np.uint8), mrml_sitk.ijk_to_ras(ct)))
    assert seg.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()) == geometry
    segment = seg.GetSegmentation().GetSegment(out.segmentId)
    assert segment.GetName() == "Lung tumour"
    tag = vtk.reference("")
    assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    assert str(tag) == scene_output.TERMINOLOGY_ENTRY
    np.testing.assert_allclose(segment.GetColor(), scene_output.SEGMENT_COLOR)
    mask = mrml_sitk.segment_to_array(seg, out.segmentId, ct)
    np.testing.assert_array_equal(mask, sitk.GetArrayFromImage(out.result.label))
    # Lesion table: one row per lesion + Total, the columns, the Segmenter's numbers.
    table = out.tableNode
    assert table.GetName() == "Phantom CT vMambaX lesions"
    titles = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert titles == [c[0] for c in scene_output.TABLE_COLUMNS]
    lesions = out.result.lesions
    assert table.GetNumberOfRows() == len(lesions) + 1
    assert table.GetCellText(len(lesions), 0) == "Total"
    for row, lesion in enumerate(lesions):
        for col, (_title, _unit, _desc, key) in enumerate(scene_output.TABLE_COLUMNS[1:], start=1):
            assert float(table.GetCellText(row, col)) == pytest.approx(float(lesion[key]), rel=1e-5)
    assert float(table.GetCellText(len(lesions), 1)) == pytest.approx(float(mask.sum()))
    # Both outputs sit in the CT's study; provenance is on the node.
    sh = scene_output.subject_hierarchy(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(table)) == study
    assert seg.GetAttribute("VMambaX.model") == "nano.pt"
    assert "BQML" in seg.GetAttribute("VMambaX.petConversion")
    # Progress went from 0 to 1 without going backwards.
    fractions = [f for f, _ in progress]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_existing_output_keeps_other_segments_and_is_replaced_in_place(phantom_scene, model_file):
    scene, ct, pet, phantom, _study = phantom_scene
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reviewed")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    shape = sitk.GetArrayFromImage(phantom.ct).shape
    ones = np.ones(shape, np.uint8)
    other = seg.AddSegmentFromBinaryLabelmapRepresentation(
        mrml_sitk.oriented_image_from_array(ones, mrml_sitk.ijk_to_ras(ct)), "lung", [0, 1, 0])
    old = seg.AddSegmentFromBinaryLabelmapRepresentation(
        mrml_sitk.oriented_image_from_array(ones, mrml_sitk.ijk_to_ras(ct)), "Lung tumour", [1, 0, 0])
    out = VMambaXSegmentLogic().segment(ct, pet, outputSegmentation=seg, model=model_file,
                                        device="cpu", petTags=_phantom_tags(phantom))
    assert out.segmentationNode is seg and out.segmentId == old
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    np.testing.assert_array_equal(mrml_sitk.segment_to_array(seg, other, ct), ones)
    np.testing.assert_array_equal(mrml_sitk.segment_to_array(seg, old, ct),
                                  sitk.GetArrayFromImage(out.result.label))
    # A second run reuses the segmentation's table instead of adding another one.
    tables = scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems()
    VMambaXSegmentLogic().segment(ct, pet, outputSegmentation=seg, model=model_file, device="cpu",
                                  petTags=_phantom_tags(phantom))
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == tables


def test_async_cancel_leaves_scene_unchanged(phantom_scene, model_file):
    scene, ct, pet, phantom, _study = phantom_scene
    before = _node_count(scene)
    logic = VMambaXSegmentLogic()
    task = logic.segmentAsync(ct, pet, model=model_file, device="cpu",
                              petTags=_phantom_tags(phantom), start=False)
    task.cancel()  # before the first batch: deterministic
    task.start()
    assert task.wait(120)
    with pytest.raises(Cancelled):
        task.apply()
    assert _node_count(scene) == before


def test_async_runs_on_a_worker_thread(phantom_scene, model_file):
    scene, ct, pet, phantom, _study = phantom_scene
    threads = []

    from vmambax.infer.segmenter import Segmenter

    class RecordingSegmenter(Segmenter):
        def segment(self, ct_image, pet_image):
            threads.append(threading.current_thread())
            return super().segment(ct_image, pet_image)

    task = VMambaXSegmentLogic(segmenterClass=RecordingSegmenter).segmentAsync(
        ct, pet, model=model_file, device="cpu", petTags=_phantom_tags(phantom))
    assert task.wait(300)
    out = task.apply()  # main thread
    assert threads and threads[0] is not threading.main_thread()
    assert out.segmentationNode.GetScene() is scene


# -- failures change nothing ---------------------------------------------------------------------
def test_input_errors_change_nothing(phantom_scene):
    scene, ct, pet, _phantom, _study = phantom_scene
    logic = VMambaXSegmentLogic()
    before = _node_count(scene)
    with pytest.raises(InputError, match="no PET volume selected"):
        logic.segment(ct, None)
    with pytest.raises(InputError, match="no CT volume selected"):
        logic.segment(None, pet)
    with pytest.raises(InputError, match="same volume"):
        logic.segment(ct, ct)
    with pytest.raises(InputError, match="weight and the injected dose"):
        logic.segment(ct, pet, model="unused-model")  # Bq/mL PET, no tags, no weight/dose
    assert _node_count(scene) == before


def test_failure_while_writing_removes_created_nodes(phantom_scene):
    scene, ct, pet, phantom, _study = phantom_scene

    class WrongShapeSegmenter:
        """Returns a label that does not fit the CT, so writing the segment fails."""

        def __init__(self, **kwargs):
            pass

        def segment(self, ct_image, pet_image):
            from types import SimpleNamespace

            label = sitk.Image([3, 3, 3], sitk.sitkUInt8)
            return SimpleNamespace(label=label, lesions=[], totals={}, model={}, model_name="x",
                                   device="cpu", timings={})

    before = _node_count(scene)
    with pytest.raises(Exception):
        VMambaXSegmentLogic(segmenterClass=WrongShapeSegmenter).segment(
            ct, pet, model="x", petTags=_phantom_tags(phantom))
    assert _node_count(scene) == before


def test_only_the_lung_field_runs_unless_all_slices(tmp_path, model_file):
    """A whole-body CT: the logic runs the slices around the lungs, says so in the summary and on
    the segmentation; allSlices=True runs every slice."""
    from vmambax.phantom import make_phantom

    scene = slicer.vtkMRMLScene()
    body = make_phantom(4, size=SIZE, whole_body=True, n_tumours=1, n_slices=60)
    ct = mrml_sitk.add_volume_node_from_image(scene, body.ct, "WB CT")
    pet = mrml_sitk.add_volume_node_from_image(scene, body.pet_suv, "WB PET")
    logic = VMambaXSegmentLogic()
    out = logic.segment(ct, pet, model=model_file, device="cpu", petUnits="suv")
    n = body.ct.GetSize()[2]
    assert 0 < out.result.n_slices_run < n
    assert f"Segmented {out.result.n_slices_run} of {n} slices" in out.summary()
    sel = json.loads(out.segmentationNode.GetAttribute("VMambaX.sliceSelection"))
    assert sel["mode"] == "lung field" and sel["slices_run"] == out.result.n_slices_run
    full = logic.segment(ct, pet, model=model_file, device="cpu", petUnits="suv", allSlices=True)
    assert full.result.n_slices_run == n and "Segmented" not in full.summary()
