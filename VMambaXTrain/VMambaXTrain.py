"""VMambaX Train: train the vMambaX network on your own annotated PET/CT cases.

Thin widget over ``VMambaXTrainLib`` (no Qt): training is a background ``vmambax train`` process
followed through its progress file, so Slicer stays usable; Stop checkpoints and Resume continues,
Cancel ends the trainer with every process it started.
"""

import logging
import os
import sys
import tempfile
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
from VMambaXCommon.devices import device_choices, refill_choices, select_data
from VMambaXCommon.dialogs import show_error
from VMambaXTrainLib.chart import TrainingChart
from VMambaXTrainLib.logic import MAX_PANEL_FOLDS, TrainingCase, defaultConfig
from VMambaXTrainLib.progress import describeEvent
from VMambaXTrainLib.logic import VMambaXTrainLogic as _TrainLogic



def configChoices():
    """The networks offered, as (config name, words); literals inside _() so they translate."""
    return (("vmambax", _("vMambaX (paper network, needs a GPU)")),
            ("vmambax-nano", _("vMambaX nano (small, trains on a CPU)")),
            ("cipa", _("CIPA (comparison network)")))

STOP_GRACE_S = 300  # a stop not honoured by then (a hung step) ends the process tree


#
# Module
#
class VMambaXTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VMambaX Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["VMambaX developers (SlicerVMambaX project)"]
        self.parent.helpText = _(
            "Trains the vMambaX PET/CT tumour segmentation network on your own annotated cases "
            "(CT, PET and a tumour segmentation in the scene, or a folder of cases). Training "
            "runs in the background with live loss and validation Dice; it can be stopped and "
            "resumed. When it finishes, the model appears in VMambaX Segment. Research software, "
            "not for clinical use.")
        self.parent.acknowledgementText = _("vMambaX: arXiv 2510.27508; CIPA: CVPR 2025.")


