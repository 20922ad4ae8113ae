"""Small shared helpers: verified atomic file writes (the one write-and-verify helper), the user's VMambaX folder, OpenMP wait policy,
torch CPU thread count."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path


# ---------------------------------------------------------------------------- verified writes
# Every output goes through ``atomic_path`` / ``atomic_group`` (one file or several) or
# ``atomic_dir`` (a folder): it is written under a staging name in the target's folder, flushed
# to disk, VERIFIED (not empty, and read back in its format), and only then renamed onto the
# target. Some writers do not report a full disk (SimpleITK's WriteImage returns silently with a
# truncated file on ENOSPC), so the read-back is what proves the file is whole. Any OSError and
# any failed verification becomes an ``OutputError`` naming the path and the free space; the
# staging file is removed and an existing target is never replaced by a bad file.

#: Staging names: ``.<stem>.<8 random chars>.p<pid>h<host>.tmp<suffixes>`` (files) and
#: ``.<name>.<8 random chars>.p<pid>h<host>.tmp`` (folders): the writer's process id and a tag
#: of its host, so that a later run can tell a file a killed process left from one a live
#: process is still writing. Names without the ``p<pid>h<host>`` part (older versions) are
#: recognised too.
_STAGING_RE = re.compile(r"^\.(?P<stem>.+?)\.[a-z0-9_]{8}(?:\.p(?P<pid>\d+)h(?P<host>[0-9a-f]{6}))?"
                         r"\.tmp(?P<suffix>\..+)?$")

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth")
#: Outputs that may legitimately be empty (e.g. an empty split list).
EMPTY_OK_SUFFIXES = (".txt",)


def _host_tag() -> str:
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def _owner_tag() -> str:
    return f".p{os.getpid()}h{_host_tag()}"


def staging_path(target: Path, suffix: str | None = None, folder: bool = False) -> Path:
    """A new, unused staging name next to ``target`` (created, for folders)."""
    if folder:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=f"{_owner_tag()}.tmp",
                                     dir=target.parent))
    suffix = suffix if suffix is not None else "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{_file_stem(target)}.", suffix=f"{_owner_tag()}.tmp{suffix}",
                               dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    return Path(tmp)


def _file_stem(target: Path) -> str:
    return target.name.split(".")[0]


def is_staging_name(name: str) -> bool:
    return bool(_STAGING_RE.match(name))


def _writer_is_gone(path: Path, match) -> bool:
    """Was the staging file at ``path`` left by a process that no longer runs? Unknown writers
    (another host's, a live process's) are not judged: their file is left alone."""
    pid = match.group("pid")
    if pid is None:
        return True  # an older version's name: its writer cannot be identified, nor be running
    if match.group("host") != _host_tag():
        return False  # written on another computer (a shared file system): cannot be checked
    pid = int(pid)
    if pid == os.getpid():
        return False  # ours: being written right now (nested writers)
    try:
        import psutil
    except ImportError:  # psutil is a dependency; without it, liveness only (no reuse check)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass
        return False
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # AccessDenied: alive, another user's
        return False
    try:
        written = path.lstat().st_mtime
    except OSError:
        return False
    return started > written + 1.0  # the PID was reused by a process that started later


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def remove_stale_staging(folder: str | os.PathLike, targets=None) -> list[Path]:
    """Delete the staging files/folders that a killed process (kill -9, power loss) left in
    ``folder``, and return them. ``targets``: only the staging files of these outputs (their
    name stem and suffixes; a folder target: its name), so that a run removes what it owns and
    nothing another program left there. A staging file whose writer still runs (the PID in its
    name), or that another computer wrote, is never removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    owned = None
    if targets is not None:
        owned = set()
        for target, suffix in targets:
            target = Path(target)
            owned.add((_file_stem(target), suffix if suffix is not None else "".join(target.suffixes)))
            owned.add((target.name, None))  # the same target written as a folder (atomic_dir)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _STAGING_RE.match(path.name)
        if match is None:
            continue
        if owned is not None and (match.group("stem"), match.group("suffix")) not in owned:
            continue
        if _writer_is_gone(path, match):
            _remove(path)
            removed.append(path)
    return removed


def _remove_stale_staging_of(targets, suffixes=None, folders: bool = False) -> None:
    """Before writing ``targets``: remove their stale staging files in their folders."""
    by_folder: dict[Path, list] = {}
    for target, suffix in zip(targets, suffixes or [None] * len(targets)):
        target = Path(target)
        if is_staging_name(target.name):
            continue
        by_folder.setdefault(target.parent, []).append((target, None if folders else suffix))
    for folder, owned in by_folder.items():
        remove_stale_staging(folder, owned)


