"""VMambaX Segment's self-test checks, Qt-free: run by the module's ScriptedLoadableModuleTest in
Slicer (Reload and Test, and the extension factory) and by the slicer-core tests.

The extension factory has no PyTorch, so the one check that runs the network returns a skip
message there (logged by the caller); every other check exercises the logic with no torch:
inputs refused without touching the scene, swapped inputs named, and a full write of the
result (segment, terminology, lesion table, PET units rule) from a fixed, torch-free segmenter.
Each check takes the scene to work in and returns None (passed) or a skip message; a failure
raises ``AssertionError``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def _check(condition, message: str) -> None:
    if not condition:  # not ``assert``: must also fail under ``python -O``
        raise AssertionError(message)


def missing_pet_changes_nothing(scene):
    from vmambax.errors import InputError

    from VMambaXCommon.testing import add_phantom_case
    from VMambaXSegmentLib.logic import VMambaXSegmentLogic

    ct, _pet, _phantom, _ = add_phantom_case(scene, seed=3, size=64, n_slices=8)
    before = scene.GetNumberOfNodes()
    try:
        VMambaXSegmentLogic().segment(ct, None)
    except InputError as exc:
        _check("no PET volume selected" in str(exc), f"unexpected message: {exc}")
    else:
        raise AssertionError("a missing PET was not refused")
    _check(scene.GetNumberOfNodes() == before, "a refused run added nodes to the scene")


def swapped_inputs_are_named(scene):
    """PET given as CT and CT as PET: the swap is named, not a missing weight and dose."""
    from vmambax.errors import InputError

    from VMambaXCommon.testing import add_phantom_case
    from VMambaXSegmentLib.logic import VMambaXSegmentLogic

    ct, pet, _phantom, _ = add_phantom_case(scene, seed=3, size=64, n_slices=8, pet_units="bqml")
    try:
        VMambaXSegmentLogic().prepare(pet, ct)
    except InputError as exc:
        _check("swapped" in str(exc), f"swapped inputs reported as: {exc}")
    else:
        raise AssertionError("swapped inputs were not refused")


class FixedSegmenter:
    """Stands in for ``vmambax.infer.Segmenter`` without torch: marks a block of the CT."""

    def __init__(self, **kwargs):
        self.progress = kwargs.get("progress")

    def segment(self, ct_image, pet_image):
        import SimpleITK as sitk

        array = np.zeros(sitk.GetArrayViewFromImage(ct_image).shape, np.uint8)
        array[2:5, 20:30, 20:30] = 1
        label = sitk.GetImageFromArray(array)
        label.CopyInformation(ct_image)
        lesion = {"id": 1, "voxels": int(array.sum()), "mtv_ml": 1.0, "suv_max": 5.0,
                  "suv_mean": 3.0, "suv_peak": 4.0, "tlg": 3.0}
        if self.progress:
            self.progress(1.0, "Done")
        return SimpleNamespace(label=label, lesions=[lesion], totals=dict(lesion), model={},
                               model_name="fixed", device="cpu", timings={"total": 0.0})


def output_is_written_without_the_network(scene):
    """Segment, terminology, lesion table and provenance from the torch-free segmenter."""
    import slicer
    import vtk

    from VMambaXCommon.mrml_sitk import segment_to_array
    from VMambaXCommon.testing import add_phantom_case
    from VMambaXSegmentLib import scene_output
    from VMambaXSegmentLib.logic import VMambaXSegmentLogic

    ct, pet, _phantom, _ = add_phantom_case(scene, seed=3, size=64, n_slices=8, prefix="Phantom ")
    out = VMambaXSegmentLogic(segmenterClass=FixedSegmenter).segment(ct, pet, model="fixed")
    seg = out.segmentationNode
    _check(seg.GetName() == "Phantom CT vMambaX", f"output named {seg.GetName()!r}")
    segment = seg.GetSegmentation().GetSegment(out.segmentId)
    _check(segment.GetName() == scene_output.SEGMENT_NAME, "tumour segment misnamed")
    tag = vtk.reference("")
    segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    _check(str(tag) == scene_output.TERMINOLOGY_ENTRY, f"terminology {tag}")
    _check(seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is ct,
           "reference geometry is not the CT")
    mask = segment_to_array(seg, out.segmentId, ct)
    _check(int(mask.sum()) == 300, f"segment has {int(mask.sum())} voxels, expected 300")
    _check(out.tableNode.GetNumberOfRows() == 2, "lesion table: expected 1 lesion + Total")
    _check(seg.GetAttribute("VMambaX.PETUnitsRule"), "no PET units rule on the output")


def phantom_is_segmented_by_the_model(scene):
    """The default model on a 128 px phantom (needs PyTorch: skipped on the factory)."""
    from VMambaXCommon.testing import add_phantom_case, model_unavailable

    reason = model_unavailable()
    if reason:
        return reason
    import slicer
    import vtk

    from VMambaXSegmentLib.logic import VMambaXSegmentLogic

    ct, pet, _phantom, _ = add_phantom_case(scene, seed=3, size=128, prefix="Phantom ")
    progress = []
    out = VMambaXSegmentLogic().segment(ct, pet, model="default", device="cpu", petUnits="suv",
                                        progress=lambda f, m: progress.append(f))
    seg = out.segmentationNode
    _check(seg.GetName() == "Phantom CT vMambaX", f"output named {seg.GetName()!r}")
    segment = seg.GetSegmentation().GetSegment(out.segmentId)
    tag = vtk.reference("")
    segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    _check("SCT^108369006^Neoplasm" in str(tag), f"terminology {tag}")
    _check(seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is ct,
           "reference geometry is not the CT")
    _check(out.tableNode.GetNumberOfRows() == len(out.result.lesions) + 1, "lesion table rows")
    _check(progress and progress[-1] == 1.0, "progress did not reach 1")


# In the order the module's runTest runs them (the network last).
CHECKS = (missing_pet_changes_nothing, swapped_inputs_are_named,
          output_is_written_without_the_network, phantom_is_segmented_by_the_model)
