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
- ``run_command`` runs a short command (pip) to completion, streaming its lines to a callback
  (Slicer's log and event loop) and keeping the tail for error messages.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import threading
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


def run_command(command, timeout: float | None = None, on_line: Callable[[str], None] | None = None,
                env=None, tail_lines: int = 200) -> tuple[int, str]:
    """Run ``command`` to completion; return ``(returncode, last lines of its output)``.

    Each output line goes to ``on_line`` as it arrives (Slicer: log it, keep the GUI painting).
    Past ``timeout`` seconds the process tree is ended and the return code is -1, with a note
    saying so at the end of the output.
    """
    proc = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            text=True, errors="replace", **hidden_console_options())
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    timer = None
    timed_out = threading.Event()
    if timeout is not None:
        def _expire():
            timed_out.set()
            try:
                terminate_tree(proc.pid, timeout=5.0)
            except Exception:  # noqa: BLE001 - no psutil yet (first install): the process alone
                proc.kill()

        timer = threading.Timer(timeout, _expire)
        timer.daemon = True
        timer.start()
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if on_line is not None:
                on_line(line)
        code = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        proc.stdout.close()
    if timed_out.is_set():
        tail.append(f"(stopped after {timeout:g} s without finishing)")
        code = -1
    return code, "\n".join(tail)
