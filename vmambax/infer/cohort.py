"""Segment a cohort: many PET/CT studies, one model load per device (``vmambax segment --cases``).

Each case goes through the single-case pipeline (``pipeline.segment_files``) with a shared
``Segmenter`` and writes ``DIR/<id>/label.nii.gz`` + ``report.json`` (+ ``preview.png``).

- Resumable: a case whose label reads back with its CT's geometry and whose report parses, names
  the same CT/PET and the same model SHA-256 is skipped (its row is rebuilt from the report).
- A failed case is a ``failed`` row with its error; the others go on.
- ``DIR/summary.csv`` (or ``summary-shard-K-of-N.csv``) has one row per case and is rewritten
  atomically after every case, so an interrupted run keeps its summary (unfinished: ``pending``).
- Several devices: one spawned worker process per device, each loading the model once and
  taking cases from a shared queue (``cohort_workers``).
- A case running past ``CohortOptions.case_timeout_s`` (a hung read, a stuck worker) is a
  ``failed`` row, and the run goes on; one run at a time per output folder (``vmambax.locks``). Shards (SLURM arrays, torchrun ranks) split the list as
  ``i % N``; the last shard to finish merges the shard summaries into ``summary.csv``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from vmambax.errors import Cancelled, ConfigError, InputError, VMambaXError
from vmambax.infer.devices import DeviceError
from vmambax.infer.cohort_list import (FAILED, OK, PENDING, SKIPPED, CohortCase, merge_shards,
                                       pending_row, shard_cases, summary_name, write_summary)


DEFAULT_CASE_TIMEOUT_S = 3600.0  # a whole-body case with the full model on a slow CPU: minutes


@dataclasses.dataclass
class CohortOptions:
    """What every case is segmented with (per-case CSV columns override the PET options)."""

    model: str = "default"
    batch_size: int | None = None
    threads: int | None = None
    amp: bool | None = None
    compile: bool | str = False
    pet_units: str = "auto"
    weight_kg: float | None = None
    dose_mbq: float | None = None
    uptake_minutes: float | None = None
    previews: bool = False
    overwrite: bool = False  # re-segment every case, even those whose outputs verify
    all_slices: bool = False  # run every slice, not only the lung field (vmambax.infer.lung_field)
    allow_different_patients: bool = False  # a CT and PET of different PatientIDs (DICOM)
    #: A case taking longer than this (a hung read, a stuck worker) is a failed row, and the
    #: run goes on with the next; None or 0: no limit. ``vmambax segment --case-timeout``.
    case_timeout_s: float | None = DEFAULT_CASE_TIMEOUT_S


@dataclasses.dataclass
class CohortProgress:
    """One progress event: ``done`` of ``total`` cases finished (ok, skipped or failed)."""

    done: int
    total: int
    case_id: str | None
    status: str | None  # the finished case's status; None for "started"/within-case updates
    message: str
    elapsed_s: float
    eta_s: float | None  # None until one case has been segmented in this run
    counts: dict  # {"ok": n, "skipped": n, "failed": n}
    #: What to tell the user with this event, once: the finished case's own warnings (a PET
    #: covering part of the CT, ...), or at the start the model's notices (the demo model).
    warnings: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CohortResult:
    rows: list[dict]  # one per case of this shard, in list order
    summary: Path  # the summary this run wrote (summary.csv or its shard file)
    merged: Path | None  # summary.csv when this run merged the shards
    seconds: float
    notices: list = dataclasses.field(default_factory=list)  # the model's (registry.model_notices)

    def count(self, status: str) -> int:
        return sum(r.get("status") == status for r in self.rows)

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.rows if r.get("status") == FAILED]


ProgressFn = Callable[[CohortProgress], None]


def case_outputs(out_dir: Path, case_id: str) -> tuple[Path, Path, Path]:
    folder = Path(out_dir) / case_id
    return folder / "label.nii.gz", folder / "report.json", folder / "preview.png"


def model_sha256(model: str) -> str:
    """The SHA-256 a report of this model names (as the Segmenter computes it)."""
    from vmambax.infer.registry import resolve_model, sha256_file

    path, entry = resolve_model(model)
    return entry.sha256 if entry is not None and entry.sha256 else sha256_file(path)


# --------------------------------------------------------------------------------- devices
def parse_devices(spec: str | None, environ=None) -> list[str]:
    """``--devices``: ``cuda:0,cuda:1``, a GPU count (``2`` = cuda:0, cuda:1) or ``cpu,cpu``.

    None means one device, ``auto``; under torchrun ``auto`` is the rank's GPU (LOCAL_RANK).
    Every device is checked now, before any case runs.
    """
    import torch

    from vmambax.infer.devices import DeviceError, resolve_device

    env = os.environ if environ is None else environ
    text = (spec or "auto").strip()
    if text.isdigit():
        n = int(text)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < 1 or n > count:
            raise DeviceError(f"--devices {n} needs {n} CUDA GPU(s), this machine has {count}; "
                              f"give a smaller count, or a list such as cpu,cpu")
        return [f"cuda:{i}" for i in range(n)]
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        raise ConfigError(f"--devices {spec!r} names no device; e.g. cuda:0,cuda:1, 2 or cpu,cpu")
    local = (env.get("LOCAL_RANK") or "").strip()
    if names == ["auto"] and local.isdigit() and torch.cuda.is_available():
        names = [f"cuda:{int(local) % torch.cuda.device_count()}"]  # torchrun: one GPU per rank
    for name in names:
        resolve_device(name)  # raises a DeviceError naming the fix
    return names


def worker_threads(devices: list[str], threads: int | None) -> int | None:
    """CPU workers share the cores (oversubscribed OpenMP threads are many times slower)."""
    from vmambax.infer.devices import default_cpu_threads

    n_cpu = sum(d == "cpu" for d in devices)
    if threads is not None or n_cpu <= 1:
        return threads
    return max(1, default_cpu_threads() // n_cpu)


# ------------------------------------------------------------------------------ one case
def _row_from_report(case_id: str, report: dict, status: str) -> dict:
    totals = report.get("totals") or {}
    return {"id": case_id, "status": status, "lesions": totals.get("n_lesions"),
            "total_mtv_ml": totals.get("mtv_ml"), "total_tlg": totals.get("tlg"),
            "suv_max": totals.get("suv_max"),
            "seconds": (report.get("timings_s") or {}).get("total"),
            "warnings": list(report.get("warnings") or [])}  # shown at the end, not in the CSV


def _add_dice(row: dict, case: CohortCase, label) -> None:
    """Dice of the written label against the case's ground truth (a bad one: noted, not fatal)."""
    import SimpleITK as sitk

    from vmambax.data.io import read_label
    from vmambax.metrics.segmentation import dice_3d

    try:
        if case.label.name.lower().endswith(".dcm"):  # RTSTRUCT or DICOM SEG, onto the CT grid
            from vmambax.data.dicom_label import read_dicom_label

            truth = read_dicom_label(case.label, label).label
        else:
            truth = read_label(case.label, label, what=f"The ground-truth label of case {case.id}")
    except VMambaXError as exc:
        row["error"] = f"Dice not computed: {exc}"
        return
    row["dice"] = round(float(dice_3d(sitk.GetArrayViewFromImage(label),
                                      sitk.GetArrayViewFromImage(truth))), 4)


