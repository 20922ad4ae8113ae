"""`vmambax demo` wiring on a tiny case (a random-init model file stands in for the demo model)."""

from __future__ import annotations

import json
import re

import pytest
import SimpleITK as sitk
import torch

from vmambax.cli import main
from vmambax.metrics import dice_3d


def test_demo_writes_outputs_and_prints_dice(tmp_path, capsys):
    from vmambax.data.preprocess import preprocessing_info
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file

    torch.manual_seed(0)
    model = tmp_path / "nano.pt"
    save_model_file(model, build_model("vmambax-nano"), config_name="vmambax-nano",
                    preprocessing=preprocessing_info(128), metadata={})
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--size", "128", "--slices", "4", "--model", str(model),
            "--device", "cpu", "--threads", "1", "--seed", "11", "-q"]
    assert main(argv) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    for name in ("label.nii.gz", "report.json", "preview.png"):
        assert (out / name).is_file()
    assert (out / "case" / "phantom-0011" / "dicom" / "ct").is_dir()
    report = json.loads((out / "report.json").read_text())
    assert report["pet"]["from_dicom"] and report["pet"]["suv_factor"] > 0
    dice = dict(re.findall(r"^(vMambaX.*?|baseline: .*?)\s+([01]\.\d{3})$", stdout, flags=re.M))
    assert len(dice) == 3, stdout
    assert all(0.0 <= float(v) <= 1.0 for v in dice.values())
    # The printed network Dice is the Dice of the written label against the phantom's truth.
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "label.nii.gz")))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case" / "phantom-0011" / "label.nii.gz")))
    assert truth.sum() > 0
    printed = [v for k, v in dice.items() if k.startswith("vMambaX")][0]
    assert float(printed) == pytest.approx(dice_3d(pred, truth), abs=6e-4)

    # Running it again reuses the folder (the demo owns it) instead of refusing.
    assert main(argv) == 0
