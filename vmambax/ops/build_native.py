"""Build the ``native`` selective-scan library (vmambax/ops/_native/scan.c) with the C compiler.

    python -m vmambax.ops.build_native          # rebuild it next to the sources
    python -m vmambax.ops.build_native --check  # say whether it loads, and why not

The library is plain C99 with no Python C-API, so any C compiler that makes shared libraries
builds it: ``$CC`` or the first of cc, gcc, clang on PATH (POSIX), or MSVC through setuptools
(Windows). ``pip install`` runs the same function from setup.py, and a compiler failure there only
prints a note: the package then runs with the ``chunked`` backend. This module uses the standard
library only (setup.py loads it by path, before vmambax or torch are importable).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent / "_native"
ENV_LIB = "VMAMBAX_NATIVE_LIB"  # the loader takes this file instead (vmambax.ops.native)
SOURCES = ("scan.c",)
# -O3 for gcc's loop vectoriser; -fopenmp-simd honours the kernels' `omp simd` pragmas without an
# OpenMP runtime; fp-contract=fast lets FMA machines fuse multiply-adds. Never -ffast-math.
POSIX_FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-fvisibility=hidden", "-ffp-contract=fast",
               "-fopenmp-simd")
MSVC_FLAGS = ("/O2", "/fp:precise")  # plain loops there (KU_SIMD and the vector extensions are GNU C)


class BuildError(RuntimeError):
    """The C compiler is missing or failed; the message says which and what to do."""


def library_name(platform: str | None = None) -> str:
    platform = platform or sys.platform
    if platform.startswith("win"):
        return "libvmambax_scan.dll"
    if platform == "darwin":
        return "libvmambax_scan.dylib"
    return "libvmambax_scan.so"


def _find_cc() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or (cc if os.path.isfile(cc) else None)
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _build_posix(cc: str, sources: list[str], out: Path, extra: list[str]) -> None:
    flags = list(POSIX_FLAGS) + extra
    if "clang" not in os.path.basename(cc):
        flags.append("-Wno-psabi")  # gcc's notes about AVX arguments of the inline helpers
    libs = [] if sys.platform == "darwin" else ["-lpthread"]
    for attempt in range(2):
        cmd = [cc, *flags, *sources, "-o", str(out), *libs]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        if attempt == 0 and ("openmp-simd" in proc.stderr or "psabi" in proc.stderr):
            flags = [f for f in flags if f not in ("-fopenmp-simd", "-Wno-psabi")]  # an old compiler
            continue
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise BuildError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")


def _build_msvc(sources: list[str], out: Path, tmp: Path, extra: list[str]) -> None:
    try:
        from setuptools._distutils.ccompiler import new_compiler
    except ImportError as exc:
        raise BuildError(f"no C compiler: building on Windows needs setuptools and MSVC "
                         f"(Visual Studio Build Tools) ({exc})") from exc
    try:
        compiler = new_compiler()
        objects = compiler.compile(sources, output_dir=str(tmp), extra_postargs=list(MSVC_FLAGS) + extra)
        compiler.link_shared_object(objects, str(out))
    except Exception as exc:  # CompileError, LinkError, DistutilsPlatformError (no MSVC)
        raise BuildError(f"MSVC build failed: {exc}") from exc


def build(out_dir: str | os.PathLike | None = None, extra_flags=()) -> Path:
    """Compile the library into ``out_dir`` (default: next to the sources) and return its path.

    ``extra_flags`` go to the compiler (the tests build the portable kernels with
    ``-DVMX_NO_VECTOR_EXT``, the code MSVC compiles).
    The file is written under a temporary name, loaded once to check it, then moved into place,
    so a failed build never replaces a working library. Raises ``BuildError``.
    """
    out_dir = Path(out_dir) if out_dir is not None else SOURCE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / library_name()
    missing = [name for name in SOURCES if not (SOURCE_DIR / name).is_file()]
    if missing:
        raise BuildError(f"the C sources are not installed ({', '.join(missing)} not in {SOURCE_DIR}), "
                         f"so the native library cannot be built here; reinstall vmambax from its "
                         f"source (pip install, or the Slicer extension) with a C compiler")
    sources = [str(SOURCE_DIR / name) for name in SOURCES]
    # ignore_cleanup_errors: Windows cannot delete the staged DLL that _check_loads has loaded.
    with tempfile.TemporaryDirectory(prefix="vmambax-native-", ignore_cleanup_errors=True) as tmp:
        staged = Path(tmp) / target.name
        if sys.platform.startswith("win"):
            _build_msvc(sources, staged, Path(tmp), list(extra_flags))
        else:
            cc = _find_cc()
            if cc is None:
                raise BuildError("no C compiler found (set CC, or install gcc or clang)")
            _build_posix(cc, sources, staged, list(extra_flags))
        _check_loads(staged)
        temporary = out_dir / (target.name + ".tmp")
        try:
            shutil.copy2(staged, temporary)
            os.replace(temporary, target)
        except OSError as exc:
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass
            raise BuildError(f"cannot write {target}: {os_problem(target, exc)}") from exc
    return target


def os_problem(target: Path, exc: OSError) -> str:
    """Why the library could not be put at ``target`` and the fix that fits the error (a full
    disk, a read-only or unwritable folder; on Windows a DLL in use)."""
    import errno

    code = errno.errorcode.get(exc.errno or 0, "")
    reason = f"{exc.strerror or exc}" + (f" ({code})" if code else "")
    if exc.filename and str(exc.filename) != str(target):
        reason += f" ({exc.filename})"
    folder = target.parent
    elsewhere = (f"build it into a writable folder with `python -m vmambax.ops.build_native "
                 f"--out-dir DIR` and set {ENV_LIB}=DIR/{target.name}")
    if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", None):
        fix = f"free some space on the disk holding {folder}, or {elsewhere}"
    elif exc.errno == errno.EROFS:
        fix = f"{folder} is on a read-only file system; {elsewhere}"
    elif sys.platform.startswith("win") and target.exists() and exc.errno in (errno.EACCES, errno.EPERM):
        # Windows refuses to replace a DLL that a running program has loaded.
        fix = "close the programs that use vmambax (Python, 3D Slicer) and build again"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        fix = f"{folder} is not writable for you; {elsewhere}"
    else:
        fix = elsewhere
    return f"{reason}; {fix}"


def _check_loads(path: Path) -> None:
    import ctypes

    try:
        lib = ctypes.CDLL(str(path))
        lib.vmx_scan_abi_version.restype = ctypes.c_int
        lib.vmx_scan_abi_version()
    except (OSError, AttributeError) as exc:
        raise BuildError(f"the built library {path.name} does not load: {exc}") from exc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmambax.ops.build_native", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", help="where to write the library (default: next to the sources)")
    parser.add_argument("--check", action="store_true", help="only report whether the native backend loads")
    args = parser.parse_args(argv)
    if not args.check:
        try:
            path = build(args.out_dir)
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # e.g. the output folder cannot be made, the disk is full
            where = Path(args.out_dir) if args.out_dir else SOURCE_DIR
            print(f"error: cannot build the native library into {where}: "
                  f"{os_problem(where / library_name(), exc)}", file=sys.stderr)
            return 2
        print(f"built {path}")
        if args.out_dir:
            if os.environ.get(ENV_LIB, "").strip():
                return 0
            print(f"note: vmambax loads it when {ENV_LIB}={path} is set")
            return 0
    from vmambax.ops import native

    reason = native.unavailable_reason()
    if reason:
        print(f"native backend: not available: {reason}")
        return 2
    isa = native.isa_problem()
    if isa:
        print(f"native backend: loads, but {isa}")
        return 2
    print(f"native backend: loads ({native.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
