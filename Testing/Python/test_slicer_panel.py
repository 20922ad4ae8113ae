"""The panels' Qt-free logic (issue 11, points 6-9, 12, 19): device choices that survive a refill,
one job at a time, one trainer per run folder, process trees, the model list, the PET display,
reloading. Runs under slicer-core; the widgets themselves need a real Slicer."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import slicer  # noqa: E402  (slicer-core)

from vmambax.errors import ConfigError  # noqa: E402
from VMambaXCommon import devices, processes  # noqa: E402
from VMambaXCommon.busy import Busy, BusyGuard  # noqa: E402
from VMambaXCommon.reloading import reload_packages  # noqa: E402
from VMambaXCommon.display import pet_heat_color_node, show_pet_over_ct  # noqa: E402
from VMambaXSegmentLib.logic import VMambaXSegmentLogic  # noqa: E402
from VMambaXTrainLib.logic import TrainingRun, VMambaXTrainLogic, defaultConfig  # noqa: E402
from vmambax.locks import RunLock  # noqa: E402


# -- devices (points 7, 9, 19) ------------------------------------------------------------------
class FakeCombo:
    """QComboBox's behaviour that matters here: clear/addItem/setCurrentIndex emit
    currentIndexChanged unless signals are blocked, and a listener saves the current data."""

    def __init__(self, on_change):
        self.items, self.currentIndex, self._blocked, self._on_change = [], -1, False, on_change

    def blockSignals(self, blocked):
        previous, self._blocked = self._blocked, blocked
        return previous

    def _emit(self):
        if not self._blocked:
            self._on_change(self.currentData)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None

    def clear(self):
        self.items, self.currentIndex = [], -1
        self._emit()

    def addItem(self, label, data):
        self.items.append((label, data))
        if self.currentIndex < 0:
            self.currentIndex = 0
            self._emit()

    def findData(self, data):
        return next((i for i, (_l, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        if index != self.currentIndex:
            self.currentIndex = index
            self._emit()


def test_device_labels_are_words_and_gpus_listed_only_when_present():
    assert devices.device_choices(cuda=False, mps=False) == [
        ("auto", "Automatic (GPU if available)"), ("cpu", "CPU")]
    assert devices.device_choices(cuda=True, mps=True) == [
        ("auto", "Automatic (GPU if available)"), ("cpu", "CPU"), ("cuda", "NVIDIA GPU (CUDA)"),
        ("mps", "Apple GPU (MPS)")]
    # This machine: torch's own answers decide.
    import torch

    keys = devices.available_devices()
    assert ("cuda" in keys) == torch.cuda.is_available()
    assert ("mps" in keys) == torch.backends.mps.is_available()
    assert VMambaXSegmentLogic.deviceChoices() == devices.device_choices()


def test_refilling_the_device_list_keeps_the_users_choice():
    saved = {"device": "cpu"}  # the parameter node, as the panel's change handler writes it
    combo = FakeCombo(lambda data: saved.__setitem__("device", data or "auto"))
    devices.refill_choices(combo, devices.device_choices(cuda=False, mps=False), saved["device"])
    assert combo.currentData == "cpu" and saved["device"] == "cpu"
    # After the first dependency install the list is rebuilt (now with the GPU): still "cpu".
    key = devices.refill_choices(combo, devices.device_choices(cuda=True, mps=False), saved["device"])
    assert key == "cpu" and combo.currentData == "cpu" and saved["device"] == "cpu"
    assert [d for _l, d in combo.items] == ["auto", "cpu", "cuda"]
    # A choice no longer offered (scene saved on a GPU machine) falls back to automatic.
    assert devices.refill_choices(combo, devices.device_choices(cuda=False, mps=False), "cuda") == "auto"
    assert combo.currentData == "auto"
    # What the old code did (clear + addItem with signals on) loses the choice: the test's point.
    saved["device"] = "cpu"
    combo.clear()
    for key, label in devices.device_choices(cuda=True, mps=False):
        combo.addItem(label, key)
    assert saved["device"] == "auto"


def test_select_data_selects_by_key_and_leaves_unknown_keys_alone():
    changes = []
    combo = FakeCombo(changes.append)
    devices.refill_choices(combo, devices.device_choices(cuda=True, mps=False), "auto")
    assert devices.select_data(combo, "cuda") and combo.currentData == "cuda"
    assert devices.select_data(combo, "cuda") and changes == ["cuda"]  # no second signal
    assert not devices.select_data(combo, "mps") and combo.currentData == "cuda"


def test_train_default_network_is_nano_without_cuda():
    assert defaultConfig(cuda=False) == "vmambax-nano"
    assert defaultConfig(cuda=True) == "vmambax"
    import torch

    assert defaultConfig() == ("vmambax" if torch.cuda.is_available() else "vmambax-nano")


def test_mps_device_reaches_the_trainer_as_its_accelerator():
    command = VMambaXTrainLogic.trainCommand("/d", "/r", device="mps")
    assert command[command.index("--accelerator") + 1] == "mps"
    from vmambax.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "/d", "--out", "/r", "--accelerator", "mps"])
    assert args.accelerator == "mps"


# -- one job at a time (point 8) ----------------------------------------------------------------
def test_busy_guard_refuses_a_second_job_and_tells_listeners():
    guard, seen = BusyGuard(), []
    guard.add_listener(lambda: seen.append(guard.job))
    with guard.hold("installing Python packages"):
        assert guard.busy
        with pytest.raises(Busy, match="still installing Python packages; wait"):
            guard.acquire("segmenting")
        with pytest.raises(Busy):
            with guard.hold("exporting the cases"):
                pass  # pragma: no cover - never entered
        assert guard.job == "installing Python packages"  # the refused job changed nothing
    assert not guard.busy and seen == ["installing Python packages", None]
    token = guard.acquire("segmenting")
    guard.release(token + 1)  # a stale token does not end someone else's job
    assert guard.busy
    guard.release(token)
    guard.release(token)  # twice is harmless
    assert not guard.busy


def test_busy_guard_is_released_when_the_job_fails():
    guard = BusyGuard()
    with pytest.raises(RuntimeError):
        with guard.hold("segmenting"):
            raise RuntimeError("boom")
    assert not guard.busy


# -- one trainer per run folder (point 8) --------------------------------------------------------
def _sleeper(seconds=60):
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_run_lock_refuses_a_live_holder_and_takes_over_stale_ones(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()  # this process: alive
    with pytest.raises(ConfigError, match=f"already running in {tmp_path}.*process {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    assert not first.path.exists()
    # A lock left by a process that has exited is stale.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first.path.write_text(json.dumps({"pid": dead.pid, "started": None}))
    second = RunLock(tmp_path)
    second.acquire()
    assert json.loads(second.path.read_text())["pid"] == os.getpid()
    second.release()
    # A reused PID (same number, later start time) is stale too; a garbled file is no holder.
    first.path.write_text(json.dumps({"pid": os.getpid(), "started": 1.0}))
    assert RunLock(tmp_path).holder() is None
    first.path.write_text("{not json")
    assert RunLock(tmp_path).holder() is None
    # Another host's lock cannot be checked: it is respected.
    first.path.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(ConfigError, match="on elsewhere"):
        RunLock(tmp_path).acquire()


def test_second_trainer_on_a_run_folder_is_refused_while_the_first_lives(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(VMambaXTrainLogic, "trainCommand",
                        staticmethod(lambda *a, **k: [sys.executable, "-c",
                                                      "import time; time.sleep(60)"]))
    logic = VMambaXTrainLogic()
    run = logic.startTraining(tmp_path / "data", tmp_path / "run")
    try:
        lock = json.loads((tmp_path / "run" / "train.lock").read_text())
        assert lock["pid"] == run.process.pid  # the trainer's PID, not Slicer's
        with pytest.raises(ConfigError, match="already running"):
            logic.startTraining(tmp_path / "data", tmp_path / "run")
        other = logic.startTraining(tmp_path / "data", tmp_path / "other")  # another folder: fine
        other.cancel()
    finally:
        run.cancel()
    assert not (tmp_path / "run" / "train.lock").exists()  # released once the trainer exited
    again = logic.startTraining(tmp_path / "data", tmp_path / "run")
    again.cancel()


# -- processes (point 12) -------------------------------------------------------------------------
LAUNCHER = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(sys.argv[1], "w").write(str(child.pid))
    time.sleep(120)
""")


