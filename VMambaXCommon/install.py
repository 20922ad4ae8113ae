"""First-use dependency setup for the VMambaX modules: check, ask, install, explain.

What SlicerTotalSegmentator / MONAI Auto3DSeg users run into, and what this does about it:
- a CPU-only or CUDA-mismatched torch from a plain ``pip install torch``: torch comes from the
  PyTorch extension (``PyTorchUtils``), which picks the wheel for the installed driver; a CPU
  torch on a computer with an NVIDIA GPU is pointed out, with how to fix it;
- failed installs that leave nothing usable: every package is installed on its own, failures
  are listed with pip's own error and the exact command to run by hand;
- offline machines, proxies and internal mirrors: pip itself is asked first, with a short
  timeout (``vmambax.deps.probe_index``), so pip's configuration (``pip.conf``,
  ``PIP_INDEX_URL``, proxy variables) decides where packages come from, and pip's error is
  shown; no index URL is hard-coded and no raw connection is made;
- mamba-ssm / causal-conv1d: optional, offered only on Linux with a CUDA build of torch,
  built with ``--no-build-isolation`` against that torch; "Don't ask again" is remembered in a
  settings store (Slicer: QSettings, passed in by the widget); a failure is a note, not an
  error (VMambaX falls back to its PyTorch selective scan).

``ensure_dependencies`` takes pip, the dialogs and the settings as arguments so it is tested
without Slicer; ``ensure_dependencies_in_slicer`` wires it to Slicer's dialogs, PythonSlicer's
pip and the PyTorch extension.
"""

from __future__ import annotations

import logging
from typing import Callable

from vmambax import deps
from vmambax.errors import Cancelled, DependencyError

GPU_EXTRAS_QUESTION = (
    "Optional speed-up for your NVIDIA GPU: install {names}?\n\n"
    "They compile CUDA code, which needs the CUDA toolkit and can take 10-30 minutes. VMambaX "
    "works without them (a slower PyTorch selective scan is used).")
GPU_EXTRAS_SETTING = "VMambaX/GpuExtrasPrompt"  # "never": the user chose "Don't ask again"
GPU_ANSWERS = ("install", "later", "never")

RunPip = Callable[..., "tuple[int, str]"]  # run_pip(args, timeout=None) -> (returncode, output)


class MemorySettings:
    """A settings store in a dict (scripts, tests); Slicer passes one backed by QSettings."""

    def __init__(self, values=None):
        self.values = dict(values or {})

    def get(self, key, default=None):
        return self.values.get(key, default)

    def set(self, key, value):
        self.values[key] = value


def _manual_command(requirements, options=()) -> str:
    return " ".join(deps.install_command(requirements, python="PythonSlicer", options=options))


def pip_installer(run_pip: RunPip, options=()) -> Callable[[str], None]:
    """``install(spec)`` running ``pip install`` through ``run_pip``; raises DependencyError
    carrying pip's own error lines."""

    def install(spec: str) -> None:
        code, output = run_pip(["install", *options, spec])
        if code != 0:
            raise DependencyError(deps.pip_error_summary(output) or f"pip exited with status {code}")

    return install


def _unreachable_message(report, needed, pip_said: str) -> str:
    return (f"VMambaX needs these Python packages, which are not installed yet:\n"
            f"{report.describe()}\n\npip cannot get them from the package index it is set up "
            f"to use (pip.conf, PIP_INDEX_URL and proxy settings apply). pip said:\n{pip_said}\n\n"
            f"Check the network or proxy settings and try again, or install them offline from "
            f"downloaded wheel files: {_manual_command(needed)} --no-index --find-links FOLDER "
            f"(PyTorch: install the PyTorch extension and use its PyTorch Utils module).")


def ensure_dependencies(feature: str, *, confirm: Callable[[str], bool], run_pip: RunPip,
                        install_torch: Callable[[], None],
                        ask_gpu_extras: Callable[[str], str] | None = None,
                        settings=None, offer_gpu_extras: bool = True,
                        progress: Callable[[float, str], None] | None = None,
                        torch_build: Callable[[], deps.TorchBuild] = deps.torch_build) -> list[str]:
    """Make sure torch and ``feature``'s packages are importable; return notes for the user.

    ``ask_gpu_extras(question)`` answers "install", "later" or "never" (never: remembered in
    ``settings`` under ``GPU_EXTRAS_SETTING``); without it ``confirm`` is asked (no "never").
    Raises ``Cancelled`` when the user declines, ``DependencyError`` when something required
    could not be installed (the message gives pip's error and how to install it by hand).
    """
    notes: list[str] = []
    settings = settings if settings is not None else MemorySettings()
    report = deps.check(feature, cuda=False)  # no torch import before torch is known to be there
    if not report.ok:
        needed = ([deps.TORCH] if not report.torch_ok else []) + report.missing
        if report.missing:  # pip's view of its index, before asking (torch: PyTorch extension)
            pip_said = deps.probe_index(run_pip, report.missing[0])
            if pip_said is not None:
                raise DependencyError(_unreachable_message(report, needed, pip_said))
        if not confirm("VMambaX needs these Python packages, which are not installed yet:\n\n"
                       f"{report.describe()}\n\nInstall them now? This downloads several hundred "
                       "MB and can take a few minutes; Slicer may be unresponsive meanwhile."):
            raise Cancelled("the required Python packages were not installed; VMambaX cannot run "
                            "without them. Press the button again to install them")
        if not report.torch_ok:
            if progress:
                progress(0.0, "Installing PyTorch (PyTorch extension)")
            install_torch()
            torch_ok, version = deps.torch_status()
            if not torch_ok:
                found = f" (found {version})" if version else ""
                raise DependencyError(
                    f"PyTorch {deps.TORCH.spec} is still not available{found}. Open the PyTorch "
                    f"Utils module, uninstall PyTorch if it is older, install it again, restart "
                    f"Slicer, and retry")
        failures = deps.install(report.missing, pip_installer(run_pip), progress)
        if failures:
            lines = "\n".join(f"- {req.spec}: {message}" for req, message in failures)
            raise DependencyError(
                f"could not install:\n{lines}\n\nThe Python console has pip's full output. "
                f"Install them by hand with: {_manual_command([r for r, _ in failures])}, then "
                f"restart Slicer")
        notes.append("Installed: " + ", ".join(r.spec for r in needed))
    build = torch_build()
    warning = deps.cpu_torch_on_nvidia_machine(build)
    if warning:
        notes.append(warning)
    if offer_gpu_extras:
        notes += _offer_gpu_extras(build, run_pip, confirm, ask_gpu_extras, settings, progress)
    return notes


