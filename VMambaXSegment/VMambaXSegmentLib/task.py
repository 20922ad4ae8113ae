"""A background job that keeps Slicer responsive: compute on a worker thread, apply on the main one.

MRML and VTK objects must only be touched on the main (GUI) thread, and PyTorch releases the GIL
while it computes, so the split is: read the nodes into SimpleITK images on the main thread, run
the network on a worker thread (``compute``), then let the main thread write the result into the
scene (``apply``) when the widget's timer sees the task finished. No Qt here, so the same task
runs synchronously from the Python console and in the tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from vmambax.errors import Cancelled


class BackgroundTask:
    """``compute(progress, cancel) -> result`` on a thread; ``apply(result)`` on the caller's.

    progress: read ``fraction`` / ``message`` (thread-safe) from a timer in the GUI.
    cancel(): asks ``compute`` to stop (it checks the event between batches); ``apply`` then
    raises ``Cancelled`` and the scene is left untouched.
    """

    def __init__(self, compute: Callable[[Callable[[float, str], None], threading.Event], Any],
                 apply: Callable[[Any], Any], progress: Callable[[float, str], None] | None = None):
        self._compute = compute
        self._apply = apply
        self._callback = progress
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.cancel_event = threading.Event()
        self.fraction = 0.0
        self.message = "Waiting to start"
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.applied = False
        self.output: Any = None
        self.started_at: float | None = None

    # -- progress, called from the worker -------------------------------------------------------
    def report(self, fraction: float, message: str) -> None:
        with self._lock:
            self.fraction = max(self.fraction, float(fraction))
            self.message = message
        if self._callback is not None and threading.current_thread() is threading.main_thread():
            self._callback(self.fraction, message)  # synchronous runs report straight away

    def snapshot(self) -> tuple[float, str]:
        with self._lock:
            return self.fraction, self.message

    # -- running ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.result = self._compute(self.report, self.cancel_event)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread in apply()
            self.error = exc
        finally:
            self.finished.set()

    def start(self) -> "BackgroundTask":
        """Run ``compute`` on a daemon thread and return at once."""
        if self._thread is not None:
            raise RuntimeError("task already started")
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="VMambaX segmentation", daemon=True)
        self._thread.start()
        return self

    def run(self) -> Any:
        """Run ``compute`` and ``apply`` here, synchronously (console, scripts, tests)."""
        self.started_at = time.monotonic()
        self._run()
        return self.apply()

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def apply(self) -> Any:
        """On the main thread, once ``done``: write the result (or raise the worker's error)."""
        if not self.done:
            raise RuntimeError("task has not finished; call apply() once done is True")
        if self.applied:
            return self.output
        self.applied = True
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise Cancelled("segmentation cancelled by the user; the scene was not changed")
        self.output = self._apply(self.result)
        return self.output
