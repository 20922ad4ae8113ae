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
- packages Slicer ships or another extension owns (torch, SimpleITK, numpy, requests, ...:
  ``SLICER_BUNDLED``) are never installed, upgraded or replaced: each package is installed with
  ``--no-deps`` and its missing requirements one by one without those (as SlicerNNUNet and
  SlicerTotalSegmentator do), and a note says when Slicer must be restarted (a package it had
  loaded changed version);
- mamba-ssm / causal-conv1d (a 10-30 minute CUDA build) are never offered here: that is the
  separate, cancellable "Install GPU acceleration" action (``VMambaXCommon.gpu_install``).

``ensure_dependencies`` takes pip and the dialogs as arguments so it is tested without Slicer;
``ensure_dependencies_in_slicer`` wires it to Slicer's dialogs, PythonSlicer's pip and the
PyTorch extension.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import sys
from typing import Callable

from vmambax import deps
from vmambax.errors import Cancelled, DependencyError

RunPip = Callable[..., "tuple[int, str]"]  # run_pip(args, timeout=None) -> (returncode, output)

# Packages VMambaX never lets pip install, upgrade or replace inside Slicer (as SlicerNNUNet and
# SlicerTotalSegmentator leave theirs alone), with why. Each package is installed with
# --no-deps, then those of its requirements that are missing, one by one, minus these.
SLICER_BUNDLED = {
    "torch": "comes from the PyTorch extension, which picks the build for the GPU driver",
    "torchvision": "belongs to the PyTorch extension's torch",
    "triton": "belongs to the PyTorch extension's CUDA torch",
    "simpleitk": "Slicer's own build carries Slicer's image IO",
    "numpy": "Slicer, VTK and ITK are built against the numpy Slicer ships",
    "vtk": "Slicer's own",
    "requests": "Slicer uses it: replacing it needs a restart",
    "pip": "Slicer's own", "setuptools": "Slicer's own", "wheel": "Slicer's own",
}


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def install_selectively(spec: str, run_pip: RunPip, options=(), skip=SLICER_BUNDLED,
                        requires=None, satisfied=None, log=None, _seen=None) -> list[str]:
    """``pip install --no-deps spec``, then its missing requirements the same way, never one
    of ``skip``; returns the requirements left to Slicer (``name>=x``, for the log).

    ``requires(name)``: the installed distribution's requirement strings (default
    ``importlib.metadata.requires``); ``satisfied(requirement)``: already installed and new
    enough. Raises DependencyError with pip's own words when pip fails.
    """
    from packaging.requirements import Requirement

    requires = requires or _installed_requirements
    satisfied = satisfied or _satisfied
    seen = set() if _seen is None else _seen
    name = canonical_name(Requirement(spec).name)
    seen.add(name)
    if log:
        log(f"Installing {spec} (without its dependencies; those follow one by one)")
    code, output = run_pip(["install", *options, "--no-deps", spec])
    if code != 0:
        raise DependencyError(deps.pip_error_summary(output) or f"pip exited with status {code}")
    left = []
    for text in requires(name):
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another platform's, or an optional extra's
        other = canonical_name(req.name)
        if other in skip:
            left.append(f"{req.name}{req.specifier}")
            if log:
                log(f"  {req.name}{req.specifier}: left as it is ({skip[other]})")
            continue
        if other in seen or satisfied(req):
            continue
        req.marker = None
        left += install_selectively(str(req), run_pip, options, skip, requires, satisfied, log,
                                    seen)
    return left


def _installed_requirements(name: str) -> list[str]:
    try:
        return list(importlib.metadata.requires(name) or [])
    except importlib.metadata.PackageNotFoundError:
        return []


def _satisfied(req) -> bool:
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return req.specifier.contains(version, prereleases=True)


def loaded_distributions(modules=None) -> dict[str, str]:
    """``{distribution: version}`` of the installed packages one of whose modules this process
    has imported: replacing one of those needs a restart before the new one is used."""
    mapping = importlib.metadata.packages_distributions()  # top-level module -> distributions
    tops = {name.split(".")[0] for name in (sys.modules if modules is None else modules)}
    found = {}
    for top in tops & set(mapping):
        for dist in mapping[top]:
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
    return found


def restart_note(before: dict[str, str]) -> str | None:
    """The "restart Slicer" note when a package that was loaded changed version, else None."""
    changed = []
    for dist, old in sorted(before.items()):
        try:
            new = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            new = "removed"
        if new != old:
            changed.append(f"{dist} {old} -> {new}")
    if not changed:
        return None
    return ("Restart Slicer: these packages changed while Slicer had them loaded: "
            f"{', '.join(changed)}. Segmentations run in a process of their own and already "
            f"use the new versions; the rest of Slicer uses them after the restart.")


def _manual_command(requirements, options=()) -> str:
    return " ".join(deps.install_command(requirements, python="PythonSlicer", options=options))


def pip_installer(run_pip: RunPip, options=(), log=None) -> Callable[[str], None]:
    """``install(spec)`` running ``pip install`` through ``run_pip``, package by package and
    never touching ``SLICER_BUNDLED`` (``install_selectively``); raises DependencyError
    carrying pip's own error lines."""

    def install(spec: str) -> None:
        install_selectively(spec, run_pip, options, log=log)

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
                        progress: Callable[[float, str], None] | None = None,
                        torch_build: Callable[[], deps.TorchBuild] = deps.torch_build) -> list[str]:
    """Make sure torch and ``feature``'s packages are importable; return notes for the user.

    The optional GPU scan (mamba-ssm) is never offered here: its 10-30 minute build is the
    separate "Install GPU acceleration" action (``VMambaXCommon.gpu_install``).
    Raises ``Cancelled`` when the user declines, ``DependencyError`` when something required
    could not be installed (the message gives pip's error and how to install it by hand).
    """
    notes: list[str] = []
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
        loaded = loaded_distributions()
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
        restart = restart_note(loaded)
        if restart:
            notes.append(restart)
    warning = deps.cpu_torch_on_nvidia_machine(torch_build())
    if warning:
        notes.append(warning)
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


def probed_torch_build(pump=None) -> deps.TorchBuild:
    """What ``deps.torch_build`` says, asked in a child process (the device probe) so that
    Slicer's own process never imports torch; ``pump`` keeps Slicer painting meanwhile."""
    from VMambaXCommon.devices import PROBE

    info = PROBE.start(force=True).wait(pump=pump) or {}
    return deps.TorchBuild(version=info.get("torch"), cuda_version=info.get("cuda_version"),
                           cuda_available=bool(info.get("cuda")),
                           platform=info.get("platform") or sys.platform,
                           nvidia_gpu=bool(info.get("nvidia_gpu", deps.nvidia_gpu_present())))


def ensure_dependencies_in_slicer(feature: str) -> list[str]:
    """``ensure_dependencies`` with Slicer's dialogs, PythonSlicer's pip and the PyTorch extension."""
    import slicer

    def confirm(text: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(text, windowTitle="VMambaX: Python packages")

    def progress(_fraction: float, message: str) -> None:
        slicer.util.showStatusMessage(message, 3000)
        slicer.app.processEvents()

    run_pip = slicer_pip_runner(on_line=lambda _line: slicer.app.processEvents())
    return ensure_dependencies(feature, confirm=confirm, run_pip=run_pip,
                               install_torch=_install_torch_with_pytorch_extension,
                               progress=progress,
                               torch_build=lambda: probed_torch_build(slicer.app.processEvents))
