"""scripts/nnunet_baseline.py (the 2-D nnU-Net peer baseline, issue 20): its folds are the
project's, its conversion puts PET and label on the CT grid without letting a held-out case into
nnU-Net's training data, and its scoring is vmambax's crossval scoring. nnU-Net's training is not
run here (its planning alone takes a minute); the parts that need nnunetv2 skip without it."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vmambax.cli import main

sitk = pytest.importorskip("SimpleITK")
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_cpu_thread")]
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "nnunet_baseline.py"


@pytest.fixture(scope="module")
def nb():
    spec = importlib.util.spec_from_file_location("nnunet_baseline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet") / "cases"
    assert main(["phantom", "--out", str(root), "--cases", "5", "--seed", "21", "--size", "64",
                 "--slices", "8", "--no-dicom"]) == 0
    # an underscore, as in the real STS_001: vmambax's export (and so its folds) write it as "-"
    (root / "phantom-0025").rename(root / "phantom_0025")
    return root


@pytest.fixture(scope="module")
def converted(nb, cases, tmp_path_factory):
    found = nb.find_cases(cases)
    return found, nb.convert_cases(found, tmp_path_factory.mktemp("converted"))


def test_folds_are_vmambax_folds(nb, cases):
    from vmambax.crossval.folds import assign_folds, fold_cases
    from vmambax.train.config import TrainConfig

    found = nb.find_cases(cases)
    assert "phantom-0025" in found and found["phantom-0025"][0] == "phantom_0025"
    args = nb.parse_args(["--data", str(cases), "--out", "x", "--minutes-per-fold", "1"])
    assert (args.seed, args.val_fraction) == (TrainConfig.seed, TrainConfig.val_fraction)
    folds = assign_folds(sorted(found), 3, args.seed)
    got = nb.project_folds(found, 3, args.seed, args.val_fraction)
    assert got == [fold_cases(folds, i, args.val_fraction, args.seed) for i in range(3)]
    for train, val, test in got:
        assert sorted(train + val + test) == sorted(found) and not set(test) & set(train + val)


def test_conversion_puts_everything_on_the_ct_grid(nb, converted):
    from vmambax.data.case import make_case
    from vmambax.data.pclt_export import load_case_folder

    found, files = converted
    assert sorted(files) == sorted(found)
    for cid, f in files.items():
        vc = load_case_folder(found[cid][0], found[cid][1])
        ct, pet, label = (sitk.ReadImage(str(f[k])) for k in ("ct", "pet", "label"))
        for img in (ct, pet, label):
            assert img.GetSize() == vc.ct.GetSize()
            assert np.allclose(img.GetSpacing(), vc.ct.GetSpacing()) and np.allclose(img.GetOrigin(), vc.ct.GetOrigin())
            assert np.allclose(img.GetDirection(), vc.ct.GetDirection())
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(vc.ct))  # HU as read
        want_pet = sitk.GetArrayFromImage(make_case(vc.ct, vc.pet_suv).pet_suv)  # vmambax's resampling
        np.testing.assert_allclose(sitk.GetArrayFromImage(pet), want_pet, rtol=1e-6, atol=1e-6)
        lab = sitk.GetArrayFromImage(label)
        assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
        np.testing.assert_array_equal(lab, sitk.GetArrayFromImage(vc.label) > 0)


def test_fold_dataset_keeps_held_out_cases_out_of_training(nb, converted, tmp_path):
    found, files = converted
    train, val, test = nb.project_folds(found, 3, 42, 0.1)[0]
    root = nb.write_fold_dataset(tmp_path / "raw", 901, 1, files, train, val, test)
    assert root.name == "Dataset901_VMambaXFold1"
    names = lambda d: sorted(p.name for p in (root / d).iterdir())  # noqa: E731
    assert names("labelsTr") == sorted(f"{c}.nii.gz" for c in train + val)
    assert names("imagesTr") == sorted(f"{c}_000{i}.nii.gz" for c in train + val for i in (0, 1))
    assert names("imagesTs") == sorted(f"{c}_000{i}.nii.gz" for c in test for i in (0, 1))
    ds = json.loads((root / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT", "1": "PET"} and ds["numTraining"] == len(train) + len(val)
    assert ds["labels"] == {"background": 0, "tumour": 1} and ds["file_ending"] == ".nii.gz"
    assert nb.splits(train, val) == [{"train": sorted(train), "val": sorted(val)}]


def test_dataset_passes_nnunet_integrity_check(nb, converted, tmp_path):
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (bash scripts/install_nnunet.sh)")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    found, files = converted
    train, val, test = nb.project_folds(found, 3, 42, 0.1)[0]
    root = nb.write_fold_dataset(tmp_path / "raw", 901, 1, files, train, val, test)
    verify_dataset_integrity(str(root), num_processes=1)  # raises on any mismatch


def test_scoring_is_crossval_scoring(nb, converted, tmp_path):
    from vmambax.baselines import segment_pet
    from vmambax.data.case import make_case
    from vmambax.data.pclt_export import load_case_folder
    from vmambax.metrics.segmentation import dice_3d

    found, files = converted
    rows = []
    for cid in sorted(files):
        vc = load_case_folder(*found[cid])
        gt = sitk.GetArrayFromImage(vc.label) > 0
        pred = np.zeros_like(gt, dtype=np.uint8)
        pred[:, : gt.shape[1] // 2] = gt[:, : gt.shape[1] // 2]  # half the tumour
        img = sitk.GetImageFromArray(pred)
        img.CopyInformation(vc.ct)
        sitk.WriteImage(img, str(tmp_path / f"{cid}.nii.gz"))
        row = nb.score_case(cid, *found[cid], tmp_path / f"{cid}.nii.gz", 2)
        assert row["case"] == cid and row["fold"] == 2
        assert row["dice_nnunet"] == pytest.approx(dice_3d(pred > 0, gt))
        pet = make_case(vc.ct, vc.pet_suv).pet_suv
        for key, method in (("dice_suv25", "suv2.5"), ("dice_pct41", "pct41")):
            assert row[key] == pytest.approx(dice_3d(sitk.GetArrayFromImage(segment_pet(pet, method)) > 0, gt))
        voxel_ml = np.prod(vc.ct.GetSpacing()) / 1000
        assert row["gt_ml"] == pytest.approx(gt.sum() * voxel_ml, abs=0.01)
        assert row["nnunet_ml"] == pytest.approx(pred.sum() * voxel_ml, abs=0.01)
        rows.append(row)
    summary = nb.summarise(rows)
    dice = [r["dice_nnunet"] for r in rows]
    assert summary["cases"] == len(rows) and summary["dice_model"]["mean"] == pytest.approx(np.mean(dice))
    assert summary["dice_model"]["se"] == pytest.approx(np.std(dice, ddof=1) / np.sqrt(len(dice)))
    info = [{"fold": 2, "training": {"epochs": 3, "iterations": 150, "iterations_per_epoch": 50,
                                     "batch_size": 12, "patch_size": [64, 64], "train_s": 60.0}}]
    paths = nb.write_tables(tmp_path, rows, summary, info)
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0] == ",".join(nb.COLUMNS) and len(csv_lines) == len(rows) + 1
    md = paths["md"].read_text()
    assert "2-D nnU-Net" in md and f"{np.mean(dice):.3f}" in md and "150 iterations" in md
    with pytest.raises(ValueError, match="not on the CT grid"):
        small = sitk.Image(4, 4, 4, sitk.sitkUInt8)
        sitk.WriteImage(small, str(tmp_path / "small.nii.gz"))
        nb.score_case(rows[0]["case"], *found[rows[0]["case"]], tmp_path / "small.nii.gz", 2)


def test_without_nnunet_the_error_names_the_installer(nb, monkeypatch, tmp_path, cases):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # import nnunetv2 -> ImportError
    with pytest.raises(SystemExit, match="scripts/install_nnunet.sh"):
        nb.require_nnunet()
    with pytest.raises(SystemExit, match="scripts/install_nnunet.sh"):
        nb.main(["--data", str(cases), "--out", str(tmp_path / "run"), "--minutes-per-fold", "1"])
    assert not (tmp_path / "run").exists()
