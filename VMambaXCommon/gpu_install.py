"""The optional "Install GPU acceleration" action: build mamba-ssm's CUDA selective scan.

Never part of a Segment click (it compiles CUDA code for 10-30 minutes and needs the CUDA
toolkit): the user starts it on purpose from the Segment panel. It runs in the background
(``GpuAccelerationInstall.start``: a thread driving pip child processes), its log lines go to
the panel (``new_lines``), Cancel ends pip's whole process tree at once, and it stops by itself
after ``TIME_LIMIT_S``. causal-conv1d first, then mamba-ssm, each with
``--no-build-isolation`` (they compile against the installed torch) and
``install.install_selectively`` (torch and the other packages Slicer bundles are never touched).

Segmentations run in a fresh worker process, which picks the new kernels up at its next run;
only packages Slicer itself had loaded need a restart, which ``restart`` says.
Qt-free: the widget polls ``new_lines``/``finished`` from a timer.
"""

from __future__ import annotations

import collections
import shutil
import threading
import time

from vmambax import deps
from vmambax.errors import Cancelled, DependencyError

from VMambaXCommon import install
from VMambaXCommon.processes import ProcessJob, python_executable

TIME_LIMIT_S = 60 * 60  # the slowest builds reported take about 30 minutes

UNSUPPORTED_REASON = {
    "no-torch": "PyTorch is not installed yet: segment once (VMambaX installs it), then try again",
    "platform": "the CUDA selective scan is built only on Linux",
    "cpu-torch": "PyTorch here is a CPU-only (or ROCm) build",
    "no-gpu": "PyTorch sees no NVIDIA GPU",
}


def unsupported_reason(info: dict | None) -> str | None:
    """Why GPU acceleration cannot be installed here (from the device probe), None if it can."""
    if not info:
        return "still asking PyTorch which GPUs it sees"
    if not info.get("torch"):
        return UNSUPPORTED_REASON["no-torch"]
    if not str(info.get("platform") or "").startswith("linux"):
        return UNSUPPORTED_REASON["platform"]
    if not info.get("cuda_version"):
        return UNSUPPORTED_REASON["cpu-torch"]
    if not info.get("cuda"):
        return UNSUPPORTED_REASON["no-gpu"]
    return None


def cuda_compiler_note() -> str | None:
    """A warning when no CUDA compiler is found (the build will then fail), else None."""
    import os

    if shutil.which("nvcc") or any(os.path.isfile(os.path.join(os.environ.get(v, ""), "bin", "nvcc"))
                                   for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)):
        return None
    return ("The CUDA compiler (nvcc) was not found on the PATH or in CUDA_HOME: the build will "
            "probably fail. Install the CUDA toolkit matching PyTorch's CUDA version first.")


class GpuAccelerationInstall:
    """One background install of the GPU extras; ``state`` is running, done, failed,
    cancelled or timed out; ``message`` says what happened, ``restart`` whether Slicer must
    restart."""

    def __init__(self, requirements=deps.GPU_EXTRAS[::-1], time_limit_s: float = TIME_LIMIT_S,
                 pip_command=None):
        # causal-conv1d first: mamba-ssm requires it.
        self.requirements = list(requirements)
        self.time_limit_s = time_limit_s
        self._pip_command = pip_command or (lambda args: [python_executable(), "-m", "pip", *args])
        self._lines: collections.deque[str] = collections.deque(maxlen=5000)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._job: ProcessJob | None = None
        self._thread: threading.Thread | None = None
        self.state = "not started"
        self.message = ""
        self.restart: str | None = None
        self.deadline = None

    # -- the widget's side -------------------------------------------------------------------------
    def start(self) -> "GpuAccelerationInstall":
        if self._thread is not None:
            raise RuntimeError("this install was already started")
        self.state = "running"
        self.deadline = time.monotonic() + self.time_limit_s
        self._thread = threading.Thread(target=self._run, name="VMambaX GPU acceleration",
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def new_lines(self) -> list[str]:
        """Log lines since the last call (pip's output and our own notes)."""
        with self._lock:
            lines = list(self._lines)
            self._lines.clear()
        return lines

    def cancel(self) -> None:
        """Stop now: pip and every compiler process it started are ended."""
        self._cancel.set()
        job = self._job
        if job is not None:
            job.cancel(timeout=2.0)

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.finished

    # -- the background thread ----------------------------------------------------------------------
    def _log(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def _run_pip(self, args, timeout=None):
        if self._cancel.is_set():
            raise Cancelled("GPU acceleration install cancelled")
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._log("$ " + " ".join(self._pip_command(args)))
        job = ProcessJob(self._pip_command(args), merge_stderr=True, on_line=self._log,
                         time_limit=remaining)
        self._job = job
        try:
            while job.next_line(timeout=0.2) is not None:
                pass
            code = job.wait()
        finally:
            self._job = None
        if self._cancel.is_set():
            raise Cancelled("GPU acceleration install cancelled")
        if job.timed_out:
            raise TimeoutError
        return code, "\n".join(job.tail)

    def _run(self) -> None:
        loaded = install.loaded_distributions()
        try:
            for req in self.requirements:
                install.install_selectively(req.spec, self._run_pip,
                                            options=deps.GPU_EXTRAS_PIP_OPTIONS, log=self._log)
        except Cancelled:
            self.state, self.message = "cancelled", ("Cancelled; the build was stopped. VMambaX "
                                                     "keeps using its own selective scan.")
        except TimeoutError:
            self.state = "timed out"
            self.message = (f"Stopped after {self.time_limit_s / 60:.0f} minutes without finishing. "
                            f"VMambaX keeps using its own selective scan.")
        except (DependencyError, OSError) as exc:
            manual = " ".join(deps.install_command(self.requirements, python="PythonSlicer",
                                                   options=deps.GPU_EXTRAS_PIP_OPTIONS))
            self.state = "failed"
            self.message = (f"The GPU acceleration could not be built (optional: VMambaX keeps "
                            f"using its own selective scan): {exc}\nTo retry by hand: {manual}")
        else:
            self.state = "done"
            self.restart = install.restart_note(loaded)
            self.message = ("GPU acceleration installed: the next segmentation uses the CUDA "
                            "selective scan." + (f"\n{self.restart}" if self.restart else ""))
        self._log(self.message)
