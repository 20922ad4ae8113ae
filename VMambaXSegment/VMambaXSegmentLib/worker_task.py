"""Run a segmentation in a ``vmambax`` worker process, as SlicerTotalSegmentator, MONAI
Auto3DSeg and SlicerNNUNet run their networks: never inside Slicer's own process.

``worker_compute(ct, pet_suv, options)`` returns the ``compute(report, cancel)`` of a
``BackgroundTask``: it writes the CT and the PET (already in SUV: the units decision is made
in Slicer, where the node, its DICOM tags and the user's entries are) into a temporary job
folder, starts ``python -m vmambax.infer.worker`` (PythonSlicer inside Slicer), turns the
worker's JSON progress lines into ``report`` calls, and reads the label and the result back
when it is done. Cancel ends the worker's whole process tree at once, even in the middle of a
batch; a worker that dies (kill -9, out of memory, a CUDA crash) is a clear error; in every
case the job folder is removed, and nothing here touches the scene (``apply`` does, on the main
thread, only after a finished run). torch is loaded only in the worker, so its memory goes back
to the system when the run ends.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from typing import Callable

from vmambax.errors import Cancelled

from VMambaXCommon.processes import ProcessJob, python_executable, vmambax_env

POLL_S = 0.05  # how often a cancel is looked at while the worker runs
CANCEL_GRACE_S = 0.5  # terminate, then kill what is left: the tree is gone well within 2 s


def worker_compute(ct, pet_suv, options: dict, python: str | None = None,
                   temp_dir: str | None = None, on_started: Callable | None = None):
    """``compute(report, cancel)`` segmenting ``ct``/``pet_suv`` (SimpleITK images) in a worker.

    ``options``: ``vmambax.infer.Segmenter`` keyword arguments (model, device, batch_size,
    all_slices, ...). ``on_started(job)``: called with the ``ProcessJob`` once it runs (tests).
    The returned result carries ``handover`` besides the Segmenter's fields: seconds spent
    outside the network (``write_inputs``, ``worker_start``: Python and the imports, until the
    worker's first progress line; ``worker_total``, ``read_result``).
    """
    from vmambax.infer import worker

    def compute(report, cancel):
        times: dict[str, float] = {}
        folder = tempfile.mkdtemp(prefix="vmambax-segment-", dir=temp_dir)
        job = None
        try:
            report(0.0, "Handing the images to the VMambaX process")
            t = time.perf_counter()
            worker.write_job(folder, ct, pet_suv, pet_units="suv", segmenter=options)
            times["write_inputs"] = time.perf_counter() - t
            _check_cancel(cancel)
            t_start = time.perf_counter()
            job = ProcessJob(worker.worker_command(folder, python or python_executable()),
                             env=vmambax_env(), stdin_pipe=True,
                             on_line=lambda line: logging.info(f"[VMambaX worker] {line}"))
            if on_started is not None:
                on_started(job)
            report(0.0, "Starting the VMambaX process")
            final = _follow(job, report, cancel, times, t_start)
            times["worker_total"] = time.perf_counter() - t_start
            if final.get("event") == "error":
                raise worker.error_from_event(final)
            if final.get("event") != "done":
                raise worker.WorkerCrashed(_crash_message(job))
            t = time.perf_counter()
            result = worker.read_result(folder)
            times["read_result"] = time.perf_counter() - t
            _on_ct_grid(result, ct)
            result.handover = times
            return result
        finally:
            if job is not None and job.running():
                job.cancel(timeout=CANCEL_GRACE_S)  # any way out of here ends the tree
            shutil.rmtree(folder, ignore_errors=True)

    return compute


def _check_cancel(cancel) -> None:
    if cancel.is_set():
        raise Cancelled("segmentation cancelled by the user; the scene was not changed")


def _follow(job: ProcessJob, report, cancel, times: dict, t_start: float) -> dict:
    """Read the worker's events until it ends; returns its last done/error event ({} if none)."""
    final: dict = {}
    while True:
        if cancel.is_set():
            job.cancel(timeout=CANCEL_GRACE_S)
            _check_cancel(cancel)
        line = job.next_line(timeout=POLL_S)
        if line is None:  # output closed: the worker has exited (or is about to)
            job.wait()
            return final
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            logging.info(f"[VMambaX worker] {line}")
            continue
        kind = event.get("event")
        if kind == "progress":
            # Until its first word: starting Python and importing torch and vmambax.
            times.setdefault("worker_start", time.perf_counter() - t_start)
            report(float(event.get("fraction", 0.0)), str(event.get("message", "")))
        elif kind in ("done", "error"):
            final = event


def _crash_message(job: ProcessJob) -> str:
    from vmambax.infer.worker import describe_exit

    code = job.returncode
    tail = [line for line in job.tail if line.strip()][-3:]
    last = ("\nIts last words: " + " | ".join(tail)) if tail else ""
    return (f"The VMambaX segmentation process stopped without a result: {describe_exit(code)}. "
            f"Slicer and the scene were not affected; nothing was written. If it ran out of "
            f"memory, close other programs, choose the CPU or a smaller batch, and try "
            f"again.{last}")


def _on_ct_grid(result, ct) -> None:
    """The label must be on the CT's voxel grid; it then takes the CT's geometry exactly (a
    text image header rounds the direction cosines in their last digits)."""
    import numpy as np

    from vmambax.infer.worker import WorkerCrashed

    label = result.label
    same = (label.GetSize() == ct.GetSize()
            and np.allclose(label.GetSpacing(), ct.GetSpacing(), rtol=1e-6, atol=1e-9)
            and np.allclose(label.GetOrigin(), ct.GetOrigin(), rtol=1e-6, atol=1e-6)
            and np.allclose(label.GetDirection(), ct.GetDirection(), atol=1e-6))
    if not same:
        raise WorkerCrashed(f"the segmentation process returned a label of size "
                           f"{label.GetSize()} that is not on the CT's grid {ct.GetSize()}; "
                           f"nothing was written")
    label.CopyInformation(ct)
