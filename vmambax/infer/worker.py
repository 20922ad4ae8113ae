"""Segmentation in a separate process: the hand-over format and the worker's entry point.

A host application (3D Slicer's VMambaX Segment) must not run the network in its own process: a
torch or CUDA crash, or running out of memory, would take the host and its unsaved work down,
cancelling would wait for the batch, and the model's memory would stay behind. So the host
writes a *job folder* and starts ``python -m vmambax.infer.worker --watch-stdin JOB_DIR`` (PythonSlicer
inside Slicer; with ``--watch-stdin`` the worker stops when its stdin closes, i.e. when the host
exits or crashes)::

    JOB_DIR/job.json     {"format": "vmambax-segment-job", "version": 1,
                          "ct": "ct.mha", "pet": "pet.mha",
                          "pet_units": "suv" | "bqml", "suv_factor": null | float,
                          "segmenter": {"model": ..., "device": ..., ...}}   # Segmenter kwargs
    JOB_DIR/ct.mha       the CT in HU, world geometry (SimpleITK, uncompressed)
    JOB_DIR/pet.mha      the PET on its own grid: SUV, or Bq/mL with the SUV factor in job.json

The worker runs the ordinary ``vmambax.infer.Segmenter`` (preprocessing, slice selection,
resampling, quantification are all the Segmenter's: nothing is re-implemented here) and writes::

    JOB_DIR/result.json  {"format": "vmambax-segment-result", "version": 1,
                          "fields": {every SegmentationResult field that is not an image},
                          "images": {"label": "label.mha", ...}}
    JOB_DIR/label.mha    the label on the CT grid (uint8 0/1)

Every field of the result passes through, including ones added later (model notices in
``warnings``, ensemble or test-time-flip details in ``model``), so the host sees what a direct
``Segmenter.segment`` call returns. Progress and the outcome are JSON lines on the worker's
stdout: ``{"event": "progress", "fraction": f, "message": m}``, then ``{"event": "done"}`` or
``{"event": "error", "error": class name, "message": text, "user_error": bool}``. Anything
else printed (third-party libraries, C code) goes to stderr. Exit status: 0 done, 2 a problem
the user can fix (``VMambaXError``), 1 a bug, 3 the host went away (``--watch-stdin``).

This module imports neither torch nor the Segmenter at import time: the host uses ``write_job``
and ``read_result`` without loading torch into its own process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

from vmambax.errors import InputError, OutputError, VMambaXError

JOB_FORMAT = "vmambax-segment-job"
RESULT_FORMAT = "vmambax-segment-result"
FORMAT_VERSION = 1
JOB_FILE, RESULT_FILE = "job.json", "result.json"
EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_ORPHANED = 0, 1, 2, 3
PET_UNITS = ("suv", "bqml")


# -- the host's side ------------------------------------------------------------------------------
def write_job(folder, ct, pet, *, pet_units: str = "suv", suv_factor: float | None = None,
              segmenter: dict | None = None) -> Path:
    """Write the job folder for ``ct`` (HU) and ``pet`` (SimpleITK images); returns job.json.

    ``pet_units``: ``suv`` (the host already converted it), or ``bqml`` with ``suv_factor``
    (SUV = Bq/mL x factor; the units decision is always the host's, never the worker's guess).
    ``segmenter``: keyword arguments for ``Segmenter`` (model, device, batch_size, all_slices, ...).
    The images are written uncompressed: the hand-over must cost little next to the network.
    """
    import SimpleITK as sitk

    from vmambax.utils import atomic_path, output_error

    if pet_units not in PET_UNITS:
        raise InputError(f"unknown PET units {pet_units!r} for the worker; use one of "
                         f"{', '.join(PET_UNITS)}")
    if pet_units == "bqml" and not (suv_factor and suv_factor > 0):
        raise InputError("a Bq/mL PET needs its SUV factor (SUV = Bq/mL x factor) in the job")
    folder = Path(folder)
    job = {"format": JOB_FORMAT, "version": FORMAT_VERSION, "ct": "ct.mha", "pet": "pet.mha",
           "pet_units": pet_units, "suv_factor": suv_factor,
           "segmenter": _plain(dict(segmenter or {}))}
    for name, image in (("ct.mha", ct), ("pet.mha", pet)):
        target = folder / name
        try:
            # The worker's reader is the check of these files (a short file does not load): no
            # read-back here, which would double the hand-over of a 300-slice CT.
            with atomic_path(target, verify=False) as tmp:
                sitk.WriteImage(image, str(tmp), False)
        except OutputError:
            raise
        except (OSError, RuntimeError) as exc:
            raise output_error(target, exc) from None
    path = folder / JOB_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(job, indent=1), encoding="utf-8")
    return path


class WorkerResult:
    """What the worker's ``Segmenter.segment`` returned, rebuilt in the host without torch.

    Every field of ``SegmentationResult`` is an attribute (``label``, ``lesions``, ``totals``,
    ``timings``, ``model_name``, ``model``, ``device``, ``warnings``, ``slice_selection`` ...),
    also fields this version of the host does not know; ``fields`` lists them.
    """

    def __init__(self, fields: dict, images: dict):
        self.fields = sorted(set(fields) | set(images))
        self.probability = None
        for name, value in {**fields, **images}.items():
            setattr(self, name, value)

    @property
    def slices_per_second(self) -> float:
        t = (getattr(self, "timings", None) or {}).get("inference", 0.0)
        return getattr(self, "n_slices_run", 0) / t if t > 0 else float("nan")

    def __repr__(self) -> str:
        return f"WorkerResult({', '.join(self.fields)})"


def read_result(folder) -> WorkerResult:
    """The worker's result from its job folder (images read into memory: the folder can go)."""
    import SimpleITK as sitk

    folder = Path(folder)
    path = folder / RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"the segmentation process finished without a readable result "
                          f"({path}: {exc}); run it again") from None
    if data.get("format") != RESULT_FORMAT or int(data.get("version", 0)) > FORMAT_VERSION:
        raise OutputError(f"{path} is not a result this VMambaX can read (format "
                          f"{data.get('format')!r}, version {data.get('version')!r}); the "
                          f"worker and the host are of different VMambaX versions: reinstall")
    images = {}
    for name, file in (data.get("images") or {}).items():
        try:
            images[name] = sitk.ReadImage(str(folder / file))
        except RuntimeError as exc:
            raise OutputError(f"the segmentation process left an unreadable {name} image "
                              f"({folder / file}: {str(exc).strip().splitlines()[-1]}); run it "
                              f"again") from None
    return WorkerResult(dict(data.get("fields") or {}), images)


