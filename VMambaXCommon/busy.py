"""One long job at a time in the Slicer process (install, export, segmentation).

Slicer keeps painting during long jobs by running its event loop (``processEvents`` while pip
or the export runs, a timer while the network runs), so a second click on Segment or Start used
to start a nested install or a second run on top of the first. Both panels share ``SHARED``:
they disable their buttons while it is busy (listeners) and every entry point acquires it, so
a click that slips through is refused instead of nesting.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable

from vmambax.errors import VMambaXError


class Busy(VMambaXError):
    """Another VMambaX job is still running."""


class BusyGuard:
    """A non-blocking, non-reentrant "one job at a time" flag with change listeners.

    Not a thread lock: it is used on Slicer's main thread, where waiting would freeze the GUI;
    a second request is refused at once with a message naming the job that runs.
    """

    def __init__(self):
        self._job: tuple[int, str] | None = None
        self._tokens = itertools.count(1)
        self._listeners: list[Callable[[], None]] = []

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def job(self) -> str | None:
        """What is running ("installing Python packages", ...), None when idle."""
        return self._job[1] if self._job else None

    def acquire(self, job: str) -> int:
        """Mark ``job`` as running and return its token; raise ``Busy`` when another runs."""
        if self._job is not None:
            raise Busy(f"VMambaX is still {self._job[1]}; wait until it finishes (or cancel "
                       f"it), then try again")
        token = next(self._tokens)
        self._job = (token, job)
        self._notify()
        return token

    def release(self, token: int) -> None:
        """End the job ``token`` (a stale or repeated release changes nothing)."""
        if self._job is not None and self._job[0] == token:
            self._job = None
            self._notify()

    @contextlib.contextmanager
    def hold(self, job: str):
        token = self.acquire(job)
        try:
            yield token
        finally:
            self.release(token)

    def add_listener(self, callback: Callable[[], None]) -> None:
        if callback not in self._listeners:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback()


SHARED = BusyGuard()  # one per Slicer session: both module panels use it