def free_space(path: str | os.PathLike) -> str:
    """Human-readable free space of the file system holding ``path`` (or its nearest parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "unknown space"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if free >= size:
            return f"{free / size:.1f} {unit}"
    return f"{free} bytes"


def output_error(target: str | os.PathLike, problem: BaseException | str, others=()):
    """The ``OutputError`` for a failed write of ``target`` (an OSError or a failed check);
    ``others``: outputs staged with it (when it is not known which of them failed)."""
    from vmambax.errors import OutputError

    target = Path(target)
    also = [Path(o).name for o in others if Path(o) != target]
    folder = target.parent
    if isinstance(problem, OSError):
        code = errno.errorcode.get(problem.errno or 0, "")
        reason = f"{problem.strerror or problem}" + (f" ({code})" if code else "")
        if problem.errno in (errno.EACCES, errno.EPERM):
            fix = f"make {folder} writable or choose another output location."
        elif problem.errno == errno.EROFS:
            fix = f"{folder} is on a read-only file system; choose another output location."
        else:
            fix = "free some space or choose another output location."
    else:
        reason = str(problem)
        fix = "free some space or choose another output location."
    kept = " The existing file was left as it was." if target.exists() else ""
    what = f"{target} (with {', '.join(also)})" if also else f"{target}"
    if also:
        kept = " Existing files were left as they were." if target.exists() or any(
            (folder / o).exists() for o in also) else ""
    error = OutputError(f"cannot write {what}: {reason}; {free_space(folder)} free in {folder}. "
                        f"Nothing was written: {fix}{kept}")
    error.path, error.reason = target, problem
    return error


def verify_file(path: str | os.PathLike, name: str | None = None) -> None:
    """Raise ``ValueError`` (the reason) unless ``path`` is a complete file of the format its
    name (``name``, default the path's) says: not empty, and read back by the format's reader
    (SimpleITK for images, json for JSON, PIL for PNG, a weights-only torch.load for model and
    checkpoint files, pydicom for DICOM)."""
    path = Path(path)
    name = (name or path.name).lower()
    if path.is_dir():
        return
    size = path.stat().st_size
    if size == 0:
        if name.endswith(EMPTY_OK_SUFFIXES):
            return
        raise ValueError("the written file is empty (0 bytes)")
    try:
        if name.endswith(IMAGE_SUFFIXES):
            import SimpleITK as sitk

            sitk.ReadImage(str(path))
            if name.endswith((".nii", ".nii.gz")):
                _check_nifti_length(path)  # ITK pads a short NIfTI without a word
            elif name.endswith(".gz"):
                _check_gzip(path)
            elif name.endswith((".nrrd", ".mha")):
                _check_embedded_stream(path)  # a cut zlib trailer reads back without error
        elif name.endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                json.load(fh)
        elif name.endswith(".png"):
            from PIL import Image

            with Image.open(path) as im:
                im.load()
            with open(path, "rb") as fh:  # PIL decodes a PNG that lost its end chunk
                fh.seek(-12, os.SEEK_END)
                if fh.read(12) != b"\x00\x00\x00\x00IEND\xaeB`\x82":
                    raise ValueError("the PNG has no end chunk (truncated)")
        elif name.endswith(TORCH_SUFFIXES):
            import torch

            try:  # mmap: the tensors need not fit in memory twice
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        elif name.endswith(".dcm"):
            import pydicom

            cut = dicom_cut_short(path)
            if cut:
                raise ValueError(f"the DICOM file is cut short: {cut}")
            _check_dicom(pydicom.dcmread(str(path)))
        elif name.endswith(".npy"):
            import numpy as np

            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # a short file cannot map
            if arr.size:
                arr.reshape(-1)[-1].item()  # and its last element is readable
    except Exception as exc:  # every reader has its own exception types
        text = str(exc).strip().splitlines()
        raise ValueError(f"the written file ({size} bytes) does not read back "
                         f"({type(exc).__name__}: {text[-1] if text else ''})") from None


def _open_maybe_gzip(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _check_gzip(path: Path) -> None:
    with gzip.open(path, "rb") as fh:  # EOFError when the stream or its CRC trailer is cut
        while fh.read(1 << 22):
            pass


def _check_embedded_stream(path: Path) -> None:
    """NRRD / MetaImage with compressed data: the deflate stream after the header must be whole."""
    with open(path, "rb") as fh:
        data = fh.read()
    if path.name.lower().endswith(".nrrd"):
        end = data.find(b"\n\n")
        if end < 0:
            raise ValueError("its header is incomplete (truncated)")
        header, wbits = data[:end], 47  # gzip or zlib header, auto-detected
        compressed = re.search(rb"(?m)^encoding:\s*(gz|gzip)\s*$", header) is not None
        start = end + 2
    else:
        m = re.search(rb"ElementDataFile\s*=\s*LOCAL\r?\n", data)
        if m is None:
            return
        header, start, wbits = data[:m.start()], m.end(), 15
        compressed = re.search(rb"CompressedData\s*=\s*True", header) is not None
    if compressed:
        d = zlib.decompressobj(wbits)
        d.decompress(data[start:])
        if not d.eof:
            raise ValueError("its compressed data stream is cut short (truncated)")


_DICOM_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                   b"UT", b"UV"}
_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"


class _CutShort(Exception):
    pass


def dicom_cut_short(path: str | os.PathLike) -> str | None:
    """Why the DICOM file at ``path`` is cut short (truncated), or None when it is complete (or
    not a DICOM Part 10 file, or in a transfer syntax this check cannot walk).

    pydicom reads a cut file without a word or with a message that says nothing to a user ("No
    tag to read at file position ..."): it stops at the end of the data, so a sequence of
    undefined length that never closes simply ends. Here the elements are walked by their
    lengths: each must end inside the file, and each sequence or item of undefined length must
    reach its delimiter."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    try:
        pos, syntax = _dicom_meta(data)
        if syntax in (_EXPLICIT_BE, _DEFLATED):
            return None
        _dicom_walk(data, pos, explicit=syntax != _IMPLICIT_LE)
    except _CutShort as exc:
        return str(exc)
    except (struct.error, ValueError):  # malformed in another way: pydicom reports it
        return None
    return None


def _dicom_meta(data: bytes) -> tuple[int, str]:
    """End of the file meta group (always explicit VR little endian) and the transfer syntax."""
    pos, syntax = 132, _IMPLICIT_LE
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        element = struct.unpack_from("<H", data, pos + 2)[0]
        header, length = _dicom_header(data, pos, explicit=True)
        end = pos + header + length
        if end > len(data):
            raise _CutShort(f"the file meta information ends after {len(data)} bytes")
        if element == 0x0010:
            syntax = data[pos + header:end].rstrip(b"\0 ").decode("ascii", "replace")
        pos = end
    return pos, syntax


def _dicom_header(data: bytes, pos: int, explicit: bool) -> tuple[int, int]:
    if pos + 8 > len(data):
        raise _CutShort(f"an element header at byte {pos} is incomplete ({len(data)} bytes in all)")
    if explicit and data[pos + 4:pos + 6] in _DICOM_LONG_VRS:
        if pos + 12 > len(data):
            raise _CutShort(f"an element header at byte {pos} is incomplete ({len(data)} bytes in all)")
        return 12, struct.unpack_from("<I", data, pos + 8)[0]
    if explicit:
        return 8, struct.unpack_from("<H", data, pos + 6)[0]
    return 8, struct.unpack_from("<I", data, pos + 4)[0]


def _dicom_walk(data: bytes, pos: int, explicit: bool, closing: int | None = None) -> int:
    """Walk data elements from ``pos`` to the end of the file, or (``closing``) to the item
    delimiter that ends an item of undefined length; return the position after it."""
    undefined = 0xFFFFFFFF
    while closing is not None or pos < len(data):
        if pos + 8 > len(data):
            raise _CutShort(f"the data ends at byte {len(data)} inside an item that is never closed")
        group, element = struct.unpack_from("<HH", data, pos)
        if group == 0xFFFE:
            if element == closing:
                return pos + 8
            raise ValueError("a delimiter where a data element should be")
        header, length = _dicom_header(data, pos, explicit and group != 0xFFFE)
        pos += header
        if length == undefined:
            pos = _dicom_items(data, pos, explicit)
        else:
            pos += length
            if pos > len(data):
                raise _CutShort(f"element ({group:04X},{element:04X}) needs {pos} bytes, the file "
                                f"has {len(data)}")
    return pos


def _dicom_items(data: bytes, pos: int, explicit: bool) -> int:
    """The items of a sequence (or encapsulated pixel data) of undefined length, up to and past
    its sequence delimiter."""
    while True:
        if pos + 8 > len(data):
            raise _CutShort(f"the data ends at byte {len(data)} inside a sequence that is never closed")
        group, element = struct.unpack_from("<HH", data, pos)
        length = struct.unpack_from("<I", data, pos + 4)[0]
        if (group, element) == (0xFFFE, 0xE0DD):
            return pos + 8
        if (group, element) != (0xFFFE, 0xE000):
            raise ValueError("a sequence holds something other than items")
        if length == 0xFFFFFFFF:
            pos = _dicom_walk(data, pos + 8, explicit, closing=0xE00D)
        else:
            pos += 8 + length
            if pos > len(data):
                raise _CutShort(f"a sequence item needs {pos} bytes, the file has {len(data)}")


def _check_dicom(ds) -> None:
    """pydicom reads a cut file without a word: its pixel data must be there and complete."""
    if "SOPInstanceUID" not in ds:
        raise ValueError("the DICOM file lacks its SOP Instance UID (truncated)")
    if "PixelData" not in ds:
        if ds.get("Modality") in ("RTSTRUCT", "SR", "KO", "PR", "REG"):  # no pixels by design
            return
        raise ValueError("the DICOM file has no pixel data (truncated)")
    if getattr(ds.file_meta, "TransferSyntaxUID", None) is not None and ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    bits = (int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1)
            * int(getattr(ds, "SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated))
    if len(ds.PixelData) < (bits + 7) // 8:
        raise ValueError(f"its pixel data has {len(ds.PixelData)} of {(bits + 7) // 8} bytes (truncated)")


def _check_nifti_length(path: Path) -> None:
    """Raise ValueError unless the (decompressed) file holds all the voxels its header promises."""
    with _open_maybe_gzip(path) as fh:
        head = fh.read(540)
        total = len(head)
        while chunk := fh.read(1 << 22):
            total += len(chunk)
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348:  # NIfTI-1: dim int16[8] at 40, bitpix int16 at 72, vox_offset float at 108
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if size == 540:  # NIfTI-2: bitpix int16 at 14, dim int64[8] at 16, vox_offset int64 at 168
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        raise ValueError("not a NIfTI header")
    n = 1
    for d in dims[1:1 + max(min(dims[0], 7), 0)]:
        n *= max(int(d), 1)
    need = offset + n * bitpix // 8
    if total < need:
        raise ValueError(f"it holds {total} of the {need} bytes its header promises (truncated)")


def _sync(path: Path) -> None:
    """Flush a staged file to the disk: a full or failing disk may only report it here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




def _check(tmp: Path, target: Path, verify) -> None:
    if not tmp.exists():
        raise output_error(target, "the writer produced no file")
    if verify is False:
        return
    if not tmp.is_dir():
        _sync(tmp)
    try:
        verify(tmp) if callable(verify) else verify_file(tmp, target.name)
    except ValueError as exc:
        raise output_error(target, str(exc)) from None


def torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a (staging) path. torch's zip writer reports a full disk as a
    RuntimeError ("unexpected pos", "iostream error"); it is raised as an OSError here, so the
    write helper turns it into the usual OutputError with the path and the free space."""
    import torch

    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        try:
            full = shutil.disk_usage(Path(path).parent).free < (1 << 20)
        except OSError:
            full = False
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, os.strerror(code) if full else
                      f"torch.save failed ({lines[-1] if lines else exc})", os.fspath(path)) from None


@contextlib.contextmanager
def atomic_group(targets, verify=True, suffixes=None):
    """Yield staging paths for several ``targets``; when the block succeeds every staged file is
    flushed and verified first, and only then all are renamed into place (all or none).

    ``verify``: True (by the target's suffix, ``verify_file``), False (existence only) or a
    callable ``verify(staged_path)`` raising ValueError. Names keep the target's suffixes, so
    format-by-extension writers (SimpleITK, PIL) pick the right format.
    """
    from vmambax.errors import VMambaXError

    targets = [Path(t) for t in targets]
    staged: list[Path] = []
    _remove_stale_staging_of(targets, suffixes)  # what a killed earlier run left for these outputs
    try:
        for t, suffix in zip(targets, suffixes or [None] * len(targets)):
            t.parent.mkdir(parents=True, exist_ok=True)
            # A writer handed a staging path by an outer group (write_label inside segment's
            # group) writes it directly; the outer group verifies and renames it.
            staged.append(t if is_staging_name(t.name) else staging_path(t, suffix))
        yield staged
        for tmp, t in zip(staged, targets):
            _check(tmp, t, verify)
        for n, (tmp, t) in enumerate(zip(staged, targets)):
            if tmp == t:
                continue
            try:
                os.replace(tmp, t)
            except OSError as exc:
                raise output_error(t, exc) from None
            staged[n] = None  # type: ignore[call-overload]  # in place: nothing to clean
    except BaseException as exc:
        for tmp in staged:
            if tmp is not None:
                _remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, VMambaXError):
            bad = _failed_target(exc, targets, staged)
            raise output_error(bad or targets[0], exc, () if bad else targets) from None
        inner = getattr(exc, "path", None)
        if isinstance(exc, VMambaXError) and inner in staged and inner not in targets:
            # an inner writer's error names our staging file: name the real output instead
            raise output_error(targets[staged.index(inner)], exc.reason) from None
        raise


def _failed_target(exc: OSError, targets: list[Path], staged: list) -> Path | None:
    """The target an OSError is about: by file name, else the one being set up; None if unknown
    (e.g. a write() of one of several staged files: the error carries no file name)."""
    name = os.fspath(exc.filename) if exc.filename else None
    for tmp, t in zip(staged, targets):
        if name is not None and name in (os.fspath(t), os.fspath(tmp) if tmp else None):
            return t
    if len(staged) < len(targets) or len(targets) == 1:
        return targets[min(len(staged), len(targets) - 1)]
    return None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None, verify=True):
    """Yield a staging path next to ``target``; on success verify it and rename it onto
    ``target`` (see ``atomic_group``). If the block raises, the staging file is removed and
    ``target`` is untouched, so a failure never leaves a half-written or empty output.
    ``suffix``: the staging name's suffix when it must differ from the target's."""
    with atomic_group([target], verify=verify, suffixes=[suffix]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replace: bool = False, verify=True):
    """Yield a staging folder next to ``target``; move it to ``target`` only on success, after
    every file in it was verified (``verify_file``, by suffix).

    ``target`` must not exist yet (or be an empty folder) unless ``replace``: then a finished
    folder replaces the old one, which is moved aside first and deleted last. On failure the
    staging folder is removed and ``target`` is untouched.
    """
    from vmambax.errors import VMambaXError

    target = Path(target)
    tmp = old = None
    _remove_stale_staging_of([target], folders=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_path(target, folder=True)
        yield tmp
        if verify:
            for path in sorted(tmp.rglob("*")):
                if path.is_file():
                    try:
                        verify_file(path)
                    except ValueError as exc:
                        raise output_error(target / path.relative_to(tmp), str(exc)) from None
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        elif target.exists() and replace:
            old = staging_path(target, folder=True)
            os.replace(target, old / "old")
        os.replace(tmp, target)
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            old = None
    except BaseException as exc:
        if old is not None and (old / "old").exists() and not target.exists():
            os.replace(old / "old", target)  # the new folder did not go in: put the old one back
            shutil.rmtree(old, ignore_errors=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, VMambaXError):
            raise output_error(target, exc) from None
        raise


class FolderSnapshot:
    """What a folder held when a job began (its top-level names, the sizes of append-only
    files), so that a job refused before it did its work can leave the folder as it found it:
    ``restore()`` removes what the job created there (the folder itself, if it made it) and cuts
    the append-only files back. Entries that were there before are never touched otherwise."""

    def __init__(self, folder: str | os.PathLike, append_only=()):
        self.folder = Path(folder)
        self.existed = self.folder.is_dir()
        self.names = set(os.listdir(self.folder)) if self.existed else set()
        self.sizes = {}
        for name in append_only:
            try:
                self.sizes[name] = (self.folder / name).stat().st_size
            except OSError:
                pass

    def restore(self) -> None:
        if not self.folder.is_dir():
            return
        if not self.existed:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for name in set(os.listdir(self.folder)) - self.names:
            _remove(self.folder / name)
        for name, size in self.sizes.items():
            with contextlib.suppress(OSError):
                os.truncate(self.folder / name, size)


def plural(n: int, noun: str, many: str | None = None) -> str:
    """ "1 case", "2 cases", "0 cases" (``many``: an irregular plural, e.g. "vertices")."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


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
