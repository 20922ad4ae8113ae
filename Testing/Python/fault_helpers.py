"""Leftovers of a process that was killed (kill -9) while writing, made for tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def dead_pid() -> int:
    """The PID of a process that has already exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def staging_left_by_a_killed_writer(target, data: bytes = b"cut by kill -9") -> Path:
    """A staging file of ``target`` (``vmambax.utils.staging_path``'s name) whose writer is gone."""
    from vmambax.utils import staging_path

    target = Path(target)
    ours = staging_path(target).name  # .<stem>.<random>.p<our pid>h<host>.tmp<suffixes>
    head, tail = re.fullmatch(r"(.+\.p)\d+(h[0-9a-f]{6}\.tmp.*)", ours).groups()
    path = target.parent / f"{head}{dead_pid()}{tail}"
    path.write_bytes(data)
    return path