def _offer_gpu_extras(build, run_pip, confirm, ask_gpu_extras, settings, progress) -> list[str]:
    if settings.get(GPU_EXTRAS_SETTING) == "never":
        return []
    extras = deps.gpu_extras_missing(build=build)
    if not extras:
        return []
    question = GPU_EXTRAS_QUESTION.format(names=" and ".join(r.name for r in extras))
    if ask_gpu_extras is not None:
        answer = ask_gpu_extras(question)
    else:
        answer = "install" if confirm(question) else "later"
    if answer not in GPU_ANSWERS:
        raise ValueError(f"ask_gpu_extras answered {answer!r}; expected one of {GPU_ANSWERS}")
    if answer == "never":
        settings.set(GPU_EXTRAS_SETTING, "never")
        return []
    if answer == "later":
        return []
    options = deps.GPU_EXTRAS_PIP_OPTIONS
    notes = []
    pip_said = deps.probe_index(run_pip, extras[0])
    if pip_said is not None:
        return [f"The optional CUDA kernels were not installed: pip cannot reach its package "
                f"index ({pip_said}). To install them later: {_manual_command(extras, options)}"]
    failures = deps.install(extras, pip_installer(run_pip, options), progress)
    for req, message in failures:
        notes.append(f"{req.name} could not be installed (optional; the PyTorch selective "
                     f"scan is used instead): {message}. To retry by hand: "
                     f"{_manual_command([req], options)}")
    if len(failures) < len(extras):
        notes.append("Installed the CUDA selective-scan kernels; restart Slicer to use them")
    return notes


def _install_torch_with_pytorch_extension() -> None:
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError(
            "PyTorch is not installed and the PyTorch extension is missing. Install 'PyTorch' "
            "from the Extension Manager (View > Extensions Manager), restart Slicer, and try "
            "again") from None
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if not torch_logic.torchInstalled():
        # The user already agreed in our dialog; the extension picks the CUDA/CPU wheel.
        torch = torch_logic.installTorch(askConfirmation=False,
                                         torchVersionRequirement=f">={deps.TORCH.minimum}")
        if torch is None:
            raise DependencyError("installing PyTorch failed or was cancelled; see the Python "
                                  "console, or install it in the PyTorch Utils module")


def slicer_pip_runner(on_line: Callable[[str], None] | None = None) -> RunPip:
    """``run_pip`` running PythonSlicer's pip (Slicer's environment, as ``slicer.util.pip_install``
    does), console hidden, each line logged; ``timeout`` caps the probe."""
    from VMambaXCommon.processes import python_executable, run_command

    def run_pip(args, timeout=None):
        command = [python_executable(), "-m", "pip", *args]
        logging.info("VMambaX: " + " ".join(command))

        def line(text):
            logging.info(f"[pip] {text}")
            if on_line is not None:
                on_line(text)

        return run_command(command, timeout=timeout, on_line=line)

    return run_pip


def ensure_dependencies_in_slicer(feature: str, settings=None, offer_gpu_extras: bool = True,
                                  ask_gpu_extras=None) -> list[str]:
    """``ensure_dependencies`` with Slicer's dialogs, PythonSlicer's pip and the PyTorch extension.

    The widget passes ``settings`` (QSettings-backed) and ``ask_gpu_extras`` (a three-button
    dialog); this module stays free of Qt.
    """
    import slicer

    def confirm(text: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(text, windowTitle="VMambaX: Python packages")

    def progress(_fraction: float, message: str) -> None:
        slicer.util.showStatusMessage(message, 3000)
        slicer.app.processEvents()

    run_pip = slicer_pip_runner(on_line=lambda _line: slicer.app.processEvents())
    return ensure_dependencies(feature, confirm=confirm, run_pip=run_pip,
                               install_torch=_install_torch_with_pytorch_extension,
                               ask_gpu_extras=ask_gpu_extras, settings=settings,
                               offer_gpu_extras=offer_gpu_extras, progress=progress)
