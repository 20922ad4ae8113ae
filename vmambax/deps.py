"""Which Python packages VMambaX needs, which are missing, and how to install them.

Qt-free on purpose: the Slicer modules call this to decide what to offer the user on first use
(and then install with ``slicer.util.pip_install`` after consent); the command line and tests use
it too. PyTorch is special: inside Slicer it is installed through the PyTorch extension
(``PyTorchUtils``), which picks the wheel matching the machine's CUDA driver — a plain
``pip install torch`` there is how users end up with a CPU-only or driver-mismatched build.

``mamba-ssm`` and ``causal-conv1d`` are optional speed-ups that only exist for CUDA; they are
offered only where ``torch.cuda.is_available()``, and VMambaX runs without them (chunked PyTorch
selective scan).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import re
import socket
import sys

from vmambax.errors import DependencyError


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One package: its pip (distribution) name, import name, minimum version and purpose."""

    name: str
    import_name: str
    minimum: str | None = None
    purpose: str = ""

    @property
    def spec(self) -> str:
        """The pip requirement string, e.g. ``pytorch-lightning>=2.1``."""
        return f"{self.name}>={self.minimum}" if self.minimum else self.name


TORCH = Requirement("torch", "torch", "2.1", "runs the vMambaX network")

# Supported versions, stated once in the README ("Installing") and kept equal to pyproject's
# requires-python and CMakeLists' VMAMBAX_MINIMUM_SLICER_VERSION (a test checks all four).
# Slicer ships its own Python (Slicer_REQUIRED_PYTHON_VERSION in Slicer's CMakeLists.txt):
# 3.9.10 up to 5.8, 3.12.10 from 5.10 on, so 5.10 is the first release VMambaX runs in.
MINIMUM_PYTHON = (3, 10)
MINIMUM_SLICER = "5.10"
SLICER_PYTHON = {"5.6": (3, 9), "5.8": (3, 9), "5.10": (3, 12), "5.12": (3, 12)}


def require_supported_python(version_info=None) -> None:
    """Raise DependencyError on a Python older than MINIMUM_PYTHON (e.g. inside Slicer 5.8)."""
    version = tuple(version_info if version_info is not None else sys.version_info)[:3]
    if version[:2] < MINIMUM_PYTHON:
        needed = ".".join(map(str, MINIMUM_PYTHON))
        raise DependencyError(
            f"VMambaX needs Python {needed} or later; this is Python "
            f"{'.'.join(map(str, version))}. In 3D Slicer that means Slicer {MINIMUM_SLICER} or "
            f"later (Slicer 5.6 and 5.8 ship Python 3.9): install a newer Slicer from "
            f"download.slicer.org and VMambaX from its Extensions Manager")

# Keep in sync with [project] dependencies in pyproject.toml (a test checks it).
CORE = (
    Requirement("numpy", "numpy", "1.24", "arrays"),
    Requirement("scipy", "scipy", "1.10", "lesion labelling and resampling"),
    Requirement("SimpleITK", "SimpleITK", "2.3", "reading and resampling volumes"),
    Requirement("pydicom", "pydicom", "2.4", "reading SUV tags from PET DICOM"),
    Requirement("highdicom", "highdicom", "0.22", "writing DICOM SEG"),
    Requirement("pytorch-lightning", "pytorch_lightning", "2.1", "training"),
    Requirement("fvcore", "fvcore", "0.1.5.post20221221", "counting FLOPs"),
    Requirement("matplotlib", "matplotlib", "3.7", "preview images and reports"),
    Requirement("requests", "requests", "2.28", "downloading models"),
    Requirement("pillow", "PIL", "9", "PNG input/output"),
    Requirement("tqdm", "tqdm", "4.64", "progress bars on the command line"),
)

GPU_EXTRAS = (
    Requirement("mamba-ssm", "mamba_ssm", "2.2", "fast CUDA selective scan (optional)"),
    Requirement("causal-conv1d", "causal_conv1d", "1.4", "CUDA kernels used by mamba-ssm (optional)"),
)

# What each task needs besides torch (SimpleITK, numpy, scipy and pydicom ship with Slicer).
FEATURES = {
    "segment": ("numpy", "scipy", "SimpleITK", "pydicom", "requests"),
    "train": ("numpy", "scipy", "SimpleITK", "pydicom", "pytorch-lightning", "pillow", "tqdm",
              "matplotlib"),
    "all": tuple(r.name for r in CORE),
}


def _version_key(version: str):
    try:
        from packaging.version import Version

        return Version(version)
    except Exception:  # noqa: BLE001 - no packaging, or a non-PEP 440 local version
        return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:4])


def version_at_least(version: str, minimum: str) -> bool:
    """``version >= minimum`` ("2.13.0+cpu" >= "2.1"); unparsable versions count as new enough."""
    try:
        return _version_key(version) >= _version_key(minimum)
    except TypeError:
        return True


