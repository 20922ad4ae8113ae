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
    assert "torch>=2.5 (found 2.0.0)" in text and "vmambax-no-such-package>=1.0" in text
    command = deps.install_command([ABSENT, "extra==1"], python="PythonSlicer")
    assert command == ["PythonSlicer", "-m", "pip", "install", "vmambax-no-such-package>=1.0",
                       "extra==1"]


def test_require_names_the_fix(monkeypatch):
    deps.require("segment")  # complete environment: no error
    monkeypatch.setattr(deps, "CORE", deps.CORE + (ABSENT,))
    monkeypatch.setitem(deps.FEATURES, "segment", deps.FEATURES["segment"] + (ABSENT.name,))
    with pytest.raises(DependencyError, match=r"pip install vmambax-no-such-package>=1\.0"):
        deps.require("segment")


def test_index_probe_is_pip_with_a_short_timeout_and_no_index_url_of_ours():
    calls = []

    def run_pip(args, timeout=None):
        calls.append((args, timeout))
        return 0, "numpy (2.0)"

    assert deps.probe_index(run_pip, ABSENT) is None
    (args, timeout), = calls
    assert args[:3] == ["index", "versions", ABSENT.name]
    assert args[args.index("--timeout") + 1] == str(deps.PROBE_TIMEOUT_S)
    assert args[args.index("--retries") + 1] == "0"
    assert timeout is not None  # a stuck pip is ended too
    assert not any("index-url" in a or "pypi.org" in a for a in args)  # pip's configuration rules


def test_index_probe_reports_pips_error_and_tolerates_an_old_pip():
    said = deps.probe_index(lambda args, timeout=None: (1, (
        "Fetching project page and analyzing links: http://mirror.local/simple/x/\n"
        "  some detail\n"
        "Could not fetch URL http://mirror.local/simple/x/: connection error: [Errno 111] "
        "Connection refused - skipping\nERROR: No matching distribution found for x")), "x")
    assert said.splitlines() == [
        "Could not fetch URL http://mirror.local/simple/x/: connection error: [Errno 111] "
        "Connection refused - skipping", "ERROR: No matching distribution found for x"]
    # pip before 21.2 has no "pip index": the install itself will tell.
    assert deps.probe_index(lambda args, timeout=None: (1, 'ERROR: unknown command "index"'),
                            "x") is None


@pytest.fixture
def unreachable_pip_config(tmp_path, monkeypatch):
    """pip set up (pip.conf) for an internal mirror that does not answer (closed local port)."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://127.0.0.1:9/mirror/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    return conf


def test_real_pip_probe_follows_pip_config_and_pip_index_url(unreachable_pip_config, monkeypatch):
    from VMambaXCommon.install import slicer_pip_runner

    run_pip = slicer_pip_runner()  # the runner Slicer uses (here: this Python's pip)
    said = deps.probe_index(run_pip, "vmambax-no-such-package")
    assert said is not None and "127.0.0.1:9/mirror/simple" in said  # pip.conf's index
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/other/simple")
    said = deps.probe_index(run_pip, "vmambax-no-such-package")
    assert "127.0.0.1:9/other/simple" in said  # the environment overrides pip.conf, as in pip


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
    """The user's answers, pip (``run_pip(args)``) and the PyTorch extension, recorded."""

    def __init__(self, answer=True, fail=(), index_error=None):
        self.answer, self.fail, self.index_error = answer, set(fail), index_error
        self.questions, self.installed, self.options, self.probes = [], [], [], []
        self.torch_calls = 0

    def confirm(self, text):
        self.questions.append(text)
        return self.answer

    def run_pip(self, args, timeout=None):
        if args[0] == "index":
            self.probes.append(args[2])
            return (1, self.index_error) if self.index_error else (0, f"{args[2]} (1.0)")
        assert args[0] == "install"
        spec = args[-1]
        if spec.split(">=")[0] in self.fail:
            return 1, ("Collecting x\n  error: subprocess-exited-with-error\n"
                       "ERROR: Failed building wheel for " + spec.split(">=")[0])
        self.installed.append(spec)
        self.options.append(args[1:-1])
        return 0, "Successfully installed"

    def install_torch(self):
        self.torch_calls += 1

    def kwargs(self, **extra):
        extra.setdefault("torch_build", lambda: CPU_MACHINE)
        return dict(confirm=self.confirm, run_pip=self.run_pip, install_torch=self.install_torch,
                    **extra)


CPU_MACHINE = deps.TorchBuild("2.13.0+cpu", None, False, "linux", nvidia_gpu=False)
LINUX_CUDA = deps.TorchBuild("2.13.0+cu128", "12.8", True, "linux", nvidia_gpu=True)


def _missing_core(monkeypatch, *reqs):
    monkeypatch.setattr(deps, "CORE", deps.CORE + tuple(reqs))
    monkeypatch.setitem(deps.FEATURES, "segment",
                        deps.FEATURES["segment"] + tuple(r.name for r in reqs))


