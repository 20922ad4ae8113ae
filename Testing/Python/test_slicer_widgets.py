"""The two module widgets, run on fake Qt widgets built from their .ui files, over a real MRML scene
and the real Lib logic (slicer-core): issue 11 points 6-9, 12 and 19 as a user meets them.

What needs a real Slicer (painting, real Qt signal order, dialogs) is not covered here; see
``slicer_fakes`` for what the fakes do.
"""

import sys
import textwrap
import time
import types

import psutil
import pytest

import slicer_fakes
from VMambaXCommon import busy, devices, install
from VMambaXCommon.devices import device_choices

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _probe_says(cuda, mps=False):
    """A device probe command answering as ``python -m vmambax.infer.worker --devices`` would."""
    answer = {"event": "devices", "torch": "2.13.0", "cuda": cuda, "mps": mps,
              "cuda_version": "12.4" if cuda else None, "platform": sys.platform,
              "gpu_extras_supported": cuda, "nvidia_gpu": cuda}
    return [sys.executable, "-c", f"import json; print(json.dumps({answer!r}))"]


@pytest.fixture
def gui(monkeypatch, tmp_path):
    monkeypatch.setenv("VMAMBAX_HOME", str(tmp_path / "home"))  # an empty user model registry
    env = slicer_fakes.install(monkeypatch)
    monkeypatch.setattr(busy, "SHARED", busy.BusyGuard())  # this test's Slicer session
    monkeypatch.setattr(devices, "PROBE", devices.DeviceProbe(command=_probe_says(cuda=False)))
    env.segment = slicer_fakes.import_module_file(monkeypatch, "VMambaXSegment")
    env.train = slicer_fakes.import_module_file(monkeypatch, "VMambaXTrain")
    env.widgets = []
    yield env
    for widget in env.widgets:  # as Slicer does on exit: stop timers, drop scene observers
        widget.cleanup()
    env.scene.Clear(1)


def _widget(env, module, name):
    widget = getattr(module, name)()
    widget.setup()
    widget.enter()
    env.widgets.append(widget)
    return widget


class FakeTask:
    """A segmentation on the worker thread, finished when the test says so."""

    def __init__(self, output):
        self.output, self.done, self.cancelled = output, False, False

    def snapshot(self):
        return (1.0 if self.done else 0.5), "Segmenting"

    def cancel(self):
        self.cancelled = True

    def apply(self):
        return self.output


def _segment_panel(gui, monkeypatch, clicks_while_installing=()):
    """VMambaX Segment on a phantom, with the user's device "CPU"; the first run installs a
    CUDA torch (the device list grows), running ``clicks_while_installing`` in the event loop."""
    from VMambaXCommon.testing import add_phantom_case

    ct, pet, _phantom, _seg = add_phantom_case(gui.scene, seed=2, size=64, n_slices=4)
    segment = _widget(gui, gui.segment, "VMambaXSegmentWidget")
    p = segment._parameterNode
    assert p.ctVolume is ct and p.petVolume is pet
    combo = segment.ui.deviceComboBox
    assert combo.labels()[:2] == ["Automatic (GPU if available)", "CPU"]  # words, not keys
    combo.setCurrentIndex(combo.findData("cpu"))  # the user's choice
    assert p.device == "cpu"
    record = types.SimpleNamespace(installs=[], install_kwargs=[], runs=[], enabled=[])

    def ensure(feature, **kwargs):  # pip runs; Slicer keeps processing events meanwhile
        record.installs.append(feature)
        record.install_kwargs.append(kwargs)
        record.enabled.append(segment.ui.segmentButton.enabled)
        if len(record.installs) == 1:
            gui.app.during_events += list(clicks_while_installing)
        gui.app.processEvents()
        return ["Installed: torch>=2.5"]

    seg_node = gui.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT vMambaX")
    output = types.SimpleNamespace(segmentationNode=seg_node, statusText=lambda: "1 lesion(s).",
                                   tableNode=gui.scene.AddNewNodeByClass("vtkMRMLTableNode"),
                                   petConversion="PET used as SUV (as selected)",
                                   warnings=["The PET covers only 80% of the CT"])
    record.task = FakeTask(output)
    monkeypatch.setattr(install, "ensure_dependencies_in_slicer", ensure)
    monkeypatch.setattr(segment.logic, "deviceChoices", lambda: device_choices(cuda=True, mps=False))
    monkeypatch.setattr(segment.logic, "segmentAsync",
                        lambda *a, **k: record.runs.append(k) or record.task)
    return segment, pet, record