def installed_version(req: Requirement) -> str | None:
    """The installed version, ``""`` when importable but of unknown version, None when absent."""
    try:
        return importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        found = importlib.util.find_spec(req.import_name) is not None
    except (ImportError, ValueError):
        found = False
    return "" if found else None


def is_satisfied(req: Requirement) -> bool:
    version = installed_version(req)
    if version is None:
        return False
    return not (version and req.minimum) or version_at_least(version, req.minimum)


def requirements_for(feature: str = "all") -> list[Requirement]:
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
    names = FEATURES[feature]
    return [r for r in CORE if r.name in names]


def missing(requirements=None, feature: str = "all") -> list[Requirement]:
    """The requirements (default: those of ``feature``) that are absent or too old."""
    reqs = requirements_for(feature) if requirements is None else list(requirements)
    return [r for r in reqs if not is_satisfied(r)]


def torch_status() -> tuple[bool, str | None]:
    """``(usable, version)``: torch installed and new enough (version None when absent)."""
    version = installed_version(TORCH)
    return is_satisfied(TORCH), version


def cuda_available() -> bool:
    """True when an installed torch sees a CUDA GPU (False without torch: never imports it)."""
    if installed_version(TORCH) is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken torch install is reported by torch_status users
        return False


def gpu_extras_missing(cuda: bool | None = None) -> list[Requirement]:
    """mamba-ssm / causal-conv1d when CUDA is present and they are not installed; else []."""
    if not (cuda_available() if cuda is None else cuda):
        return []
    return [r for r in GPU_EXTRAS if not is_satisfied(r)]


@dataclasses.dataclass
class DependencyReport:
    """What a task needs that is not there yet."""

    feature: str
    torch_ok: bool
    torch_version: str | None
    cuda: bool
    missing: list[Requirement]
    gpu_extras: list[Requirement]

    @property
    def ok(self) -> bool:
        """Everything required is present (the optional GPU extras do not count)."""
        return self.torch_ok and not self.missing

    def describe(self) -> str:
        """A message for the consent dialog: what is missing and why."""
        lines = []
        if not self.torch_ok:
            found = f" (found {self.torch_version})" if self.torch_version else ""
            lines.append(f"- PyTorch {TORCH.spec}{found}: {TORCH.purpose}")
        lines += [f"- {r.spec}: {r.purpose}" for r in self.missing]
        lines += [f"- {r.spec}: {r.purpose}" for r in self.gpu_extras]
        return "\n".join(lines)


def check(feature: str = "all", cuda: bool | None = None) -> DependencyReport:
    """Check torch and the packages ``feature`` needs (plus the CUDA-only extras when on CUDA)."""
    require_supported_python(sys.version_info)
    torch_ok, torch_version = torch_status()
    cuda = cuda_available() if cuda is None else cuda
    return DependencyReport(feature=feature, torch_ok=torch_ok, torch_version=torch_version,
                            cuda=cuda, missing=missing(feature=feature),
                            gpu_extras=gpu_extras_missing(cuda) if torch_ok else [])


def install_command(requirements, python: str | None = None) -> list[str]:
    """The pip command line (argument list, no shell) installing ``requirements``."""
    return [python or sys.executable, "-m", "pip", "install",
            *[r.spec if isinstance(r, Requirement) else str(r) for r in requirements]]


def is_online(host: str = "pypi.org", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether the package index answers (a TCP connect, no data sent)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(feature: str = "all") -> None:
    """Raise DependencyError naming what is missing and the exact command to install it."""
    report = check(feature, cuda=False)
    if report.ok:
        return
    specs = ([TORCH] if not report.torch_ok else []) + report.missing
    raise DependencyError(
        f"missing Python packages for {feature}: {', '.join(r.spec for r in specs)}. Install them "
        f"with: {' '.join(install_command(specs))} (in 3D Slicer the VMambaX modules offer to "
        f"install them; PyTorch comes from the PyTorch extension)")


def install(requirements, pip_install, progress=None) -> list[tuple[Requirement, str]]:
    """Install each requirement separately with ``pip_install(spec)``; return the failures.

    One at a time, so one package that fails to build (typically mamba-ssm without a CUDA
    toolkit) does not block the others; the caller reports the failures with their messages.
    """
    failures = []
    reqs = list(requirements)
    for i, req in enumerate(reqs):
        if progress:
            progress(i / max(len(reqs), 1), f"Installing {req.spec}")
        try:
            pip_install(req.spec)
        except Exception as exc:  # noqa: BLE001 - pip/Slicer raise many types; we report them all
            failures.append((req, str(exc) or type(exc).__name__))
    if progress:
        progress(1.0, "Installation finished")
    importlib.invalidate_caches()
    return failures