def _wait_for(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cancel_ends_the_launcher_and_its_child(tmp_path):
    """PythonSlicer is a launcher whose child is the real Python: killing the launcher alone
    left the training running."""
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    with open(tmp_path / "train.log", "ab") as log:
        process = processes.launch([sys.executable, str(script), str(tmp_path / "child.pid")],
                                   stdout=log, cwd=str(tmp_path))
    run = TrainingRun(process, tmp_path, None)
    child = _wait_for(tmp_path / "child.pid")
    assert psutil.pid_exists(child)
    assert not run.cancelled
    run.cancel(timeout=5.0)
    assert run.cancelled and not run.isRunning() and _gone(process.pid)
    assert _gone(child), "the launcher's child survived Cancel"


def test_terminate_tree_kills_what_ignores_terminate(tmp_path):
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text("import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        "open(sys.argv[1], 'w').write('1')\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(stubborn), str(tmp_path / "ready")])
    _wait_for(tmp_path / "ready")
    killed = processes.terminate_tree(proc.pid, timeout=1.0)
    assert killed == [proc.pid] and _gone(proc.pid)
    proc.wait(10)
    assert processes.terminate_tree(proc.pid) == []  # already gone: nothing to do


def test_stop_is_graceful_first_and_overdue_later(tmp_path):
    run = TrainingRun(_sleeper(), tmp_path, None)
    try:
        assert not run.stopOverdue(0.0)
        run.stop()
        assert (tmp_path / "STOP").exists()
        assert not run.stopOverdue(3600.0) and run.stopOverdue(0.0)
    finally:
        run.cancel()
    assert not run.stopOverdue(0.0)  # exited: nothing overdue


