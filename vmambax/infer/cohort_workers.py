"""A cohort on several devices: one spawned worker process per device (``vmambax.infer.cohort``).

Each worker loads the model once and segments the cases its parent hands it, one at a time. Each
has its own pipe to the parent: no lock is shared between workers, so one killed mid-message
(out of memory, scancel) cannot block the others, and its end of the pipe closing tells the
parent which case it took with it. A worker that does not finish a case within the per-case
time limit (hung in a file read, a stuck device) is ended by the parent: that case is a failed
row, the unfinished files it leaves are removed, and a new worker takes its place on that device.
"""

from __future__ import annotations

import collections
import signal
import sys
import time
import traceback
from pathlib import Path

from vmambax.errors import VMambaXError
from vmambax.infer.cohort import CohortOptions, make_segmenter, segment_case, timeout_message
from vmambax.infer.cohort_list import FAILED
from vmambax.infer.devices import DeviceError


def _worker(device: str, threads, options: CohortOptions, out_dir: str, conn) -> None:
    """One device: load the model once, then segment the cases the parent sends until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us
    try:
        segmenter = make_segmenter(options, device, threads)
    except VMambaXError as exc:  # its class travels too, so the parent raises the same kind
        conn.send(("fatal", f"{device}: {exc}", type(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        conn.send(("fatal", f"{device}: internal error {type(exc).__name__}: {exc}\n"
                            f"{traceback.format_exc()}", None))
        return
    conn.send(("ready", segmenter.device_name))
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the parent is gone
            return
        if item is None:
            return
        index, case = item
        conn.send(("done", index, segment_case(case, Path(out_dir), segmenter, options)))


class _Pool:
    """The worker processes, their pipes and the case each one segments."""

    def __init__(self, todo, out_dir: Path, options: CohortOptions, devices, threads, tracker):
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
        self.todo, self.out_dir, self.options, self.threads = todo, out_dir, options, threads
        self.devices, self.tracker = list(devices), tracker
        self.procs: list = []
        self.device_of: list[str] = []
        self.conns: dict = {}
        self.busy: dict[int, tuple[int, float]] = {}  # worker -> (case index, hand-out time)
        self.waiting = collections.deque(range(len(todo)))
        self.fatal: list[str] = []
        self.fatal_type = None
        for device in self.devices:
            self.start(device)

    def start(self, device: str) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, name=f"vmambax-cohort-{device}", daemon=True,
                                args=(device, self.threads if device == "cpu" else None,
                                      self.options, str(self.out_dir), child))
        proc.start()
        child.close()
        self.conns[len(self.procs)] = parent
        self.procs.append(proc)
        self.device_of.append(device)

    def retire(self, w: int) -> None:
        self.conns.pop(w).close()

    def fail_case(self, w: int, error: str) -> None:
        """The case worker ``w`` took with it is failed; its unfinished files are removed."""
        from vmambax.utils import remove_stale_staging

        index, _ = self.busy.pop(w)
        case = self.todo[index]
        remove_stale_staging(self.out_dir / case.id)  # its writer is gone now
        self.tracker.finish({"id": case.id, "status": FAILED, "error": error}, segmented=True)

    def lost(self, w: int) -> None:
        self.procs[w].join(timeout=5)
        self.retire(w)
        if w in self.busy:
            self.fail_case(w, f"worker on {self.device_of[w]} stopped (exit code "
                              f"{self.procs[w].exitcode}) while segmenting this case; check its "
                              f"memory use, then rerun")

    def hand_out(self, w: int) -> None:
        if not self.waiting:
            self.conns[w].send(None)
            self.retire(w)
            return
        index = self.waiting.popleft()
        try:
            self.conns[w].send((index, self.todo[index]))
        except OSError:  # died since its last message
            self.waiting.appendleft(index)
            self.lost(w)
            return
        self.busy[w] = (index, time.monotonic())
        self.tracker.started(self.todo[index].id)

    def end_overdue(self) -> None:
        """End the workers past the per-case time limit; a new worker replaces each."""
        limit = self.options.case_timeout_s
        if not limit:
            return
        now = time.monotonic()
        for w, (_index, since) in list(self.busy.items()):
            if now - since <= limit:
                continue
            proc = self.procs[w]
            proc.kill()  # stuck, maybe in C code: a polite request may never be read
            proc.join(timeout=10)
            self.retire(w)
            self.fail_case(w, timeout_message(limit) + f" (the worker on {self.device_of[w]} "
                                                       f"was stopped)")
            if self.waiting:
                self.start(self.device_of[w])

    def receive(self, w: int) -> None:
        try:
            msg = self.conns[w].recv()
        except (EOFError, OSError):
            self.lost(w)
            return
        if msg[0] == "ready":
            self.hand_out(w)
        elif msg[0] == "done":
            self.busy.pop(w, None)
            self.tracker.finish(msg[2], segmented=True)
            self.hand_out(w)
        elif msg[0] == "fatal":
            self.fatal.append(msg[1])
            self.fatal_type = self.fatal_type or msg[2]
            print(f"warning: worker {msg[1]}", file=sys.stderr)
            self.retire(w)

    def stop(self, clean: bool) -> None:
        for conn in self.conns.values():
            conn.close()  # a worker waiting for a case sees EOF and exits
        for proc in self.procs:
            proc.join(timeout=5 if clean else 0)  # interrupted: stop the workers now
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def run_workers(todo, out_dir, options, devices, threads, tracker) -> None:
    """Segment ``todo`` on one worker process per device; rows go to ``tracker``."""
    from multiprocessing.connection import wait

    pool = _Pool(todo, Path(out_dir), options, devices, threads, tracker)
    clean = False
    try:
        while pool.conns and (pool.waiting or pool.busy):
            by_conn = {c: w for w, c in pool.conns.items()}
            for conn in wait(list(by_conn), timeout=1.0):
                if by_conn[conn] in pool.conns:
                    pool.receive(by_conn[conn])
            pool.end_overdue()
        if pool.waiting:
            if pool.fatal and len(pool.fatal) == len(pool.procs):
                error = pool.fatal_type if pool.fatal_type and issubclass(pool.fatal_type, VMambaXError) \
                    else DeviceError  # a user-facing error (exit 2), never a traceback
                raise error(f"no device could load the model: {'; '.join(pool.fatal)}")
            for index in pool.waiting:
                tracker.finish({"id": todo[index].id, "status": FAILED, "error":
                                "not segmented: every worker stopped "
                                f"({'; '.join(pool.fatal) or 'see the errors above'})"}, False)
        clean = True
    finally:
        pool.stop(clean)