def test_segment_keeps_the_users_device_through_the_first_install(gui, monkeypatch):
    segment, pet, record = _segment_panel(gui, monkeypatch)
    combo = segment.ui.deviceComboBox
    segment.ui.segmentButton.click()
    assert record.installs == ["segment"] and len(record.runs) == 1
    assert record.runs[0]["device"] == "cpu"  # point 7: the choice survived the rebuilt list
    assert combo.data() == ["auto", "cpu", "cuda"] and combo.currentData == "cpu"
    assert segment._parameterNode.device == "cpu"
    assert gui.dialogs.infos == ["Installed: torch>=2.5"] and gui.dialogs.errors == []
    # Issue 17.3: no GPU-extras question inside the Segment click (its own action).
    assert record.install_kwargs[0] == {}
    record.task.done = True
    segment._onTimer()
    # Point 19: the PET over the CT, in PET-Heat colours.
    assert gui.scene.GetNodeByID(pet.GetDisplayNode().GetColorNodeID()).GetName() == "PET-Heat"
    assert gui.dialogs.errors == []


def test_no_nested_install_segmentation_or_training_while_one_runs(gui, monkeypatch):
    train = _widget(gui, gui.train, "VMambaXTrainWidget")
    trainings = []
    monkeypatch.setattr(train.logic, "startTraining", lambda *a, **k: trainings.append(k))
    segment, _pet, record = None, None, None
    clicks = [lambda: segment.ui.segmentButton.click(), lambda: segment.onSegmentButton(),
              lambda: train.onStart(resume=False)]
    segment, _pet, record = _segment_panel(gui, monkeypatch, clicks_while_installing=clicks)
    segment.ui.segmentButton.click()
    assert record.installs == ["segment"], "a click during the install started another install"
    assert len(record.runs) == 1 and trainings == []
    assert record.enabled == [False]  # Segment was disabled while pip ran

    # While the network runs: Segment is disabled, Start in VMambaX Train too, and refused.
    assert busy.SHARED.busy and not segment.ui.segmentButton.enabled
    assert segment.ui.cancelButton.enabled and not train.ui.startButton.enabled
    segment.onSegmentButton()
    train.onStart(resume=False)
    assert len(record.runs) == 1 and trainings == [] and record.installs == ["segment"]
    record.task.done = True
    segment._onTimer()
    assert not busy.SHARED.busy and segment.ui.segmentButton.enabled
    assert gui.dialogs.errors == []


def test_segment_lists_models_registered_meanwhile_and_removes_them(gui, tmp_path):
    from vmambax.infer.registry import add_user_model, user_models
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file

    segment = _widget(gui, gui.segment, "VMambaXSegmentWidget")
    combo, remove = segment.ui.modelComboBox, segment.ui.removeModelButton
    assert "my-run" not in combo.data() and not remove.enabled
    path = tmp_path / "mine.pt"
    save_model_file(path, build_model("vmambax-nano").eval(), config_name="vmambax-nano",
                    preprocessing={"image_size": 128}, metadata={})
    add_user_model("my-run", path, description="trained in 3D Slicer")  # VMambaX Train did this
    segment.exit()
    segment.enter()  # the user comes back to VMambaX Segment
    assert combo.data()[-1] == "my-run"
    combo.setCurrentIndex(combo.findData("my-run"))
    p = segment._parameterNode
    assert p.model == "my-run" and remove.enabled
    gui.dialogs.answer = False  # "Cancel" in the confirmation
    remove.click()
    assert [m.name for m in user_models()] == ["my-run"] and len(gui.dialogs.confirms) == 1
    gui.dialogs.answer = True
    remove.click()
    assert user_models() == [] and "my-run" not in combo.data() and path.is_file()
    assert p.model == "default" and combo.currentData == "default" and not remove.enabled