def test_console_window_hidden_on_windows_only():
    assert processes.hidden_console_options("posix") == {}

    class FakeStartupInfo:
        dwFlags = 0
        wShowWindow = 1

    class FakeSubprocess:
        STARTUPINFO = FakeStartupInfo

    options = processes.hidden_console_options("nt", FakeSubprocess)
    assert options["creationflags"] == 0x08000000  # CREATE_NO_WINDOW
    info = options["startupinfo"]
    assert info.dwFlags & 1 and info.wShowWindow == 0  # STARTF_USESHOWWINDOW, SW_HIDE


def test_run_command_streams_lines_and_times_out():
    lines = []
    code, output = processes.run_command([sys.executable, "-c", "print('a'); print('b')"],
                                         on_line=lines.append)
    assert code == 0 and lines == ["a", "b"] and output == "a\nb"
    code, output = processes.run_command(
        [sys.executable, "-c", "import sys, time; print('started', flush=True); time.sleep(60)"],
        timeout=1.0)
    assert code == -1 and output.startswith("started") and "stopped after 1 s" in output


# -- the model list (point 6) ---------------------------------------------------------------------
def test_registered_user_model_is_listed_and_can_be_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("VMAMBAX_HOME", str(tmp_path / "home"))
    from vmambax.infer.registry import add_user_model
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file

    path = tmp_path / "mine.pt"
    save_model_file(path, build_model("vmambax-nano").eval(), config_name="vmambax-nano",
                    preprocessing={"image_size": 128}, metadata={})
    logic = VMambaXSegmentLogic()
    shipped = [name for name, _ in logic.availableModels()]
    assert logic.userModelNames() == set()
    add_user_model("my-run", path, description="trained in 3D Slicer")  # what VMambaX Train does
    assert [n for n, _ in logic.availableModels()] == shipped + ["my-run"]  # what enter() lists
    assert logic.userModelNames() == {"my-run"}
    logic.removeUserModel("my-run")
    assert [n for n, _ in logic.availableModels()] == shipped
    assert path.is_file()  # the file itself is kept
    if shipped:
        with pytest.raises(ConfigError, match="shipped model and cannot be removed"):
            logic.removeUserModel(shipped[0])


