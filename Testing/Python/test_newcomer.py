"""The newcomer's first hour (issue 18): the README's Python and help match the code, the
whole-body phantom holds its thorax case, third-party noise stays off the terminal, long
commands say what they do, counts read as English, the cohort tells what it will do and warns
once, the preview's captions name the colours drawn, and the set-up scripts install once."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from test_train_run import _subset, phantom_root  # noqa: F401 - phantom_root: a fixture
from vmambax.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------- README
def test_the_readmes_python_imports_work_and_name_the_cohort_api():
    """Before: the README documented read_cases at vmambax.infer.cohort (it lives in cohort_list)."""
    statements = re.findall(r"^\s*(from vmambax[\w.]* import [\w, ]+)", README, flags=re.M)
    statements += re.findall(r"`(from vmambax[\w.]* import [\w, ]+)`", README)
    names = set()
    for statement in statements:
        scope: dict = {}
        exec(statement, scope)  # noqa: S102 - our own README's import lines
        names.update(n.strip() for n in statement.split(" import ")[1].split(","))
    assert {"Segmenter", "run_cohort", "read_cases", "CohortOptions"} <= names, statements


def test_segment_help_and_readme_list_every_cohort_column(capsys):
    """Before: `segment --help` omitted uptake_minutes."""
    columns = ("id", "ct", "pet", "label", "pet_units", "weight_kg", "dose_mbq", "uptake_minutes")
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cases_help = re.search(r"--cases LIST CSV \(columns(.*?)--out-dir DIR", text).group(1)
    for column in columns:
        assert column in cases_help, (column, cases_help)
    cohort_section = README[README.index("### Segmenting a cohort"):README.index("## The network")]
    for column in columns:
        assert f"`{column}`" in cohort_section, column


def test_the_whole_body_phantom_holds_the_thorax_case_of_its_seed():
    """Before: its tumours were placed over the whole body's z range, not as in the thorax case
    of the same seed (README: "the same thorax inside"): seed 0's demo-model Dice was 0.0."""
    from vmambax.phantom import make_phantom

    for seed in (0, 5):
        thorax = make_phantom(seed, size=64)
        body = make_phantom(seed, size=64, whole_body=True)
        assert len(body.lesions) == len(thorax.lesions) > 0
        for a, b in zip(thorax.lesions, body.lesions):
            assert a["diameter_mm"] == b["diameter_mm"]
            np.testing.assert_allclose(a["centre_mm"], b["centre_mm"], atol=1e-3)


# ------------------------------------------------------------------------ third-party noise
def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default", **kw.pop("env", {}))
    return subprocess.run(args, cwd=kw.pop("cwd", ROOT), env=env, capture_output=True, text=True,
                          timeout=kw.pop("timeout", 400))


