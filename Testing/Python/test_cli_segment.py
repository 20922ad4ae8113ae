"""`vmambax segment` end to end on a small phantom, and every bad input -> clear error, no output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vmambax.cli import main

SIZE = 128  # phantom CT matrix and model input size: small enough for 2-core CI


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from vmambax.phantom import make_phantom, write_case

    root = tmp_path_factory.mktemp("cases")
    phantom = make_phantom(3, size=SIZE, n_slices=6)
    return Path(write_case(phantom, root, "p3"))


def _segment(case, out, model, *extra):
    return main(["segment", "--ct", str(case / "ct.nii.gz"), "--pet", str(case / "pet.nii.gz"),
                 "-o", str(out / "label.nii.gz"), "--model", str(model), "--device", "cpu",
                 "--batch", "4", "--threads", "1", "-q", *extra])


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_segment_nifti_end_to_end(case, nano_file, tmp_path, capsys):
    out = tmp_path / "out"
    rc = _segment(case, out, nano_file, "--report", str(out / "report.json"),
                  "--preview", str(out / "preview.png"))
    assert rc == 0, capsys.readouterr().err
    ct = sitk.ReadImage(str(case / "ct.nii.gz"))
    label = sitk.ReadImage(str(out / "label.nii.gz"))
    assert label.GetSize() == ct.GetSize()
    np.testing.assert_allclose(label.GetSpacing(), ct.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(label.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(label.GetDirection(), ct.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1}

    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "vmambax-segmentation-report"
    assert report["model"]["config"] == "vmambax-nano" and report["model"]["sha256"]
    assert report["inputs"]["ct"]["size"] == list(ct.GetSize())
    assert report["slices"] == ct.GetSize()[2] and report["slices_per_second"] > 0
    assert {"load", "preprocess", "inference", "postprocess", "write", "total"} <= set(report["timings_s"])
    assert report["pet"]["source_units"] == "SUV" and "not for clinical use" in report["note"]
    mask = sitk.GetArrayFromImage(label)
    assert report["totals"]["voxels"] == int(mask.sum()) == sum(l["voxels"] for l in report["lesions"])
    png = (out / "preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert _files(out) == ["label.nii.gz", "preview.png", "report.json"]  # no temp files left

    # Existing outputs are kept unless --overwrite.
    assert _segment(case, out, nano_file) == 2
    assert "already exists" in capsys.readouterr().err
    assert _segment(case, out, nano_file, "--overwrite") == 0


def test_segment_dicom_writes_a_dicom_seg(case, nano_file, tmp_path, capsys):
    import highdicom as hd

    out = tmp_path / "seg.dcm"
    rc = main(["segment", "--ct", str(case / "dicom" / "ct"), "--pet", str(case / "dicom" / "pet"),
               "-o", str(out), "--model", str(nano_file), "--device", "cpu", "--threads", "1",
               "--report", str(tmp_path / "r.json")])
    assert rc == 0, capsys.readouterr().err
    seg = hd.seg.segread(str(out))
    assert seg.Modality == "SEG" and seg.number_of_segments == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["outputs"]["label_format"] == "DICOM SEG"
    assert report["pet"]["source_units"] != "SUV" and report["pet"]["suv_factor"] > 0  # from tags
    stdout = capsys.readouterr().out
    assert "slices/s" in stdout and str(out) in stdout


def _wrong_architecture(nano_file: Path, path: Path) -> Path:
    payload = torch.load(nano_file, weights_only=True)
    payload["config_overrides"] = {"use_dcim": False}  # claims a model without DCIM
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("problem, message", [
    ("missing_ct", "CT input .* does not exist"),
    ("swapped", "swapped"),
    ("no_overlap", "overlap"),
    ("wrong_architecture", "do not fit configuration"),
    ("corrupted_model", "model file"),
    ("checksum", "fails its checksum"),
    ("bad_suffix", "unsupported output"),
    ("seg_from_nifti", "DICOM SEG"),
])
def test_bad_inputs_fail_clearly_and_write_nothing(problem, message, case, nano_file, tmp_path,
                                                   monkeypatch, capsys):
    ct, pet, model = case / "ct.nii.gz", case / "pet.nii.gz", nano_file
    out = tmp_path / "out"
    label = out / "label.nii.gz"
    if problem == "missing_ct":
        ct = tmp_path / "nope.nii.gz"
    elif problem == "swapped":
        ct, pet = pet, ct
    elif problem == "no_overlap":
        moved = sitk.ReadImage(str(pet))
        moved.SetOrigin([o + 5000.0 for o in moved.GetOrigin()])
        pet = tmp_path / "far_pet.nii.gz"
        sitk.WriteImage(moved, str(pet))
    elif problem == "wrong_architecture":
        model = _wrong_architecture(nano_file, tmp_path / "wrong.pt")
    elif problem == "corrupted_model":
        model = tmp_path / "corrupt.pt"
        model.write_bytes(nano_file.read_bytes()[:5000])
    elif problem == "checksum":
        models = tmp_path / "Models"
        models.mkdir()
        (models / "nano.pt").write_bytes(nano_file.read_bytes())
        (models / "models.json").write_text(json.dumps({"models": [{
            "name": "nano", "file": "nano.pt", "sha256": "0" * 64, "config": "vmambax-nano",
            "default": True}]}))
        monkeypatch.setenv("VMAMBAX_MODELS_DIR", str(models))
        model = "default"
    elif problem == "bad_suffix":
        label = out / "label.png"
    elif problem == "seg_from_nifti":
        label = out / "seg.dcm"
    rc = main(["segment", "--ct", str(ct), "--pet", str(pet), "-o", str(label), "--model",
               str(model), "--device", "cpu", "--report", str(out / "r.json"), "--preview",
               str(out / "p.png"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err, flags=re.I), err
    assert _files(out) == [], "a failed run must not leave outputs"
