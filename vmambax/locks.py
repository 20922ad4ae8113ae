"""One writer per output folder: a lock file holding the writer's PID.

Two trainers writing the same checkpoints and progress file corrupt each other's run, and two
cohort runs on one ``--out-dir`` both segment every case; a second click on Start (or a second
Slicer, a second terminal) used to allow both. The lock file (``<run>/train.lock``,
``<out-dir>/cohort.lock``) is created exclusively (``O_EXCL``) and names the process (PID, its
start time, the host); a lock whose process is gone, or whose PID now belongs to a newer
process, is stale and taken over. A lock from another host cannot be checked, so it is
respected and the message says how to clear it.

A program that takes the lock for a child it starts (the VMambaX Train panel starts
``vmambax train``) hands it down: the child finds the lock held by itself or one of its
ancestors and goes on (``acquire(inherit=True)``), without releasing it at the end.

This is the one implementation: ``vmambax train`` and the cohort use it, and so does the Slicer
Train module (``VMambaXTrainLib.logic``).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from vmambax.errors import ConfigError

TRAIN_LOCK = "train.lock"
COHORT_LOCK = "cohort.lock"


def _psutil():
    try:
        import psutil
    except ImportError:
        from vmambax.errors import DependencyError

        raise DependencyError("the Python package psutil is missing (VMambaX needs it to tell a "
                              "running process from a finished one); install it with: pip "
                              "install psutil (in 3D Slicer: PythonSlicer -m pip install psutil)"
                              ) from None
    return psutil


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when it is gone."""
    psutil = _psutil()
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _ancestors() -> set[int]:
    """This process and every process above it (a launcher, 3D Slicer)."""
    psutil = _psutil()
    pids = {os.getpid()}
    try:
        pids.update(p.pid for p in psutil.Process().parents())
    except psutil.Error:
        pass
    return pids


class FolderLock:
    """The lock of one output folder (``acquire`` / ``update`` / ``release``; a context manager).

    ``what`` names the job in messages ("a training", "a cohort run"); ``advice`` says what
    to do about a live holder (wait, stop it, choose another folder)."""

    def __init__(self, folder, name: str, *, what: str, advice: str):
        self.path = Path(folder) / name
        self.what, self.advice = what, advice
        self.owned = False  # True: this object created the lock and releases it

    def holder(self) -> dict | None:
        """The live process holding the lock (its recorded info), or None (no lock / stale)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            pid = int(info["pid"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable or half-written: no process can be identified by it
        if info.get("host") not in (None, socket.gethostname()):
            return info  # cannot be checked from here
        started = process_start_time(pid)
        if started is None:
            return None  # the process is gone
        recorded = info.get("started")
        if recorded is not None and abs(float(recorded) - started) > 1.0:
            return None  # the PID was reused by a newer process
        return info

    def acquire(self, pid: int | None = None, *, inherit: bool = False) -> "FolderLock":
        """Take the lock for ``pid`` (default: this process) or raise ConfigError naming the
        holder. ``inherit``: a lock held by this process or one of its ancestors (the program
        that started this one took it for us) is accepted as it is."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is not None:
                    if inherit and holder.get("host") in (None, socket.gethostname()) \
                            and int(holder["pid"]) in _ancestors():
                        return self  # handed down to us; the one who took it releases it
                    where = holder.get("host") or "this computer"
                    raise ConfigError(
                        f"{self.what} is already running in {self.path.parent} (process "
                        f"{holder.get('pid')} on {where}); {self.advice}. If none is running "
                        f"there, delete {self.path}") from None
                self.path.unlink(missing_ok=True)  # stale: take it over
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self._payload(pid))
            self.owned = True
            return self
        raise ConfigError(f"could not lock {self.path.parent} (another program keeps creating "
                          f"{self.path}); choose another folder")

    def update(self, pid: int) -> None:
        """Record the PID of the process that now does the work (the lock was taken before)."""
        if not self.owned:
            raise RuntimeError("update() of a lock that is not held")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self._payload(pid), encoding="utf-8")
        os.replace(tmp, self.path)

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False

    def __enter__(self) -> "FolderLock":
        return self.acquire() if not self.owned else self

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def _payload(pid: int | None) -> str:
        pid = os.getpid() if pid is None else int(pid)
        return json.dumps({"pid": pid, "started": process_start_time(pid),
                           "host": socket.gethostname()}) + "\n"


class RunLock(FolderLock):
    """``RUN_DIR/train.lock``: one trainer per run folder."""

    def __init__(self, run_dir):
        super().__init__(run_dir, TRAIN_LOCK, what="a training",
                         advice="wait for it to finish, or stop it (an empty file named STOP in "
                                "that folder makes it save a checkpoint and exit), or choose "
                                "another run folder")


class CohortLock(FolderLock):
    """``DIR/cohort.lock`` (``cohort-shard-K-of-N.lock`` for a shard): one cohort run per output
    folder (per shard: the shards of one array job write into one folder side by side)."""

    def __init__(self, out_dir, shard: tuple[int, int] | None = None):
        name = COHORT_LOCK if shard is None else f"cohort-shard-{shard[0]}-of-{shard[1]}.lock"
        super().__init__(out_dir, name, what="a cohort run" if shard is None else
                         f"a cohort run of shard {shard[0]} of {shard[1]}",
                         advice="wait for it to finish (it resumes: finished cases are skipped), "
                                "stop it, or choose another --out-dir")

    @classmethod
    def conflicting(cls, out_dir, shard: tuple[int, int] | None) -> list["CohortLock"]:
        """The other runs that would segment the same cases: for a shard, a whole-list run;
        for a whole-list run, every shard run (their lock files in ``out_dir``)."""
        if shard is not None:
            return [cls(out_dir)]
        names = (re.fullmatch(r"cohort-shard-(\d+)-of-(\d+)\.lock", p.name)
                 for p in Path(out_dir).iterdir())
        return [cls(out_dir, (int(m.group(1)), int(m.group(2)))) for m in names if m]
