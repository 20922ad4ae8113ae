"""VMambaX Segment: lung tumour segmentation on co-registered PET/CT with the vMambaX network.

The widget is thin: the work is in ``VMambaXSegmentLib.logic`` (no Qt), which runs the network on
a worker thread while a timer here shows progress, so Slicer stays responsive and Cancel works.
"""

import logging
import os
import sys
from typing import Annotated

import ctk  # noqa: F401 - registers the ctk widgets used by the .ui file
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Installed, VMambaXCommon sits beside this file (qt-scripted-modules); in a source checkout added
# through "Additional module paths" (the module folders) it is one folder up.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_CHECKOUT, "VMambaXCommon")) and _CHECKOUT not in sys.path:
    sys.path.append(_CHECKOUT)

from VMambaXCommon.dialogs import show_error
from VMambaXSegmentLib.logic import VMambaXSegmentLogic as _SegmentLogic
from VMambaXCommon.pet import PET_UNITS, PET_UNITS_LABELS

BROWSE_ITEM = "Browse…"


#
# Module
#
class VMambaXSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "VMambaX Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["VMambaX developers (SlicerVMambaX project)"]
        self.parent.helpText = (
            "Segments lung tumours on a co-registered PET/CT pair with the vMambaX network "
            "(dual-branch Visual Mamba with context-gated cross-modal fusion) and measures each "
            "lesion (SUVmax, SUVmean, SUVpeak, MTV, TLG). PET in Bq/mL is converted to "
            "body-weight SUV from its DICOM tags, or from the weight and dose you enter. "
            "Research software, not for clinical use. "
            '<a href="https://github.com/vmambax/SlicerVMambaX">Documentation</a>.')
        self.parent.acknowledgementText = (
            "vMambaX: arXiv 2510.27508. CIPA (CVPR 2025) and the PCLT20K data set. This "
            "re-implementation is independent of the authors' code.")
        # Sample Data lists the synthetic PET/CT phantom once Slicer has started (issue 11.18).
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add "VMambaXPETCTPhantom" to the Sample Data module: generated here, never downloaded."""
    import SampleData

    from VMambaXCommon.sample_data import SAMPLE_NAME, sample_source_arguments

    icon = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Icons",
                        f"{SAMPLE_NAME}.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        **sample_source_arguments(loadPhantomSample, icon))


def loadPhantomSample(source=None):
    """The Sample Data button: build the phantom, add CT + PET (SUV), show them fused."""
    from VMambaXCommon.sample_data import add_phantom_sample

    with slicer.util.tryWithErrorDisplay("Could not create the VMambaX phantom.", waitCursor=True):
        slicer.util.showStatusMessage("Generating the synthetic VMambaX PET/CT phantom…", 3000)
        ct, pet = add_phantom_sample(slicer.mrmlScene)
        slicer.util.setSliceViewerLayers(background=ct, foreground=pet, foregroundOpacity=0.4,
                                         fit=True)
        return [ct, pet]


#
# Parameter node
#
@parameterNodeWrapper
class VMambaXSegmentParameterNode:
    """Everything the panel shows, saved with the scene."""

    ctVolume: vtkMRMLScalarVolumeNode
    petVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = "default"  # registry name or a model file path
    device: str = "auto"
    petUnits: str = "auto"  # auto / bqml / suv
    weightKg: Annotated[float, WithinRange(0.0, 500.0)] = 0.0  # 0 = from DICOM
    doseMBq: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0  # 0 = from DICOM


#
# Logic
#
class VMambaXSegmentLogic(ScriptedLoadableModuleLogic, _SegmentLogic):
    """The Qt-free logic (``VMambaXSegmentLib.logic``) plus Slicer's parameter node."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        _SegmentLogic.__init__(self)

    def getParameterNode(self):
        return VMambaXSegmentParameterNode(super().getParameterNode())


