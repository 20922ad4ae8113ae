"""VMambaX Train: train the vMambaX network on your own annotated PET/CT cases.

Thin widget over ``VMambaXTrainLib`` (no Qt): training is a background ``vmambax train`` process
followed through its progress file, so Slicer stays usable; Stop checkpoints and Resume continues.
"""

import logging
import os
import sys
import tempfile

import ctk  # noqa: F401 - registers the ctk widgets used by the .ui file
import qt
import slicer
from slicer.parameterNodeWrapper import parameterNodeWrapper
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
from VMambaXTrainLib.chart import TrainingChart
from VMambaXTrainLib.logic import TrainingCase
from VMambaXTrainLib.logic import VMambaXTrainLogic as _TrainLogic

CONFIG_CHOICES = (
    ("vmambax", "vMambaX (paper network, needs a GPU)"),
    ("vmambax-nano", "vMambaX nano (small, trains on a CPU)"),
    ("cipa", "CIPA (comparison network)"),
)


#
# Module
#
class VMambaXTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "VMambaX Train"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["VMambaX developers (SlicerVMambaX project)"]
        self.parent.helpText = (
            "Trains the vMambaX PET/CT tumour segmentation network on your own annotated cases "
            "(CT, PET and a tumour segmentation in the scene, or a folder of cases). Training "
            "runs in the background with live loss and validation Dice; it can be stopped and "
            "resumed. When it finishes, the model appears in VMambaX Segment. Research software, "
            "not for clinical use.")
        self.parent.acknowledgementText = "vMambaX: arXiv 2510.27508; CIPA: CVPR 2025."


#
# Parameter node
#
@parameterNodeWrapper
class VMambaXTrainParameterNode:
    config: str = "vmambax"
    epochs: int = 50
    device: str = "auto"
    runFolder: str = ""
    dataFolder: str = ""
    modelName: str = "my-vmambax"