def _same_path(recorded, path: Path | None) -> bool:
    return recorded is not None and path is not None and \
        Path(recorded).resolve() == Path(path).resolve()


def _ct_geometry(ct: Path, report: dict):
    """(size, spacing, origin, direction) of the CT: from its header for files; for DICOM
    folders as the report recorded it when the CT was read (reading a series costs seconds)."""
    import SimpleITK as sitk

    from vmambax.infer.pipeline import is_dicom_input

    if not is_dicom_input(ct):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(ct))
        reader.ReadImageInformation()
        return (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    rec = report["inputs"]["ct"]
    return (rec["size"], rec["spacing_mm"], rec["origin_mm"], rec["direction"])


def _on_grid(image, geometry) -> bool:
    import numpy as np

    size, spacing, origin, direction = geometry
    return (list(image.GetSize()) == [int(s) for s in size]
            and np.allclose(image.GetSpacing(), spacing, rtol=1e-5, atol=1e-6)
            and np.allclose(image.GetOrigin(), origin, atol=1e-3)
            and np.allclose(image.GetDirection(), direction, atol=1e-5))


def verify_case(case: CohortCase, out_dir: Path, sha256: str, previews: bool = False,
                all_slices: bool = False) -> dict | None:
    """The ``skipped`` row of a case whose outputs exist and verify, else None (segment it)."""
    slice_mode = "all slices" if all_slices else "lung field"
    from vmambax.data.io import read_label
    from vmambax.infer.report import REPORT_FORMAT
    from vmambax.utils import verify_file

    label_path, report_path, preview_path = case_outputs(out_dir, case.id)
    if case.problem or not (label_path.is_file() and report_path.is_file()):
        return None
    if previews and not preview_path.is_file():
        return None
    try:
        # The same check as the write (vmambax.utils.verify_file): a label whose gzip trailer
        # was cut reads back with SimpleITK, but is not a whole file.
        for path in (label_path, report_path) + ((preview_path,) if previews else ()):
            verify_file(path)
        report = json.loads(report_path.read_text(encoding="utf-8"))
        if (report.get("format") != REPORT_FORMAT or report["model"].get("sha256") != sha256
                or not _same_path(report["inputs"]["ct"].get("path"), case.ct)
                or not _same_path(report["inputs"]["pet"].get("path"), case.pet)
                or (report.get("slice_selection") or {}).get("mode") != slice_mode):
            return None  # another model, other inputs, or made with(out) --all-slices
        label = read_label(label_path)
        if not _on_grid(label, _ct_geometry(case.ct, report)):
            return None
    except (VMambaXError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError):
        return None  # unreadable or stale: segment the case again
    row = _row_from_report(case.id, report, SKIPPED)
    if case.label is not None:
        _add_dice(row, case, label)
    return row


class CaseTimeout(VMambaXError):
    """A case ran past the cohort's per-case time limit (``CohortOptions.case_timeout_s``)."""


def timeout_message(seconds: float) -> str:
    limit = f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s"
    return (f"not finished within the per-case time limit of {limit} (a hung file read, a stuck "
            f"device?); nothing was written for it. Check its files, or raise the limit with "
            f"--case-timeout MINUTES")


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise ``CaseTimeout`` in this (main) thread when the block runs past ``seconds``.

    SIGALRM interrupts a blocking read too (Python retries it after the handler, which raises).
    Worker processes are timed by their parent instead, which can end one stuck in C code."""
    import signal
    import threading

    if (not seconds or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def expired(signum, frame):
        raise CaseTimeout(timeout_message(seconds))

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def segment_case(case: CohortCase, out_dir: Path, segmenter, options: CohortOptions,
                 progress=None, time_limit: bool = False) -> dict:
    """Segment one case with a loaded ``Segmenter``; its row (``failed`` with the error on any
    problem: nothing of this case is half-written, the caller goes on with the next).
    ``time_limit``: enforce ``options.case_timeout_s`` here (in-process runs)."""
    from vmambax.infer.pipeline import segment_files

    t0 = time.perf_counter()
    label_path, report_path, preview_path = case_outputs(out_dir, case.id)
    try:
        if case.problem:
            raise InputError(case.problem)
        with _time_limit(options.case_timeout_s if time_limit else None):
            result, _ = segment_files(
                case.ct, case.pet, label_path, report=report_path,
                preview=preview_path if options.previews else None,
                pet_units=case.pet_units or options.pet_units,
                weight_kg=case.weight_kg or options.weight_kg,
                dose_mbq=case.dose_mbq or options.dose_mbq,
                uptake_minutes=case.uptake_minutes or options.uptake_minutes,
                overwrite=True,  # existing outputs did not verify (stale, partial or --overwrite)
                allow_different_patients=options.allow_different_patients,
                segmenter=segmenter, progress=progress)
    except Cancelled:
        raise  # SIGTERM / Ctrl-C / cancel: stop the cohort, not just this case
    except VMambaXError as exc:
        return {"id": case.id, "status": FAILED, "error": str(exc),
                "seconds": round(time.perf_counter() - t0, 3)}
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the cohort; shown in full
        traceback.print_exc(file=sys.stderr)
        return {"id": case.id, "status": FAILED, "seconds": round(time.perf_counter() - t0, 3),
                "error": f"internal error {type(exc).__name__}: {exc} (a bug in VMambaX; please "
                         f"report it with the traceback printed above)"}
    # The row from the report as written (as a later resumed run rebuilds it from the file).
    row = _row_from_report(case.id, json.loads(report_path.read_text(encoding="utf-8")), OK)
    if case.label is not None:
        _add_dice(row, case, result.label)
    return row


def make_segmenter(options: CohortOptions, device: str, threads: int | None):
    from vmambax.infer.segmenter import Segmenter

    return Segmenter(options.model, device=device, batch_size=options.batch_size, amp=options.amp,
                     threads=threads, compile=options.compile, all_slices=options.all_slices)


# ---------------------------------------------------------------------------- the cohort
class _Tracker:
    """Rows of this run, the summary file and progress/ETA (wall time per segmented case)."""

    def __init__(self, cases, summary: Path, progress: ProgressFn | None, notices=()):
        self.cases, self.summary, self.progress = cases, summary, progress
        self.notices = list(notices)  # the model's: said once at the start, not per case
        self.rows = {c.id: pending_row(c.id) for c in cases}
        self.t0 = time.perf_counter()
        self.t_run: float | None = None  # when the first case started segmenting
        self.segmented = 0

    def counts(self) -> dict:
        out = {OK: 0, SKIPPED: 0, FAILED: 0}
        for r in self.rows.values():
            if r["status"] in out:
                out[r["status"]] += 1
        return out

    def done(self) -> int:
        return sum(r["status"] != PENDING for r in self.rows.values())

    def eta(self, partial: float = 0.0) -> float | None:
        if self.t_run is None or self.segmented + partial <= 0:
            return None
        remaining = len(self.rows) - self.done() - partial
        per_case = (time.perf_counter() - self.t_run) / (self.segmented + partial)
        return max(0.0, remaining * per_case)

    def started(self, case_id: str) -> None:
        if self.t_run is None:
            self.t_run = time.perf_counter()
        self.emit(case_id, None, f"{case_id}: segmenting")

    def begin(self) -> None:
        self.write()
        self.emit(None, None, "starting", warnings=self.notices)

    def news(self, row: dict) -> list[str]:
        """What this run found about a finished case, to be said once: the warnings of a case
        it segmented (a skipped case's were said when it was segmented) and a note such as
        "Dice not computed"; the model's notices were said at the start."""
        found = []
        if row["status"] == OK:
            found += [w for w in row.get("warnings") or [] if w not in self.notices]
        if row["status"] in (OK, SKIPPED) and row.get("error"):
            found.append(row["error"])
        return found

    def finish(self, row: dict, segmented: bool) -> None:
        self.rows[row["id"]] = row
        self.segmented += segmented
        self.write()
        detail = f" ({row['error']})" if row.get("error") and row["status"] == FAILED else ""
        self.emit(row["id"], row["status"], f"{row['id']}: {row['status']}{detail}",
                  warnings=self.news(row))

    def emit(self, case_id, status, message, partial: float = 0.0, warnings=()) -> None:
        if self.progress:
            self.progress(CohortProgress(
                done=self.done(), total=len(self.rows), case_id=case_id, status=status,
                message=message, elapsed_s=time.perf_counter() - self.t0,
                eta_s=self.eta(partial), counts=self.counts(), warnings=list(warnings)))

    def write(self) -> None:
        write_summary(self.summary, [self.rows[c.id] for c in self.cases])

    def ordered(self) -> list[dict]:
        return [self.rows[c.id] for c in self.cases]


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file; give a folder for the per-case outputs")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --out-dir {out_dir}: {exc.strerror or exc}; choose a "
                         f"writable folder") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"--out-dir {out_dir} is not writable; choose another folder")


