"""Dependency checks (vmambax.deps) and the first-use install flow of the Slicer modules."""

import re
from pathlib import Path

import pytest

from vmambax import deps
from vmambax.errors import Cancelled, DependencyError

ROOT = Path(__file__).resolve().parents[2]

from VMambaXCommon.install import ensure_dependencies  # noqa: E402

ABSENT = deps.Requirement("vmambax-no-such-package", "vmambax_no_such_package", "1.0", "testing")


def test_core_requirements_match_pyproject():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    declared = dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([^"]+)"', block))
    ours = {r.name: r.minimum for r in deps.CORE}
    ours[deps.TORCH.name] = deps.TORCH.minimum
    assert ours == declared


def test_gpu_extras_match_pyproject_gpu_extra():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    gpu = re.search(r"^gpu = \[(.*?)\]", text, re.M).group(1)
    assert dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([^"]+)"', gpu)) == {
        r.name: r.minimum for r in deps.GPU_EXTRAS}


def test_version_comparison():
    assert deps.version_at_least("2.13.0+cpu", "2.1")
    assert deps.version_at_least("2.1.0", "2.1")
    assert not deps.version_at_least("2.0.1", "2.1")
    assert not deps.version_at_least("1.9", "1.10")


def test_installed_and_missing_packages_are_told_apart():
    assert deps.installed_version(deps.TORCH)  # the test environment has torch
    assert deps.is_satisfied(deps.TORCH)
    assert deps.installed_version(ABSENT) is None
    too_new = deps.Requirement("numpy", "numpy", "999", "testing")
    assert deps.installed_version(too_new) and not deps.is_satisfied(too_new)
    assert deps.missing([ABSENT, too_new, deps.TORCH]) == [ABSENT, too_new]
    assert deps.missing(feature="all") == []  # the test environment is complete
    with pytest.raises(ValueError, match="unknown feature"):
        deps.requirements_for("nothing")


def test_gpu_extras_only_offered_with_cuda():
    assert deps.gpu_extras_missing(cuda=False) == []
    offered = deps.gpu_extras_missing(cuda=True)
    # Offered only when absent; on this CPU machine mamba-ssm is not installed.
    assert {r.name for r in offered} <= {"mamba-ssm", "causal-conv1d"}
    if not deps.is_satisfied(deps.GPU_EXTRAS[0]):
        assert deps.GPU_EXTRAS[0] in offered
    assert deps.check("segment", cuda=False).gpu_extras == []


def test_report_describes_and_commands_are_argument_lists():
    report = deps.DependencyReport("train", False, "2.0.0", False, [ABSENT], [])
    assert not report.ok
    text = report.describe()
    assert "torch>=2.1 (found 2.0.0)" in text and "vmambax-no-such-package>=1.0" in text
    command = deps.install_command([ABSENT, "extra==1"], python="PythonSlicer")
    assert command == ["PythonSlicer", "-m", "pip", "install", "vmambax-no-such-package>=1.0",
                       "extra==1"]


def test_require_names_the_fix(monkeypatch):
    deps.require("segment")  # complete environment: no error
    monkeypatch.setattr(deps, "CORE", deps.CORE + (ABSENT,))
    monkeypatch.setitem(deps.FEATURES, "segment", deps.FEATURES["segment"] + (ABSENT.name,))
    with pytest.raises(DependencyError, match=r"pip install vmambax-no-such-package>=1\.0"):
        deps.require("segment")


def test_is_online_false_for_unreachable_host():
    # Port 9 (discard) on localhost is closed in CI: connection refused at once.
    assert deps.is_online("127.0.0.1", 9, timeout=1.0) is False


def test_install_continues_after_a_failure():
    calls = []

    def pip_install(spec):
        calls.append(spec)
        if spec.startswith("bad"):
            raise RuntimeError("build failed\nerror: no CUDA toolkit")

    bad = deps.Requirement("bad-pkg", "bad_pkg", None, "")
    failures = deps.install([bad, ABSENT], pip_install)
    assert calls == ["bad-pkg", "vmambax-no-such-package>=1.0"]
    assert [r for r, _ in failures] == [bad] and "CUDA" in failures[0][1]


# -- the Slicer first-use flow, with the dialogs/pip replaced by recorders --------------------
class Recorder:
    def __init__(self, answer=True, fail=()):
        self.answer, self.fail = answer, set(fail)
        self.questions, self.installed, self.torch_calls = [], [], 0

    def confirm(self, text):
        self.questions.append(text)
        return self.answer

    def pip_install(self, spec):
        if spec.split(">=")[0] in self.fail:
            raise RuntimeError("pip failed")
        self.installed.append(spec)

    def install_torch(self):
        self.torch_calls += 1


def _missing_core(monkeypatch, *reqs):
    monkeypatch.setattr(deps, "CORE", deps.CORE + tuple(reqs))
    monkeypatch.setitem(deps.FEATURES, "segment",
                        deps.FEATURES["segment"] + tuple(r.name for r in reqs))


def test_nothing_asked_when_complete():
    rec = Recorder()
    notes = ensure_dependencies("segment", confirm=rec.confirm, pip_install=rec.pip_install,
                                install_torch=rec.install_torch, online=lambda: True,
                                offer_gpu_extras=False)
    assert notes == [] and rec.questions == [] and rec.installed == []


def test_missing_package_installed_after_consent(monkeypatch):
    _missing_core(monkeypatch, ABSENT)
    rec = Recorder()
    notes = ensure_dependencies("segment", confirm=rec.confirm, pip_install=rec.pip_install,
                                install_torch=rec.install_torch, online=lambda: True,
                                offer_gpu_extras=False)
    assert len(rec.questions) == 1 and "vmambax-no-such-package>=1.0" in rec.questions[0]
    assert rec.installed == ["vmambax-no-such-package>=1.0"] and rec.torch_calls == 0
    assert "Installed" in notes[0]


def test_declined_install_is_cancelled(monkeypatch):
    _missing_core(monkeypatch, ABSENT)
    rec = Recorder(answer=False)
    with pytest.raises(Cancelled, match="not installed"):
        ensure_dependencies("segment", confirm=rec.confirm, pip_install=rec.pip_install,
                            install_torch=rec.install_torch, online=lambda: True)
    assert rec.installed == []


def test_offline_gives_clear_message_without_asking(monkeypatch):
    _missing_core(monkeypatch, ABSENT)
    rec = Recorder()
    with pytest.raises(DependencyError, match="cannot reach the Python package index") as info:
        ensure_dependencies("segment", confirm=rec.confirm, pip_install=rec.pip_install,
                            install_torch=rec.install_torch, online=lambda: False)
    assert "PythonSlicer -m pip install vmambax-no-such-package>=1.0" in str(info.value)
    assert rec.questions == []


def test_failed_pip_install_lists_package_and_manual_command(monkeypatch):
    _missing_core(monkeypatch, ABSENT)
    rec = Recorder(fail={ABSENT.name})
    with pytest.raises(DependencyError, match="could not install") as info:
        ensure_dependencies("segment", confirm=rec.confirm, pip_install=rec.pip_install,
                            install_torch=rec.install_torch, online=lambda: True)
    assert "PythonSlicer -m pip install vmambax-no-such-package>=1.0" in str(info.value)


def test_torch_comes_from_the_pytorch_extension(monkeypatch):
    state = {"torch": False}
    monkeypatch.setattr(deps, "torch_status", lambda: (state["torch"], None))
    rec = Recorder()

    def install_torch():
        rec.torch_calls += 1
        state["torch"] = True

    ensure_dependencies("segment", confirm=rec.confirm, pip_install=rec.pip_install,
                        install_torch=install_torch, online=lambda: True, offer_gpu_extras=False)
    assert rec.torch_calls == 1 and rec.installed == []  # never "pip install torch"
    assert "PyTorch torch>=2.1" in rec.questions[0]

    state["torch"] = False
    with pytest.raises(DependencyError, match="PyTorch Utils"):
        ensure_dependencies("segment", confirm=rec.confirm, pip_install=rec.pip_install,
                            install_torch=lambda: None, online=lambda: True)


def test_gpu_extras_optional_and_failure_is_only_a_note(monkeypatch):
    monkeypatch.setattr(deps, "gpu_extras_missing", lambda cuda=None: list(deps.GPU_EXTRAS))
    rec = Recorder(fail={"mamba-ssm"})
    notes = ensure_dependencies("segment", confirm=rec.confirm, pip_install=rec.pip_install,
                                install_torch=rec.install_torch, online=lambda: True)
    assert "mamba-ssm and causal-conv1d" in rec.questions[0]
    assert rec.installed == ["causal-conv1d>=1.4"]
    assert any("mamba-ssm could not be installed (optional" in n for n in notes)
    # Declining the optional extras is fine too.
    rec = Recorder(answer=False)
    assert ensure_dependencies("segment", confirm=rec.confirm, pip_install=rec.pip_install,
                               install_torch=rec.install_torch, online=lambda: True) == []
