"""First-use dependency setup for the VMambaX modules: check, ask, install, explain.

What SlicerTotalSegmentator / MONAI Auto3DSeg users run into, and what this does about it:
- a CPU-only or CUDA-mismatched torch from a plain ``pip install torch``: torch comes from the
  PyTorch extension (``PyTorchUtils``), which picks the wheel for the installed driver;
- failed installs that leave nothing usable: every package is installed on its own, failures
  are listed with the exact command to run by hand;
- offline machines: detected before trying, with a message that says how to install offline;
- mamba-ssm / causal-conv1d: optional, only offered where CUDA is present, and a failure there
  is a note, not an error (VMambaX falls back to its PyTorch selective scan).

``ensure_dependencies`` takes the UI actions as arguments so it is tested without Slicer;
``ensure_dependencies_in_slicer`` wires it to Slicer's dialogs, pip and the PyTorch extension.
"""

from __future__ import annotations

from typing import Callable

from vmambax import deps
from vmambax.errors import Cancelled, DependencyError

GPU_EXTRAS_QUESTION = (
    "Optional speed-up for your NVIDIA GPU: install {names}?\n\n"
    "They compile CUDA code, which needs the CUDA toolkit and can take 10-30 minutes. VMambaX "
    "works without them (a slower PyTorch selective scan is used).")


def _manual_command(requirements) -> str:
    return " ".join(deps.install_command(requirements, python="PythonSlicer"))


def ensure_dependencies(feature: str, *, confirm: Callable[[str], bool],
                        pip_install: Callable[[str], None],
                        install_torch: Callable[[], None],
                        online: Callable[[], bool] = deps.is_online,
                        offer_gpu_extras: bool = True,
                        progress: Callable[[float, str], None] | None = None) -> list[str]:
    """Make sure torch and ``feature``'s packages are importable; return notes for the user.

    Raises ``Cancelled`` when the user declines, ``DependencyError`` when something required
    could not be installed (the message lists what and how to install it by hand).
    """
    notes: list[str] = []
    report = deps.check(feature, cuda=False)  # no torch import before torch is known to be there
    if not report.ok:
        needed = ([deps.TORCH] if not report.torch_ok else []) + report.missing
        if not online():
            raise DependencyError(
                f"VMambaX needs these Python packages, and this computer cannot reach the Python "
                f"package index (pypi.org) to install them:\n{report.describe()}\n\nConnect to the "
                f"internet and try again, or install them offline from downloaded wheel files: "
                f"{_manual_command(needed)} --no-index --find-links FOLDER "
                f"(PyTorch: install the PyTorch extension and use its PyTorch Utils module).")
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
        failures = deps.install(report.missing, pip_install, progress)
        if failures:
            lines = "\n".join(f"- {req.spec}: {message.splitlines()[-1] if message else ''}"
                              for req, message in failures)
            raise DependencyError(
                f"could not install:\n{lines}\n\nSee the Python console for pip's output. "
                f"Install them by hand with: {_manual_command([r for r, _ in failures])}, then "
                f"restart Slicer")
        notes.append("Installed: " + ", ".join(r.spec for r in needed))
    if offer_gpu_extras:
        extras = deps.gpu_extras_missing()
        if extras and online() and confirm(GPU_EXTRAS_QUESTION.format(
                names=" and ".join(r.name for r in extras))):
            failures = deps.install(extras, pip_install, progress)
            for req, _message in failures:
                notes.append(f"{req.name} could not be installed (optional; the PyTorch selective "
                             f"scan is used instead). To retry by hand: "
                             f"{_manual_command([req])} --no-build-isolation")
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


def ensure_dependencies_in_slicer(feature: str, offer_gpu_extras: bool = True) -> list[str]:
    """``ensure_dependencies`` with Slicer's confirmation dialog, pip and PyTorch extension."""
    import slicer

    def confirm(text: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(text, windowTitle="VMambaX: Python packages")

    def progress(_fraction: float, message: str) -> None:
        slicer.util.showStatusMessage(message, 3000)
        slicer.app.processEvents()

    return ensure_dependencies(feature, confirm=confirm, pip_install=slicer.util.pip_install,
                               install_torch=_install_torch_with_pytorch_extension,
                               offer_gpu_extras=offer_gpu_extras, progress=progress)