def run_cohort(cases: list[CohortCase], out_dir, *, options: CohortOptions | None = None,
               devices: list[str] | None = None, shard: tuple[int, int] | None = None,
               progress: ProgressFn | None = None) -> CohortResult:
    """Segment ``cases`` (this shard's part when ``shard=(K, N)``) into ``out_dir``.

    ``devices``: one worker per entry (``["cpu"]`` default: in this process); ``progress``
    receives a ``CohortProgress`` at every case start and end. Raises a ``VMambaXError`` only for
    problems of the whole run (output folder, model file, every device failing); a case's own
    problem is its ``failed`` row.
    """
    from vmambax.infer.registry import notices_for, resolve_model

    options = options or CohortOptions()
    devices = list(devices or ["cpu"])
    out_dir = Path(out_dir).expanduser()
    # A bad model fails the run now, before anything is written.
    path, entry = resolve_model(options.model)
    sha = model_sha256(options.model)
    notices = notices_for(options.model, path, entry, sha256=sha)
    _check_out_dir(out_dir)
    with lock_cohort(out_dir, shard):
        return _run_locked(cases, out_dir, options, devices, shard, progress, sha, notices)


def lock_cohort(out_dir: Path, shard: tuple[int, int] | None):
    """The lock of this cohort run on ``out_dir`` (``vmambax.locks.CohortLock``): a second run on
    the same folder (or the same shard) is refused, and so is a whole-list run while a shard
    run writes there (or the reverse), as both would segment the same cases."""
    from vmambax.locks import CohortLock

    lock = CohortLock(out_dir, shard).acquire()
    try:
        for other in CohortLock.conflicting(out_dir, shard):
            holder = other.holder()
            if holder is not None:
                raise ConfigError(f"{other.what} is already running in {out_dir} (process "
                                  f"{holder.get('pid')}); {other.advice}")
    except BaseException:
        lock.release()
        raise
    return lock


