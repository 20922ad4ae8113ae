"""Where a run writes: each CT gets its own segmentation and lesion table unless the user picks
one; a picked segmentation takes the new CT's reference geometry and its table follows.

Two CTs of different geometry in one scene (slicer-core); the network's place is taken by a
fixed segmenter that marks a block of the CT it is given, so no model is needed.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from VMambaXCommon import mrml_sitk
from VMambaXSegmentLib import scene_output
from VMambaXSegmentLib.logic import VMambaXSegmentLogic


class BlockSegmenter:
    """Marks voxels [2:5, 10:20, 12:22] (z, y, x) of whatever CT it gets."""

    def __init__(self, **kwargs):
        pass

    def segment(self, ct_image, pet_image):
        array = np.zeros(sitk.GetArrayViewFromImage(ct_image).shape, np.uint8)
        array[2:5, 10:20, 12:22] = 1
        label = sitk.GetImageFromArray(array)
        label.CopyInformation(ct_image)
        lesion = {"id": 1, "voxels": int(array.sum()), "mtv_ml": 1.0, "suv_max": 5.0,
                  "suv_mean": 3.0, "suv_peak": 4.0, "tlg": 3.0}
        return SimpleNamespace(label=label, lesions=[lesion], totals=dict(lesion), model={},
                               model_name="block", device="cpu", timings={"total": 0.0})


@pytest.fixture(scope="module")
def phantoms():
    from vmambax.phantom import make_phantom

    return make_phantom(seed=4, size=64, n_slices=8), make_phantom(seed=5, size=48, n_slices=6)


@pytest.fixture()
def two_cts(phantoms):
    """CT A and CT B (another grid: 48 px, shifted 300 mm) with their PETs (SUV)."""
    scene = slicer.vtkMRMLScene()
    nodes = []
    for label, phantom, shift in (("A", phantoms[0], 0.0), ("B", phantoms[1], 300.0)):
        ct_image, pet_image = sitk.Image(phantom.ct), sitk.Image(phantom.pet_suv)
        for image in (ct_image, pet_image):
            origin = list(image.GetOrigin())
            origin[0] += shift
            image.SetOrigin(origin)
        nodes.append(mrml_sitk.add_volume_node_from_image(scene, ct_image, f"{label} CT"))
        nodes.append(mrml_sitk.add_volume_node_from_image(scene, pet_image, f"{label} PET"))
    return scene, nodes


def _run(ct, pet, output=None, **kwargs):
    return VMambaXSegmentLogic(segmenterClass=BlockSegmenter).segment(
        ct, pet, outputSegmentation=output, model="block", petUnits="suv", **kwargs)


def _expected_mask(ct):
    array = np.zeros(mrml_sitk.array_from_volume_node(ct).shape, np.uint8)
    array[2:5, 10:20, 12:22] = 1
    return array


def _reference(seg):
    return seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())


def _geometry(seg):
    return seg.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())


def test_each_new_ct_gets_its_own_segmentation_and_table(two_cts):
    scene, (ct_a, pet_a, ct_b, pet_b) = two_cts
    out_a = _run(ct_a, pet_a)
    out_b = _run(ct_b, pet_b)  # nothing picked: B's own output, not A's
    seg_a, seg_b = out_a.segmentationNode, out_b.segmentationNode
    assert seg_b is not seg_a and out_b.tableNode is not out_a.tableNode
    assert (seg_a.GetName(), seg_b.GetName()) == ("A CT vMambaX", "B CT vMambaX")
    assert out_b.tableNode.GetName() == "B CT vMambaX lesions"
    assert _reference(seg_a) is ct_a and _reference(seg_b) is ct_b
    np.testing.assert_array_equal(mrml_sitk.segment_to_array(seg_a, out_a.segmentId, ct_a),
                                  _expected_mask(ct_a))
    np.testing.assert_array_equal(mrml_sitk.segment_to_array(seg_b, out_b.segmentId, ct_b),
                                  _expected_mask(ct_b))
    # A second run on A, nothing picked: A's output is updated in place, no third segmentation.
    again = _run(ct_a, pet_a)
    assert again.segmentationNode is seg_a and again.tableNode is out_a.tableNode
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 2


def test_a_picked_segmentation_takes_the_new_cts_geometry_and_table_name(two_cts):
    scene, (ct_a, pet_a, ct_b, pet_b) = two_cts
    out_a = _run(ct_a, pet_a)
    seg = out_a.segmentationNode
    # The user picks A's segmentation for B: confirmed first (issue 17.4), then written.
    out_b = _run(ct_b, pet_b, output=seg, replaceOtherCtOutput=True)
    assert out_b.segmentationNode is seg and out_b.tableNode is out_a.tableNode
    assert _reference(seg) is ct_b
    reference = mrml_sitk.oriented_image_from_array(_expected_mask(ct_b),
                                                    mrml_sitk.ijk_to_ras(ct_b))
    assert _geometry(seg) == slicer.vtkSegmentationConverter.SerializeImageGeometry(reference)
    np.testing.assert_array_equal(mrml_sitk.segment_to_array(seg, out_b.segmentId, ct_b),
                                  _expected_mask(ct_b))  # not cut to A's grid
    assert out_b.tableNode.GetName() == "B CT vMambaX lesions"
    assert seg.GetName() == "A CT vMambaX"  # the user's node keeps its name
    # A later run on A with nothing picked does not write into it (it now holds B's tumour).
    out_a2 = _run(ct_a, pet_a)
    assert out_a2.segmentationNode is not seg and _reference(out_a2.segmentationNode) is ct_a
    assert out_a2.tableNode is not out_b.tableNode
    assert out_a2.tableNode.GetName() == "A CT vMambaX lesions"


def test_another_cts_result_in_a_picked_output_is_replaced_only_when_confirmed(two_cts):
    scene, (ct_a, pet_a, ct_b, pet_b) = two_cts
    seg = _run(ct_a, pet_a).segmentationNode
    before = mrml_sitk.segment_to_array(seg, seg.GetSegmentation().GetSegmentIdBySegmentName(
        scene_output.SEGMENT_NAME), ct_a).copy()
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(scene_output.OutputOfAnotherCT) as refused:
        _run(ct_b, pet_b, output=seg)
    assert "'A CT'" in str(refused.value) and "'B CT'" in str(refused.value)
    assert "leave the output empty" in str(refused.value)
    # Nothing changed: A's tumour, the reference geometry, the node count.
    assert scene.GetNumberOfNodes() == nodes and _reference(seg) is ct_a
    assert seg.GetAttribute(scene_output.WRITTEN_FOR_CT_ATTRIBUTE) == ct_a.GetID()
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName(scene_output.SEGMENT_NAME)
    np.testing.assert_array_equal(mrml_sitk.segment_to_array(seg, segment_id, ct_a), before)
    # Re-running A into it, or any output VMambaX never wrote, needs no confirmation.
    assert _run(ct_a, pet_a, output=seg).segmentationNode is seg
    fresh = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    assert _run(ct_b, pet_b, output=fresh).segmentationNode is fresh


def test_output_for_decides_without_writing(two_cts):
    scene, (ct_a, pet_a, ct_b, _pet_b) = two_cts
    assert scene_output.output_for(ct_a, None) is None  # nothing yet: create one
    seg_a = _run(ct_a, pet_a).segmentationNode
    assert scene_output.output_for(ct_a, None) is seg_a
    assert scene_output.output_for(ct_b, None) is None
    picked = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    assert scene_output.output_for(ct_b, picked) is picked


def test_failed_write_leaves_a_picked_segmentation_as_it_was(two_cts):
    scene, (ct_a, pet_a, ct_b, pet_b) = two_cts
    out_a = _run(ct_a, pet_a)
    seg, before = out_a.segmentationNode, _geometry(out_a.segmentationNode)

    class WrongShape(BlockSegmenter):
        def segment(self, ct_image, pet_image):
            result = super().segment(ct_image, pet_image)
            result.label = sitk.Image([3, 3, 3], sitk.sitkUInt8)  # does not fit the CT
            return result

    with pytest.raises(RuntimeError, match="does not match the CT grid"):
        VMambaXSegmentLogic(segmenterClass=WrongShape).segment(
            ct_b, pet_b, outputSegmentation=seg, model="x", petUnits="suv",
            replaceOtherCtOutput=True)
    assert _reference(seg) is ct_a and _geometry(seg) == before
    assert scene_output.output_for(ct_a, None) is seg
    assert out_a.tableNode.GetName() == "A CT vMambaX lesions"


def test_picked_output_under_another_transform_is_refused_before_the_run(two_cts):
    from vmambax.errors import InputError

    scene, (ct_a, pet_a, _ct_b, _pet_b) = two_cts
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "elsewhere")
    seg.SetAndObserveTransformNodeID(scene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    with pytest.raises(InputError, match="different transforms"):
        VMambaXSegmentLogic().prepare(ct_a, pet_a, outputSegmentation=seg, petUnits="suv")


def test_earlier_output_under_another_transform_than_the_ct_is_not_reused(two_cts):
    """The CT was moved under a transform after its first run (or its output was): the next run
    gets a new output under the CT's transform instead of failing after the network ran."""
    scene, (ct_a, pet_a, _ct_b, _pet_b) = two_cts
    first = _run(ct_a, pet_a).segmentationNode
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    ct_a.SetAndObserveTransformNodeID(transform.GetID())
    pet_a.SetAndObserveTransformNodeID(transform.GetID())
    assert scene_output.output_for(ct_a, None) is None
    again = _run(ct_a, pet_a).segmentationNode
    assert again is not first and again.GetTransformNodeID() == transform.GetID()
    assert scene_output.output_for(ct_a, None) is again


def test_segment_passes_the_rwvm_lookup_to_prepare(two_cts, monkeypatch):
    _scene, (ct_a, pet_a, _ct_b, _pet_b) = two_cts
    seen = []
    prepare = VMambaXSegmentLogic.prepare

    def recording(self, *args, **kwargs):
        seen.append(kwargs.get("petRwvmFile"))
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(VMambaXSegmentLogic, "prepare", recording)

    def lookup(uid):
        return None

    VMambaXSegmentLogic(segmenterClass=BlockSegmenter).segment(
        ct_a, pet_a, model="block", petUnits="suv", petRwvmFile=lookup)
    assert seen == [lookup]