def test_highdicom_person_name_remark_is_not_printed_even_with_quiet(tmp_path, nano_file):
    """Before: highdicom's "unlikely to represent the intended person name" twice, even with -q,
    for a DICOM SEG of a CT whose PatientName has one component (anonymised data: "STS_001")."""
    import pydicom

    from vmambax.phantom import make_phantom, write_case

    case = write_case(make_phantom(4, size=128, n_slices=5), tmp_path, "anon")
    for series in ("ct", "pet"):
        for f in (case / "dicom" / series).glob("*.dcm"):
            ds = pydicom.dcmread(f)
            ds.PatientName = "STS_001"
            ds.save_as(f)
    proc = _run([sys.executable, "-m", "vmambax", "segment", "--ct", str(case / "dicom" / "ct"),
                 "--pet", str(case / "dicom" / "pet"), "-o", str(tmp_path / "seg.dcm"), "-q",
                 "--model", str(nano_file), "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    assert pydicom.dcmread(tmp_path / "seg.dcm").PatientName == "STS_001"
    assert "person name" not in proc.stderr, proc.stderr


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset to act as a 2-core machine")
def test_training_on_a_2_core_machine_prints_no_third_party_noise(phantom_root, tmp_path):
    """Before: Lightning's "Loading `train_dataloader` to estimate ...", "could not find the
    monitored key", "`Trainer.fit` stopped", and the DataLoader's "4 worker processes ...
    suggested max 2" (the default of 4 workers on a 2-core machine was itself wrong)."""
    data = _subset(phantom_root, "noise", n_train=4, n_val=2)
    proc = _run(["taskset", "-c", "0,1", sys.executable, "-m", "vmambax", "train", "--data", str(data),
                 "--config", "vmambax-nano", "--out", str(tmp_path / "run"), "--batch-size", "2",
                 "--max-steps", "1", "--accelerator", "cpu", "--no-progress-bar",
                 "--min-positive-slices", "1"])
    assert proc.returncode == 0, proc.stderr
    for noise in ("Loading `train_dataloader`", "could not find the monitored key",
                  "worker processes", "Trainer.fit` stopped", "1 steps"):
        assert noise not in proc.stderr, (noise, proc.stderr)
    assert "training done: 1 step;" in proc.stderr, proc.stderr
    start = [json.loads(x) for x in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()][0]
    assert start["event"] == "start"


def test_num_workers_auto_is_what_the_machine_has(monkeypatch):
    from vmambax.train import TrainConfig

    cfg = TrainConfig(data="d", out="o")
    assert cfg.num_workers == "auto"
    for cpus, per_node, workers in ((1, 1, 0), (2, 1, 1), (2, 2, 0), (8, 1, 4), (64, 4, 4), (8, 4, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        assert cfg.loader_workers(per_node) == workers, (cpus, per_node)
    assert TrainConfig(data="d", out="o", num_workers=3).loader_workers(4) == 3


# ------------------------------------------------------------------------------ progress
def test_info_says_what_it_is_doing_before_the_long_silence(capsys):
    """Before: `vmambax info` printed nothing for ~30 s (building, FLOP count)."""
    assert main(["info", "--config", "vmambax-nano", "--size", "128"]) == 0
    captured = capsys.readouterr()
    assert "building vmambax-nano" in captured.err and "counting FLOPs" in captured.err
    assert "parameters" in captured.out and "counting" not in captured.out


def test_counts_read_as_english():
    from vmambax.infer.devices import describe_device
    from vmambax.utils import cpu_threads, plural

    assert [plural(n, "case") for n in (0, 1, 2)] == ["0 cases", "1 case", "2 cases"]
    import torch

    with cpu_threads(1):
        assert describe_device(torch.device("cpu")) == "cpu (1 thread)"


# -------------------------------------------------------------------------------- cohorts
@pytest.fixture(scope="module")
def cohort_cases(tmp_path_factory):
    from vmambax.phantom import make_phantom, write_case

    root = tmp_path_factory.mktemp("newcomer") / "cases"
    for i, case_id in enumerate(("c0", "c1")):
        write_case(make_phantom(40 + i, size=128, n_slices=5), root, case_id, dicom=False)
    return root


def test_cohort_header_up_front_checks_and_warnings_said_once(cohort_cases, tmp_path, nano_file, capsys):
    """Before: "4 case(s) in the list, on auto"; a row with a missing file was found only when
    its turn came; each case's warnings were printed at the end, and again for skipped cases."""
    listing = tmp_path / "list.csv"
    listing.write_text("id,ct,pet\n"
                       f"c0,{cohort_cases}/c0/ct.nii.gz,{cohort_cases}/c0/pet.nii.gz\n"
                       f"gone,{cohort_cases}/gone/ct.nii.gz,{cohort_cases}/c1/pet.nii.gz\n"
                       f"c1,{cohort_cases}/c1/ct.nii.gz,{cohort_cases}/c1/pet.nii.gz\n")
    out = tmp_path / "out"
    args = ["segment", "--cases", str(listing), "--out-dir", str(out), "--model", str(nano_file),
            "--device", "auto", "--threads", "1", "--batch", "5"]
    assert main(args) == 3
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "3 cases in the list (1 cannot run, see below); segmenting on cpu (1 thread)", lines[0]
    missing = [n for n, line in enumerate(lines) if "case gone cannot run" in line and "does not exist" in line]
    first_case = min(n for n, line in enumerate(lines) if "c0: ok" in line)
    assert missing and missing[0] < first_case, err  # named before the first case is segmented
    nifti = "NIfTI/NRRD/MHA PET taken as SUV"
    assert err.count(f"warning: c0: {nifti}") == 1 and err.count(f"warning: c1: {nifti}") == 1, err
    assert "case(s)" not in err
    # A resumed run does not repeat the warnings of the cases it skips.
    assert main(args) == 3
    captured = capsys.readouterr()
    assert nifti not in captured.err and "0 ok, 2 skipped, 1 failed" in captured.out, captured
    rows = {r["id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["c0"]["status"] == rows["c1"]["status"] == "skipped"


def test_the_demo_models_notice_is_said_once_for_a_cohort(cohort_cases, tmp_path, capsys):
    from vmambax.infer.registry import DEMO_MODEL_NOTICE

    out = tmp_path / "out"
    assert main(["segment", "--cases", str(cohort_cases), "--out-dir", str(out), "--device", "cpu",
                 "--threads", "1", "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count(DEMO_MODEL_NOTICE) == 1 and f"warning: {DEMO_MODEL_NOTICE}" in err, err
    for case_id in ("c0", "c1"):  # each report still carries it
        assert DEMO_MODEL_NOTICE in json.loads((out / case_id / "report.json").read_text())["warnings"]


# -------------------------------------------------------------------------------- preview
def test_the_preview_captions_name_the_colours_drawn():
    """Before: the MIP's caption said red for the segmentation, also where cyan was drawn."""
    from matplotlib.colors import to_rgba

    from vmambax.infer.preview import preview_figure
    from vmambax.phantom import make_phantom

    ph = make_phantom(2, size=64, n_slices=12)
    from vmambax.data.resample import resample_to

    pet = resample_to(ph.pet_suv, ph.ct)
    lesion = {"id": 1, "centroid_mm": ph.lesions[0]["centre_mm"], "suv_max": 5.0, "mtv_ml": 2.0}
    fig = preview_figure(ph.ct, pet, ph.label, [lesion])
    named = {"red": to_rgba("red"), "cyan": to_rgba("cyan")}
    for ax in fig.axes:
        drawn = {tuple(c) for coll in ax.collections for c in np.atleast_2d(coll.get_edgecolor())}
        title = ax.get_title()
        for name, rgba in named.items():
            if rgba in drawn:
                assert f"segmentation in {name}" in title, (title, name)
            else:
                assert f"in {name}" not in title, (title, name)


# ------------------------------------------------------------------------ set-up scripts
def test_install_script_installs_once_and_again_only_when_the_project_changes(tmp_path):
    """Before: every `bash scripts/demo.sh` / `scripts/test.sh` ran pip install -e (30 s)."""
    work = tmp_path / "checkout"
    (work / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "scripts/install.sh"):
        shutil.copy(ROOT / name, work / name)
    venv_bin = work / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    log = tmp_path / "pip.log"
    (venv_bin / "python").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        # stands in for the venv's python: records pip, runs everything else for real
        if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "pip $*" >> {log}; exit 0; fi
        exec {sys.executable} "$@"
    """))
    (venv_bin / "python").chmod(0o755)
    (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')

    def install() -> list[str]:
        before = log.read_text().splitlines() if log.exists() else []
        proc = subprocess.run(["bash", "scripts/install.sh"], cwd=work, capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, VMAMBAX_NO_NATIVE="1"))
        assert proc.returncode == 0, proc.stderr
        return log.read_text().splitlines()[len(before):] if log.exists() else []

    first = install()
    assert any("install -q -e .[test]" in line for line in first), first
    assert install() == []  # nothing changed: no pip at all
    with open(work / "pyproject.toml", "a") as fh:
        fh.write("\n# a new dependency\n")
    assert any("-e .[test]" in line for line in install())
    assert install() == []