def _run_locked(cases, out_dir: Path, options: CohortOptions, devices, shard, progress, sha,
                notices) -> CohortResult:
    mine = shard_cases(cases, *shard) if shard else list(cases)
    tracker = _Tracker(mine, out_dir / summary_name(shard), progress, notices)
    tracker.begin()

    todo = []
    for case in mine:
        row = None if options.overwrite else verify_case(case, out_dir, sha, options.previews,
                                                                  options.all_slices)
        if row is not None:
            tracker.finish(row, segmented=False)
        elif case.problem:
            tracker.finish({"id": case.id, "status": FAILED, "error": case.problem}, False)
        else:
            todo.append(case)
    if todo:
        threads = worker_threads(devices, options.threads)
        if len(devices) == 1:
            _run_here(todo, out_dir, options, devices[0], threads, tracker)
        else:
            from vmambax.infer.cohort_workers import run_workers

            run_workers(todo, out_dir, options, devices, threads, tracker)
    merged = None
    if shard is not None:
        rows = merge_shards(out_dir, cases, count=shard[1], require_complete=False)
        merged = out_dir / "summary.csv" if rows is not None else None
    return CohortResult(rows=tracker.ordered(), summary=tracker.summary, merged=merged,
                        seconds=time.perf_counter() - tracker.t0, notices=list(notices))


def _run_here(todo, out_dir, options, device, threads, tracker: _Tracker) -> None:
    segmenter = make_segmenter(options, device, threads)  # once for the whole cohort
    for case in todo:
        tracker.started(case.id)

        def within(fraction: float, message: str, case_id=case.id) -> None:
            tracker.emit(case_id, None, f"{case_id}: {message}", partial=fraction)

        tracker.finish(segment_case(case, out_dir, segmenter, options, within, time_limit=True),
                       segmented=True)
