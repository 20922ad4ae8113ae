"""VMambaX Segment logic: CT + PET volume nodes in, a tumour segmentation and lesion table out.

GUI-free, so it runs from Slicer's Python console, from scripts and under ``slicer-core`` in CI::

    logic = VMambaXSegmentLogic()
    out = logic.segment(ctNode, petNode)                       # blocks; for scripts
    task = logic.segmentAsync(ctNode, petNode, model="default")  # returns at once
    ...  # poll task.done / task.snapshot() from a timer, task.cancel() to stop
    out = task.apply()                                           # main thread, when done

Work is split so Slicer never freezes and the scene is only touched on the main thread: inputs
are validated and read into SimpleITK images first (nothing is created yet), the network runs on
a worker thread (``vmambax.infer.Segmenter``), and only a finished, non-cancelled run writes to
the scene. A failure or a cancel leaves the scene exactly as it was.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from vmambax.errors import ConfigError, InputError

from VMambaXCommon.devices import available_devices, device_choices
from VMambaXSegmentLib import scene_output
from VMambaXCommon.mrml_sitk import volume_node_to_image
from VMambaXCommon.pet import pet_tags_from_node, pet_to_suv
from VMambaXSegmentLib.task import BackgroundTask

ProgressFn = Callable[[float, str], None]


@dataclasses.dataclass
class SegmentInputs:
    """Validated inputs, read on the main thread; safe to hand to a worker thread."""

    ct: Any  # SimpleITK image (HU), world geometry
    pet_suv: Any  # SimpleITK image (SUV), world geometry
    pet_conversion: str  # how the PET became SUV (shown to the user, stored on the output)


@dataclasses.dataclass
class SegmentOutput:
    """What a finished segmentation put into the scene."""

    segmentationNode: Any
    segmentId: str
    tableNode: Any
    result: Any  # vmambax.infer.SegmentationResult (lesions, totals, timings, model, device)
    petConversion: str

    def summary(self) -> str:
        totals = self.result.totals or {}
        n = len(self.result.lesions)
        if not n:
            return f"No tumour found ({self.result.model_name}, {self.result.device})."
        mtv = totals.get("mtv_ml")
        mtv_text = f", total MTV {mtv:.1f} mL" if isinstance(mtv, (int, float)) else ""
        return (f"{n} lesion(s){mtv_text}; model {self.result.model_name} on "
                f"{self.result.device} in {self.result.timings.get('total', 0):.1f} s.")


def _check_volume(node, role: str) -> None:
    if node is None:
        raise InputError(f"no {role} volume selected; choose the {role} in the Inputs section "
                         f"(Python: pass the {role} volume node)")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{node.GetName()!r} is a {node.GetClassName()}, not a scalar volume; "
                         f"choose the {role} image volume")
    if node.GetScene() is None:
        raise InputError(f"the {role} volume {node.GetName()!r} is not in a scene")
    if node.GetImageData() is None:
        raise InputError(f"the {role} volume {node.GetName()!r} has no voxel data; load it again")


class VMambaXSegmentLogic:
    """Segment lung tumours on a co-registered PET/CT pair in the MRML scene."""

    def __init__(self, segmenterClass=None):
        # The Segmenter class can be swapped (e.g. a subclass with a fixed thread count).
        self.segmenterClass = segmenterClass

    # -- choices for the GUI ----------------------------------------------------------------
    @staticmethod
    def availableModels() -> list[tuple[str, str]]:
        """``(name, description)`` of the registered models (shipped first, then the user's)."""
        from vmambax.infer.registry import list_models

        return [(m.name, m.description or m.config) for m in list_models()]

    @staticmethod
    def userModelNames() -> set[str]:
        """Models the user registered (VMambaX Train, ``vmambax models add``): removable."""
        from vmambax.infer.registry import user_models

        return {m.name for m in user_models()}

    @staticmethod
    def removeUserModel(name: str) -> None:
        """Forget a registered user model (its file stays); shipped models cannot be removed."""
        from vmambax.infer.registry import remove_user_model

        remove_user_model(name)

    @staticmethod
    def availableDevices() -> list[str]:
        """``auto`` and ``cpu``, plus ``cuda`` / ``mps`` only where PyTorch sees that GPU."""
        return available_devices()

    @staticmethod
    def deviceChoices() -> list[tuple[str, str]]:
        """``(key, label)`` of the devices offered, e.g. ``("cuda", "NVIDIA GPU (CUDA)")``."""
        return device_choices()

    # -- steps ------------------------------------------------------------------------------
    def prepare(self, ctNode, petNode, outputSegmentation=None, petUnits: str = "auto",
                petTags=None, weightKg: float | None = None,
                doseMBq: float | None = None) -> SegmentInputs:
        """Validate and read the inputs (main thread). Changes nothing in the scene."""
        _check_volume(ctNode, "CT")
        _check_volume(petNode, "PET")
        if ctNode is petNode:
            raise InputError("the same volume is selected as CT and as PET; choose the PET volume")
        if ctNode.GetScene() is not petNode.GetScene():
            raise InputError("the CT and PET volumes are in different scenes")
        if outputSegmentation is not None:
            if not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
                raise InputError(f"output {outputSegmentation.GetName()!r} is not a segmentation")
            if outputSegmentation.GetScene() is not ctNode.GetScene():
                raise InputError("the output segmentation is not in the CT's scene")
        if petTags is None and petUnits != "suv":
            petTags = pet_tags_from_node(petNode)  # Slicer's DICOM database; None elsewhere
        ct = volume_node_to_image(ctNode)
        pet = volume_node_to_image(petNode)
        pet_suv, conversion = pet_to_suv(pet, petUnits, petTags, weightKg, doseMBq,
                                         name=f"PET {petNode.GetName()!r}")
        return SegmentInputs(ct=ct, pet_suv=pet_suv, pet_conversion=conversion)

    def _segmenter(self, model, device, batchSize, progress, cancel):
        if self.segmenterClass is None:
            from vmambax.infer.segmenter import Segmenter

            self.segmenterClass = Segmenter
        return self.segmenterClass(model=model, device=device, batch_size=batchSize,
                                   progress=progress, cancel=cancel)

    def segmentAsync(self, ctNode, petNode, outputSegmentation=None, model: str = "default",
                     device: str = "auto", progress: ProgressFn | None = None,
                     petUnits: str = "auto", petTags=None, weightKg: float | None = None,
                     doseMBq: float | None = None, batchSize: int | None = None,
                     start: bool = True) -> BackgroundTask:
        """Validate now, segment on a worker thread; call ``task.apply()`` once ``task.done``.

        Input errors are raised here, before anything runs. ``task.cancel()`` stops the network
        within one batch; ``apply`` then raises ``Cancelled`` and the scene is unchanged.
        Progress of a background run is read with ``task.snapshot()`` (``progress`` is only
        called for synchronous runs: GUI code must not be called from the worker thread).
        """
        if not model:
            raise ConfigError("no model selected; choose a model (or Browse… for a model file)")
        inputs = self.prepare(ctNode, petNode, outputSegmentation, petUnits, petTags, weightKg,
                              doseMBq)

        def compute(report, cancel):
            report(0.0, "Loading the model")
            segmenter = self._segmenter(model, device, batchSize, report, cancel)
            return segmenter.segment(inputs.ct, inputs.pet_suv)

        def apply(result):
            return self._writeOutput(ctNode, outputSegmentation, result, inputs.pet_conversion)

        task = BackgroundTask(compute, apply, progress)
        return task.start() if start else task

    def segment(self, ctNode, petNode, outputSegmentation=None, model: str = "default",
                device: str = "auto", progress: ProgressFn | None = None, **kwargs) -> SegmentOutput:
        """Segment synchronously (Python console, scripts, tests); same arguments as
        ``segmentAsync``. Returns the output nodes and the Segmenter's result."""
        task = self.segmentAsync(ctNode, petNode, outputSegmentation, model=model, device=device,
                                 progress=progress, start=False, **kwargs)
        return task.run()

    # -- writing the result (main thread) -----------------------------------------------------
    def _writeOutput(self, ctNode, outputSegmentation, result, petConversion) -> SegmentOutput:
        if ctNode.GetScene() is None:
            raise InputError(f"the CT {ctNode.GetName()!r} was removed from the scene while "
                             f"segmenting; nothing was written")
        scene = ctNode.GetScene()
        created = []
        try:
            segmentation = outputSegmentation
            if segmentation is None or segmentation.GetScene() is None:
                segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                       f"{ctNode.GetName()} vMambaX")
                created.append(segmentation)
                segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
                segmentation.SetNodeReferenceID(
                    segmentation.GetReferenceImageGeometryReferenceRole(), ctNode.GetID())
                segmentation.SetAndObserveTransformNodeID(ctNode.GetTransformNodeID())
            import SimpleITK as sitk

            segment_id = scene_output.write_tumour_segment(
                segmentation, sitk.GetArrayViewFromImage(result.label), ctNode)
            had_table = segmentation.GetNodeReference(scene_output.LESION_TABLE_REFERENCE_ROLE)
            table = scene_output.lesion_table_for(segmentation, f"{ctNode.GetName()} vMambaX lesions")
            if table is not had_table:
                created.append(table)
            scene_output.write_lesion_table(table, result.lesions, result.totals)
            scene_output.place_next_to(segmentation, ctNode)
            scene_output.place_next_to(table, ctNode)
            self._recordProvenance(segmentation, result, petConversion)
            segmentation.CreateDefaultDisplayNodes()  # last: nothing to clean up if it fails
        except Exception:
            for node in created:  # leave no half-made output behind
                _remove_node(scene, node)
            raise
        return SegmentOutput(segmentation, segment_id, table, result, petConversion)

    @staticmethod
    def _recordProvenance(segmentation, result, petConversion) -> None:
        """Store how the contour was made on the node (saved with the scene, shown in Data)."""
        model = result.model or {}
        segmentation.SetAttribute("VMambaX.model", str(result.model_name))
        segmentation.SetAttribute("VMambaX.modelSha256", str(model.get("sha256") or ""))
        segmentation.SetAttribute("VMambaX.device", str(result.device))
        segmentation.SetAttribute("VMambaX.petConversion", petConversion)
        segmentation.SetAttribute("VMambaX.timings", json.dumps(result.timings))


def _remove_node(scene, node) -> None:
    """Remove a node we created, with its display nodes (RemoveNode alone keeps those)."""
    if node.GetScene() is None:
        return
    count = node.GetNumberOfDisplayNodes() if node.IsA("vtkMRMLDisplayableNode") else 0
    for display in [node.GetNthDisplayNode(i) for i in range(count)]:
        if display is not None and display.GetScene() is not None:
            scene.RemoveNode(display)
    scene.RemoveNode(node)
