"""The optional "Install GPU acceleration" action (issue 17, point 3): in the background, its log
in the panel, cancellable (the whole pip/compiler tree ends), with a time limit, never part of a
Segment click."""

import sys
import textwrap
import time

import psutil
import pytest

from vmambax import deps
from VMambaXCommon import busy, devices, gpu_install

# A stand-in for "python -m pip ...": prints like pip, starts a "compiler" child and builds
# for a long time, or succeeds at once for "--quick".
FAKE_PIP = textwrap.dedent("""
    import subprocess, sys, time
    print("Collecting", sys.argv[-1], flush=True)
    if "--quick" in sys.argv:
        print("Successfully installed", sys.argv[-1]); sys.exit(0)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print("Building wheel (compiler pid %d)" % child.pid, flush=True)
    time.sleep(120)
""")


REAL_INSTALL = gpu_install.GpuAccelerationInstall


def _installer(tmp_path, quick=False, time_limit_s=120):
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    extra = ["--quick"] if quick else []
    return REAL_INSTALL(
        time_limit_s=time_limit_s,
        pip_command=lambda args: [sys.executable, str(script), *extra, *args])


def _wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _compiler_pid(lines):
    for line in lines:
        if "compiler pid" in line:
            return int(line.split("compiler pid ")[1].rstrip(")"))
    return None


def test_gpu_install_cancel_kills_the_build_tree_and_keeps_the_log(tmp_path):
    job = _installer(tmp_path).start()
    lines = []
    _wait_for(lambda: lines.extend(job.new_lines()) or _compiler_pid(lines))
    compiler = _compiler_pid(lines)
    assert any(line.startswith("$ ") and "causal-conv1d>=1.4" in line for line in lines)
    t0 = time.monotonic()
    job.cancel()
    assert job.wait(10) and time.monotonic() - t0 < 5
    assert job.state == "cancelled" and "Cancelled" in job.message
    assert not psutil.pid_exists(compiler) or psutil.Process(compiler).status() == psutil.STATUS_ZOMBIE


def test_gpu_install_stops_at_its_time_limit(tmp_path):
    job = _installer(tmp_path, time_limit_s=2).start()
    assert job.wait(30)
    assert job.state == "timed out" and "Stopped after" in job.message


def test_gpu_install_installs_causal_conv1d_then_mamba_ssm_without_isolation(tmp_path, monkeypatch):
    from VMambaXCommon import install

    monkeypatch.setattr(install, "_installed_requirements", lambda name: ["torch", "einops"]
                        if name == "mamba-ssm" else [])
    monkeypatch.setattr(install, "_satisfied", lambda req: req.name == "einops")
    job = _installer(tmp_path, quick=True).start()
    assert job.wait(60) and job.state == "done", job.message
    commands = [line for line in job.new_lines() if line.startswith("$ ")]
    assert [c.split()[-1] for c in commands] == ["causal-conv1d>=1.4", "mamba-ssm>=2.2"]
    assert all("--no-build-isolation --no-deps" in c for c in commands)
    assert "next segmentation uses the CUDA selective scan" in job.message


# -- the panel ---------------------------------------------------------------------------------------
@pytest.fixture
def panel(monkeypatch, tmp_path):
    import slicer_fakes

    monkeypatch.setenv("VMAMBAX_HOME", str(tmp_path / "home"))
    env = slicer_fakes.install(monkeypatch)
    monkeypatch.setattr(busy, "SHARED", busy.BusyGuard())
    probe = devices.DeviceProbe(command=[sys.executable, "-c", ""])
    monkeypatch.setattr(devices, "PROBE", probe)
    module = slicer_fakes.import_module_file(monkeypatch, "VMambaXSegment")
    widget = module.VMambaXSegmentWidget()
    widget.setup()
    widget.enter()
    yield env, widget, probe
    widget.cleanup()
    env.scene.Clear(1)


def test_gpu_button_is_offered_only_where_it_can_build_and_says_why_not(panel):
    _env, widget, probe = panel
    probe.info = {"torch": "2.13.0", "cuda": False, "cuda_version": None, "platform": "linux"}
    widget._updateButtons()
    assert not widget.ui.installGpuButton.enabled
    assert "CPU-only" in widget.ui.installGpuButton.toolTip
    probe.info = {"torch": "2.13.0", "cuda": True, "cuda_version": "12.8", "platform": "linux"}
    widget._updateButtons()
    assert widget.ui.installGpuButton.enabled and not widget.ui.cancelGpuButton.enabled


def test_gpu_install_runs_in_the_background_with_its_log_in_the_panel(panel, monkeypatch, tmp_path):
    env, widget, probe = panel
    probe.info = {"torch": "2.13.0", "cuda": True, "cuda_version": "12.8", "platform": "linux"}
    monkeypatch.setattr(gpu_install, "GpuAccelerationInstall",
                        lambda: _installer(tmp_path, time_limit_s=120))
    monkeypatch.setattr(probe, "start", lambda force=False: probe)
    widget._updateButtons()
    widget.ui.installGpuButton.click()
    assert env.dialogs.confirms and "10-30 minutes" in env.dialogs.confirms[-1]
    # Running: VMambaX is busy (no segmentation meanwhile), Cancel is offered, the log fills.
    assert busy.SHARED.busy and widget.ui.cancelGpuButton.enabled
    assert not widget.ui.segmentButton.enabled and not widget.ui.installGpuButton.enabled
    _wait_for(lambda: widget._onGpuTimer() or _compiler_pid(widget.ui.gpuLogTextEdit.lines))
    compiler = _compiler_pid(widget.ui.gpuLogTextEdit.lines)
    widget.ui.cancelGpuButton.click()
    _wait_for(lambda: widget._onGpuTimer() or widget._gpuInstall is None)
    assert not busy.SHARED.busy and "Cancelled" in widget.ui.statusLabel.text
    assert not psutil.pid_exists(compiler) or psutil.Process(compiler).status() == psutil.STATUS_ZOMBIE
    assert widget.ui.installGpuButton.enabled and env.dialogs.errors == []


def test_the_time_limit_and_the_extras_are_what_the_readme_says():
    assert gpu_install.TIME_LIMIT_S == 60 * 60
    assert [r.name for r in gpu_install.GpuAccelerationInstall().requirements] == [
        "causal-conv1d", "mamba-ssm"]
    assert {r.name for r in deps.GPU_EXTRAS} == {"causal-conv1d", "mamba-ssm"}