def test_nothing_asked_when_complete():
    rec = Recorder()
    notes = ensure_dependencies("segment", **rec.kwargs())
    assert notes == [] and rec.questions == [] and rec.installed == []


def test_missing_package_installed_after_consent(monkeypatch):
    _missing_core(monkeypatch, ABSENT)
    rec = Recorder()
    notes = ensure_dependencies("segment", **rec.kwargs())
    assert len(rec.questions) == 1 and "vmambax-no-such-package>=1.0" in rec.questions[0]
    assert rec.installed == ["vmambax-no-such-package>=1.0"] and rec.torch_calls == 0
    assert "Installed" in notes[0]


def test_declined_install_is_cancelled(monkeypatch):
    _missing_core(monkeypatch, ABSENT)
    rec = Recorder(answer=False)
    with pytest.raises(Cancelled, match="not installed"):
        ensure_dependencies("segment", **rec.kwargs())
    assert rec.installed == []


def test_unreachable_index_gives_pips_error_without_asking(monkeypatch):
    _missing_core(monkeypatch, ABSENT)
    rec = Recorder(index_error=(
        "Could not fetch URL https://mirror.example/simple/vmambax-no-such-package/: connection "
        "error: HTTPSConnectionPool: Max retries exceeded (Caused by ProxyError('Unable to "
        "connect to proxy'))\nERROR: No matching distribution found for vmambax-no-such-package"))
    with pytest.raises(DependencyError, match="pip cannot get them from the package index") as info:
        ensure_dependencies("segment", **rec.kwargs())
    text = str(info.value)
    assert "ProxyError" in text and "mirror.example" in text  # pip's own words
    assert "PIP_INDEX_URL" in text and "--no-index --find-links FOLDER" in text
    assert "PythonSlicer -m pip install vmambax-no-such-package>=1.0" in text
    assert rec.questions == [] and rec.probes == [ABSENT.name]


def test_failed_pip_install_lists_package_pips_error_and_manual_command(monkeypatch):
    _missing_core(monkeypatch, ABSENT)
    rec = Recorder(fail={ABSENT.name})
    with pytest.raises(DependencyError, match="could not install") as info:
        ensure_dependencies("segment", **rec.kwargs())
    assert "PythonSlicer -m pip install vmambax-no-such-package>=1.0" in str(info.value)
    assert "ERROR: Failed building wheel for vmambax-no-such-package" in str(info.value)


def test_torch_comes_from_the_pytorch_extension(monkeypatch):
    state = {"torch": False}
    monkeypatch.setattr(deps, "torch_status", lambda: (state["torch"], None))
    rec = Recorder()

    def install_torch():
        rec.torch_calls += 1
        state["torch"] = True

    ensure_dependencies("segment", **{**rec.kwargs(),
                                      "install_torch": install_torch})
    assert rec.torch_calls == 1 and rec.installed == []  # never "pip install torch"
    assert "PyTorch torch>=2.5" in rec.questions[0]

    state["torch"] = False
    with pytest.raises(DependencyError, match="PyTorch Utils"):
        ensure_dependencies("segment", **{**rec.kwargs(), "install_torch": lambda: None})


@pytest.fixture
def extras_absent(monkeypatch):
    monkeypatch.setattr(deps, "is_satisfied", lambda req: req not in deps.GPU_EXTRAS)


@pytest.mark.parametrize("build", [
    CPU_MACHINE,
    deps.TorchBuild("2.13.0", "12.8", True, "win32", nvidia_gpu=True),  # no Windows wheels
    deps.TorchBuild("2.13.0", None, False, "darwin", nvidia_gpu=False),
    deps.TorchBuild("2.13.0+rocm6.2", None, True, "linux", nvidia_gpu=False),  # ROCm: no CUDA
    deps.TorchBuild("2.13.0+cu128", "12.8", False, "linux", nvidia_gpu=False),  # no GPU seen
])
def test_gpu_extras_supported_only_on_linux_with_a_cuda_torch(build, extras_absent):
    from VMambaXCommon.gpu_install import unsupported_reason

    assert not deps.gpu_extras_supported(build) and deps.gpu_extras_missing(build=build) == []
    info = {"torch": build.version, "cuda": build.cuda_available,
            "cuda_version": build.cuda_version, "platform": build.platform}
    assert unsupported_reason(info)  # the panel's button says why it is off
    assert deps.gpu_extras_supported(LINUX_CUDA)
    assert deps.gpu_extras_missing(build=LINUX_CUDA) == list(deps.GPU_EXTRAS)
    assert unsupported_reason({"torch": "2.13.0", "cuda": True, "cuda_version": "12.8",
                               "platform": "linux"}) is None


