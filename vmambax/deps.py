"""Which Python packages VMambaX needs, which are missing, and how to install them.

Qt-free on purpose: the Slicer modules call this to decide what to offer the user on first use
(and then install with ``slicer.util.pip_install`` after consent); the command line and tests use
it too. PyTorch is special: inside Slicer it is installed through the PyTorch extension
(``PyTorchUtils``), which picks the wheel matching the machine's CUDA driver — a plain
``pip install torch`` there is how users end up with a CPU-only or driver-mismatched build.

``mamba-ssm`` and ``causal-conv1d`` are optional speed-ups that only exist for CUDA; they are
offered only on Linux with a CUDA build of torch that sees a GPU (``gpu_extras_supported``), and
VMambaX runs without them (chunked PyTorch selective scan).

Reaching the package index is never tested with a raw socket: pip itself is asked
(``index_probe_command``, short timeout), so pip's configuration (``pip.conf``,
``PIP_INDEX_URL``, proxies, internal mirrors) applies, and pip's own error is what the user reads.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import shutil
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


TORCH = Requirement("torch", "torch", "2.5", "runs the vMambaX network")

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
    Requirement("scikit-image", "skimage", "0.21", "the lung field (which slices to segment)"),
    Requirement("SimpleITK", "SimpleITK", "2.3", "reading and resampling volumes"),
    Requirement("pydicom", "pydicom", "2.4", "reading SUV tags from PET DICOM"),
    Requirement("highdicom", "highdicom", "0.22", "writing DICOM SEG"),
    Requirement("pytorch-lightning", "pytorch_lightning", "2.1", "training"),
    Requirement("fvcore", "fvcore", "0.1.5.post20221221", "counting FLOPs"),
    Requirement("matplotlib", "matplotlib", "3.7", "preview images and reports"),
    Requirement("requests", "requests", "2.28", "downloading models"),
    Requirement("pillow", "PIL", "9", "PNG input/output"),
    Requirement("tqdm", "tqdm", "4.64", "progress bars on the command line"),
    Requirement("psutil", "psutil", "5.9", "stopping the training process and its workers"),
)

GPU_EXTRAS = (
    Requirement("mamba-ssm", "mamba_ssm", "2.2", "fast CUDA selective scan (optional)"),
    Requirement("causal-conv1d", "causal_conv1d", "1.4", "CUDA kernels used by mamba-ssm (optional)"),
)

# What each task needs besides torch (SimpleITK, numpy, scipy and pydicom ship with Slicer).
FEATURES = {
    "segment": ("numpy", "scipy", "scikit-image", "SimpleITK", "pydicom", "requests"),
    "train": ("numpy", "scipy", "SimpleITK", "pydicom", "pytorch-lightning", "pillow", "tqdm",
              "matplotlib", "psutil"),
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


def mps_available() -> bool:
    """True when an installed torch sees Apple's Metal GPU (False without torch)."""
    if installed_version(TORCH) is None:
        return False
    try:
        import torch

        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    except Exception:  # noqa: BLE001
        return False


@dataclasses.dataclass(frozen=True)
class TorchBuild:
    """What the installed torch was built for, and what the machine has."""

    version: str | None  # None: torch absent
    cuda_version: str | None  # torch.version.cuda: None for CPU (and ROCm) builds
    cuda_available: bool
    platform: str  # sys.platform
    nvidia_gpu: bool  # an NVIDIA driver is installed (nvidia-smi / /proc/driver/nvidia)


def nvidia_gpu_present(which=shutil.which, exists=os.path.exists) -> bool:
    """An NVIDIA driver is installed: ``nvidia-smi`` on the PATH or ``/proc/driver/nvidia``
    (the driver's kernel interface on Linux). Works without torch, so a CPU-only torch on a GPU
    machine can be told apart from a machine without a GPU."""
    if which("nvidia-smi"):
        return True
    windows = os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvidia-smi.exe")
    return exists("/proc/driver/nvidia/version") or (sys.platform == "win32" and exists(windows))


def torch_build() -> TorchBuild:
    version = installed_version(TORCH)
    cuda_version = None
    if version is not None:
        try:
            import torch

            cuda_version = getattr(torch.version, "cuda", None)
        except Exception:  # noqa: BLE001 - a broken torch is reported by torch_status users
            pass
    return TorchBuild(version=version, cuda_version=cuda_version,
                      cuda_available=cuda_available() if version is not None else False,
                      platform=sys.platform, nvidia_gpu=nvidia_gpu_present())