# -- the PET shown over the CT (point 19) ---------------------------------------------------------
def test_pet_fused_over_ct_with_slicers_pet_heat_colours():
    from VMambaXCommon.testing import add_phantom_case

    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)  # adds Slicer's default colour nodes, as the application does
    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    ct, pet, _phantom, _ = add_phantom_case(scene, seed=5, size=64, n_slices=4)
    heat = pet_heat_color_node(scene)
    assert heat.GetName() == "PET-Heat" and heat.IsA("vtkMRMLPETProceduralColorNode")
    before = scene.GetNumberOfNodes()
    show_pet_over_ct(ct, pet)
    assert scene.GetNumberOfNodes() == before  # Slicer's own colour node, not a copy
    assert pet.GetDisplayNode().GetColorNodeID() == heat.GetID()
    for view in views:
        assert view.GetBackgroundVolumeID() == ct.GetID()
        assert view.GetForegroundVolumeID() == pet.GetID()
        assert view.GetForegroundOpacity() == pytest.approx(0.5)
    # A bare scene (no Colors module) gets a PET-Heat node rather than a grey PET.
    bare = slicer.vtkMRMLScene()
    ct2, pet2, _p, _ = add_phantom_case(bare, seed=5, size=64, n_slices=4)
    show_pet_over_ct(ct2, pet2)
    node = bare.GetNodeByID(pet2.GetDisplayNode().GetColorNodeID())
    assert node.GetName() == "PET-Heat" and node.GetTypeAsString() == "PET-Heat"


# -- reloading (point 19) -------------------------------------------------------------------------
def test_reload_packages_picks_up_edited_code(tmp_path, monkeypatch):
    package = tmp_path / "vmx_reload_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text("VALUE = 1\n")
    (package / "user.py").write_text("from vmx_reload_demo.base import VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vmx_reload_demo.user

    assert vmx_reload_demo.user.VALUE == 1
    (package / "base.py").write_text("VALUE = 2\n")
    names = reload_packages("vmx_reload_demo")
    assert set(names) == {"vmx_reload_demo", "vmx_reload_demo.base", "vmx_reload_demo.user"}
    assert sys.modules["vmx_reload_demo.user"].VALUE == 2  # the user module sees the new base
    # Kept modules (the shared busy guard) stay the same object.
    base = sys.modules["vmx_reload_demo.base"]
    assert "vmx_reload_demo.base" not in reload_packages("vmx_reload_demo",
                                                         keep=("vmx_reload_demo.base",))
    assert sys.modules["vmx_reload_demo.base"] is base
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_reloading_the_glue_keeps_the_one_busy_guard_of_the_session(monkeypatch):
    import VMambaXCommon.busy
    import VMambaXCommon.devices

    for name in [n for n in sys.modules if n.startswith("VMambaXCommon")]:
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # other tests keep theirs
    guard, devices_module = VMambaXCommon.busy.SHARED, sys.modules["VMambaXCommon.devices"]
    names = reload_packages("VMambaXCommon")
    assert "VMambaXCommon.devices" in names and "VMambaXCommon.busy" not in names
    assert sys.modules["VMambaXCommon.devices"] is not devices_module  # fresh code
    assert sys.modules["VMambaXCommon.busy"].SHARED is guard


def test_both_widgets_reload_their_lib_and_the_shared_glue():
    root = Path(__file__).resolve().parents[2]
    for module in ("VMambaXSegment", "VMambaXTrain"):
        source = (root / module / f"{module}.py").read_text(encoding="utf-8")
        assert "def onReload(self)" in source
        assert f'reload_packages("VMambaXCommon", "{module}Lib")' in source


# -- the widgets' wiring (static: the widgets need a real Slicer) --------------------------------
def _method_source(module, cls, method):
    import ast

    root = Path(__file__).resolve().parents[2]
    source = (root / module / f"{module}.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    return ast.get_source_segment(source, item)
    raise AssertionError(f"{module}.{cls}.{method} is missing")


def test_widgets_translate_and_end_an_ignored_stop():
    """What test_slicer_widgets cannot show: translatable strings, and the overdue-stop path."""
    root = Path(__file__).resolve().parents[2]
    for module in ("VMambaXSegment", "VMambaXTrain"):
        text = (root / module / f"{module}.py").read_text(encoding="utf-8")
        # 19: translatable strings, with the fallback for Slicers without slicer.i18n.
        assert "from slicer.i18n import tr as _" in text and "except ImportError" in text
        assert 'self.parent.title = _("' in text and "self.parent.helpText = _(" in text
    # 12: a stop the trainer ignores ends its process tree after a grace period.
    assert "run.stopOverdue(STOP_GRACE_S)" in _method_source("VMambaXTrain", "VMambaXTrainWidget",
                                                            "_onTimer")


def test_missing_psutil_is_a_dependency_error_naming_the_install(monkeypatch):
    from vmambax.errors import DependencyError

    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    with pytest.raises(DependencyError, match="pip install psutil"):
        processes.terminate_tree(os.getpid())
    with pytest.raises(DependencyError, match="psutil"):
        processes.require_psutil()
