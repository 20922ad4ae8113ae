"""Child processes the way Slicer starts them: no console window on Windows, output captured,
and ended as a whole process tree.

- ``hidden_console_options`` gives the ``subprocess.Popen`` arguments Slicer's
  ``slicer.util.launchConsoleProcess`` uses on Windows (a hidden ``STARTUPINFO``), plus
  ``CREATE_NO_WINDOW`` so a console program (PythonSlicer, pip) never flashes a window.
  ``launchConsoleProcess`` itself is not used for the trainer: it pipes the output into Slicer,
  so a trainer that outlives the pipe (Slicer closed, or a stop in progress) would fail on its
  next write; the trainer writes to its log file instead.
- ``terminate_tree`` ends a process and everything it started, children first: PythonSlicer is a
  launcher whose child is the real Python, and the trainer may have data-loader workers, so
  ending only the launcher left the training running.
- ``ProcessJob`` runs a child in the background with its output read on threads (the
  segmentation worker, the GPU-acceleration build); ``run_command`` runs a short command (pip)
  to completion on top of it, streaming its lines to a callback (Slicer's log and event loop)
  and keeping the tail for error messages.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable

CREATE_NO_WINDOW = 0x08000000  # winbase.h; subprocess.CREATE_NO_WINDOW exists only on Windows
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


def hidden_console_options(os_name: str = os.name, subprocess_module=subprocess) -> dict:
    """Extra ``Popen`` keyword arguments that hide the console window on Windows ({} elsewhere)."""
    if os_name != "nt":
        return {}
    info = subprocess_module.STARTUPINFO()
    info.dwFlags |= STARTF_USESHOWWINDOW
    info.wShowWindow = SW_HIDE
    return {"startupinfo": info, "creationflags": CREATE_NO_WINDOW}


def python_executable() -> str:
    """The Python for child processes: PythonSlicer inside Slicer, else this Python.

    Inside Slicer ``sys.executable`` is the application itself on some platforms, which would
    open a second Slicer instead of running the command.
    """
    try:
        import slicer

        app_dir = slicer.app.applicationDirPath  # only in a full Slicer
    except AttributeError:
        return sys.executable
    found = shutil.which("PythonSlicer", path=os.pathsep.join(
        [app_dir, os.path.join(app_dir, "..", "bin"), os.environ.get("PATH", "")]))
    return found or sys.executable


def vmambax_env(base=None) -> dict:
    """The environment for a ``python -m vmambax ...`` child: inside Slicer the ``vmambax``
    package sits next to the modules, which PythonSlicer does not search, so its folder goes
    first on ``PYTHONPATH``; output unbuffered, so progress arrives as it is made."""
    import vmambax

    env = dict(os.environ if base is None else base)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(vmambax.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def launch(command, stdout, env=None, cwd=None) -> subprocess.Popen:
    """Start ``command`` (an argument list, never a shell) in the background, console hidden."""
    return subprocess.Popen([str(c) for c in command], stdout=stdout, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=cwd, **hidden_console_options())


def require_psutil():
    """psutil (a declared dependency of training), or DependencyError saying how to install it."""
    try:
        import psutil
    except ImportError:
        from vmambax.errors import DependencyError

        raise DependencyError("the Python package psutil is missing (VMambaX needs it to stop "
                              "the training processes); install it with: PythonSlicer -m pip "
                              "install psutil, or press Start again to let VMambaX install "
                              "it") from None
    return psutil


def terminate_tree(pid: int, timeout: float = 10.0) -> list[int]:
    """End process ``pid`` and all its descendants; return the PIDs that had to be killed.

    Children are found first (once the parent is gone they are re-parented and cannot be found
    from it), asked to terminate, then the parent; whatever is still alive after ``timeout``
    seconds is killed.
    """
    psutil = require_psutil()

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    try:
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    procs = children + [parent]
    for proc in procs:  # children first, so none is left to respawn work
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    killed = []
    for proc in alive:
        try:
            proc.kill()
            killed.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    return killed


class ProcessJob:
    """A child process run in the background: its output lines are read on threads, so the
    caller (Slicer's main thread, a worker thread) polls without ever blocking on a pipe.

    ``stdout`` lines go to ``lines`` (a queue: ``next_line(timeout)``); ``stderr`` lines, or all
    output with ``merge_stderr``, are kept in ``tail`` and passed to ``on_line``. With
    ``stdin_pipe`` the child's stdin is a pipe it can watch: it closes when this process exits
    or crashes (``vmambax.infer.worker`` then stops at once); otherwise stdin is empty (pip must
    never wait for an answer). ``cancel`` ends the whole process tree;
    ``time_limit`` (seconds) is enforced by ``expired``/``next_line``.
    """

    def __init__(self, command, env=None, cwd=None, on_line: Callable[[str], None] | None = None,
                 merge_stderr: bool = False, tail_lines: int = 200,
                 time_limit: float | None = None, stdin_pipe: bool = False):
        self.command = [str(c) for c in command]
        self.on_line = on_line
        self.time_limit = time_limit
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.lines: queue.Queue = queue.Queue()
        self.cancelled = False
        self.timed_out = False
        self._merged = merge_stderr
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL, env=env, cwd=cwd,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **hidden_console_options())
        self._readers = [self._reader(self.process.stdout, to_queue=not merge_stderr)]
        if not merge_stderr:
            self._readers.append(self._reader(self.process.stderr, to_queue=False))

    def _reader(self, stream, to_queue: bool) -> threading.Thread:
        def read():
            try:
                for line in stream:
                    line = line.rstrip("\n")
                    if to_queue:
                        self.lines.put(line)
                        continue
                    self.tail.append(line)
                    if self.on_line is not None:
                        try:
                            self.on_line(line)
                        except Exception:  # noqa: BLE001 - a logging problem must not stop reading
                            pass
            except (OSError, ValueError):
                pass
            finally:
                if to_queue or self._merged:
                    self.lines.put(None)  # end of output

        thread = threading.Thread(target=read, name="VMambaX process output", daemon=True)
        thread.start()
        return thread

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def expired(self) -> bool:
        """Past the time limit: the tree is ended (once) and ``timed_out`` set."""
        if (self.time_limit is not None and not self.timed_out and self.running()
                and time.monotonic() - self.started_at > self.time_limit):
            self.timed_out = True
            self._end_tree(timeout=5.0)
        return self.timed_out

    def next_line(self, timeout: float = 0.1):
        """The next stdout line, "" when none came within ``timeout`` seconds, None once the
        output has ended (with ``merge_stderr`` every line goes to ``tail``/``on_line``, and
        this only says when the output ended)."""
        self.expired()
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        for thread in self._readers:  # the last lines are read before the caller looks
            thread.join(timeout=5.0)
        self._close()
        return code

    def cancel(self, timeout: float = 1.0) -> None:
        """End the process and everything it started now (terminate; kill after ``timeout``)."""
        if self.running():
            self.cancelled = True
            self._end_tree(timeout)
        self.wait(timeout=max(timeout, 5.0))

    def _end_tree(self, timeout: float) -> None:
        try:
            terminate_tree(self.process.pid, timeout=timeout)
        except Exception:  # noqa: BLE001 - no psutil yet (first install): the process alone
            self.process.kill()

    def _close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def run_command(command, timeout: float | None = None, on_line: Callable[[str], None] | None = None,
                env=None, tail_lines: int = 200) -> tuple[int, str]:
    """Run ``command`` to completion; return ``(returncode, last lines of its output)``.

    Each output line goes to ``on_line`` as it arrives (Slicer: log it, keep the GUI painting).
    Past ``timeout`` seconds the process tree is ended and the return code is -1, with a note
    saying so at the end of the output.
    """
    job = ProcessJob(command, env=env, on_line=on_line, merge_stderr=True,
                     tail_lines=tail_lines, time_limit=timeout)
    while job.next_line(timeout=0.2) is not None:
        pass
    code = job.wait()
    if job.timed_out:
        job.tail.append(f"(stopped after {timeout:g} s without finishing)")
        code = -1
    return code, "\n".join(job.tail)