#
# Widget
#
class VMambaXSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._dependenciesChecked = False
        self._updatingGUI = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VMambaXSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VMambaXSegmentLogic()

        for key in PET_UNITS:
            self.ui.petUnitsComboBox.addItem(PET_UNITS_LABELS[key], key)
        self._populateModels()
        self._populateDevices()

        self._timer = qt.QTimer()
        self._timer.setInterval(150)
        self._timer.connect("timeout()", self._onTimer)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.browseModelButton.connect("clicked(bool)", self.onBrowseModel)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self._onComboChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self._onComboChanged)
        self.ui.petUnitsComboBox.connect("currentIndexChanged(int)", self._onComboChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        if self._task is not None:
            self._task.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self._task is not None:
            self._task.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ---------------------------------------------------------------------
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.ctVolume or not p.petVolume:
            ct, pet = _guessPetCt()
            if ct and not p.ctVolume:
                p.ctVolume = ct
            if pet and not p.petVolume:
                p.petVolume = pet

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            # Node selectors and spin boxes bind through their SlicerParameterName property;
            # the combo boxes (dynamic item lists) are synchronised by hand below.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                             self._updateGUIFromParameterNode)
            self._updateGUIFromParameterNode()

    def _updateGUIFromParameterNode(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        self._updatingGUI = True
        try:
            if self.ui.modelComboBox.findData(p.model) < 0 and p.model not in ("", "default"):
                self._addModelFile(p.model)
            _selectData(self.ui.modelComboBox, p.model)
            _selectData(self.ui.deviceComboBox, p.device)
            _selectData(self.ui.petUnitsComboBox, p.petUnits)
        finally:
            self._updatingGUI = False
        self._updateModelInfo()
        self._updatePetInfo()
        self._updateButtons()

    def _onComboChanged(self, _index=None):
        if self._updatingGUI or self._parameterNode is None:
            return
        with slicer.util.NodeModify(self._parameterNode):
            model = self.ui.modelComboBox.currentData
            if model:
                self._parameterNode.model = model
            self._parameterNode.device = self.ui.deviceComboBox.currentData or "auto"
            self._parameterNode.petUnits = self.ui.petUnitsComboBox.currentData or "auto"

    # -- choices ----------------------------------------------------------------------------
    def _populateModels(self):
        combo = self.ui.modelComboBox
        combo.clear()
        try:
            models = self.logic.availableModels()
        except Exception as exc:  # a broken user registry must not break the panel
            logging.warning(f"VMambaX: cannot read the model registry: {exc}")
            models = []
        combo.addItem("Default model", "default")
        for name, description in models:
            combo.addItem(name, name)
            combo.setItemData(combo.count - 1, description, qt.Qt.ToolTipRole)

    def _populateDevices(self):
        combo = self.ui.deviceComboBox
        combo.clear()
        labels = {"auto": "auto (GPU if available)", "cpu": "CPU", "cuda": "CUDA GPU"}
        for device in self.logic.availableDevices():
            combo.addItem(labels.get(device, device), device)

    def _addModelFile(self, path):
        combo = self.ui.modelComboBox
        combo.addItem(os.path.basename(path), path)
        combo.setItemData(combo.count - 1, path, qt.Qt.ToolTipRole)

    def onBrowseModel(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Choose a VMambaX model file", "",
            "VMambaX model (*.pt *.pth *.ckpt);;All files (*)")
        if not path:
            return
        if self.ui.modelComboBox.findData(path) < 0:
            self._addModelFile(path)
        self._parameterNode.model = path

    def _updateModelInfo(self):
        combo = self.ui.modelComboBox
        tip = combo.itemData(combo.currentIndex, qt.Qt.ToolTipRole) if combo.currentIndex >= 0 else ""
        self.ui.modelInfoLabel.text = tip or ""

    def _updatePetInfo(self):
        p = self._parameterNode
        text = ""
        if p.petVolume and p.petUnits != "suv":
            if p.petVolume.GetAttribute("DICOM.instanceUIDs"):
                text = "PET loaded from DICOM: SUV is computed from its tags."
            elif p.weightKg > 0 and p.doseMBq > 0:
                text = "SUV is computed from the weight and dose entered."
            else:
                text = ("PET not loaded from DICOM: if it is in Bq/mL, enter the patient weight and "
                        "the injected dose.")
        self.ui.petInfoLabel.text = text

    def _updateButtons(self):
        p = self._parameterNode
        running = self._task is not None
        ready = bool(p and p.ctVolume and p.petVolume)
        self.ui.segmentButton.enabled = ready and not running
        self.ui.cancelButton.enabled = running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton,
                       self.ui.outputCollapsibleButton):
            widget.enabled = not running
        if not running:
            self.ui.segmentButton.toolTip = ("Segment the lung tumours." if ready else
                                             "Select a CT and a PET volume first.")

    # -- running ----------------------------------------------------------------------------
    def _ensureDependencies(self):
        if self._dependenciesChecked:
            return True
        from VMambaXCommon.install import ensure_dependencies_in_slicer

        notes = ensure_dependencies_in_slicer("segment")
        self._dependenciesChecked = True
        if notes:
            slicer.util.infoDisplay("\n\n".join(notes), windowTitle="VMambaX")
            self._populateDevices()  # a freshly installed CUDA torch adds the GPU
        return True

    def onSegmentButton(self):
        p = self._parameterNode
        try:
            self._ensureDependencies()
            self.ui.statusLabel.text = "Starting…"
            # The PET's DICOM SUV tags are looked up by the logic (Slicer's DICOM database).
            self._task = self.logic.segmentAsync(
                p.ctVolume, p.petVolume, p.outputSegmentation, model=p.model, device=p.device,
                petUnits=p.petUnits, weightKg=p.weightKg or None, doseMBq=p.doseMBq or None)
        except Exception as exc:
            show_error(exc, "VMambaX could not start")
            return
        self.ui.progressBar.value = 0
        self._updateButtons()
        self._timer.start()

    def onCancelButton(self):
        if self._task is not None:
            self._task.cancel()
            self.ui.statusLabel.text = "Cancelling after the current batch…"
            self.ui.cancelButton.enabled = False

    def _onTimer(self):
        task = self._task
        if task is None:
            self._timer.stop()
            return
        fraction, message = task.snapshot()
        self.ui.progressBar.value = int(round(100 * fraction))
        if not task.cancelled:
            self.ui.statusLabel.text = message
        if not task.done:
            return
        self._timer.stop()
        self._task = None
        from vmambax.errors import Cancelled

        try:
            output = task.apply()
        except Cancelled:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Cancelled; the scene was not changed."
        except Exception as exc:
            self.ui.statusLabel.text = f"Failed: {exc}"
            show_error(exc, "VMambaX segmentation failed")
        else:
            self._showOutput(output)
        self._updateButtons()

    def _showOutput(self, output):
        # The user may have switched modules while it ran (exit() drops the parameter node).
        p = self._parameterNode or self.logic.getParameterNode()
        p.outputSegmentation = output.segmentationNode
        self.ui.statusLabel.text = (f"{output.summary()}\nPET: {output.petConversion}. "
                                    "Review and correct the contour in Segment Editor.")
        self.ui.lesionTableView.setMRMLTableNode(output.tableNode)
        output.segmentationNode.CreateClosedSurfaceRepresentation()
        slicer.util.setSliceViewerLayers(background=p.ctVolume, foreground=p.petVolume,
                                         foregroundOpacity=0.4, fit=True)


def _selectData(combo, data):
    index = combo.findData(data)
    if index >= 0 and index != combo.currentIndex:
        combo.setCurrentIndex(index)


def _guessPetCt():
    """Pre-select CT and PET from DICOM modality or names (first match of each)."""
    ct = pet = None
    for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            continue
        uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
        modality = ""
        if uids and getattr(slicer, "dicomDatabase", None):
            modality = slicer.dicomDatabase.instanceValue(uids[0], "0008,0060") or ""
        name = node.GetName().lower()
        if pet is None and (modality == "PT" or "pet" in name or "suv" in name):
            pet = node
        elif ct is None and (modality == "CT" or "ct" in name):
            ct = node
    return ct, pet


#
# Self-test (runs inside Slicer: Reload and Test)
#
class VMambaXSegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantom()
        self.setUp()
        self.test_MissingPetChangesNothing()

    def test_SegmentPhantom(self):
        self.delayDisplay("Segmenting a synthetic PET/CT phantom with the default model")
        from VMambaXCommon.testing import add_phantom_case

        ct, pet, _phantom, _ = add_phantom_case(slicer.mrmlScene, seed=3, size=128, prefix="Phantom ")
        logic = VMambaXSegmentLogic()
        progress = []
        out = logic.segment(ct, pet, model="default", device="cpu", petUnits="suv",
                            progress=lambda f, m: progress.append(f))
        seg = out.segmentationNode
        self.assertEqual(seg.GetName(), "Phantom CT vMambaX")
        segment = seg.GetSegmentation().GetSegment(out.segmentId)
        self.assertEqual(segment.GetName(), "Lung tumour")
        tag = vtk.reference("")
        segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
        self.assertIn("SCT^108369006^Neoplasm", str(tag))
        self.assertIs(seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()), ct)
        self.assertEqual(out.tableNode.GetNumberOfRows(), len(out.result.lesions) + 1)
        self.assertTrue(progress and progress[-1] == 1.0)
        self.delayDisplay("Test passed")

    def test_MissingPetChangesNothing(self):
        from vmambax.errors import InputError

        from VMambaXCommon.testing import add_phantom_case

        ct, _pet, _phantom, _ = add_phantom_case(slicer.mrmlScene, seed=3, size=64, n_slices=8)
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputError):
            VMambaXSegmentLogic().segment(ct, None)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")
