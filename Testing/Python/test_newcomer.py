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
