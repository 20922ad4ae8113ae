"""VMambaX Segment: lung tumour segmentation on co-registered PET/CT with the vMambaX network.

The widget is thin: the work is in ``VMambaXSegmentLib.logic`` (no Qt), which runs the network in
a separate ``vmambax`` process while a timer here shows progress, so Slicer stays responsive,
Cancel ends the run at once, and a crash of the network cannot take Slicer down. Opening the
panel imports no torch (models from the registry's JSON, devices from a child process).
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

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # slicer-core (the widget tests) has no slicer.i18n; Slicer >= 5.4 does
    def _(text):
        return text

    def translate(_context, text):
        return text

# Installed, VMambaXCommon sits beside this file (qt-scripted-modules); in a source checkout added
# through "Additional module paths" (the module folders) it is one folder up.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_CHECKOUT, "VMambaXCommon")) and _CHECKOUT not in sys.path:
    sys.path.append(_CHECKOUT)

from VMambaXCommon.busy import SHARED as _BUSY
from VMambaXCommon.devices import PROBE as _DEVICES
from VMambaXCommon.devices import refill_choices, select_data
from VMambaXCommon.dialogs import show_error
from VMambaXSegmentLib.logic import VMambaXSegmentLogic as _SegmentLogic
from VMambaXCommon.pet import PET_UNITS, pet_units_labels


#
# Module
#
class VMambaXSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VMambaX Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["VMambaX developers (SlicerVMambaX project)"]
        self.parent.helpText = _(
            "Segments lung tumours on a co-registered PET/CT pair with the vMambaX network "
            "(dual-branch Visual Mamba with context-gated cross-modal fusion) and measures each "
            "lesion (SUVmax, SUVmean, SUVpeak, MTV, TLG). PET in Bq/mL is converted to "
            "body-weight SUV from its DICOM tags, or from the weight and dose you enter. "
            "Research software, not for clinical use.") + (
            ' <a href="https://github.com/vmambax/SlicerVMambaX">' + _("Documentation") + "</a>.")
        self.parent.acknowledgementText = _(
            "vMambaX: arXiv 2510.27508. CIPA (CVPR 2025) and the PCLT20K data set. This "
            "re-implementation is independent of the authors' code.")
        # Sample Data lists the synthetic PET/CT phantom once Slicer has started (issue 11.18).
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add "VMambaX PET/CT phantom" to the Sample Data module: generated here, never downloaded."""
    import SampleData

    from VMambaXCommon.sample_data import SAMPLE_ID, sample_source_arguments

    icon = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Icons",
                        f"{SAMPLE_ID}.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        **sample_source_arguments(loadPhantomSample, icon))


