"""VMambaX Segment logic: CT + PET volume nodes in, a tumour segmentation and lesion table out.

GUI-free, so it runs from Slicer's Python console, from scripts and under ``slicer-core`` in CI::

    logic = VMambaXSegmentLogic()
    out = logic.segment(ctNode, petNode)                       # blocks; for scripts
    task = logic.segmentAsync(ctNode, petNode, model="default")  # returns at once
    ...  # poll task.done / task.snapshot() from a timer, task.cancel() to stop
    out = task.apply()                                           # main thread, when done

Work is split so Slicer never freezes and the scene is only touched on the main thread: inputs
are validated and read into SimpleITK images first (nothing is created yet, and the PET's units
are decided here), the network runs in a separate ``vmambax`` worker process
(``worker_task``: a crash or running out of memory there cannot take Slicer down, Cancel ends
it at once, and its memory goes back to the system when it ends), and only a finished,
non-cancelled run writes to the scene. A failure or a cancel leaves the scene exactly as it was.
``inProcess=True`` (or a custom ``segmenterClass``) runs the Segmenter on a thread of this
process instead, for scripts that want it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from vmambax.errors import ConfigError, InputError

from VMambaXCommon.devices import device_choices
from VMambaXCommon.dicom_tags import identity_tags_from_node
from VMambaXSegmentLib.task import BackgroundTask

# Slicer imports this module at start-up (the module's Logic class): the data layer (SimpleITK,
# scipy, pydicom) and the scene helpers are imported where they are used, not here.

ProgressFn = Callable[[float, str], None]


@dataclasses.dataclass
class SegmentInputs:
    """Validated inputs, read on the main thread; safe to hand to a worker thread."""

    ct: Any  # SimpleITK image (HU), world geometry
    pet_suv: Any  # SimpleITK image (SUV), world geometry
    pet_conversion: str  # how the PET became SUV (shown to the user, stored on the output)
    pet_units_rule: str = ""  # which rule decided the PET's units (VMambaXCommon.pet)
    warnings: list = dataclasses.field(default_factory=list)  # to show in the status


@dataclasses.dataclass
class SegmentOutput:
    """What a finished segmentation put into the scene."""

    segmentationNode: Any
    segmentId: str
    tableNode: Any
    result: Any  # vmambax.infer.SegmentationResult (lesions, totals, timings, model, device)
    petConversion: str
    petUnitsRule: str = ""
    warnings: list = dataclasses.field(default_factory=list)  # partial PET, other study, ...

    def statusText(self) -> str:
        """The panel's status line after a run: result, how the PET became SUV and why."""
        warnings = "".join(f"\nWarning: {w}" for w in self.warnings)
        return (f"{self.summary()}\nPET: {self.petConversion} [units: {self.petUnitsRule}]. "
                f"Review and correct the contour in Segment Editor.{warnings}")

    def summary(self) -> str:
        totals = self.result.totals or {}
        n = len(self.result.lesions)
        if not n:
            return f"No tumour found ({self.result.model_name}, {self.result.device}).{self._slices()}"
        mtv = totals.get("mtv_ml")
        mtv_text = f", total MTV {mtv:.1f} mL" if isinstance(mtv, (int, float)) else ""
        return (f"{n} lesion(s){mtv_text}; model {self.result.model_name} on "
                f"{self.result.device} in {self.result.timings.get('total', 0):.1f} s.{self._slices()}")

    def _slices(self) -> str:
        run, total = getattr(self.result, "n_slices_run", 0), getattr(self.result, "n_slices", 0)
        if not total or run == total:
            return ""
        return f" Segmented {run} of {total} slices (around the lungs; tick 'Segment all slices' for all)."


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
        # The Segmenter class can be swapped (e.g. a subclass with a fixed thread count); such
        # a class runs in this process (it cannot be handed to the worker).
        self.segmenterClass = segmenterClass
        # worker_task.worker_compute options: python (default PythonSlicer), temp_dir, on_started.
        self.workerOptions: dict = {}

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
    def deviceChoices() -> list[tuple[str, str]]:
        """``(key, label)`` of the devices offered, e.g. ``("cuda", "NVIDIA GPU (CUDA)")``."""
        return device_choices()

    # -- steps ------------------------------------------------------------------------------
    def prepare(self, ctNode, petNode, outputSegmentation=None, petUnits: str = "auto",
                petTags=None, weightKg: float | None = None, doseMBq: float | None = None,
                petRwvmFile=None, ctTags=None, allowDifferentPatients: bool = False,
                replaceOtherCtOutput: bool = False) -> SegmentInputs:
        """Validate and read the inputs (main thread). Changes nothing in the scene.

        Swapped CT and PET are refused before the PET's units are worked out, so the user is
        told to swap them rather than asked for a weight and a dose; so is another patient's PET.
        ``petRwvmFile(uid)``: where the PET's RWVM file is (default: Slicer's DICOM database).
        ``ctTags``/``petTags``: DICOM tag dicts (default: the nodes' DICOM files via Slicer's
        database). Different PatientIDs raise ``DifferentPatientsError`` unless
        ``allowDifferentPatients`` (the widget asks first); other problems worth knowing
        (partial PET coverage, other study or frame of reference) come back as warnings.
        A chosen output holding the tumour of another CT raises ``OutputOfAnotherCT`` unless
        ``replaceOtherCtOutput`` (the widget asks first).
        """
        from vmambax.data.case import check_not_swapped, inspect_pair
        from vmambax.data.patient import check_same_patient

        from VMambaXCommon.mrml_sitk import volume_node_to_image
        from VMambaXCommon.pet import pet_node_to_suv
        from VMambaXSegmentLib import scene_output

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
            scene_output.check_output_transform(outputSegmentation, ctNode)
            if not replaceOtherCtOutput:
                scene_output.check_other_ct_output(outputSegmentation, ctNode)
        if ctTags is None:
            ctTags = identity_tags_from_node(ctNode)
        petIdentity = petTags if petTags is not None else identity_tags_from_node(petNode)
        ct = volume_node_to_image(ctNode)
        pet = volume_node_to_image(petNode)
        check_not_swapped(ct, pet)  # before any question about the PET's units
        check_same_patient(ctTags, petIdentity, allow_different_patients=allowDifferentPatients)
        # Units: the node's own (PETDICOMExtension), its RWVM, then the files' tags (Slicer's
        # DICOM database; None elsewhere), then the weight and dose.
        converted = pet_node_to_suv(petNode, petUnits, petTags, weightKg, doseMBq,
                                    rwvm_file=petRwvmFile, image=pet)
        _, notes = inspect_pair(ct, converted.image, ct_tags=ctTags, pet_tags=petIdentity,
                                allow_different_patients=allowDifferentPatients)
        return SegmentInputs(ct=ct, pet_suv=converted.image, pet_conversion=converted.conversion,
                             pet_units_rule=converted.rule, warnings=notes)

    def _segmenter(self, model, device, batchSize, progress, cancel, allSlices=False):
        segmenter_class = self.segmenterClass
        if segmenter_class is None:  # not stored: a later default run still uses the worker
            from vmambax.infer.segmenter import Segmenter as segmenter_class
        return segmenter_class(model=model, device=device, batch_size=batchSize,
                               progress=progress, cancel=cancel, all_slices=allSlices)

    def segmentAsync(self, ctNode, petNode, outputSegmentation=None, model: str = "default",
                     device: str = "auto", progress: ProgressFn | None = None,
                     petUnits: str = "auto", petTags=None, weightKg: float | None = None,
                     doseMBq: float | None = None, batchSize: int | None = None,
                     allSlices: bool = False, start: bool = True, ctTags=None,
                     allowDifferentPatients: bool = False, petRwvmFile=None,
                     inProcess: bool | None = None,
                     replaceOtherCtOutput: bool = False) -> BackgroundTask:
        """Validate now, segment in the background; call ``task.apply()`` once ``task.done``.

        By default the network runs only on the slices around the CT's lungs (the others stay
        empty; a CT without lungs is an ``InputError``); ``allSlices=True`` runs every slice.
        ``petTags``, ``ctTags``, ``petRwvmFile``, ``allowDifferentPatients``,
        ``replaceOtherCtOutput``: as for ``prepare``.
        ``inProcess``: False (the default) runs the network in a ``vmambax`` worker process;
        True on a thread of this process (the default when a ``segmenterClass`` was given,
        which cannot be handed to another process).

        Input errors are raised here, before anything runs. ``task.cancel()`` ends the worker
        process at once (in-process: stops within one batch); ``apply`` then raises
        ``Cancelled`` and the scene is unchanged. Progress of a background run is read with
        ``task.snapshot()`` (``progress`` is only called for synchronous runs: GUI code must not
        be called from the background thread).
        """
        if not model:
            raise ConfigError("no model selected; choose a model (or Browse… for a model file)")
        inputs = self.prepare(ctNode, petNode, outputSegmentation, petUnits, petTags, weightKg,
                              doseMBq, petRwvmFile=petRwvmFile, ctTags=ctTags,
                              allowDifferentPatients=allowDifferentPatients,
                              replaceOtherCtOutput=replaceOtherCtOutput)

        if inProcess is None:
            inProcess = self.segmenterClass is not None
        if inProcess:
            def compute(report, cancel):
                report(0.0, "Loading the model")
                segmenter = self._segmenter(model, device, batchSize, report, cancel, allSlices)
                return segmenter.segment(inputs.ct, inputs.pet_suv)
        else:
            from VMambaXSegmentLib.worker_task import worker_compute

            options = {"model": str(model), "device": device, "batch_size": batchSize,
                       "all_slices": bool(allSlices)}
            compute = worker_compute(inputs.ct, inputs.pet_suv, options, **self.workerOptions)

        def apply(result):
            output = self._writeOutput(ctNode, outputSegmentation, result, inputs)
            more = list(getattr(result, "warnings", []))  # a custom segmenterClass may have none
            output.warnings = list(dict.fromkeys(inputs.warnings + more))
            return output

        task = BackgroundTask(compute, apply, progress)
        return task.start() if start else task

    def segment(self, ctNode, petNode, outputSegmentation=None, model: str = "default",
                device: str = "auto", progress: ProgressFn | None = None, **kwargs) -> SegmentOutput:
        """Segment and wait (Python console, scripts, tests: the GUI-free ``process()`` call of
        SlicerTotalSegmentator); same arguments as ``segmentAsync`` (``inProcess=True`` runs
        the network in this process). Returns the output nodes and the Segmenter's result."""
        task = self.segmentAsync(ctNode, petNode, outputSegmentation, model=model, device=device,
                                 progress=progress, start=False, **kwargs)
        return task.run()

    # -- writing the result (main thread) -----------------------------------------------------
    def _writeOutput(self, ctNode, outputSegmentation, result, inputs) -> SegmentOutput:
        if ctNode.GetScene() is None:
            raise InputError(f"the CT {ctNode.GetName()!r} was removed from the scene while "
                             f"segmenting; nothing was written")
        from VMambaXSegmentLib import scene_output

        scene = ctNode.GetScene()
        created, picked_state = [], None
        try:
            # The user's pick, else this CT's earlier output, else a new one: never another
            # CT's output. The segmentation takes this CT's geometry; its table follows.
            segmentation = scene_output.output_for(ctNode, outputSegmentation)
            if segmentation is None:
                segmentation = scene_output.new_output(ctNode)
                created.append(segmentation)
            else:
                picked_state = scene_output.geometry_state(segmentation)
            moved = scene_output.adopt_ct_geometry(segmentation, ctNode)
            import SimpleITK as sitk

            segment_id = scene_output.write_tumour_segment(
                segmentation, sitk.GetArrayViewFromImage(result.label), ctNode)
            had_table = segmentation.GetNodeReference(scene_output.LESION_TABLE_REFERENCE_ROLE)
            table = scene_output.lesion_table_for(
                segmentation, f"{ctNode.GetName()} vMambaX lesions", rename=moved)
            if table is not had_table:
                created.append(table)
            scene_output.write_lesion_table(table, result.lesions, result.totals)
            scene_output.place_next_to(segmentation, ctNode)
            scene_output.place_next_to(table, ctNode)
            self._recordProvenance(segmentation, result, inputs)
            segmentation.CreateDefaultDisplayNodes()  # last: nothing to clean up if it fails
        except Exception:
            for node in created:  # leave no half-made output behind
                _remove_node(scene, node)
            if picked_state is not None:  # a picked output keeps its old reference geometry
                scene_output.restore_geometry(segmentation, picked_state)
            raise
        return SegmentOutput(segmentation, segment_id, table, result, inputs.pet_conversion,
                             inputs.pet_units_rule)

    @staticmethod
    def _recordProvenance(segmentation, result, inputs) -> None:
        """Store how the contour was made on the node (saved with the scene, shown in Data)."""
        model = result.model or {}
        segmentation.SetAttribute("VMambaX.model", str(result.model_name))
        segmentation.SetAttribute("VMambaX.modelSha256", str(model.get("sha256") or ""))
        segmentation.SetAttribute("VMambaX.device", str(result.device))
        segmentation.SetAttribute("VMambaX.petConversion", inputs.pet_conversion)
        segmentation.SetAttribute("VMambaX.PETUnitsRule", inputs.pet_units_rule)
        segmentation.SetAttribute("VMambaX.timings", json.dumps(result.timings))
        segmentation.SetAttribute("VMambaX.sliceSelection",
                                  json.dumps(getattr(result, "slice_selection", {}) or {}))


def _remove_node(scene, node) -> None:
    """Remove a node we created, with its display nodes (RemoveNode alone keeps those)."""
    if node.GetScene() is None:
        return
    count = node.GetNumberOfDisplayNodes() if node.IsA("vtkMRMLDisplayableNode") else 0
    for display in [node.GetNthDisplayNode(i) for i in range(count)]:
        if display is not None and display.GetScene() is not None:
            scene.RemoveNode(display)
    scene.RemoveNode(node)