#
# Logic
#
class VMambaXTrainLogic(ScriptedLoadableModuleLogic, _TrainLogic):
    """The Qt-free logic (``VMambaXTrainLib.logic``) plus Slicer's parameter node."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        _TrainLogic.__init__(self)

    def getParameterNode(self):
        return VMambaXTrainParameterNode(super().getParameterNode())


#
# Widget
#
class VMambaXTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._cases = []
        self._run = None
        self._chart = None
        self._dependenciesChecked = False
        self._loading = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VMambaXTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VMambaXTrainLogic()
        # The plot widget is made here (not in the .ui) so the panel loads in every Slicer build.
        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.plotContainer.layout().addWidget(self.plotWidget)

        for key, label in CONFIG_CHOICES:
            self.ui.configComboBox.addItem(label, key)
        from VMambaXCommon.devices import available_devices

        for device in available_devices():
            self.ui.trainDeviceComboBox.addItem(device, device)

        self._timer = qt.QTimer()
        self._timer.setInterval(1000)
        self._timer.connect("timeout()", self._onTimer)

        self.ui.sceneCasesRadioButton.connect("toggled(bool)", self._updateSourceVisibility)
        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.caseCtSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)
        self.ui.casePetSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)
        self.ui.caseSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)",
                                                 self._updateButtons)
        self.ui.startButton.connect("clicked(bool)", lambda: self.onStart(resume=False))
        self.ui.resumeButton.connect("clicked(bool)", lambda: self.onStart(resume=True))
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.configComboBox.connect("currentIndexChanged(int)", self._saveToParameterNode)
        self.ui.trainDeviceComboBox.connect("currentIndexChanged(int)", self._saveToParameterNode)
        self.ui.epochsSpinBox.connect("valueChanged(int)", self._saveToParameterNode)
        self.ui.runFolderPathLineEdit.connect("currentPathChanged(QString)", self._saveToParameterNode)
        self.ui.dataFolderPathLineEdit.connect("currentPathChanged(QString)", self._saveToParameterNode)
        self.ui.modelNameLineEdit.connect("textChanged(QString)", self._saveToParameterNode)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._initializeParameterNode()
        self._updateSourceVisibility()

    def _initializeParameterNode(self):
        self._parameterNode = self.logic.getParameterNode()
        if not self._parameterNode.runFolder:
            self._parameterNode.runFolder = os.path.join(
                os.path.expanduser("~"), "VMambaX", "runs", "run1")
        self._loadFromParameterNode()

    def cleanup(self):
        if self._run is not None and self._run.isRunning():
            self._run.stop()  # checkpoint and exit: the run can be resumed later
        self._timer.stop()
        self.removeObservers()

    def onSceneStartClose(self, caller, event):
        # A running training keeps going (it is a separate process); only scene links go.
        self._cases = []
        self._chart = None
        self._parameterNode = None
        self.ui.casesListWidget.clear()

    def onSceneEndClose(self, caller, event):
        self._initializeParameterNode()

    # -- parameter node (plain widgets, synchronised by hand) ---------------------------------
    def _loadFromParameterNode(self):
        p = self._parameterNode
        self._loading = True  # the widgets' change signals must not save half-loaded values
        try:
            self._setWidgets(p)
        finally:
            self._loading = False
        self._updateButtons()

    def _setWidgets(self, p):
        index = self.ui.configComboBox.findData(p.config)
        self.ui.configComboBox.setCurrentIndex(max(index, 0))
        index = self.ui.trainDeviceComboBox.findData(p.device)
        self.ui.trainDeviceComboBox.setCurrentIndex(max(index, 0))
        self.ui.epochsSpinBox.value = p.epochs
        self.ui.runFolderPathLineEdit.currentPath = p.runFolder
        self.ui.dataFolderPathLineEdit.currentPath = p.dataFolder
        self.ui.modelNameLineEdit.text = p.modelName

    def _saveToParameterNode(self, *_args):
        p = self._parameterNode
        if p is None or self._loading:
            return
        with slicer.util.NodeModify(p):
            p.config = self.ui.configComboBox.currentData or "vmambax"
            p.device = self.ui.trainDeviceComboBox.currentData or "auto"
            p.epochs = int(self.ui.epochsSpinBox.value)
            p.runFolder = self.ui.runFolderPathLineEdit.currentPath
            p.dataFolder = self.ui.dataFolderPathLineEdit.currentPath
            p.modelName = self.ui.modelNameLineEdit.text.strip()
        self._updateButtons()

    # -- cases ------------------------------------------------------------------------------
    def _updateSourceVisibility(self, *_args):
        fromScene = self.ui.sceneCasesRadioButton.checked
        self.ui.sceneCasesWidget.visible = fromScene
        self.ui.folderCasesWidget.visible = not fromScene
        self._updateButtons()

    def onAddCase(self):
        case = TrainingCase(self.ui.caseCtSelector.currentNode(), self.ui.casePetSelector.currentNode(),
                            self.ui.caseSegmentationSelector.currentNode())
        try:
            self.logic.validateCases([case, case])  # the per-case checks (count checked at start)
        except Exception as exc:
            show_error(exc, "Cannot add this case")
            return
        self._cases.append(case)
        self.ui.casesListWidget.addItem(f"{case.ctNode.GetName()} | {case.petNode.GetName()} | "
                                        f"{case.segmentationNode.GetName()}")
        self._updateButtons()

    def onRemoveCase(self):
        row = self.ui.casesListWidget.currentRow
        if 0 <= row < len(self._cases):
            del self._cases[row]
            self.ui.casesListWidget.takeItem(row)
        self._updateButtons()

    def _updateButtons(self, *_args):
        running = self._run is not None and self._run.isRunning()
        p = self._parameterNode
        if self.ui.sceneCasesRadioButton.checked:
            haveData = len(self._cases) >= 2
        else:
            haveData = bool(p and p.dataFolder and os.path.isdir(p.dataFolder))
        haveRun = bool(p and p.runFolder)
        self.ui.addCaseButton.enabled = bool(self.ui.caseCtSelector.currentNode()
                                             and self.ui.casePetSelector.currentNode()
                                             and self.ui.caseSegmentationSelector.currentNode())
        self.ui.startButton.enabled = haveData and haveRun and not running
        self.ui.resumeButton.enabled = haveRun and not running and os.path.isfile(
            os.path.join(p.runFolder, "checkpoints", "last.ckpt")) if haveRun else False
        self.ui.stopButton.enabled = running
        for widget in (self.ui.casesCollapsibleButton, self.ui.trainingCollapsibleButton):
            widget.enabled = not running

    # -- training ---------------------------------------------------------------------------
    def _dataFolder(self):
        """The folder of case folders to train on: the chosen folder, or the scene cases
        exported next to the run (kept, so a resumed run trains on the same data)."""
        p = self._parameterNode
        if self.ui.folderCasesRadioButton.checked:
            return p.dataFolder
        target = os.path.join(p.runFolder, "cases")
        if os.path.isdir(target) and os.listdir(target):
            target = tempfile.mkdtemp(prefix="cases-", dir=p.runFolder)
        self.ui.statusLabel.text = "Exporting the cases…"
        slicer.app.processEvents()
        self.logic.exportCases(self._cases, target, progress=self._showProgress)
        return target

    def _showProgress(self, fraction, message):
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()

    def onStart(self, resume=False):
        p = self._parameterNode
        try:
            if not self._dependenciesChecked:
                from VMambaXCommon.install import ensure_dependencies_in_slicer

                for note in ensure_dependencies_in_slicer("train"):
                    logging.info(note)
                self._dependenciesChecked = True
            dataFolder = None if resume else self._dataFolder()
            self._run = self.logic.startTraining(dataFolder, p.runFolder, config=p.config,
                                                 epochs=p.epochs, device=p.device, resume=resume)
        except Exception as exc:
            show_error(exc, "VMambaX training could not start")
            self._updateButtons()
            return
        if self._chart is None or self._chart.chartNode.GetScene() is None:
            self._chart = TrainingChart(slicer.mrmlScene)
        self._showChart()
        self.ui.statusLabel.text = ("Resuming training…" if resume else "Starting training…")
        self.ui.progressBar.value = 0
        self._timer.start()
        self._updateButtons()

    def _showChart(self):
        """Show the curves in the panel and in the Plots view of the layout."""
        viewNode = self.plotWidget.mrmlPlotViewNode()
        if viewNode is None:
            viewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "VMambaXTrainPlotView")
            self.plotWidget.setMRMLPlotViewNode(viewNode)
        viewNode.SetPlotChartNodeID(self._chart.chartNode.GetID())
        slicer.modules.plots.logic().ShowChartInLayout(self._chart.chartNode)

    def onStop(self):
        if self._run is not None:
            self._run.stop()
            self.ui.statusLabel.text = "Stopping after the current step (a checkpoint is saved)…"
            self.ui.stopButton.enabled = False

    def _onTimer(self):
        run = self._run
        if run is None:
            self._timer.stop()
            return
        events = run.poll()
        if self._chart is not None:
            self._chart.addEvents(events)
        for event in events:
            self._showEvent(event)
        if run.isRunning():
            return
        events = run.poll()  # whatever was written just before exiting
        if self._chart is not None:
            self._chart.addEvents(events)
        for event in events:
            self._showEvent(event)
        self._timer.stop()
        self._run = None
        final = (run.finalEvent or {}).get("event")
        if final == "done":
            self._register(run)
        elif final == "stopped":
            self.ui.statusLabel.text = "Stopped. Press Resume to continue from the last checkpoint."
        else:
            message = run.failureMessage()
            self.ui.statusLabel.text = f"Training failed: {message}"
            slicer.util.errorDisplay(f"Training failed: {message}\n\nFull log: {run.logPath}",
                                     windowTitle="VMambaX Train")
        self._updateButtons()

    def _showEvent(self, event):
        kind = event.get("event")
        step, total = event.get("step"), event.get("total_steps")
        if step is not None and total:
            self.ui.progressBar.value = int(round(100 * min(step / total, 1.0)))
        parts = [f"epoch {event.get('epoch', 0) + 1}"] if event.get("epoch") is not None else []
        if step is not None and total:
            parts.append(f"step {step}/{total}")
        if event.get("loss") is not None:
            parts.append(f"loss {event['loss']:.4f}")
        if event.get("val_dice") is not None:
            parts.append(f"validation Dice {event['val_dice']:.3f}")
        if event.get("eta_s"):
            parts.append(f"about {event['eta_s'] / 60:.0f} min left")
        if kind in ("step", "epoch", "start", "checkpoint"):
            self.ui.statusLabel.text = "Training: " + ", ".join(parts)

    def _register(self, run):
        p = self._parameterNode or self.logic.getParameterNode()
        name = p.modelName or "my-vmambax"
        try:
            entry = self.logic.registerModel(run, name)
        except Exception as exc:
            show_error(exc, "The trained model could not be registered")
            return
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = (f"Done. Model {entry.name!r} is registered: choose it in "
                                    f"VMambaX Segment. File: {entry.file}")


#
# Self-test (runs inside Slicer: Reload and Test)
#
class VMambaXTrainTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrainNanoOnPhantoms()

    def test_TrainNanoOnPhantoms(self):
        import time

        from VMambaXCommon.testing import add_phantom_case

        self.delayDisplay("Exporting two phantom cases and training the nano network briefly")
        cases = []
        for seed in (1, 2):
            ct, pet, _phantom, seg = add_phantom_case(slicer.mrmlScene, seed=seed, size=128,
                                                      n_slices=8, segmentation=True,
                                                      prefix=f"Case {seed} ")
            cases.append(TrainingCase(ct, pet, seg))
        work = tempfile.mkdtemp(prefix="vmambax-selftest-")
        logic = VMambaXTrainLogic()
        data = logic.exportCases(cases, os.path.join(work, "cases"))
        run = logic.startTraining(data, os.path.join(work, "run"), config="vmambax-nano", epochs=1,
                                  extraArgs=["--batch-size", "2", "--limit-train-batches", "2",
                                             "--limit-val-batches", "1", "--crop-size", "128",
                                             "--val-fraction", "0.5", "--num-workers", "0"])
        deadline = time.time() + 900
        while run.isRunning() and time.time() < deadline:
            run.poll()
            slicer.app.processEvents()
            time.sleep(0.5)
        if run.isRunning():
            run.kill()
        run.poll()
        self.assertEqual((run.finalEvent or {}).get("event"), "done", run.failureMessage())
        self.assertTrue(run.modelFile.is_file())
        self.delayDisplay("Test passed")