def loadPhantomSample(source=None):
    """The Sample Data button: build the phantom, add CT + PET (SUV), show them fused."""
    from VMambaXCommon.display import show_pet_over_ct
    from VMambaXCommon.sample_data import add_phantom_sample

    with slicer.util.tryWithErrorDisplay(_("Could not create the VMambaX phantom."),
                                         waitCursor=True):
        slicer.util.showStatusMessage(_("Generating the synthetic VMambaX PET/CT phantom…"), 3000)
        ct, pet = add_phantom_sample(slicer.mrmlScene)
        # As a finished run shows them; the sample keeps its 0-8 SUV window.
        show_pet_over_ct(ct, pet, auto_window_level=False)
        slicer.util.setSliceViewerLayers(fit=True)
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
    allSlices: bool = False  # False: only the slices around the lungs (lung field + 2 cm)


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
        self._taskToken = None  # our hold on the shared busy guard while the network runs
        self._userModels = set()  # registered by the user: these can be removed
        self._dependenciesChecked = False
        self._updatingGUI = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VMambaXSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VMambaXSegmentLogic()

        labels = pet_units_labels()
        for key in PET_UNITS:
            self.ui.petUnitsComboBox.addItem(labels[key], key)
        self._populateModels()  # from the registry's JSON: no torch
        self._populateDevices()  # "Automatic" and "CPU" until the device probe answers
        _BUSY.add_listener(self._updateButtons)  # an install or export in either panel

        self._timer = qt.QTimer()
        self._timer.setInterval(150)
        self._timer.connect("timeout()", self._onTimer)
        # Which GPUs PyTorch sees is asked in a child process; the list fills when it answers.
        self._deviceTimer = qt.QTimer()
        self._deviceTimer.setInterval(250)
        self._deviceTimer.connect("timeout()", self._onDeviceProbe)
        self._followDeviceProbe()

        self._gpuInstall = None  # the "Install GPU acceleration" build, while it runs
        self._gpuToken = None
        self._gpuTimer = qt.QTimer()
        self._gpuTimer.setInterval(500)
        self._gpuTimer.connect("timeout()", self._onGpuTimer)
        self.ui.installGpuButton.connect("clicked(bool)", self.onInstallGpu)
        self.ui.cancelGpuButton.connect("clicked(bool)", self.onCancelGpu)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.browseModelButton.connect("clicked(bool)", self.onBrowseModel)
        self.ui.removeModelButton.connect("clicked(bool)", self.onRemoveModel)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self._onComboChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self._onComboChanged)
        self.ui.petUnitsComboBox.connect("currentIndexChanged(int)", self._onComboChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        if self._task is not None:
            self._task.cancel()
        if self._gpuInstall is not None:
            self._gpuInstall.cancel()
        self._timer.stop()
        self._deviceTimer.stop()
        self._gpuTimer.stop()
        _BUSY.release(self._gpuToken)
        _BUSY.release(self._taskToken)
        _BUSY.remove_listener(self._updateButtons)
        self.removeObservers()

    def onReload(self):
        """Reload the Lib and the shared glue too (Slicer re-reads only this file)."""
        from VMambaXCommon.reloading import reload_packages

        reload_packages("VMambaXCommon", "VMambaXSegmentLib")
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self._populateModels()  # models registered meanwhile by VMambaX Train
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
            choice = _guessPetCt()
            if choice.ct and not p.ctVolume:
                p.ctVolume = choice.ct
            if choice.pet and not p.petVolume:
                p.petVolume = choice.pet
            if choice.note and self._task is None:
                self.ui.statusLabel.text = choice.note  # which series were taken, and why

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
            # A browsed model file not listed yet; an unknown name is a registered model not
            # listed (yet: before the first install the registry cannot be read), not a file.
            if (self.ui.modelComboBox.findData(p.model) < 0 and p.model not in ("", "default")
                    and os.path.basename(p.model) != p.model):
                self._addModelFile(p.model)
            select_data(self.ui.modelComboBox, p.model)
            select_data(self.ui.deviceComboBox, p.device)
            select_data(self.ui.petUnitsComboBox, p.petUnits)
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
        """(Re)list the registered models, keeping the current choice (signals blocked)."""
        combo = self.ui.modelComboBox
        try:
            models = self.logic.availableModels()
            self._userModels = self.logic.userModelNames()
            registryRead = True
        except Exception as exc:  # no torch yet, or a broken user registry: the panel still works
            logging.warning(f"VMambaX: cannot read the model registry: {exc}")
            models, self._userModels, registryRead = [], set(), False
        p = self._parameterNode or self.logic.getParameterNode()
        selected = p.model
        refill_choices(combo, [("default", _("Default model"))] + [(n, n) for n, _d in models],
                       selected, fallback="default")
        for index, (_name, description) in enumerate(models, start=1):
            combo.setItemData(index, description, qt.Qt.ToolTipRole)
        if selected and combo.findData(selected) < 0 and selected != "default":
            if os.path.basename(selected) != selected:  # a browsed model file
                self._addModelFile(selected)
                select_data(combo, selected)
            elif registryRead:  # a registered model removed meanwhile
                p.model = "default"
        self._updateModelInfo()  # the description and Remove follow the new list

    def _populateDevices(self):
        """(Re)list the devices with their names; the user's choice survives (a rebuilt list
        used to reset it to automatic just before the first run)."""
        selected = (self._parameterNode or self.logic.getParameterNode()).device
        refill_choices(self.ui.deviceComboBox, self.logic.deviceChoices(), selected)

    def _followDeviceProbe(self, again=False):
        _DEVICES.start(force=again)
        self._deviceTimer.start()

    def _onDeviceProbe(self):
        if _DEVICES.poll() or not _DEVICES.pending:
            self._deviceTimer.stop()
            self._populateDevices()
            self._updateButtons()  # GPU acceleration is offered once the GPU is known

    # -- GPU acceleration (optional, never part of a Segment click) -----------------------------
    def onInstallGpu(self):
        from VMambaXCommon.gpu_install import GpuAccelerationInstall, cuda_compiler_note

        if _BUSY.busy or self._gpuInstall is not None:
            return
        note = cuda_compiler_note()
        question = _("Build the CUDA selective scan (mamba-ssm, causal-conv1d) now? It runs in "
                     "the background for 10-30 minutes (at most 60); Slicer stays usable but "
                     "VMambaX waits for it. You can cancel it at any time.")
        if not slicer.util.confirmOkCancelDisplay(question + (f"\n\n{note}" if note else ""),
                                                  windowTitle=_("VMambaX: GPU acceleration")):
            return
        try:
            token = _BUSY.acquire(_("installing GPU acceleration"))
        except Exception as exc:
            show_error(exc, _("VMambaX: GPU acceleration"))
            return
        self._gpuToken = token
        self.ui.gpuLogTextEdit.clear()
        self._gpuInstall = GpuAccelerationInstall().start()
        self.ui.statusLabel.text = _("Building the GPU acceleration in the background…")
        self._gpuTimer.start()
        self._updateButtons()

    def onCancelGpu(self):
        if self._gpuInstall is not None:
            self._gpuInstall.cancel()
            self._onGpuTimer()

    def _onGpuTimer(self):
        job = self._gpuInstall
        if job is None:
            self._gpuTimer.stop()
            return
        for line in job.new_lines():
            self.ui.gpuLogTextEdit.appendPlainText(line)
        if not job.finished:
            return
        for line in job.new_lines():
            self.ui.gpuLogTextEdit.appendPlainText(line)
        self._gpuTimer.stop()
        self._gpuInstall = None
        token, self._gpuToken = self._gpuToken, None
        _BUSY.release(token)
        self.ui.statusLabel.text = job.message
        if job.state == "done":
            self._followDeviceProbe(again=True)  # what the new build offers
            slicer.util.infoDisplay(job.message, windowTitle=_("VMambaX: GPU acceleration"))
        elif job.state != "cancelled":
            slicer.util.warningDisplay(job.message, windowTitle=_("VMambaX: GPU acceleration"))
        self._updateButtons()

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

    def onRemoveModel(self):
        """Forget the selected user model (after confirmation); its file stays on disk."""
        name = self.ui.modelComboBox.currentData
        if name not in self._userModels:
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("Remove the model '{name}' from the list? Its file is kept on disk.").format(name=name),
                windowTitle=_("VMambaX: remove model")):
            return
        try:
            self.logic.removeUserModel(name)
        except Exception as exc:
            show_error(exc, _("The model could not be removed"))
            return
        if self._parameterNode is not None and self._parameterNode.model == name:
            self._parameterNode.model = "default"
        self._populateModels()
        self._updateGUIFromParameterNode()

    def _updateModelInfo(self):
        combo = self.ui.modelComboBox
        tip = combo.itemData(combo.currentIndex, qt.Qt.ToolTipRole) if combo.currentIndex >= 0 else ""
        self.ui.modelInfoLabel.text = tip or ""
        removable = combo.currentData in self._userModels
        self.ui.removeModelButton.enabled = removable and self._task is None

    def _updatePetInfo(self):
        # Swapped inputs are named before any request for weight and dose (Lib, tested).
        from VMambaXSegmentLib.inputs import pet_info_text

        p = self._parameterNode
        self.ui.petInfoLabel.text = pet_info_text(p.ctVolume, p.petVolume, p.petUnits,
                                                  p.weightKg, p.doseMBq)

    def _updateButtons(self):
        p = self._parameterNode
        running = self._task is not None
        busy = _BUSY.busy  # an install, export or segmentation in either panel
        ready = bool(p and p.ctVolume and p.petVolume)
        self.ui.segmentButton.enabled = ready and not running and not busy
        self.ui.cancelButton.enabled = running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton,
                       self.ui.outputCollapsibleButton):
            widget.enabled = not running
        self._updateGpuButtons()
        if busy and not running:
            self.ui.segmentButton.toolTip = _("Wait: VMambaX is {job}.").format(job=_BUSY.job)
        elif not running:
            self.ui.segmentButton.toolTip = (_("Segment the lung tumours.") if ready else
                                             _("Select a CT and a PET volume first."))

    def _updateGpuButtons(self):
        from VMambaXCommon.gpu_install import unsupported_reason

        installing = self._gpuInstall is not None
        reason = unsupported_reason(_DEVICES.info)
        self.ui.installGpuButton.enabled = not installing and not _BUSY.busy and reason is None
        self.ui.cancelGpuButton.enabled = installing
        if reason is not None:
            self.ui.installGpuButton.toolTip = _("Not available: {reason}.").format(reason=reason)
        else:
            self.ui.installGpuButton.toolTip = _(
                "Build and install mamba-ssm and causal-conv1d in the background (cancellable, "
                "stops after 60 minutes).")

    # -- running ----------------------------------------------------------------------------
    def _ensureDependencies(self):
        if self._dependenciesChecked:
            return
        from VMambaXCommon.install import ensure_dependencies_in_slicer

        # pip runs with the event loop turning: the busy guard keeps a second click out. The
        # GPU scan build is never offered here (its own action, in the GPU acceleration section).
        with _BUSY.hold(_("installing Python packages")):
            notes = ensure_dependencies_in_slicer("segment")
        self._dependenciesChecked = True
        if notes:
            slicer.util.infoDisplay("\n\n".join(notes), windowTitle=_("VMambaX"))
        self._populateDevices()
        self._followDeviceProbe(again=True)  # a freshly installed CUDA torch adds the GPU
        self._populateModels()  # models registered meanwhile

    def onSegmentButton(self, _checked=False, allowDifferentPatients=False,
                        replaceOtherCtOutput=False):
        from vmambax.data.patient import DifferentPatientsError
        from VMambaXSegmentLib.scene_output import OutputOfAnotherCT

        if _BUSY.busy or self._task is not None:
            return  # a click queued while something runs (the button is disabled then)
        p = self._parameterNode
        try:
            self._ensureDependencies()
            self.ui.statusLabel.text = _("Starting…")
            token = _BUSY.acquire(_("segmenting"))
            try:
                # The PET's DICOM SUV tags are looked up by the logic (Slicer's DICOM database).
                self._task = self.logic.segmentAsync(
                    p.ctVolume, p.petVolume, p.outputSegmentation, model=p.model,
                    device=p.device, petUnits=p.petUnits, weightKg=p.weightKg or None,
                    doseMBq=p.doseMBq or None, allSlices=p.allSlices,
                    allowDifferentPatients=allowDifferentPatients,
                    replaceOtherCtOutput=replaceOtherCtOutput)
            except BaseException:
                _BUSY.release(token)
                raise
            self._taskToken = token
        except (DifferentPatientsError, OutputOfAnotherCT) as exc:  # ask; again only if confirmed
            patients = isinstance(exc, DifferentPatientsError)
            self.ui.statusLabel.text = _("Waiting for your confirmation.")
            question = _("Segment anyway?") if patients else _("Replace it?")
            title = (_("VMambaX: different patients?") if patients
                     else _("VMambaX: replace another CT's result?"))
            if slicer.util.confirmYesNoDisplay(f"{exc}\n\n" + question, windowTitle=title):
                self.onSegmentButton(allowDifferentPatients=allowDifferentPatients or patients,
                                     replaceOtherCtOutput=replaceOtherCtOutput or not patients)
            else:
                self.ui.statusLabel.text = (
                    _("Not started: the CT and PET are of different patients.") if patients
                    else _("Not started: the output was kept as it is."))
            self._updateButtons()
            return
        except Exception as exc:
            self.ui.statusLabel.text = _("Not started: {error}").format(error=exc)
            show_error(exc, _("VMambaX could not start"))
            self._updateButtons()
            return
        self.ui.progressBar.value = 0
        self._updateButtons()
        self._timer.start()

    def onCancelButton(self):
        if self._task is not None:
            self._task.cancel()
            self.ui.statusLabel.text = _("Cancelling…")
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
        from vmambax.errors import Cancelled

        try:
            output = task.apply()
        except Cancelled:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
        except Exception as exc:
            self.ui.statusLabel.text = _("Failed: {error}").format(error=exc)
            show_error(exc, _("VMambaX segmentation failed"))
        else:
            try:  # the scene holds the result; a display problem must not escape the timer
                self._showOutput(output)
            except Exception as exc:
                self.ui.statusLabel.text = _("Segmented, but the result could not be shown: "
                                             "{error}").format(error=exc)
                show_error(exc, _("VMambaX could not show the result"))
        finally:
            self._task = None
            token, self._taskToken = self._taskToken, None
            _BUSY.release(token)  # notifies both panels
        self._updateButtons()
        self._updateModelInfo()  # Remove is offered again

    def _showOutput(self, output):
        # The user may have switched modules while it ran (exit() drops the parameter node).
        # The output selector stays the user's choice (empty: each CT gets its own output), so
        # the next run on another CT does not write into this CT's segmentation.
        p = self._parameterNode or self.logic.getParameterNode()
        # Says which rule set the PET units, and every warning (partial PET, other study, ...).
        self.ui.statusLabel.text = output.statusText()
        if output.warnings:
            slicer.util.warningDisplay("\n\n".join(output.warnings), windowTitle=_("VMambaX"))
        self.ui.lesionTableView.setMRMLTableNode(output.tableNode)
        output.segmentationNode.CreateClosedSurfaceRepresentation()
        from VMambaXCommon.display import show_pet_over_ct

        if p.ctVolume and p.petVolume:
            show_pet_over_ct(p.ctVolume, p.petVolume)  # PET-Heat over the CT, half opacity
            slicer.util.setSliceViewerLayers(fit=True)


