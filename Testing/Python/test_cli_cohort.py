"""`vmambax segment --cases LIST --out-dir DIR` end to end on 4 small phantoms, one broken:
failures listed, resume skips verified cases, Dice, two CPU workers, shards + merge."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from vmambax.cli import main

SIZE = 128
IDS = ["p0", "p1", "p2", "p3"]  # p2: DICOM only; p3: truncated pet.nii.gz
SHARD_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
              "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    from vmambax.phantom import make_phantom, write_case

    root = tmp_path_factory.mktemp("cohort") / "cases"
    for i, case_id in enumerate(IDS):
        write_case(make_phantom(i, size=SIZE, n_slices=5), root, case_id, dicom=case_id == "p2")
    for name in ("ct.nii.gz", "pet.nii.gz"):  # p2 keeps only dicom/ct, dicom/pet (+ its label)
        (root / "p2" / name).unlink()
    pet = root / "p3" / "pet.nii.gz"
    pet.write_bytes(pet.read_bytes()[:2000])
    return root


@pytest.fixture(scope="module")
def case_list(cases) -> Path:
    """The same 4 cases as a CSV with relative paths; p1 without its label."""
    path = cases.parent / "cases.csv"
    path.write_text("id,ct,pet,label,pet_units\n"
                    "p0,cases/p0/ct.nii.gz,cases/p0/pet.nii.gz,cases/p0/label.nii.gz,suv\n"
                    "p1,cases/p1/ct.nii.gz,cases/p1/pet.nii.gz,,\n"
                    "p2,cases/p2/dicom/ct,cases/p2/dicom/pet,cases/p2/label.nii.gz,auto\n"
                    "p3,cases/p3/ct.nii.gz,cases/p3/pet.nii.gz,cases/p3/label.nii.gz,\n")
    return path


def _args(source, out, model, *extra):
    return ["segment", "--cases", str(source), "--out-dir", str(out), "--model", str(model),
            "--device", "cpu", "--threads", "1", "--batch", "5", *extra]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "status")} for r in rows]


@pytest.fixture(scope="module")
def reference(cases, nano_file, tmp_path_factory):
    """One in-process run over the case folder: (out dir, summary rows, stderr, model loads)."""
    from vmambax.infer import segmenter

    out = tmp_path_factory.mktemp("reference") / "out"
    loads = []
    original = segmenter.Segmenter.__init__

    def counting(self, *a, **k):
        loads.append(1)
        original(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(segmenter.Segmenter, "__init__", counting)
        mp.setattr(sys, "stderr", _Capture())
        rc = main(_args(cases, out, nano_file))
        err = sys.stderr.getvalue()
    return out, rc, _rows(out / "summary.csv"), err, len(loads)


class _Capture:
    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def isatty(self):
        return False

    def getvalue(self):
        return "".join(self.parts)


def test_cohort_segments_the_good_cases_and_lists_the_failure(reference, cases):
    out, rc, rows, err, loads = reference
    assert rc == 3, err  # some cases failed
    assert loads == 1  # one model load for the whole cohort
    assert [r["id"] for r in rows] == IDS
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert "truncated" in rows[3]["error"] and "pet.nii.gz" in rows[3]["error"]
    assert "p3:" in err.split("failed:")[-1] and "ETA" in err  # failure list, progress lines
    for r in rows[:3]:
        assert r["error"] == "" and int(r["lesions"]) >= 0 and float(r["seconds"]) > 0
        assert 0.0 <= float(r["dice"]) <= 1.0  # every phantom has a label
        ct_file = cases / r["id"] / ("ct.nii.gz" if r["id"] != "p2" else "label.nii.gz")
        ct = sitk.ReadImage(str(ct_file))
        label = sitk.ReadImage(str(out / r["id"] / "label.nii.gz"))
        assert label.GetSize() == ct.GetSize()
        np.testing.assert_allclose(label.GetOrigin(), ct.GetOrigin(), atol=1e-3)
        report = json.loads((out / r["id"] / "report.json").read_text())
        assert report["totals"]["n_lesions"] == int(r["lesions"])
        assert float(r["total_mtv_ml"]) == pytest.approx(report["totals"]["mtv_ml"], abs=1e-3)
    assert not (out / "p3" / "label.nii.gz").exists()  # nothing half-written for the broken case


def _no_model_needed(*args, **kwargs):
    raise AssertionError("a cohort whose cases all verify must not load the model")


def test_second_run_skips_verified_cases_and_redoes_stale_ones(reference, cases, nano_file,
                                                              tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    stamps = {i: (out / i / "label.nii.gz").stat().st_mtime_ns for i in IDS[:3]}
    assert main(_args(cases, out, nano_file)) == 3
    rows = _rows(out / "summary.csv")
    assert [r["status"] for r in rows] == ["skipped", "skipped", "skipped", "failed"]
    assert rows == [dict(r, status="skipped") if r["status"] == "ok" else
                    dict(r, seconds=rows[3]["seconds"]) for r in reference[2]]
    assert {i: (out / i / "label.nii.gz").stat().st_mtime_ns for i in IDS[:3]} == stamps
    assert "skipped" in capsys.readouterr().err

    # Outputs that do not verify are segmented again: another model's report, a truncated label.
    report = json.loads((out / "p0" / "report.json").read_text())
    report["model"]["sha256"] = "0" * 64
    (out / "p0" / "report.json").write_text(json.dumps(report))
    label = out / "p1" / "label.nii.gz"
    label.write_bytes(label.read_bytes()[:100])
    assert main(_args(cases, out, nano_file, "-q")) == 3
    rows = _rows(out / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "skipped", "failed"]
    assert _without_seconds(rows) == _without_seconds(reference[2])

    # A CSV naming the same files resumes the folder's run; a label that cannot be read costs
    # the Dice only, with a warning.
    listed = tmp_path / "list.csv"
    listed.write_text(f"id,ct,pet,label\np0,{cases}/p0/ct.nii.gz,{cases}/p0/pet.nii.gz,"
                      f"{tmp_path}/missing.nii.gz\n")
    capsys.readouterr()
    monkeypatch.setattr("vmambax.infer.cohort.make_segmenter", _no_model_needed)
    assert main(_args(listed, out, nano_file, "-q")) == 0  # all verified: the model is not loaded
    row = _rows(out / "summary.csv")[0]
    assert row["status"] == "skipped" and row["dice"] == "" and "Dice not computed" in row["error"]
    assert "warning: p0: Dice not computed" in capsys.readouterr().err


def test_csv_list_on_two_cpu_workers(reference, case_list, cases, nano_file, tmp_path, capsys):
    from vmambax.data.suv import suv_factor_manual

    # A fifth case: p0's PET in Bq/mL, with its weight and dose in the list's columns.
    pet = sitk.ReadImage(str(cases / "p0" / "pet.nii.gz"))
    sitk.WriteImage(pet / suv_factor_manual(70.0, 300.0, None).factor, str(tmp_path / "bq.nii.gz"))
    listed = tmp_path / "list.csv"
    listed.write_text(case_list.read_text().replace("pet_units\n", "pet_units,weight_kg,dose_mbq\n")
                      .replace("cases/", f"{cases}/") +
                      f"p0-bq,{cases}/p0/ct.nii.gz,{tmp_path}/bq.nii.gz,,bqml,70,300\n")
    out = tmp_path / "out"
    rc = main(_args(listed, out, nano_file, "--devices", "cpu,cpu"))
    assert rc == 3, capsys.readouterr().err
    rows = _rows(out / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "ok"]
    assert rows[1]["dice"] == "" and rows[4]["dice"] == ""  # no label given
    expected = _without_seconds(reference[2])
    expected[1]["dice"] = ""
    assert _without_seconds(rows[:4]) == expected  # same results as one in-process worker
    assert float(rows[4]["suv_max"]) == pytest.approx(float(rows[0]["suv_max"]), rel=1e-3)
    report = json.loads((out / "p0-bq" / "report.json").read_text())
    assert report["pet"]["source_units"] == "BQML" and report["pet"]["weight_kg"] == 70.0
    assert "p3:" in capsys.readouterr().err


def _shard_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SHARD_VARS}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def test_slurm_and_torchrun_shards_merge_into_the_same_summary(reference, case_list, nano_file,
                                                               tmp_path, capsys):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vmambax", *_args(case_list, out, nano_file)]
    shards = [  # an --array=1-2 job's first task, and torchrun's rank 1 of 2
        subprocess.Popen(cmd, env=_shard_env(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_MIN="1",
                                             SLURM_ARRAY_TASK_MAX="2"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(cmd, env=_shard_env(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in shards]
    assert results[0][0] == 0 and results[1][0] == 3, results  # p3 is in shard 1
    assert [r["id"] for r in _rows(out / "summary-shard-0-of-2.csv")] == ["p0", "p2"]
    assert [r["id"] for r in _rows(out / "summary-shard-1-of-2.csv")] == ["p1", "p3"]
    assert "merged into" in results[0][1] + results[1][1]  # the last shard merged
    expected = _without_seconds(reference[2])
    expected[1]["dice"] = ""
    assert _without_seconds(_rows(out / "summary.csv")) == expected

    (out / "summary.csv").unlink()
    assert main(_args(case_list, out, nano_file, "--merge")) == 3
    assert _without_seconds(_rows(out / "summary.csv")) == expected
    (out / "summary-shard-1-of-2.csv").unlink()
    assert main(_args(case_list, out, nano_file, "--merge")) == 2
    assert "shard(s) 1 of 2" in capsys.readouterr().err


def test_interrupted_run_keeps_its_summary_and_reports_eta(cases, nano_file, tmp_path):
    from vmambax.infer.cohort import CohortOptions, run_cohort
    from vmambax.infer.cohort_list import read_cases

    events = []

    def progress(p):
        events.append(p)
        if p.status == "ok":
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_cohort(read_cases(cases), out, progress=progress,
                   options=CohortOptions(model=str(nano_file), threads=1))
    assert [r["status"] for r in _rows(out / "summary.csv")] == ["ok", "pending", "pending",
                                                                 "pending"]
    assert events[-1].done == 1 and events[-1].total == 4 and events[-1].case_id == "p0"
    assert events[-1].eta_s is not None and events[-1].eta_s > 0  # 3 cases left
    assert any(0 < e.eta_s for e in events if e.status is None and e.eta_s is not None)


def test_shard_selection():
    from vmambax.errors import ConfigError
    from vmambax.infer.cohort_list import parse_shard, shard_cases, shard_from_env

    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1",
                           "SLURM_ARRAY_TASK_MAX": "4"}) == (3, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0",
                           "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_STEP": "2"}) == (2, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}) is None
    assert shard_from_env({"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_MAX"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "1"})
    with pytest.raises(ConfigError, match="not an integer"):
        shard_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    assert shard_cases(list(range(10)), 1, 3) == [1, 4, 7]
    assert sorted(sum((shard_cases(list(range(10)), k, 3) for k in range(3)), [])) == list(range(10))
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


@pytest.mark.parametrize("text, message", [
    ("name,ct,pet\na,x,y\n", "no column id"),
    ("id,ct,pet\na,x,y\na,x,y\n", "also on line 2"),
    ("id,ct,pet,weight_kg\na,x,y,heavy\n", "not a number"),
    ("id,ct,pet\n../a,x,y\n", "cannot name an output folder"),
    ("id,ct,pet,pet_units\na,x,y,kbq\n", "pet_units"),
])
def test_bad_case_lists_fail_clearly(text, message, tmp_path, capsys):
    path = tmp_path / "list.csv"
    path.write_text(text)
    assert main(["segment", "--cases", str(path), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not (tmp_path / "out").exists()


def test_cohort_and_single_case_flags_do_not_mix(tmp_path, capsys):
    assert main(["segment", "--cases", str(tmp_path), "--out-dir", str(tmp_path / "o"),
                 "--ct", "ct.nii.gz"]) == 2
    assert "--ct" in capsys.readouterr().err
    assert main(["segment", "--ct", "a.nii.gz", "--pet", "b.nii.gz"]) == 2
    assert "-o/--output" in capsys.readouterr().err
    # Series picks name one case's folder: refused for a cohort, not silently ignored.
    assert main(["segment", "--cases", str(tmp_path), "--out-dir", str(tmp_path / "o"),
                 "--ct-series", "1.2.3"]) == 2
    assert "--ct-series" in capsys.readouterr().err


def test_sigterm_in_a_case_stops_the_cohort_not_only_that_case(tmp_path, monkeypatch):
    """SIGTERM (a scheduler's time limit) during a case must end the run, not be recorded as
    one failed case while the loop goes on to the next."""
    from vmambax.errors import Terminated
    from vmambax.infer import cohort, pipeline
    from vmambax.infer.cohort_list import CohortCase

    def stopped(*args, **kwargs):
        raise Terminated("stopped by SIGTERM; nothing was written")

    monkeypatch.setattr(pipeline, "segment_files", stopped)
    case = CohortCase("a", tmp_path / "ct.nii.gz", tmp_path / "pet.nii.gz")
    with pytest.raises(Terminated):
        cohort.segment_case(case, tmp_path / "out", None, cohort.CohortOptions())


def test_model_that_no_worker_can_load_is_a_clear_error(case_list, nano_file, tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(nano_file.read_bytes()[:5000])
    out = tmp_path / "out"
    assert main(_args(case_list, out, bad, "--devices", "cpu,cpu", "-q")) == 2
    err = capsys.readouterr().err
    assert "error: no device could load the model" in err and "corrupt.pt" in err
    assert [r["status"] for r in _rows(out / "summary.csv")] == ["pending"] * 4


def test_missing_model_fails_before_anything_is_written(cases, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(cases, out, tmp_path / "nope.pt")) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_a_killed_worker_fails_its_case_and_the_run_still_ends(case_list, nano_file, tmp_path):
    import multiprocessing

    from vmambax.infer.cohort import CohortOptions, run_cohort
    from vmambax.infer.cohort_list import read_cases

    killed = []

    def progress(p):
        if p.status is None and not killed:  # the first case was just handed to a worker
            for child in multiprocessing.active_children():
                child.kill()
                killed.append(child)

    result = run_cohort(read_cases(case_list), tmp_path / "out", devices=["cpu", "cpu"],
                        options=CohortOptions(model=str(nano_file), threads=1), progress=progress)
    assert len(killed) == 2
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert [r["status"] for r in rows] == ["failed"] * 4 == [r["status"] for r in result.rows]
    assert "worker on cpu stopped (exit code -9)" in rows[0]["error"]
    assert all("stopped" in r["error"] for r in rows)


def test_shard_option_and_environment(reference, cases, nano_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    (out / "summary.csv").unlink()
    listed = tmp_path / "list.csv"
    listed.write_text("id,ct,pet\n" + "".join(f"{i},{cases}/{i}/ct.nii.gz,{cases}/{i}/pet.nii.gz\n"
                                              for i in ("p0", "p1")))
    monkeypatch.setattr("vmambax.infer.cohort.make_segmenter", _no_model_needed)  # all verify
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert main(_args(listed, out, nano_file, "--shard", "0/1")) == 0  # the whole list
    assert [r["id"] for r in _rows(out / "summary.csv")] == ["p0", "p1"]
    assert not list(out.glob("summary-shard-*"))
    (out / "summary.csv").unlink()
    assert main(_args(listed, out, nano_file)) == 0  # shard 0 of 2 from the environment
    assert "shard 0 of 2 (from the SLURM" in capsys.readouterr().err
    assert [r["id"] for r in _rows(out / "summary-shard-0-of-2.csv")] == ["p0"]
    assert not (out / "summary.csv").exists()  # shard 1 has not run
    assert main(_args(listed, out, nano_file, "--shard", "1/2")) == 0
    assert [r["id"] for r in _rows(out / "summary-shard-1-of-2.csv")] == ["p1"]
    assert [(r["id"], r["status"]) for r in _rows(out / "summary.csv")] == [
        ("p0", "skipped"), ("p1", "skipped")]  # merged by the last shard
