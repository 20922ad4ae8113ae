"""Messages that say what really happened (issue 10.9): each case once misled the user."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vmambax.cli import main
from vmambax.errors import InputError, ModelFileError, VMambaXError
from vmambax.infer import registry

SIZE = 128


def _image(array, spacing=(2.0, 2.0, 3.0)):
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing)
    return image


def _ct(shape=(6, 20, 20)):
    rng = np.random.default_rng(0)
    hu = np.full(shape, -850.0) + rng.normal(0, 20, shape)
    hu[:, :, :3] = -1000
    return _image(hu)


@pytest.fixture
def dirs(tmp_path, monkeypatch, nano_file):
    """A shipped registry with one good default model, and an isolated user folder."""
    shipped = tmp_path / "Models"
    shipped.mkdir()
    (shipped / "nano.pt").write_bytes(nano_file.read_bytes())
    (shipped / "models.json").write_text(json.dumps({"format_version": 1, "models": [{
        "name": "shipped-nano", "file": "nano.pt", "config": "vmambax-nano", "default": True,
        "sha256": registry.sha256_file(nano_file)}]}))
    monkeypatch.setenv("VMAMBAX_MODELS_DIR", str(shipped))
    monkeypatch.setenv("VMAMBAX_HOME", str(tmp_path / "home"))
    return shipped


# -- a negative PET is not "a CT in HU" ----------------------------------------------------------
def test_negative_pet_is_called_negative_not_a_ct(tmp_path):
    from vmambax.data.case import make_case
    from vmambax.data.io import read_pet

    rng = np.random.default_rng(1)
    suv = rng.normal(1.0, 4.0, (6, 20, 20))  # a noisy reconstruction with many negatives
    path = tmp_path / "pet.nii.gz"
    sitk.WriteImage(_image(suv), str(path))
    for call in (lambda: read_pet(path), lambda: make_case(_ct(), _image(suv))):
        with pytest.raises(InputError) as err:
            call()
        text = str(err.value)
        assert "negative" in text and "Hounsfield" not in text and "swapped" not in text, text
    # A real CT given as the PET is still recognised as one.
    sitk.WriteImage(_ct(), str(tmp_path / "ct.nii.gz"))
    with pytest.raises(InputError, match="looks like a CT.*swapped"):
        read_pet(tmp_path / "ct.nii.gz")


# -- model files ---------------------------------------------------------------------------------
def test_a_folder_given_as_model_file_is_called_a_folder(tmp_path, dirs, capsys, monkeypatch):
    folder = tmp_path / "run1"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"")
    with pytest.raises(VMambaXError, match=r"is a folder.*model file.*run1/model\.pt"):
        registry.resolve_model(str(folder))
    with pytest.raises(VMambaXError, match="is a folder"):
        registry.add_user_model("x", folder)
    from vmambax.model.pretrained import safe_torch_load

    with pytest.raises(ModelFileError, match="is a folder"):
        safe_torch_load(folder)
    assert main(["models", "add", "x", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "does not exist" not in err
    # A folder in the working directory that happens to carry a registered model's name does
    # not hide that model (a bare name is a registry name first).
    (tmp_path / "shipped-nano").mkdir()
    monkeypatch.chdir(tmp_path)
    path, entry = registry.resolve_model("shipped-nano")
    assert entry is not None and entry.name == "shipped-nano" and path.is_file()


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_file(path: Path, marker: Path) -> Path:
    evil = _Evil()
    evil.marker = marker
    torch.save({"state_dict": {}, "payload": evil}, path)
    return path


def test_a_pickle_refused_by_the_weights_only_load_says_so(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "evil.pt", marker)
    from vmambax.model.pretrained import safe_torch_load
    from vmambax.train.export import model_state_from_checkpoint
    from vmambax.train.run import read_checkpoint_config

    for call in (lambda: safe_torch_load(evil), lambda: read_checkpoint_config(evil),
                 lambda: model_state_from_checkpoint(evil)):
        with pytest.raises(VMambaXError) as err:
            call()
        text = str(err.value)
        assert "weights-only load refuses" in text and "not executed" in text, text
        assert "truncated" not in text, text
    sitk.WriteImage(_ct(), str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(_image(np.ones((6, 20, 20))), str(tmp_path / "p.nii.gz"))
    assert main(["segment", "--ct", str(tmp_path / "ct.nii.gz"), "--pet",
                 str(tmp_path / "p.nii.gz"), "-o", str(tmp_path / "l.nii.gz"), "--model",
                 str(evil)]) == 2
    assert "weights-only load refuses" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "l.nii.gz").exists()
    # A truncated file is still reported as damaged.
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:600])
    with pytest.raises(ModelFileError, match="truncated|corrupt"):
        safe_torch_load(cut)


def test_models_add_refuses_a_wrong_architecture_file(tmp_path, dirs, nano_file):
    payload = torch.load(nano_file, weights_only=True)
    payload["config_overrides"] = {"use_dcim": False}  # claims a model without DCIM
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    with pytest.raises(ModelFileError, match="do not fit configuration"):
        registry.add_user_model("wrong", wrong)
    assert registry.user_models() == []
    entry = registry.add_user_model("right", nano_file)
    assert entry.config == "vmambax-nano" and [e.name for e in registry.user_models()] == ["right"]


def test_a_corrupt_user_registry_falls_back_to_the_shipped_models(tmp_path, dirs, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models.json").write_text('{"models": [ {"name": "mine", ')  # cut short
    with pytest.warns(UserWarning, match="(?s)models.json.*not valid.*shipped models"):
        path, entry = registry.resolve_model("default")
    assert entry.name == "shipped-nano" and path.is_file()
    assert main(["models", "list"]) == 0
    captured = capsys.readouterr()
    assert "shipped-nano" in captured.out
    assert "warning: " in captured.err and "models.json" in captured.err
    # Adding to a corrupt registry would lose its entries: refused, with the fix.
    with pytest.raises(VMambaXError, match="fix or delete"):
        registry.add_user_model("new", dirs / "nano.pt")


# -- preview of a single slice ---------------------------------------------------------------------
def test_preview_of_a_single_slice_volume(tmp_path):
    from vmambax.infer.preview import render_preview

    ct = _ct((1, 40, 40))
    pet_a = np.full((1, 40, 40), 0.8, np.float32)
    pet_a[0, 15:22, 15:22] = 9.0
    lab_a = (pet_a > 5).astype(np.uint8)
    pet, label = _image(pet_a), sitk.GetImageFromArray(lab_a)
    label.CopyInformation(pet)
    lesion = {"id": 1, "centroid_mm": list(pet.TransformContinuousIndexToPhysicalPoint(
        (18.0, 18.0, 0.0))), "suv_max": 9.0, "mtv_ml": 0.6}
    png = render_preview(ct, pet, label, [lesion])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    path = tmp_path / "p.png"
    path.write_bytes(png)
    width, height = sitk.ReadImage(str(path)).GetSize()[:2]
    assert width < 4000 and height < 2000, (width, height)