def worker_command(job_dir, python: str | None = None) -> list[str]:
    """The worker's command line (an argument list, never a shell); the host keeps the
    worker's stdin open (``--watch-stdin``: the worker stops when it closes)."""
    return [python or sys.executable, "-m", "vmambax.infer.worker", "--watch-stdin", str(job_dir)]


def _plain(value):
    """``value`` as JSON-ready plain data (numpy scalars, paths, tuples, NaN kept as NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars, 0-d tensors
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


# -- the worker's side ----------------------------------------------------------------------------
def _read_job(folder: Path) -> dict:
    path = folder / JOB_FILE
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the job file {path}: {exc}") from None
    if job.get("format") != JOB_FORMAT or int(job.get("version", 0)) > FORMAT_VERSION:
        raise InputError(f"{path} is not a VMambaX segmentation job this version can run "
                         f"(format {job.get('format')!r}, version {job.get('version')!r})")
    if job.get("pet_units", "suv") not in PET_UNITS:
        raise InputError(f"{path}: unknown pet_units {job.get('pet_units')!r}")
    return job


def _read_image(path: Path, what: str):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read the {what} handed to the worker ({path}): "
                         f"{str(exc).strip().splitlines()[-1]}") from None


def run_job(folder, progress: Callable[[float, str], None] | None = None):
    """Run the job in ``folder`` with the ordinary Segmenter; write result.json and the images.
    Returns the ``SegmentationResult``."""
    import SimpleITK as sitk

    from vmambax.infer.segmenter import Segmenter
    from vmambax.utils import atomic_path

    if progress:  # the first word from the worker: Python and torch are loaded
        progress(0.0, "Loading the model")
    folder = Path(folder)
    job = _read_job(folder)
    ct = _read_image(folder / job["ct"], "CT")
    pet = _read_image(folder / job["pet"], "PET")
    if job.get("pet_units", "suv") == "bqml":
        factor = float(job.get("suv_factor") or 0)
        if not factor > 0:
            raise InputError("the job's PET is in Bq/mL but has no SUV factor")
        pet = sitk.Cast(pet, sitk.sitkFloat32) * factor
    options = dict(job.get("segmenter") or {})
    options.pop("progress", None)
    options.pop("cancel", None)  # the host cancels by ending this process
    result = Segmenter(progress=progress, **options).segment(ct, pet)

    fields, images = {}, {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, sitk.Image):
            images[field.name] = value
        else:
            fields[field.name] = _plain(value)
    files = {}
    for name, image in images.items():
        files[name] = f"{name}.mha"
        with atomic_path(folder / files[name]) as tmp:
            sitk.WriteImage(image, str(tmp), False)
    payload = {"format": RESULT_FORMAT, "version": FORMAT_VERSION, "fields": fields,
               "images": files}
    with atomic_path(folder / RESULT_FILE) as tmp:
        # NaN stays NaN (an SUVpeak of a lesion too small for the sphere); Python reads it back.
        tmp.write_text(json.dumps(payload, indent=1, allow_nan=True), encoding="utf-8")
    return result


def _event_stream():
    """Keep the real stdout for our JSON lines and send everything else printed to stderr
    (a third-party print, or C code writing to fd 1, must not corrupt the event stream)."""
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def emit(event: dict) -> None:
        line = json.dumps(_plain(event), allow_nan=True)
        with lock:
            events.write(line + "\n")
            events.flush()

    return emit


def _exit_when_the_host_goes() -> None:
    """The host keeps our stdin open; when it closes (the host exited or crashed), stop at once,
    so no orphaned worker keeps a GPU and gigabytes of memory."""
    def watch():
        try:
            while sys.stdin.buffer.read(1 << 16):
                pass
        except (OSError, ValueError):
            pass
        os._exit(EXIT_ORPHANED)

    if sys.stdin is not None:
        threading.Thread(target=watch, name="host watchdog", daemon=True).start()


def probe_devices() -> dict:
    """What the device choice needs to know, for hosts that must not import torch themselves."""
    from vmambax import deps

    build = deps.torch_build()
    return {"torch": build.version, "cuda": build.cuda_available, "cuda_version": build.cuda_version,
            "mps": deps.mps_available(), "platform": build.platform,
            "gpu_extras_supported": deps.gpu_extras_supported(build),
            "nvidia_gpu": build.nvidia_gpu}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    emit = _event_stream()
    if argv == ["--devices"]:
        emit({"event": "devices", **probe_devices()})
        return EXIT_OK
    watch = "--watch-stdin" in argv
    argv = [a for a in argv if a != "--watch-stdin"]
    if len(argv) != 1 or argv[0].startswith("-"):
        emit({"event": "error", "error": "UsageError", "user_error": True,
              "message": "usage: python -m vmambax.infer.worker [--watch-stdin] JOB_DIR | "
                         "--devices"})
        return EXIT_USER_ERROR
    if watch:
        _exit_when_the_host_goes()
    from vmambax.allocator import tune_allocator
    from vmambax.utils import prefer_passive_wait

    prefer_passive_wait()
    tune_allocator()  # its own process: freed layer buffers are reused, not page-faulted again

    def progress(fraction: float, message: str) -> None:
        fraction = float(fraction)
        emit({"event": "progress", "fraction": fraction if math.isfinite(fraction) else 0.0,
              "message": str(message)})

    try:
        run_job(argv[0], progress)
    except VMambaXError as exc:
        emit({"event": "error", "error": type(exc).__name__, "message": str(exc),
              "user_error": True})
        return EXIT_USER_ERROR
    except BaseException as exc:  # noqa: BLE001 - reported to the host, which shows it as a bug
        emit({"event": "error", "error": type(exc).__name__, "user_error": False,
              "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return EXIT_BUG
    emit({"event": "done"})
    return EXIT_OK


def describe_exit(returncode: int | None) -> str:
    """Why a worker ended without saying (for the host's message)."""
    if returncode is None:
        return "it is still running"
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        more = (" (the system ends a process this way when memory runs out, or another "
                "program killed it)" if -returncode == getattr(signal, "SIGKILL", 9) else "")
        return f"it was ended by {name}{more}"
    if returncode == EXIT_ORPHANED:
        return "it lost the connection to the program that started it"
    return f"it exited with status {returncode}"


def error_from_event(event: dict) -> Exception:
    """The exception a host raises for the worker's error event: the same ``vmambax.errors``
    class for the user's problems (a plain message), ``WorkerFailed`` for bugs."""
    import vmambax.errors as errors

    name, message = str(event.get("error") or ""), str(event.get("message") or "")
    if event.get("user_error"):
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, VMambaXError):
            return cls(message)
        return WorkerError(message, name)
    return WorkerFailed(message, str(event.get("traceback") or ""))


class WorkerError(VMambaXError):
    """A problem the user can fix, of a class the host does not import (e.g. DeviceError)."""

    def __init__(self, message: str, kind: str = ""):
        super().__init__(message)
        self.kind = kind


class WorkerCrashed(VMambaXError):
    """The worker ended without a result (killed, out of memory, a crash in native code): the
    host lives on and says so plainly."""


class WorkerFailed(RuntimeError):
    """The worker hit a bug; its traceback is in ``details``."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


if __name__ == "__main__":
    sys.exit(main())
