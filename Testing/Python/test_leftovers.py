"""No leftovers after a kill, and no lost truth (issue 18): stale staging files removed by the
next run (only its own), cohort resume with the write's verification, reserved case ids, one run
per cohort folder / training run folder, a per-case time limit, and a refused training run that
leaves its folder as it found it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fault_helpers import staging_left_by_a_killed_writer
from vmambax.cli import main

SIZE = 128


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    from vmambax.phantom import make_phantom, write_case

    root = tmp_path_factory.mktemp("leftovers") / "cases"
    for i, case_id in enumerate(("a", "b")):
        write_case(make_phantom(20 + i, size=SIZE, n_slices=5), root, case_id, dicom=False)
    return root


def _segment(case: Path, out: Path, model, *extra):
    return ["segment", "--ct", str(case / "ct.nii.gz"), "--pet", str(case / "pet.nii.gz"),
            "-o", str(out / "label.nii.gz"), "--report", str(out / "report.json"),
            "--preview", str(out / "preview.png"), "--model", str(model), "--device", "cpu",
            "--threads", "1", "-q", "--overwrite", *extra]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ staging after a kill -9
def test_staging_files_a_kill_9_left_are_removed_by_the_next_run_into_that_folder(cases, tmp_path,
                                                                                 nano_file, capsys):
    """A real kill -9 while the outputs are staged leaves .label.*.tmp.nii.gz (and the preview's,
    the report's). Before: no later run removed them. Now the next run writing those outputs
    removes them, and nothing else: another output's staging file, a file that only looks
    similar, and a staging file whose writer still runs stay."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import vmambax.infer.report as report
        from vmambax.cli import main
        def die(*a, **k):  # kill -9 in the write phase: label and preview staged, report next
            os.kill(os.getpid(), signal.SIGKILL)
        report.report_json = die
        sys.exit(main({_segment(cases / "a", out, nano_file)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = _hidden(out)
    assert any(n.startswith(".label.") and n.endswith(".tmp.nii.gz") for n in left), left
    assert any(n.startswith(".preview.") and n.endswith(".tmp.png") for n in left), left
    not_ours = [staging_left_by_a_killed_writer(out / "other.nii.gz"),  # another output's
                out / ".label.nii.gz.bak"]                            # not a staging name
    not_ours[1].write_bytes(b"the user's")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        from vmambax.utils import staging_path

        writing = staging_path(out / "label.nii.gz")  # a live writer's: its PID is in the name
        writing = writing.with_name(writing.name.replace(f".p{os.getpid()}h", f".p{live.pid}h"))
        writing.write_bytes(b"being written")
        assert main(_segment(cases / "a", out, nano_file)) == 0, capsys.readouterr().err
        assert sorted(_hidden(out)) == sorted(p.name for p in not_ours + [writing])
    finally:
        live.kill()
        live.wait()
    assert (out / "label.nii.gz").is_file() and (out / "preview.png").is_file()


# --------------------------------------------------------------------------------- cohorts
def _cohort(source, out, model, *extra):
    return ["segment", "--cases", str(source), "--out-dir", str(out), "--model", str(model),
            "--device", "cpu", "--threads", "1", "--batch", "5", *extra]


def _rows(out: Path) -> dict:
    with open(out / "summary.csv", newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def test_cohort_resume_verifies_as_the_write_does(cases, tmp_path, nano_file, capsys):
    """A label whose gzip trailer is cut reads back with SimpleITK; the write refuses it
    (verify_file). Before: a resumed cohort kept it as 'skipped'."""
    from vmambax.utils import verify_file

    out = tmp_path / "out"
    assert main(_cohort(cases, out, nano_file)) == 0
    label = out / "a" / "label.nii.gz"
    label.write_bytes(label.read_bytes()[:-4])  # the gzip ISIZE field is gone
    with pytest.raises(ValueError):
        verify_file(label)
    capsys.readouterr()
    assert main(_cohort(cases, out, nano_file)) == 0
    rows = _rows(out)
    assert rows["a"]["status"] == "ok" and rows["b"]["status"] == "skipped", rows
    verify_file(label)


@pytest.mark.parametrize("case_id", ["summary.csv", "Summary.CSV", "summary-shard-0-of-2.csv",
                                     "cohort.lock", "cohort-shard-1-of-4.lock"])
def test_case_ids_the_cohort_writes_itself_are_refused(cases, tmp_path, nano_file, capsys, case_id):
    listing = tmp_path / "list.csv"
    listing.write_text(f"id,ct,pet\n{case_id},{cases}/a/ct.nii.gz,{cases}/a/pet.nii.gz\n")
    out = tmp_path / "out"
    assert main(_cohort(listing, out, nano_file)) == 2
    err = capsys.readouterr().err
    assert f"case id {case_id!r} is a name the cohort writes itself" in err, err
    assert not out.exists()


def _hold(lock_code: str):
    """A live process holding a lock (as another terminal's run would)."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from vmambax.locks import CohortLock, RunLock
        lock = {lock_code}.acquire()
        print("held", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_one_cohort_run_per_out_dir(cases, tmp_path, nano_file, capsys):
    """Before: two cohort runs on one --out-dir both segmented everything."""
    out = tmp_path / "out"
    holder = _hold(f"CohortLock({str(out)!r})")
    try:
        assert main(_cohort(cases, out, nano_file)) == 2
        err = capsys.readouterr().err
        assert f"a cohort run is already running in {out} (process {holder.pid}" in err, err
        assert main(_cohort(cases, out, nano_file, "--shard", "0/2")) == 2  # a shard: the same cases
        assert "already running" in capsys.readouterr().err
        assert not (out / "a").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(_cohort(cases, out, nano_file)) == 0  # its lock is stale now: taken over
    assert not (out / "cohort.lock").exists()
    # Shards of one array job run side by side.
    shard = _hold(f"CohortLock({str(out)!r}, (1, 2))")
    try:
        assert main(_cohort(cases, out, nano_file, "--shard", "0/2", "--overwrite")) == 0
        assert main(_cohort(cases, out, nano_file, "--shard", "1/2")) == 2
        assert main(_cohort(cases, out, nano_file)) == 2
    finally:
        shard.kill()
        shard.wait()


def test_vmambax_train_takes_the_run_lock_and_a_launcher_hands_it_down(tmp_path):
    """Before: `vmambax train` had no run lock (only the Slicer Train module had one)."""
    from vmambax.errors import ConfigError
    from vmambax.locks import RunLock
    from vmambax.train import TrainConfig, train

    run = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("x_0000\n")
    holder = _hold(f"RunLock({str(run)!r})")
    try:
        with pytest.raises(ConfigError, match=f"a training is already running in {run} .process {holder.pid}"):
            train(TrainConfig(data=str(data), out=str(run), config="vmambax-nano", accelerator="cpu"))
    finally:
        holder.kill()
        holder.wait()
    # The panel takes the lock for the trainer it starts: the child inherits it.
    lock = RunLock(run).acquire()
    try:
        code = ("from vmambax.locks import RunLock; import sys; "
                "RunLock(sys.argv[1]).acquire(inherit=True); RunLock(sys.argv[1]).acquire()")
        proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True,
                              timeout=120)
        assert "ConfigError" in proc.stderr and proc.stderr.count("already running") == 1, proc.stderr
    finally:
        lock.release()


@pytest.mark.parametrize("devices", [None, "cpu,cpu"])
def test_a_hanging_case_is_a_failed_row_after_the_time_limit(cases, tmp_path, nano_file, capsys, devices):
    """A CT that never delivers its data (a FIFO: open() blocks, as on a hung network mount).
    Before: the run waited for ever. Now the case fails after --case-timeout, the others go on
    (with several devices the stuck worker is ended and replaced)."""
    hung = tmp_path / "hung"
    hung.mkdir()
    os.mkfifo(hung / "ct.nii.gz")
    listing = tmp_path / "list.csv"
    rows = ["id,ct,pet", f"h1,{hung}/ct.nii.gz,{cases}/a/pet.nii.gz"]
    if devices:
        rows.append(f"h2,{hung}/ct.nii.gz,{cases}/a/pet.nii.gz")
    rows.append(f"ok,{cases}/a/ct.nii.gz,{cases}/a/pet.nii.gz")
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    extra = ["--case-timeout", "0.05"] + (["--devices", devices] if devices else [])
    t0 = time.monotonic()
    assert main(_cohort(listing, out, nano_file, *extra)) == 3
    assert time.monotonic() - t0 < 240
    err = capsys.readouterr().err
    summary = _rows(out)
    assert summary["ok"]["status"] == "ok", summary
    for case_id in (["h1", "h2"] if devices else ["h1"]):
        assert summary[case_id]["status"] == "failed"
        assert "per-case time limit of 3 s" in summary[case_id]["error"], summary[case_id]
        assert not (out / case_id).exists() or not list((out / case_id).iterdir())
    assert "--case-timeout" in err


# ------------------------------------------------------------------ a refused training run
def test_a_refused_training_run_leaves_the_run_folder_as_it_found_it(tmp_path, capsys):
    """Before: a run refused for its data (all labels empty, one case only) left RUN_DIR/data,
    logs/ and progress.jsonl behind."""
    import numpy as np
    import SimpleITK as sitk

    from vmambax.phantom import make_phantom, write_case

    cases = tmp_path / "cases"
    for i, case_id in enumerate(("c1", "c2")):
        write_case(make_phantom(30 + i, size=SIZE, n_slices=5), cases, case_id, dicom=False)
    one = tmp_path / "one-case"  # refused: no patient left for the validation split
    write_case(make_phantom(32, size=SIZE, n_slices=5), one, "c3", dicom=False)
    for path in cases.glob("*/label.nii.gz"):
        label = sitk.ReadImage(str(path))
        empty = sitk.GetImageFromArray(np.zeros(sitk.GetArrayViewFromImage(label).shape, np.uint8))
        empty.CopyInformation(label)
        sitk.WriteImage(empty, str(path))
    base = ["train", "--config", "vmambax-nano", "--image-size", "128", "--batch-size", "2",
            "--accelerator", "cpu", "--num-workers", "0", "--no-progress-bar", "--epochs", "1"]
    new = tmp_path / "new-run"
    assert main(base + ["--data", str(cases), "--out", str(new)]) == 2
    assert "every training label" in capsys.readouterr().err
    assert not new.exists()
    # A run folder that holds the user's things (the Slicer panel's train.log, notes).
    kept = tmp_path / "kept-run"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    (kept / "progress.jsonl").write_text('{"event": "start"}\n')
    for data in (cases, one):
        assert main(base + ["--data", str(data), "--out", str(kept), "--min-positive-slices", "1"]) == 2
        assert "error: " in capsys.readouterr().err
        assert sorted(p.name for p in kept.iterdir()) == ["notes.txt", "progress.jsonl"], data
        assert (kept / "progress.jsonl").read_text() == '{"event": "start"}\n'