def gpu_extras_supported(build: TorchBuild) -> bool:
    """mamba-ssm / causal-conv1d build and run only on Linux, against a CUDA build of torch
    that sees a GPU (``torch.version.cuda`` is None for CPU and ROCm builds)."""
    return (build.platform.startswith("linux") and build.cuda_version is not None
            and build.cuda_available)


def cpu_torch_on_nvidia_machine(build: TorchBuild) -> str | None:
    """The warning for a CPU-only torch on a computer with an NVIDIA GPU, with the fix; else None."""
    if build.version is None or build.cuda_version is not None or not build.nvidia_gpu:
        return None
    return (f"PyTorch {build.version} is a CPU-only build, but this computer has an NVIDIA GPU, "
            f"so VMambaX runs on the CPU (much slower). To use the GPU: open the PyTorch Utils "
            f"module (PyTorch extension), uninstall PyTorch, install it again (it picks the CUDA "
            f"build for your NVIDIA driver) and restart Slicer. Outside Slicer: pip uninstall "
            f"torch, then install the CUDA build from https://pytorch.org/get-started/locally/.")


def gpu_extras_missing(cuda: bool | None = None, build: TorchBuild | None = None) -> list[Requirement]:
    """mamba-ssm / causal-conv1d when they could be used here and are not installed; else [].

    ``cuda`` overrides the check (tests, callers that already know); else ``build`` (default:
    the installed torch) must pass ``gpu_extras_supported``.
    """
    if cuda is None:
        supported = gpu_extras_supported(build or torch_build())
    else:
        supported = cuda
    if not supported:
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


def install_command(requirements, python: str | None = None, options=()) -> list[str]:
    """The pip command line (argument list, no shell) installing ``requirements``."""
    return [python or sys.executable, "-m", "pip", "install", *options,
            *[r.spec if isinstance(r, Requirement) else str(r) for r in requirements]]


# mamba-ssm / causal-conv1d compile against the torch already installed: pip's default isolated
# build environment would fetch another torch to build with (their install instructions say so).
GPU_EXTRAS_PIP_OPTIONS = ("--no-build-isolation",)
PROBE_TIMEOUT_S = 10


def index_probe_command(requirement: Requirement | str) -> list[str]:
    """pip arguments asking the configured index for one package, failing fast when it cannot
    be reached (no index URL of ours: pip.conf, ``PIP_INDEX_URL`` and proxies apply).

    ``-vv`` makes pip print *why* it found nothing ("Could not fetch URL ...: connection error");
    without it, an unreachable index reads as "No matching distribution found".
    """
    name = requirement.name if isinstance(requirement, Requirement) else str(requirement)
    return ["index", "versions", name, "--timeout", str(PROBE_TIMEOUT_S), "--retries", "0",
            "--disable-pip-version-check", "-vv"]


_PIP_TOO_OLD = ("unknown command", "no such command", "no such option")
_PIP_REASON = re.compile(r"^(ERROR:|WARNING: Retrying|Could not fetch URL|.*ProxyError|"
                         r".*SSLError|.*NewConnectionError)", re.I)


def pip_error_summary(output: str, max_lines: int = 6) -> str:
    """The lines of pip's output that say what went wrong (else its last lines)."""
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    reasons = [line for line in lines if _PIP_REASON.match(line)]
    return "\n".join((reasons or lines)[-max_lines:])


def probe_index(run_pip, requirement: Requirement | str) -> str | None:
    """Ask pip (``run_pip(args) -> (returncode, output)``) whether the configured index serves
    ``requirement``: None when it does (or when this pip is too old to have ``pip index``: then
    the install itself will tell), else pip's error."""
    # pip's own --timeout bounds each request; the wall-clock cap bounds a stuck pip.
    code, output = run_pip(index_probe_command(requirement), timeout=6 * PROBE_TIMEOUT_S)
    if code == 0:
        return None
    if any(marker in (output or "").lower() for marker in _PIP_TOO_OLD):
        return None
    return pip_error_summary(output) or f"pip exited with status {code}"


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