#
# Parameter node
#
@parameterNodeWrapper
class VMambaXTrainParameterNode:
    """Everything the panel shows, saved with the scene. ``timeBudget`` (minutes; 0: until the
    epochs end), ``epochs`` and ``modelName`` are bound to their widgets in the .ui file
    (SlicerParameterName); the combo boxes (keys behind labels; ``folds`` 0: no cross-validation),
    the folders and the case list are synchronised by hand. The scene cases are three lists of
    node references, case i being (caseCts[i], casePets[i], caseSegmentations[i]): they are
    saved with the scene and come back when it is loaded again."""

    config: str = ""  # "": not chosen yet -> vmambax with CUDA, vmambax-nano without
    timeBudget: Annotated[int, WithinRange(0, 10000)] = 45
    epochs: Annotated[int, WithinRange(1, 10000)] = 50
    folds: int = 0
    device: str = "auto"
    runFolder: str = ""
    dataFolder: str = ""
    modelName: str = "my-vmambax"
    caseCts: list[vtkMRMLScalarVolumeNode]
    casePets: list[vtkMRMLScalarVolumeNode]
    caseSegmentations: list[vtkMRMLSegmentationNode]


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
        self._parameterNodeGuiTag = None
        self._run = None
        self._trainToken = None  # our hold on the shared busy guard while the trainer runs
        self._modelName = None  # read and checked when the run started; registered at its end
        self._warnings = []  # the trainer's warning events of the current run
        self._folds = None  # the current run's cross-validation folds (its crossval_start event)
        self._crossvalEvent = None  # the current run's "crossval" event (rows and summary)
        self._chart = None
        self._dependenciesChecked = False
        self._updatingGUI = False
        self._configGuessed = False  # the network was set before the device probe answered

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

        for key, label in configChoices():
            self.ui.configComboBox.addItem(label, key)
        refill_choices(self.ui.trainDeviceComboBox, device_choices(), "auto")
        self.ui.foldsComboBox.addItem(_("Off"), 0)
        for folds in range(2, MAX_PANEL_FOLDS + 1):
            self.ui.foldsComboBox.addItem(str(folds), folds)

        self._timer = qt.QTimer()
        self._timer.setInterval(1000)
        self._timer.connect("timeout()", self._onTimer)
        # Which GPUs PyTorch sees is asked in a child process (no torch in Slicer's).
        self._deviceTimer = qt.QTimer()
        self._deviceTimer.setInterval(250)
        self._deviceTimer.connect("timeout()", self._onDeviceProbe)
        _DEVICES.start()
        self._deviceTimer.start()

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
        self.ui.cancelTrainingButton.connect("clicked(bool)", self.onCancel)
        self.ui.configComboBox.connect("currentIndexChanged(int)", self._onWidgetChanged)
        self.ui.trainDeviceComboBox.connect("currentIndexChanged(int)", self._onWidgetChanged)
        self.ui.foldsComboBox.connect("currentIndexChanged(int)", self._onWidgetChanged)
        self.ui.runFolderPathLineEdit.connect("currentPathChanged(QString)", self._onWidgetChanged)
        self.ui.dataFolderPathLineEdit.connect("currentPathChanged(QString)", self._onWidgetChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        _BUSY.add_listener(self._updateButtons)  # an install or export in either panel
        self.initializeParameterNode()
        self._updateSourceVisibility()

    def cleanup(self):
        if self._run is not None and self._run.isRunning():
            self._run.stop()  # checkpoint and exit: the run can be resumed later
        self._timer.stop()
        self._deviceTimer.stop()
        _BUSY.release(self._trainToken)
        _BUSY.remove_listener(self._updateButtons)
        self.removeObservers()

    def onReload(self):
        """Reload the Lib and the shared glue too (Slicer re-reads only this file)."""
        from VMambaXCommon.reloading import reload_packages

        reload_packages("VMambaXCommon", "VMambaXTrainLib")
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        # A running training keeps going (it is a separate process); only scene links go.
        self._chart = None
        self.setParameterNode(None)
        self.ui.casesListWidget.clear()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def _onDeviceProbe(self):
        if not _DEVICES.poll() and _DEVICES.pending:
            return  # still asking
        self._deviceTimer.stop()
        p = self._parameterNode
        refill_choices(self.ui.trainDeviceComboBox, device_choices(), p.device if p else "auto")
        if p is not None and self._configGuessed and p.config != defaultConfig():
            p.config = defaultConfig()  # the guess before the probe answered was wrong
        self._configGuessed = False

    # -- parameter node -------------------------------------------------------------------------
    def initializeParameterNode(self):
        p = self.logic.getParameterNode()
        with slicer.util.NodeModify(p):
            if not p.config:
                p.config = defaultConfig()  # vmambax-nano without CUDA
                self._configGuessed = not _DEVICES.answered
            if not p.runFolder:
                p.runFolder = os.path.join(os.path.expanduser("~"), "VMambaX", "runs", "run1")
        self.setParameterNode(p)

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            # epochs and modelName bind through SlicerParameterName in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                             self._updateGUIFromParameterNode)
            self._updateGUIFromParameterNode()

    def _updateGUIFromParameterNode(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        self._updatingGUI = True  # the widgets' change signals must not save half-set values
        try:
            select_data(self.ui.configComboBox, p.config)
            select_data(self.ui.trainDeviceComboBox, p.device)
            select_data(self.ui.foldsComboBox, p.folds)
            self.ui.epochsSpinBox.enabled = not p.timeBudget  # a time limit fits the epochs
            if self.ui.runFolderPathLineEdit.currentPath != p.runFolder:
                self.ui.runFolderPathLineEdit.currentPath = p.runFolder
            if self.ui.dataFolderPathLineEdit.currentPath != p.dataFolder:
                self.ui.dataFolderPathLineEdit.currentPath = p.dataFolder
            self._showCases()
        finally:
            self._updatingGUI = False
        self._updateButtons()

    def _onWidgetChanged(self, *_args):
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        self._configGuessed = False  # the user's choice from now on
        with slicer.util.NodeModify(p):
            p.config = self.ui.configComboBox.currentData or defaultConfig()
            p.device = self.ui.trainDeviceComboBox.currentData or "auto"
            p.folds = self.ui.foldsComboBox.currentData or 0
            p.runFolder = self.ui.runFolderPathLineEdit.currentPath
            p.dataFolder = self.ui.dataFolderPathLineEdit.currentPath

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
            show_error(exc, _("Cannot add this case"))
            return
        p = self._parameterNode
        with slicer.util.NodeModify(p):  # new lists: the wrapper saves what is assigned
            p.caseCts = list(p.caseCts) + [case.ctNode]
            p.casePets = list(p.casePets) + [case.petNode]
            p.caseSegmentations = list(p.caseSegmentations) + [case.segmentationNode]

    def onRemoveCase(self):
        row = self.ui.casesListWidget.currentRow
        p = self._parameterNode
        if p is None or not 0 <= row < len(p.caseCts):
            return
        with slicer.util.NodeModify(p):
            p.caseCts = [n for i, n in enumerate(p.caseCts) if i != row]
            p.casePets = [n for i, n in enumerate(p.casePets) if i != row]
            p.caseSegmentations = [n for i, n in enumerate(p.caseSegmentations) if i != row]

    def _sceneCases(self):
        """The scene cases of the parameter node (a case whose node was deleted is left out)."""
        p = self._parameterNode
        if p is None:
            return []
        return [TrainingCase(ct, pet, seg) for ct, pet, seg
                in zip(p.caseCts, p.casePets, p.caseSegmentations)
                if ct is not None and pet is not None and seg is not None]

    def _showCases(self):
        p = self._parameterNode
        self.ui.casesListWidget.clear()
        for ct, pet, seg in zip(p.caseCts, p.casePets, p.caseSegmentations):
            names = [n.GetName() if n is not None else _("(deleted)") for n in (ct, pet, seg)]
            self.ui.casesListWidget.addItem(" | ".join(names))

    def _updateButtons(self, *_args):
        running = self._run is not None and self._run.isRunning()
        busy = _BUSY.busy  # an install or export (this panel) or a segmentation (the other)
        p = self._parameterNode
        if self.ui.sceneCasesRadioButton.checked:
            haveData = len(self._sceneCases()) >= 2
        else:
            haveData = bool(p and p.dataFolder and os.path.isdir(p.dataFolder))
        haveRun = bool(p and p.runFolder)
        self.ui.addCaseButton.enabled = bool(self.ui.caseCtSelector.currentNode()
                                             and self.ui.casePetSelector.currentNode()
                                             and self.ui.caseSegmentationSelector.currentNode())
        idle = not running and not busy
        self.ui.startButton.enabled = haveData and haveRun and idle
        self.ui.resumeButton.enabled = bool(haveRun and idle and self.logic.canResume(p.runFolder))
        self.ui.stopButton.enabled = running and self._run.stopRequestedAt is None
        self.ui.cancelTrainingButton.enabled = running
        for widget in (self.ui.casesCollapsibleButton, self.ui.trainingCollapsibleButton):
            widget.enabled = idle
        tip = _("Wait: VMambaX is {job}.").format(job=_BUSY.job) if busy else _(
            "Export the cases (scene cases) and start training in the background.")
        self.ui.startButton.toolTip = tip

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
        with _BUSY.hold(_("exporting the training cases")):  # the export runs processEvents
            self.ui.statusLabel.text = _("Exporting the cases…")
            slicer.app.processEvents()
            self.logic.exportCases(self._sceneCases(), target, progress=self._showProgress)
        return target

    def _showProgress(self, fraction, message):
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()

    def _ensureDependencies(self):
        if self._dependenciesChecked:
            return
        from VMambaXCommon.install import ensure_dependencies_in_slicer

        with _BUSY.hold(_("installing Python packages")):  # pip runs with the event loop turning
            notes = ensure_dependencies_in_slicer("train")
        self._dependenciesChecked = True
        for note in notes:
            logging.info(note)
        if notes:
            slicer.util.infoDisplay("\n\n".join(notes), windowTitle=_("VMambaX Train"))
        # A freshly installed CUDA torch adds the GPU (the user's device choice is kept).
        _DEVICES.start(force=True)
        self._deviceTimer.start()

    def onStart(self, resume=False):
        if _BUSY.busy or (self._run is not None and self._run.isRunning()):
            return  # a click queued while something runs (the buttons are disabled then)
        p = self._parameterNode
        try:
            self._ensureDependencies()
            # Checked now, not after hours of training; kept for the registration at the end
            # (the scene, and with it the parameter node, may be another one by then).
            modelName = (p.modelName or "").strip() or "my-vmambax"
            self.logic.checkModelName(modelName)
            timeBudget = folds = None  # resumed: the run's own
            if not resume:  # refused before the export, not after it
                scene = self.ui.sceneCasesRadioButton.checked
                timeBudget, folds = self.logic.checkTrainingOptions(
                    p.timeBudget, p.folds, len(self._sceneCases()) if scene else None)
            dataFolder = None if resume else self._dataFolder()
            # The run folder's lock refuses a second trainer there (this or another Slicer).
            self._run = self.logic.startTraining(dataFolder, p.runFolder, config=p.config,
                                                 epochs=p.epochs, device=p.device, resume=resume,
                                                 timeBudget=timeBudget, folds=folds)
        except Exception as exc:
            show_error(exc, _("VMambaX training could not start"))
            self._updateButtons()
            return
        # Held while the trainer runs: no segmentation (or install) shares its GPU meanwhile.
        self._trainToken = _BUSY.acquire(_("training"))
        self._modelName = modelName
        self._warnings = []
        self._folds = self._crossvalEvent = None
        if not resume:  # an earlier run's table is not this run's
            self.ui.crossvalTableWidget.clear()
            self.ui.crossvalTableWidget.setRowCount(0)
            self.ui.crossvalSummaryLabel.text = _("The table appears when a cross-validated run "
                                                  "ends.")
        if self._chart is None or self._chart.chartNode.GetScene() is None:
            self._chart = TrainingChart(slicer.mrmlScene)
        self._showChart()
        self.ui.statusLabel.text = _("Resuming training…") if resume else _("Starting training…")
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
            self.ui.statusLabel.text = _("Stopping after the current step (a checkpoint is saved)…")
            self._updateButtons()

    def onCancel(self):
        """End the trainer now, with every process it started (the last checkpoint stays)."""
        if self._run is None or not self._run.isRunning():
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("Cancel the training now? Progress since the last checkpoint is lost; Resume "
                  "continues from that checkpoint."), windowTitle=_("VMambaX Train")):
            return
        self._run.cancel()
        self._onTimer()  # report the end at once

    def _onTimer(self):
        run = self._run
        if run is None:
            self._timer.stop()
            return
        if run.stopOverdue(STOP_GRACE_S):
            logging.warning("VMambaX Train: the trainer did not stop in time; ending its processes")
            run.cancel()
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
        token, self._trainToken = self._trainToken, None
        _BUSY.release(token)  # notifies both panels
        final = (run.finalEvent or {}).get("event")
        if final == "done":
            if self._folds is not None or self._crossvalEvent is not None:  # cross-validated
                self._showCrossval(run.runDir)
            self._register(run)
        elif final == "stopped":
            self.ui.statusLabel.text = _("Stopped. Press Resume to continue from the last checkpoint.")
        elif run.cancelled:
            self.ui.statusLabel.text = _("Cancelled. Press Resume to continue from the last "
                                         "checkpoint.")
        else:
            message = run.failureMessage()
            self.ui.statusLabel.text = _("Training failed: {message}").format(message=message)
            slicer.util.errorDisplay(
                _("Training failed: {message}\n\nFull log: {log}").format(message=message,
                                                                          log=run.logPath),
                windowTitle=_("VMambaX Train"))
        warnings, self._warnings = self._warnings, []
        if warnings:  # each once, in the order the trainer wrote them
            slicer.util.warningDisplay("\n\n".join(dict.fromkeys(warnings)),
                                       windowTitle=_("VMambaX Train: warnings"))
        self._updateButtons()

    def _showEvent(self, event):
        """The status line and bar after one progress event (texts: VMambaXTrainLib.progress)."""
        if event.get("event") == "warning":  # also shown all together when the run ends
            message = str(event.get("message") or "").strip()
            if message:
                self._warnings.append(message)
        elif event.get("event") == "crossval":
            self._crossvalEvent = event
        update = describeEvent(event, self._folds)
        self._folds = update.folds
        if update.percent is not None:
            self.ui.progressBar.value = update.percent
        if update.status is not None:
            self.ui.statusLabel.text = update.status

    def _showCrossval(self, runDir):
        """Fill the Cross-validation section from RUN/crossval.json (or the crossval event)."""
        from VMambaXTrainLib.crossval import crossvalTable, readCrossvalTable

        try:
            try:
                table = readCrossvalTable(runDir)
            except Exception:
                if self._crossvalEvent is None:
                    raise
                table = crossvalTable(self._crossvalEvent)
        except Exception as exc:
            show_error(exc, _("The cross-validation table could not be shown"))
            return
        widget = self.ui.crossvalTableWidget
        widget.clear()
        widget.setColumnCount(len(table.headers))
        widget.setRowCount(len(table.rows))
        widget.setHorizontalHeaderLabels(list(table.headers))
        for r, row in enumerate(table.rows):
            for c, text in enumerate(row):
                widget.setItem(r, c, qt.QTableWidgetItem(text))
        self.ui.crossvalSummaryLabel.text = "\n".join(table.summary)
        self.ui.crossvalCollapsibleButton.collapsed = False

    def _register(self, run):
        name = self._modelName or "my-vmambax"  # as read and checked when the run started
        try:
            replaced = self.logic.checkModelName(name)
            entry = self.logic.registerModel(run, name)
        except Exception as exc:
            show_error(exc, _("The trained model could not be registered"))
            return
        self.ui.progressBar.value = 100
        if replaced:
            text = _("Done. Model {name} is registered, replacing the earlier model of that "
                     "name: choose it in VMambaX Segment. File: {file}")
        else:
            text = _("Done. Model {name} is registered: choose it in VMambaX Segment. "
                     "File: {file}")
        self.ui.statusLabel.text = text.format(name=repr(entry.name), file=entry.file)


#
# Self-test (runs inside Slicer: Reload and Test)
#
class VMambaXTrainTest(ScriptedLoadableModuleTest):
    """The checks are in VMambaXTrainLib.selftest (Qt-free, also run under slicer-core). The
    training run is skipped, with a logged message, where PyTorch is missing (the extension
    factory); the case export runs everywhere."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExportPhantomCases()
        self.setUp()
        self.test_TrainNanoOnPhantoms()

    def test_ExportPhantomCases(self):
        from VMambaXTrainLib import selftest

        self.delayDisplay("Exporting two phantom cases")
        selftest.phantom_cases_are_exported(slicer.mrmlScene,
                                            tempfile.mkdtemp(prefix="vmambax-selftest-"))
        self.delayDisplay("Test passed")

    def test_TrainNanoOnPhantoms(self):
        from VMambaXTrainLib import selftest

        self.delayDisplay("Exporting two phantom cases and training the nano network briefly")
        skipped = selftest.nano_trains_on_phantoms(
            slicer.mrmlScene, tempfile.mkdtemp(prefix="vmambax-selftest-"),
            pump=slicer.app.processEvents)
        if skipped:
            logging.info(f"VMambaX Train self-test: training skipped: {skipped}")
            self.delayDisplay(f"Skipped: {skipped}")
            return
        self.delayDisplay("Test passed")
