"""Small shared helpers: atomic file writes, the user's VMambaX folder, OpenMP wait policy,
torch CPU thread count."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``target``; rename it onto ``target`` only on success.

    Writers write to the yielded path; if the block raises, the temporary file (or folder) is
    removed and ``target`` is untouched, so a failure never leaves a half-written output.
    The temporary name keeps ``target``'s suffix (``.nii.gz`` etc.) so format-by-extension
    writers (SimpleITK, PIL) still pick the right format.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=".tmp" + suffix,
                               dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yield a temporary folder next to ``target``; move it to ``target`` only on success.

    ``target`` must not exist yet (or be an empty folder); on failure the temporary folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def user_dir() -> Path:
    """Per-user VMambaX folder (model cache, registered models). Override with VMAMBAX_HOME."""
    root = os.environ.get("VMAMBAX_HOME")
    return Path(root) if root else Path.home() / ".vmambax"


def prefer_passive_wait() -> bool:
    """Ask OpenMP for passive waiting (``OMP_WAIT_POLICY=PASSIVE``) unless the user set it.

    PyTorch's idle CPU threads spin-wait by default; on shared cores (CI runners, shared
    servers, a busy laptop) they steal the CPU from the threads doing the work: on the 2-core
    build machine the nano model ran 6x slower with 2 threads than with passive waiting
    (docs/benchmarks.md, Inference). It only applies before torch is first imported, so the
    command line calls it first thing; inside 3D Slicer torch is already loaded, and there the
    Segmenter's thread count (idle CPUs) avoids oversubscription. True if passive waiting is on.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Use ``n`` intra-op threads inside the block and restore the previous setting afterwards.

    The Segmenter runs inside host applications (3D Slicer), whose global torch state it must
    not change permanently. ``None`` leaves the setting alone.
    """
    import torch

    from vmambax.errors import ConfigError

    if not n:
        yield
        return
    if n < 1:
        raise ConfigError(f"thread count must be >= 1, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
