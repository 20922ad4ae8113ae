"""Outputs under disk faults (issue 10, points 1-3): every writer stages, verifies and renames.

A full disk is injected (a writer that truncates its file and returns without error, as
SimpleITK's WriteImage does on ENOSPC, or a write raising ENOSPC/EACCES) and, where this machine
lets the test mount one, on a real small tmpfs. Each time: exit status 2, an ``error:`` line
naming the path and the free space, no traceback, no staging file left, an existing output
untouched. Also: SIGTERM during ``vmambax segment`` and ``vmambax evaluate --json`` overwrites.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vmambax.cli import main
from vmambax.errors import OutputError
from vmambax.utils import atomic_path, is_staging_name, remove_stale_staging, verify_file

SIZE = 128


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from vmambax.phantom import make_phantom, write_case

    phantom = make_phantom(3, size=SIZE, n_slices=4)
    return Path(write_case(phantom, tmp_path_factory.mktemp("cases"), "p3", dicom=False))


@pytest.fixture(scope="module")
def nano_file(tmp_path_factory):
    from vmambax.data.preprocess import preprocessing_info
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "nano.pt"
    save_model_file(path, build_model("vmambax-nano"), config_name="vmambax-nano",
                    preprocessing=preprocessing_info(SIZE), metadata={"note": "random init"})
    return path


def _segment_args(case, out, model, *extra):
    return ["segment", "--ct", str(case / "ct.nii.gz"), "--pet", str(case / "pet.nii.gz"),
            "-o", str(out / "label.nii.gz"), "--model", str(model), "--device", "cpu",
            "--batch", "4", "--threads", "1", "-q", *extra]


def _staging(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if is_staging_name(p.name) or ".tmp" in p.name)


def _truncating_write_image(monkeypatch, fraction=0.0):
    """SimpleITK's WriteImage as it behaves on a full disk: a short file and no error."""
    real = sitk.WriteImage

    def write(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        os.truncate(path, int(os.path.getsize(path) * fraction))

    monkeypatch.setattr(sitk, "WriteImage", write)


# ---------------------------------------------------------------------------- the verifier
def _image(tmp_path, name):
    img = sitk.GetImageFromArray((np.random.default_rng(0).random((4, 32, 32)) * 100).astype(np.float32))
    path = tmp_path / name
    sitk.WriteImage(img, str(path), True)
    return path


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii", "a.nrrd", "a.seg.nrrd", "a.mha", "a.png",
                                  "a.json", "a.ckpt", "a.pt", "a.dcm"])
def test_verify_file_refuses_empty_and_truncated_files_of_every_output_format(tmp_path, name):
    if name.endswith(".png"):
        from vmambax.data.pclt import write_png

        write_png(tmp_path / name, np.arange(32 * 32, dtype=np.uint8).reshape(32, 32))
    elif name.endswith(".json"):
        (tmp_path / name).write_text(json.dumps({"lesions": list(range(50))}))
    elif name.endswith((".ckpt", ".pt")):
        torch.save({"state_dict": {"w": torch.randn(64)}}, tmp_path / name)
    elif name.endswith(".dcm"):
        from pydicom.data import get_testdata_file

        shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / name)
    else:
        _image(tmp_path, name)
    path = tmp_path / name
    verify_file(path)  # the whole file is fine
    data = path.read_bytes()
    # Cut anywhere that loses content (CT_small.dcm ends in 138 bytes of padding after its pixels).
    cuts = [0, len(data) // 2, len(data) - (200 if name.endswith(".dcm") else 1)]
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="empty|read back"):
            verify_file(path)