def test_the_gpu_scan_build_is_never_offered_by_the_first_use_install(monkeypatch):
    """Issue 17.3: even on Linux with a CUDA torch and the extras missing, a Segment click's
    install asks nothing about mamba-ssm and builds nothing."""
    _missing_core(monkeypatch, ABSENT)
    monkeypatch.setattr(deps, "is_satisfied", lambda req: req not in deps.GPU_EXTRAS + (ABSENT,))
    rec = Recorder()
    ensure_dependencies("segment", **rec.kwargs(torch_build=lambda: LINUX_CUDA))
    assert len(rec.questions) == 1 and "mamba-ssm" not in rec.questions[0]
    assert rec.installed == ["vmambax-no-such-package>=1.0"]
    assert rec.options == [["--no-deps"]]  # each package alone; its requirements follow


def test_pip_skips_the_packages_slicer_bundles_and_installs_the_rest_one_by_one():
    from VMambaXCommon.install import SLICER_BUNDLED, install_selectively

    assert {"torch", "simpleitk", "requests", "numpy"} <= set(SLICER_BUNDLED)
    metadata = {"mamba-ssm": ["torch", "packaging", "ninja", "einops", "triton",
                              "transformers", "causal-conv1d>=1.4; extra == 'causal-conv1d'",
                              "pywin32; sys_platform == 'win32'"],
                "transformers": ["numpy>=1.17", "requests", "tokenizers>=0.19", "einops"],
                "einops": [], "ninja": [], "tokenizers": []}
    calls, log = [], []

    def run_pip(args, timeout=None):
        calls.append(args)
        return 0, "Successfully installed"

    left = install_selectively("mamba-ssm>=2.2", run_pip, options=("--no-build-isolation",),
                               requires=lambda name: metadata.get(name, []),
                               satisfied=lambda req: req.name == "packaging", log=log.append)
    installed = [a[-1] for a in calls]
    assert installed == ["mamba-ssm>=2.2", "ninja", "einops", "transformers", "tokenizers>=0.19"]
    assert all(a[:3] == ["install", "--no-build-isolation", "--no-deps"] for a in calls)
    assert sorted(left) == ["numpy>=1.17", "requests", "torch", "triton"]
    assert any("torch: left as it is (comes from the PyTorch extension" in line for line in log)

    def fail(args, timeout=None):
        return 1, "ERROR: Failed building wheel for mamba-ssm"

    with pytest.raises(DependencyError, match="Failed building wheel"):
        install_selectively("mamba-ssm", fail, requires=lambda name: [])


def test_a_restart_is_asked_for_only_when_a_loaded_package_changed(monkeypatch):
    from VMambaXCommon import install

    loaded = install.loaded_distributions({"numpy": None, "numpy.linalg": None, "json": None})
    assert set(loaded) == {"numpy"}
    assert install.restart_note(loaded) is None  # nothing changed
    note = install.restart_note({"numpy": "0.0.1"})
    assert note.startswith("Restart Slicer") and "numpy 0.0.1 -> " in note


def test_cpu_torch_on_an_nvidia_machine_is_pointed_out_with_the_fix():
    cpu_on_gpu = deps.TorchBuild("2.13.0+cpu", None, False, "linux", nvidia_gpu=True)
    rec = Recorder()
    notes = ensure_dependencies("segment", **rec.kwargs(torch_build=lambda: cpu_on_gpu))
    assert len(notes) == 1 and "CPU-only build" in notes[0] and "NVIDIA GPU" in notes[0]
    assert "PyTorch Utils" in notes[0] and "uninstall PyTorch, install it again" in notes[0]
    assert deps.cpu_torch_on_nvidia_machine(CPU_MACHINE) is None
    assert deps.cpu_torch_on_nvidia_machine(LINUX_CUDA) is None


def test_nvidia_driver_detected_without_torch():
    assert deps.nvidia_gpu_present(which=lambda name: "/usr/bin/nvidia-smi", exists=lambda p: False)
    assert deps.nvidia_gpu_present(which=lambda name: None,
                                   exists=lambda p: p == "/proc/driver/nvidia/version")
    assert not deps.nvidia_gpu_present(which=lambda name: None, exists=lambda p: False)
    build = deps.torch_build()  # this machine: a CPU torch
    import torch

    assert build.version and build.cuda_version == torch.version.cuda


def test_the_cpu_torch_check_asks_the_device_probe_not_torch_in_slicer(monkeypatch):
    """In Slicer the torch build is read from the probe's child process (no torch import in
    Slicer's process); the window keeps painting while it answers."""
    import json
    import sys

    from VMambaXCommon import devices, install

    answer = {"event": "devices", "torch": "2.13.0+cpu", "cuda": False, "cuda_version": None,
              "mps": False, "platform": "linux", "nvidia_gpu": True}
    probe = devices.DeviceProbe(command=[sys.executable, "-c", f"print({json.dumps(answer)!r})"])
    monkeypatch.setattr(devices, "PROBE", probe)
    pumped = []
    build = install.probed_torch_build(pump=lambda: pumped.append(1))
    assert build == deps.TorchBuild("2.13.0+cpu", None, False, "linux", nvidia_gpu=True)
    assert deps.cpu_torch_on_nvidia_machine(build)  # the warning the user then reads
    assert pumped  # the GUI was kept alive while the child answered