LAUNCHER = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(sys.argv[1], "w").write(str(child.pid))
    time.sleep(120)
""")


def test_train_panel_parameters_and_cancel_ending_the_process_tree(gui, monkeypatch, tmp_path):
    from VMambaXTrainLib.logic import VMambaXTrainLogic, defaultConfig

    train = _widget(gui, gui.train, "VMambaXTrainWidget")
    p = train._parameterNode
    # Point 9: the network defaults to nano without CUDA; devices are words; GUI <-> node.
    assert p.config == defaultConfig() and train.ui.configComboBox.currentData == p.config
    assert train.ui.trainDeviceComboBox.labels()[:2] == ["Automatic (GPU if available)", "CPU"]
    train.ui.epochsSpinBox.value = 7
    assert p.epochs == 7
    p.epochs = 9
    assert train.ui.epochsSpinBox.value == 9
    train.ui.modelNameLineEdit.text = "lung-run"
    assert p.modelName == "lung-run"
    device = train.ui.trainDeviceComboBox
    device.setCurrentIndex(device.findData("cpu"))
    assert p.device == "cpu"
    train.exit()  # the GUI lets go of the node
    train.ui.epochsSpinBox.value = 3
    assert p.epochs == 9
    train.enter()
    assert train.ui.epochsSpinBox.value == 9 and device.currentData == "cpu"

    # A folder of cases, a run folder; the trainer is a launcher with a child (as PythonSlicer).
    (tmp_path / "data").mkdir()
    train.ui.sceneCasesRadioButton.checked = False
    train.ui.folderCasesRadioButton.checked = True
    train.ui.sceneCasesRadioButton.emit("toggled", False)
    train.ui.dataFolderPathLineEdit.currentPath = str(tmp_path / "data")
    train.ui.runFolderPathLineEdit.currentPath = str(tmp_path / "run")
    assert p.dataFolder == str(tmp_path / "data") and p.runFolder == str(tmp_path / "run")
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    commands = []

    def command(*args, **kwargs):
        commands.append((args, kwargs))
        return [sys.executable, str(script), str(tmp_path / "child.pid")]

    monkeypatch.setattr(VMambaXTrainLogic, "trainCommand", staticmethod(command))
    monkeypatch.setattr(install, "ensure_dependencies_in_slicer", lambda feature, **k: [])
    assert train.ui.startButton.enabled
    train.ui.startButton.click()
    assert gui.dialogs.errors == []
    run = train._run
    assert run is not None and run.isRunning()
    assert not train.ui.startButton.enabled and train.ui.cancelTrainingButton.enabled
    deadline = time.monotonic() + 30
    while not (tmp_path / "child.pid").exists() or not (tmp_path / "child.pid").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int((tmp_path / "child.pid").read_text())
    args, kwargs = commands[0]
    assert p.config in args  # the panel's choices reach the trainer
    assert kwargs["timeBudget"] == 45 and kwargs["folds"] is None  # "Train for: 45 min", no CV
    train.ui.cancelTrainingButton.click()  # confirmed (the fake dialog answers OK)
    assert run.cancelled and not run.isRunning() and train._run is None
    for pid in (run.process.pid, child):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "Cancelled" in train.ui.statusLabel.text
    assert train.ui.startButton.enabled and not train.ui.cancelTrainingButton.enabled


def test_reload_reloads_the_lib_and_the_shared_glue_first(gui, monkeypatch):
    import VMambaXCommon.reloading as reloading

    reloaded = []
    monkeypatch.setattr(reloading, "reload_packages", lambda *names: reloaded.append(names))
    for module, name, lib in ((gui.segment, "VMambaXSegmentWidget", "VMambaXSegmentLib"),
                              (gui.train, "VMambaXTrainWidget", "VMambaXTrainLib")):
        widget = _widget(gui, module, name)
        widget.onReload()
        assert reloaded[-1] == ("VMambaXCommon", lib) and widget.reloaded


class FakeRun:
    """A training run whose progress events the test writes."""

    def __init__(self):
        self.events, self.running, self.finalEvent = [], True, None
        self.cancelled, self.stopRequestedAt, self.logPath = False, None, "train.log"

    def poll(self):
        events, self.events = self.events, []
        return events

    def isRunning(self):
        return self.running

    def stopOverdue(self, _grace):
        return False

    def failureMessage(self):
        return "it failed"


def _train_panel(gui, monkeypatch, tmp_path):
    train = _widget(gui, gui.train, "VMambaXTrainWidget")
    (tmp_path / "data").mkdir()
    train.ui.sceneCasesRadioButton.checked = False
    train.ui.folderCasesRadioButton.checked = True
    train._parameterNode.dataFolder = str(tmp_path / "data")
    train._parameterNode.runFolder = str(tmp_path / "run")
    record = types.SimpleNamespace(runs=[], registered=[])

    def start(*args, **kwargs):
        record.runs.append(FakeRun())
        return record.runs[-1]

    def register(run, name, description=""):
        record.registered.append(name)
        return types.SimpleNamespace(name=name, file=str(tmp_path / "model.pt"))

    monkeypatch.setattr(install, "ensure_dependencies_in_slicer", lambda feature, **k: [])
    monkeypatch.setattr(train.logic, "startTraining", start)
    monkeypatch.setattr(train.logic, "registerModel", register)
    return train, record


def test_train_shows_the_trainers_warnings_and_registers_the_name_read_at_start(
        gui, monkeypatch, tmp_path):
    import vmambax.infer.registry as registry

    train, record = _train_panel(gui, monkeypatch, tmp_path)
    train._parameterNode.modelName = " lung-run "
    train.onStart(resume=False)
    assert gui.dialogs.errors == [] and len(record.runs) == 1
    run = record.runs[0]
    run.events = [{"event": "start", "epoch": 0},
                  {"event": "warning", "message": "exporting the cases: PET covers 80% of case 2"},
                  {"event": "step", "epoch": 0, "step": 1, "total_steps": 4, "loss": 0.5}]
    train._onTimer()
    assert "Training: epoch 1" in train.ui.statusLabel.text
    run.events = [{"event": "warning", "message": "validation Dice is NaN"}]
    train._onTimer()
    assert train.ui.statusLabel.text == "Warning: validation Dice is NaN"
    assert gui.dialogs.warnings == []  # not while it runs
    train._parameterNode.modelName = "renamed-later"  # or a new scene's parameter node
    monkeypatch.setattr(registry, "user_models", lambda: [types.SimpleNamespace(name="lung-run")])
    run.running, run.finalEvent = False, {"event": "done"}
    run.events = [{"event": "done"}]
    train._onTimer()
    assert record.registered == ["lung-run"]
    assert "replacing the earlier model" in train.ui.statusLabel.text
    assert gui.dialogs.warnings == ["exporting the cases: PET covers 80% of case 2\n\n"
                                    "validation Dice is NaN"]
    # The next run starts with no warnings of its own.
    train.onStart(resume=False)
    record.runs[1].running, record.runs[1].finalEvent = False, {"event": "done"}
    train._onTimer()
    assert len(gui.dialogs.warnings) == 1 and record.registered == ["lung-run", "renamed-later"]
    assert "replacing" not in train.ui.statusLabel.text


def test_train_refuses_an_invalid_model_name_before_starting(gui, monkeypatch, tmp_path):
    train, record = _train_panel(gui, monkeypatch, tmp_path)
    for name in ("default", "no spaces please", "-dash-first"):
        train._parameterNode.modelName = name
        train.onStart(resume=False)
    assert record.runs == [] and len(gui.dialogs.errors) == 3
    assert all("invalid model name" in str(e) for e in gui.dialogs.errors)


def test_segment_lists_registered_models_after_the_first_install(gui, monkeypatch):
    from vmambax.errors import ConfigError

    segment, _pet, record = _segment_panel(gui, monkeypatch)
    p = segment._parameterNode
    installed = []
    monkeypatch.setattr(install, "ensure_dependencies_in_slicer",
                        lambda feature, **k: installed.append(feature) or [])

    def models():  # the registry imports torch: unreadable until the install
        if not installed:
            raise ImportError("No module named 'torch'")
        return [("lung-run", "trained in 3D Slicer")]

    monkeypatch.setattr(segment.logic, "availableModels", models)
    monkeypatch.setattr(segment.logic, "userModelNames", lambda: {"lung-run"} if installed else set())
    p.model = "lung-run"  # a saved scene's choice: a registered name, not a file
    segment._populateModels()
    combo = segment.ui.modelComboBox
    assert combo.data() == ["default"] and p.model == "lung-run"  # kept, not a "file" item
    segment.ui.segmentButton.click()
    assert installed == ["segment"] and combo.data() == ["default", "lung-run"]
    assert combo.currentData == "lung-run" and record.runs[0]["model"] == "lung-run"
    record.task.done = True
    segment._onTimer()

    # Removal that fails keeps the choice; a name that vanished from the registry is reset.
    def refuse(name):
        raise ConfigError(f"cannot remove {name!r}")

    monkeypatch.setattr(segment.logic, "removeUserModel", refuse)
    segment.ui.removeModelButton.click()
    assert gui.dialogs.errors == ["cannot remove 'lung-run'"] and p.model == "lung-run"
    monkeypatch.setattr(segment.logic, "availableModels", lambda: [])
    segment.exit()
    segment._populateModels()  # no parameter node held: reset through the logic's
    assert p.model == "default"


def test_segment_start_and_display_failures_are_reported(gui, monkeypatch):
    from vmambax.errors import InputError

    segment, _pet, record = _segment_panel(gui, monkeypatch)

    def refuse(*args, **kwargs):
        raise InputError("the PET covers none of the CT")

    monkeypatch.setattr(segment.logic, "segmentAsync", refuse)
    segment.ui.segmentButton.click()
    assert segment.ui.statusLabel.text == "Not started: the PET covers none of the CT"
    assert gui.dialogs.errors == ["the PET covers none of the CT"] and not busy.SHARED.busy
    monkeypatch.setattr(segment.logic, "segmentAsync", lambda *a, **k: record.task)
    record.task.output.tableNode = None  # showing the table fails
    monkeypatch.setattr(segment.ui.lesionTableView, "setMRMLTableNode",
                        lambda node: (_ for _ in ()).throw(TypeError("no table")), raising=False)
    segment.ui.segmentButton.click()
    record.task.done = True
    segment._onTimer()  # does not raise out of the timer
    assert "could not be shown: no table" in segment.ui.statusLabel.text
    assert len(gui.dialogs.errors) == 2 and "no table" in gui.dialogs.errors[1]
    assert not busy.SHARED.busy and segment._task is None and segment.ui.segmentButton.enabled


def _until_answered(widget, timeout=30):
    deadline = time.monotonic() + timeout
    while widget._deviceTimer.active:
        assert time.monotonic() < deadline, "the device probe did not answer"
        widget._onDeviceProbe()  # what the timer does every 250 ms
        time.sleep(0.02)


def test_device_lists_fill_when_the_probe_answers_keeping_the_saved_choice(gui, monkeypatch):
    monkeypatch.setattr(devices.PROBE, "_command", _probe_says(cuda=True))  # a GPU machine
    segment = _widget(gui, gui.segment, "VMambaXSegmentWidget")
    train = _widget(gui, gui.train, "VMambaXTrainWidget")
    segment._parameterNode.device = "cuda"  # a scene saved on a GPU machine
    combo = segment.ui.deviceComboBox
    assert combo.data() == ["auto", "cpu"]  # at once, without asking torch
    assert segment._parameterNode.device == "cuda"  # kept while the list is incomplete
    for widget in (segment, train):
        _until_answered(widget)
    assert combo.data() == ["auto", "cpu", "cuda"] and combo.currentData == "cuda"
    assert train.ui.trainDeviceComboBox.data() == ["auto", "cpu", "cuda"]
    # The network guessed before the answer follows it (CUDA: the paper's network).
    assert train._parameterNode.config == "vmambax"


def test_train_case_list_lives_in_the_parameter_node(gui):
    """Issue 17.4: the scene cases are node references in the parameter node, so they are saved
    with the scene and come back when it is loaded (here: the panel let go and came back)."""
    from VMambaXCommon.testing import add_phantom_case

    train = _widget(gui, gui.train, "VMambaXTrainWidget")
    p = train._parameterNode
    cases = [add_phantom_case(gui.scene, seed=s, size=32, n_slices=4, prefix=f"C{s} ",
                              segmentation=True)
             for s in (1, 2)]
    for ct, pet, _phantom, seg in cases:
        train.ui.caseCtSelector.setCurrentNode(ct)
        train.ui.casePetSelector.setCurrentNode(pet)
        train.ui.caseSegmentationSelector.setCurrentNode(seg)
        train.ui.addCaseButton.click()
    assert gui.dialogs.errors == []
    assert p.caseCts == [cases[0][0], cases[1][0]] and p.casePets == [cases[0][1], cases[1][1]]
    assert p.caseSegmentations == [cases[0][3], cases[1][3]]
    assert len(train.ui.casesListWidget.rows) == 2 and "C1 " in train.ui.casesListWidget.rows[0]
    assert train.ui.startButton.enabled  # two cases and a run folder
    train.exit()
    train.ui.casesListWidget.clear()
    train.enter()  # the list is rebuilt from the node
    assert len(train.ui.casesListWidget.rows) == 2
    train.ui.casesListWidget.currentRow = 0
    train.ui.removeCaseButton.click()
    assert p.caseCts == [cases[1][0]] and len(train.ui.casesListWidget.rows) == 1
    assert not train.ui.startButton.enabled


def test_the_busy_guard_is_held_while_training_runs(gui, monkeypatch, tmp_path):
    """Issue 17.4: while the trainer runs, Segment is disabled (no segmentation shares the GPU
    with a training run), and it is enabled again when the run ends."""
    train, record = _train_panel(gui, monkeypatch, tmp_path)
    segment = _widget(gui, gui.segment, "VMambaXSegmentWidget")
    from VMambaXCommon.testing import add_phantom_case

    ct, pet, _ph, _seg = add_phantom_case(gui.scene, seed=2, size=32, n_slices=4)
    segment._parameterNode.ctVolume, segment._parameterNode.petVolume = ct, pet
    assert segment.ui.segmentButton.enabled
    train.onStart(resume=False)
    assert len(record.runs) == 1 and busy.SHARED.busy and busy.SHARED.job == "training"
    assert not segment.ui.segmentButton.enabled
    assert "training" in segment.ui.segmentButton.toolTip
    runs = []
    monkeypatch.setattr(segment.logic, "segmentAsync", lambda *a, **k: runs.append(k))
    monkeypatch.setattr(install, "ensure_dependencies_in_slicer", lambda feature, **k: [])
    segment.onSegmentButton()  # a click that slips through is refused
    assert runs == []
    record.runs[0].running, record.runs[0].finalEvent = False, {"event": "stopped"}
    train._onTimer()
    assert not busy.SHARED.busy and segment.ui.segmentButton.enabled


@pytest.mark.parametrize("kind", ["other CT's output", "different patients"])
def test_segment_asks_before_replacing_another_cts_result(gui, monkeypatch, kind):
    from vmambax.data.patient import DifferentPatientsError
    from VMambaXSegmentLib.scene_output import OutputOfAnotherCT

    segment, _pet, record = _segment_panel(gui, monkeypatch)
    flag = "replaceOtherCtOutput" if kind == "other CT's output" else "allowDifferentPatients"
    error = (OutputOfAnotherCT("the output holds the 'Lung tumour' segmented on 'CT 1'")
             if flag == "replaceOtherCtOutput" else DifferentPatientsError("PAT-1 vs PAT-2"))
    calls = []

    def start(*args, **kwargs):
        calls.append(kwargs.get(flag))
        if not kwargs.get(flag):
            raise error
        return record.task

    monkeypatch.setattr(segment.logic, "segmentAsync", start)
    gui.dialogs.answer = False  # "No": nothing runs, the output stays
    segment.ui.segmentButton.click()
    assert calls == [False] and segment._task is None and not busy.SHARED.busy
    assert segment.ui.statusLabel.text.startswith("Not started")
    assert str(error) in gui.dialogs.confirms[-1]
    gui.dialogs.answer = True  # "Yes": run again with the confirmation
    segment.ui.segmentButton.click()
    assert calls == [False, False, True] and segment._task is record.task
