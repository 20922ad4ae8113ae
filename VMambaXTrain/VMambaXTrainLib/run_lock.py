"""One trainer per run folder: a lock file holding the trainer's PID.

Two trainers writing the same checkpoints and progress file corrupt each other's run, which a
second click on Start (or a second Slicer) used to allow. The lock file ``<run>/train.lock``
is created exclusively (``O_EXCL``) and names the process (PID, its start time, the host);
a lock whose process is gone, or whose PID now belongs to a newer process, is stale and taken
over. A lock from another host cannot be checked, so it is respected and the message says how
to clear it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from vmambax.errors import ConfigError

LOCK_NAME = "train.lock"


def _process_start_time(pid: int) -> float | None:
    from VMambaXCommon.processes import require_psutil

    psutil = require_psutil()

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _describe(info: dict) -> str:
    return f"process {info.get('pid')} on {info.get('host') or 'this computer'}"


class RunLock:
    """The lock of one run folder (``acquire`` / ``update`` / ``release``)."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self.owned = False

    def holder(self) -> dict | None:
        """The live process holding the lock (its recorded info), or None (no lock / stale)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            pid = int(info["pid"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable or half-written: no trainer can be identified by it
        if info.get("host") not in (None, socket.gethostname()):
            return info  # cannot be checked from here
        started = _process_start_time(pid)
        if started is None:
            return None  # the process is gone
        recorded = info.get("started")
        if recorded is not None and abs(float(recorded) - started) > 1.0:
            return None  # the PID was reused by a newer process
        return info

    def acquire(self, pid: int | None = None) -> None:
        """Take the lock for ``pid`` (default: this process) or raise ConfigError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is not None:
                    raise ConfigError(
                        f"a training is already running in {self.path.parent} "
                        f"({_describe(holder)}); wait for it to finish, or stop it (an empty "
                        f"file named STOP in that folder makes it save a checkpoint and exit), "
                        f"or choose another run folder. If no training is running there, "
                        f"delete {self.path}") from None
                self.path.unlink(missing_ok=True)  # stale: take it over
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self._payload(pid))
            self.owned = True
            return
        raise ConfigError(f"could not lock the run folder {self.path.parent} (another program "
                          f"keeps creating {self.path}); choose another run folder")

    def update(self, pid: int) -> None:
        """Record the trainer's PID once it has started (the lock was taken before)."""
        if not self.owned:
            raise RuntimeError("update() of a lock that is not held")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self._payload(pid), encoding="utf-8")
        os.replace(tmp, self.path)

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False

    @staticmethod
    def _payload(pid: int | None) -> str:
        pid = os.getpid() if pid is None else int(pid)
        return json.dumps({"pid": pid, "started": _process_start_time(pid),
                           "host": socket.gethostname()}) + "\n"