def test_atomic_group_verifies_all_before_replacing_any(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"old": 1}')
    b.write_text('{"old": 2}')
    with pytest.raises(OutputError, match=r"b\.json: the written file .* does not read back"):
        from vmambax.utils import atomic_group

        with atomic_group([a, b]) as (ta, tb):
            ta.write_text('{"new": 1}')
            tb.write_text('{"new": 2')  # cut short
    assert json.loads(a.read_text()) == {"old": 1} and json.loads(b.read_text()) == {"old": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


@pytest.mark.parametrize("code, word", [(errno.ENOSPC, "free some space"), (errno.EACCES, "writable"),
                                        (errno.EROFS, "read-only")])
def test_oserror_on_rename_names_path_free_space_and_fix(tmp_path, monkeypatch, code, word):
    target = tmp_path / "report.json"
    target.write_text('{"good": true}')

    def failing_replace(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError) as info:
        with atomic_path(target) as tmp:
            tmp.write_text('{"new": true}')
    monkeypatch.undo()
    text = str(info.value)
    assert str(target) in text and "free in" in text and word in text and "left as it was" in text
    assert json.loads(target.read_text()) == {"good": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_dir_refuses_a_folder_with_a_truncated_file(tmp_path, monkeypatch):
    from vmambax.phantom import make_phantom, write_case

    phantom = make_phantom(4, size=64, n_slices=3)
    write_case(phantom, tmp_path, "c1", dicom=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "c1").iterdir()}
    _truncating_write_image(monkeypatch, 0.5)
    with pytest.raises(OutputError, match=r"c1/(ct|pet|label)\.nii\.gz: .*free in"):
        write_case(phantom, tmp_path, "c1", dicom=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "c1").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1"]


def test_remove_stale_staging_takes_only_staging_names(tmp_path):
    keep = [tmp_path / "last.ckpt", tmp_path / ".hidden", tmp_path / "a.tmp.ckpt", tmp_path / "best.ckpt"]
    for p in keep:
        p.write_text("x")
    from fault_helpers import staging_left_by_a_killed_writer
    from vmambax.utils import staging_path

    stale = [staging_left_by_a_killed_writer(tmp_path / "last.ckpt", b"PK partial"),
             staging_left_by_a_killed_writer(tmp_path / "model.pt", b"PK partial"),
             tmp_path / ".data.abcd1234.tmp"]  # an older version's name: no writer recorded
    stale[2].mkdir()
    (stale[2] / "x.png").write_bytes(b"")
    live = staging_path(tmp_path / "last.ckpt")  # this (live) process is writing it
    live.write_bytes(b"PK being written")
    keep.append(live)
    assert all(is_staging_name(p.name) for p in stale) and stale[0].name.startswith(".last.")
    assert sorted(remove_stale_staging(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


# ---------------------------------------------------------------------------- the commands
def test_segment_overwrite_on_a_full_disk_keeps_the_good_label(case, nano_file, tmp_path, monkeypatch,
                                                               capsys):
    out = tmp_path / "out"
    extra = ("--report", str(out / "report.json"), "--preview", str(out / "preview.png"))
    assert main(_segment_args(case, out, nano_file, *extra)) == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    _truncating_write_image(monkeypatch, 0.0)  # today: exit 0 and a 0-byte label
    assert main(_segment_args(case, out, nano_file, *extra, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "label.nii.gz" in err and "free in" in err
    assert "empty (0 bytes)" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good  # all three untouched
    assert _staging(out) == []


@pytest.mark.parametrize("what", ["report", "preview"])
def test_segment_enospc_on_report_or_preview_writes_nothing(case, nano_file, tmp_path, monkeypatch,
                                                            capsys, what):
    out = tmp_path / "out"
    real = Path.write_text if what == "report" else Path.write_bytes

    def full(self, *args, **kwargs):
        if self.suffix == (".json" if what == "report" else ".png"):
            real(self, (args[0])[:10], *args[1:], **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text" if what == "report" else "write_bytes", full)
    rc = main(_segment_args(case, out, nano_file, "--report", str(out / "report.json"),
                            "--preview", str(out / "preview.png")))
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device (ENOSPC)" in err and "free in" in err
    assert "Traceback" not in err
    assert _staging(out) == [] and not (out / "label.nii.gz").exists()  # all or none


def test_baseline_and_model_file_on_a_full_disk(case, nano_file, tmp_path, monkeypatch, capsys):
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file

    out = tmp_path / "b.nii.gz"
    args = ["baseline", "--pet", str(case / "pet.nii.gz"), "-o", str(out), "--report", str(tmp_path / "b.json")]
    assert main(args) == 0
    good = out.read_bytes(), (tmp_path / "b.json").read_bytes()
    _truncating_write_image(monkeypatch, 0.3)
    assert main(args + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "b.nii.gz" in err and "does not read back" in err and "free in" in err
    assert (out.read_bytes(), (tmp_path / "b.json").read_bytes()) == good
    monkeypatch.undo()

    model_file = tmp_path / "model.pt"
    shutil.copy(nano_file, model_file)
    real_save = torch.save

    def short_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        os.truncate(f, 1000)

    monkeypatch.setattr(torch, "save", short_save)
    with pytest.raises(OutputError, match=r"model\.pt: the written file \(1000 bytes\) does not read back"):
        save_model_file(model_file, build_model("vmambax-nano"), config_name="vmambax-nano",
                        preprocessing={}, metadata={})
    assert model_file.read_bytes() == nano_file.read_bytes()
    assert _staging(tmp_path) == []


def test_evaluate_json_needs_overwrite_to_replace(case, tmp_path, capsys):
    out = tmp_path / "res.json"
    out.write_text('{"mine": 1}')
    args = ["evaluate", "--pred", str(case / "label.nii.gz"), "--gt", str(case / "label.nii.gz"),
            "--json", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and json.loads(out.read_text()) == {"mine": 1}
    assert main(args + ["--overwrite"]) == 0
    assert "slices" in json.loads(out.read_text())  # replaced by the results


# ---------------------------------------------------------------------------- a real full disk
@pytest.fixture()
def small_tmpfs(mount_tmpfs):
    """A 2 MB tmpfs (needs root and mount permission; skipped cleanly otherwise)."""
    return mount_tmpfs("2m")


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` up to ``leave`` bytes free."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))


def test_real_full_tmpfs_segment_and_read_only(case, nano_file, small_tmpfs, capsys):
    out = small_tmpfs / "out"
    assert main(_segment_args(case, out, nano_file, "--report", str(out / "r.json"))) == 0
    good = (out / "label.nii.gz").read_bytes()
    _fill(small_tmpfs, 2000)  # a label of this phantom compresses to more than that
    capsys.readouterr()
    rc = main(_segment_args(case, out, nano_file, "--report", str(out / "r.json"), "--overwrite"))
    err = capsys.readouterr().err
    assert rc == 2 and "label.nii.gz" in err and "free in" in err and "Traceback" not in err
    assert (out / "label.nii.gz").read_bytes() == good and _staging(out) == []

    (small_tmpfs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    rc = main(_segment_args(case, out, nano_file, "--overwrite"))  # refused before any work
    assert rc == 2 and "is not writable" in capsys.readouterr().err
    with pytest.raises(OutputError, match=r"r\.json: Read-only file system \(EROFS\).*read-only file system; choose"):
        with atomic_path(out / "r.json") as tmp:
            tmp.write_text("{}")
    assert (out / "label.nii.gz").read_bytes() == good


# ---------------------------------------------------------------------------- SIGTERM
def test_sigterm_during_segment_removes_staging_files(case, nano_file, tmp_path):
    """The label is staged (its file written, not yet renamed) when SIGTERM arrives: the command
    line's handler (every command but train, which checkpoints and exits 0) turns it into an
    error, so the command says why it stopped, exits 143 and leaves neither the staging file
    nor an output."""
    out = tmp_path / "out"
    marker = tmp_path / f"staged-{uuid.uuid4().hex}"
    driver = textwrap.dedent(f"""
        import sys, time
        import SimpleITK as sitk
        real = sitk.WriteImage
        def slow(image, path, *a, **k):
            real(image, path, *a, **k)
            open({str(marker)!r}, "w").write(path)
            time.sleep(60)   # SIGTERM arrives here, with the staged label on disk
        sitk.WriteImage = slow
        from vmambax.cli import main
        sys.exit(main({_segment_args(case, out, nano_file, "--report", str(out / "r.json"))!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "segment never reached its write"
            time.sleep(0.05)
        staged = Path(marker.read_text())
        assert staged.exists() and is_staging_name(staged.name)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "error: stopped by SIGTERM" in err and "nothing was written" in err
    assert "Traceback" not in err
    assert list(out.iterdir()) == []  # no label, no report, no staging file


def test_replacing_a_folder_that_fails_to_go_in_puts_the_old_one_back(tmp_path, monkeypatch):
    """atomic_dir(replace=True): the old folder is moved aside first; when the finished folder
    then cannot be renamed into place, the old one must come back, not stay in a staging folder
    that a later clean-up deletes."""
    from vmambax.utils import atomic_dir

    target = tmp_path / "cases"
    target.mkdir()
    (target / "keep.txt").write_text("the user's previous export")
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((Path(src), Path(dst)))
        if Path(dst) == target and len(calls) == 2:  # the new folder going into place
            raise OSError(errno.EACCES, "Permission denied (a file is open)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OutputError):
        with atomic_dir(target, replace=True) as tmp:
            (tmp / "new.txt").write_text("new export")
    assert (target / "keep.txt").read_text() == "the user's previous export"
    assert not (target / "new.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cases"]  # no staging folder left
