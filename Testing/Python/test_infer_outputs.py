"""segment_files: output validation, all-or-nothing writing, cancel; report JSON; preview PNG."""

from __future__ import annotations

import io
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vmambax.errors import Cancelled, InputError
from vmambax.infer import pipeline
from vmambax.infer.report import report_json
from vmambax.infer.segmenter import Segmenter


class HotSpotNet(torch.nn.Module):
    def forward(self, ct, pet):
        return (pet + 1.0) * 20.0 + 0.0 * ct


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small CT (HU) and PET (SUV, own coarser grid) with one hot lesion, as NIfTI files."""
    root = tmp_path_factory.mktemp("vol")
    rng = np.random.default_rng(0)
    ct = rng.normal(-700, 80, (8, 48, 48)).astype(np.int16)
    ct[:, 20:30, 20:30] = 30
    ct_img = sitk.GetImageFromArray(ct)
    ct_img.SetSpacing((2.0, 2.0, 3.0))
    pet = rng.uniform(0.4, 1.2, (8, 24, 24)).astype(np.float32)
    pet[3:6, 10:15, 10:15] = 9.0
    pet_img = sitk.GetImageFromArray(pet)
    pet_img.SetSpacing((4.0, 4.0, 3.0))
    sitk.WriteImage(ct_img, str(root / "ct.nii.gz"))
    sitk.WriteImage(pet_img, str(root / "pet.nii.gz"))
    return root / "ct.nii.gz", root / "pet.nii.gz"


def _seg(**kw):
    return Segmenter(HotSpotNet(), device="cpu", batch_size=3, image_size=64, all_slices=True, **kw)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_segment_files_writes_label_report_preview(files, tmp_path):
    ct, pet = files
    out = tmp_path / "o"
    seen = []
    result, report = pipeline.segment_files(
        ct, pet, out / "lab.nrrd", report=out / "r.json", preview=out / "p.png",
        segmenter=_seg(), progress=lambda f, m: seen.append(f))
    assert _listing(out) == ["lab.nrrd", "p.png", "r.json"]
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len(result.lesions) == 1 and result.lesions[0]["suv_max"] == pytest.approx(9.0, rel=1e-3)
    on_disk = json.loads((out / "r.json").read_text())
    assert on_disk["lesions"][0]["id"] == 1 and on_disk["pet"]["source_units"] == "SUV"
    assert on_disk["inputs"]["pet"]["size"] == [24, 24, 8]  # the PET's own grid, as given
    assert on_disk["timings_s"]["write"] > 0
    from PIL import Image

    with Image.open(out / "p.png") as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200


def test_a_failing_last_write_leaves_nothing(files, tmp_path, monkeypatch):
    ct, pet = files
    out = tmp_path / "o"
    out.mkdir()

    def broken(report):
        raise OSError("disk full")

    monkeypatch.setattr("vmambax.infer.report.report_json", broken)
    with pytest.raises(OSError, match="disk full"):
        pipeline.segment_files(ct, pet, out / "lab.nii.gz", report=out / "r.json",
                               preview=out / "p.png", segmenter=_seg())
    assert _listing(out) == []  # the already-written label and preview were rolled back


def test_cancel_writes_nothing(files, tmp_path):
    ct, pet = files
    cancel = threading.Event()
    seg = _seg(cancel=cancel)
    seg.progress = None

    def progress(fraction, message):
        if "Segmented" in message:
            cancel.set()

    with pytest.raises(Cancelled):
        pipeline.segment_files(ct, pet, tmp_path / "o" / "lab.nii.gz", segmenter=seg,
                               progress=progress)
    assert _listing(tmp_path / "o") == []


@pytest.mark.parametrize("output, extra, message", [
    ("lab.nii.gz", {"report": "r.txt"}, "must end in .json"),
    ("lab.nii.gz", {"preview": "p.jpg"}, "must end in .png"),
    ("lab.nii.gz", {"report": "lab.nii.gz"}, "must end in .json"),
    ("lab", {}, "unsupported output"),
])
def test_output_plan_validation(files, tmp_path, output, extra, message):
    ct, pet = files
    extra = {k: tmp_path / v for k, v in extra.items()}
    with pytest.raises(InputError, match=message):
        pipeline.plan_outputs(tmp_path / output, ct_path=ct, pet_path=pet, **extra)


def test_output_must_not_overwrite_an_input(files):
    ct, pet = files
    with pytest.raises(InputError, match="overwrite an input"):
        pipeline.plan_outputs(ct, ct_path=ct, pet_path=pet, overwrite=True)
    with pytest.raises(InputError, match="PET input .* does not exist"):
        pipeline.check_inputs(ct, ct.parent / "missing.nii.gz")


def test_report_json_is_strict_json():
    text = report_json({"suv_peak": float("nan"), "n": np.int64(3), "v": np.float32(1.5),
                        "size": (1, 2, 3), "path": Path("/x")})
    data = json.loads(text)
    assert data == {"suv_peak": None, "n": 3, "v": 1.5, "size": [1, 2, 3], "path": "/x"}
    assert "NaN" not in text and not any(isinstance(v, float) and math.isnan(v) for v in data.values())


def test_preview_without_lesions_is_still_a_readable_png():
    from PIL import Image

    from vmambax.infer.preview import render_preview

    ct = sitk.GetImageFromArray(np.full((4, 32, 32), -800, np.int16))
    pet = sitk.GetImageFromArray(np.ones((4, 32, 32), np.float32))
    label = sitk.GetImageFromArray(np.zeros((4, 32, 32), np.uint8))
    png = render_preview(ct, pet, label, [])
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width > 200