def _guessPetCt():
    """Pre-select CT and PET: DICOM modality (Slicer's DICOM database) first, whole-word names
    as a fallback; the largest non-localizer CT, the attenuation-corrected PET
    (VMambaXSegmentLib.inputs)."""
    from VMambaXSegmentLib.inputs import choose_pet_ct

    return choose_pet_ct(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))


#
# Self-test (runs inside Slicer: Reload and Test)
#
class VMambaXSegmentTest(ScriptedLoadableModuleTest):
    """The checks are in VMambaXSegmentLib.selftest (Qt-free, also run under slicer-core). The
    one that runs the network is skipped, with a logged message, where PyTorch is missing (the
    extension factory); the logic checks run everywhere."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.test_LogicWithoutNetwork()
        self.test_SegmentPhantom()

    def _run(self, check):
        self.setUp()
        self.delayDisplay(check.__doc__.splitlines()[0] if check.__doc__ else check.__name__)
        skipped = check(slicer.mrmlScene)
        if skipped:
            logging.info(f"VMambaX Segment self-test: {check.__name__} skipped: {skipped}")
            self.delayDisplay(f"Skipped: {skipped}")

    def test_LogicWithoutNetwork(self):
        from VMambaXSegmentLib import selftest

        for check in selftest.CHECKS[:-1]:
            self._run(check)
        self.delayDisplay("Test passed")

    def test_SegmentPhantom(self):
        from VMambaXSegmentLib import selftest

        self._run(selftest.phantom_is_segmented_by_the_model)
        self.delayDisplay("Test passed")
