"""Segmentation metrics (spec §10/§13), HD95 against medpy, PET quantification, `vmambax evaluate`."""

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from vmambax.cli import main
from vmambax.metrics import (Confusion, SetMetrics, case_metrics, confusion, dice_3d, hd95, hd95_reference_2d,
                             quantify_lesions, set_metrics, sphere_kernel)


def blobs(shape, rng, level=0.53, sigma=2.0):
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


# --- confusion, micro / macro ---------------------------------------------------------------

def test_confusion_and_ratios_by_hand():
    gt = np.zeros((4, 5), bool)
    gt[1:3, 1:4] = True  # 6 pixels
    pred = np.zeros((4, 5), bool)
    pred[1:3, 2:5] = True  # 6 pixels, 4 overlap
    c = confusion(pred, gt)
    assert (c.tp, c.fp, c.fn, c.tn) == (4, 2, 2, 12)
    assert c.iou == pytest.approx(4 / 8)
    assert c.dice == pytest.approx(8 / 12)
    assert c.balanced_accuracy == pytest.approx(0.5 * (4 / 6 + 12 / 14))
    assert Confusion().iou == 1.0 and Confusion().dice == 1.0  # zero denominators -> 1, as pred.py
    with pytest.raises(ValueError, match="shape"):
        confusion(pred, gt[:3])


def test_micro_pools_pixels_and_macro_averages_images():
    a_gt = np.zeros((10, 10), bool)
    a_gt[2:8, 2:8] = True  # 36 px, predicted perfectly
    b_gt = np.zeros((10, 10), bool)
    b_gt[0:2, 0:2] = True  # 4 px, prediction overlaps 1 px and adds 3
    b_pred = np.zeros((10, 10), bool)
    b_pred[1:3, 1:3] = True
    r = set_metrics([a_gt, b_pred], [a_gt, b_gt])
    # micro: TP 37, FP 3, FN 3
    assert r["iou_micro"] == pytest.approx(37 / 43)
    assert r["dice_micro"] == pytest.approx(74 / 80)
    # micro Dice and IoU come from one confusion matrix: Dice = 2 IoU / (1 + IoU) (spec §13)
    assert r["dice_micro"] == pytest.approx(2 * r["iou_micro"] / (1 + r["iou_micro"]))
    # macro: per image, then the mean
    assert r["iou_macro"] == pytest.approx((1.0 + 1 / 7) / 2)
    assert r["dice_macro"] == pytest.approx((1.0 + 2 / 8) / 2)
    assert r["balanced_accuracy"] == pytest.approx(0.5 * (37 / 40 + 157 / 160))
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (37, 3, 3, 157)


def test_empty_images_are_counted_not_faked():
    empty = np.zeros((8, 8), bool)
    one = np.zeros((8, 8), bool)
    one[0, 0] = True
    acc = SetMetrics()
    acc.add(empty, empty)  # correct "no tumour"
    acc.add(empty, one)  # missed
    acc.add(one, empty)  # false alarm
    acc.add(one, one)  # perfect
    r = acc.result()
    assert (r["n_both_empty"], r["n_missed"], r["n_false_alarm"], r["n_hd95"]) == (1, 1, 1, 1)
    assert r["dice_macro"] == pytest.approx((1 + 0 + 0 + 1) / 4)
    assert r["hd95_px"] == 0.0  # only the image where both masks are non-empty
    # the reference convention puts the centre pixel (4, 4) into the empty mask: sqrt(4^2 + 4^2)
    assert r["hd95_px_reference"] == pytest.approx((0 + math.sqrt(32) + math.sqrt(32) + 0) / 4)
    assert hd95_reference_2d(empty, one) == pytest.approx(math.sqrt(32))
    # the reference Lightning module scores empty/empty as 0
    assert SetMetrics(empty_score=0.0).add(empty, empty)["dice"] == 0.0
    assert r["hd95_mm"] is None  # no spacing given


def test_hd95_mm_uses_the_pixel_spacing():
    gt = np.zeros((20, 20), bool)
    gt[5:10, 5:10] = True
    pred = np.roll(gt, 3, axis=1)  # shifted 3 columns
    r = set_metrics([pred], [gt], spacing=(0.5, 2.0))
    assert r["hd95_px"] == pytest.approx(hd95(pred, gt))
    assert r["hd95_mm"] == pytest.approx(hd95(pred, gt, (0.5, 2.0)))
    assert r["hd95_mm"] != pytest.approx(r["hd95_px"])


# --- HD95 against medpy ---------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
def test_hd95_matches_medpy_on_random_blobs(dim):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(dim)
    shape = (48, 56) if dim == 2 else (20, 40, 36)
    spacing = (0.7, 1.3) if dim == 2 else (3.0, 0.8, 1.1)
    for _ in range(4):
        a, b = blobs(shape, rng), blobs(shape, rng)
        assert a.any() and b.any()
        assert hd95(a, b, spacing) == pytest.approx(medpy_binary.hd95(a, b, spacing), abs=1e-6)
        assert hd95(a, b) == pytest.approx(medpy_binary.hd95(a, b), abs=1e-6)
    # masks touching the array border (the crop must not change what counts as surface)
    a = np.zeros(shape, bool)
    a[(slice(0, 6),) * dim] = True
    b = np.zeros(shape, bool)
    b[(slice(2, 9),) * dim] = True
    assert hd95(a, b, spacing) == pytest.approx(medpy_binary.hd95(a, b, spacing), abs=1e-6)


def test_hd95_edge_cases():
    e = np.zeros((5, 5), bool)
    o = e.copy()
    o[2, 2] = True
    assert hd95(e, e) == 0.0
    assert math.isnan(hd95(o, e)) and math.isnan(hd95(e, o))
    with pytest.raises(ValueError, match="shape"):
        hd95(o, o[:4])
    with pytest.raises(ValueError, match="spacing"):
        hd95(o, o, (1.0, -1.0))


# --- 3-D ------------------------------------------------------------------------------------------

def test_case_metrics_and_lesion_detection():
    gt = np.zeros((10, 30, 30), bool)
    gt[2:5, 2:8, 2:8] = True  # lesion A (detected)
    gt[6:9, 20:26, 20:26] = True  # lesion B (missed)
    pred = np.zeros_like(gt)
    pred[2:5, 3:8, 2:8] = True  # most of A
    pred[6:8, 2:5, 22:25] = True  # a false positive
    m = case_metrics(pred, gt, (3.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(dice_3d(pred, gt))
    assert (m["lesions_gt"], m["lesions_detected"], m["lesions_pred"], m["false_positive_lesions"]) == (2, 1, 2, 1)
    assert m["volume_gt_ml"] == pytest.approx(gt.sum() * 3.0 / 1000)
    assert m["hd95_mm"] > 10  # the missed lesion and the false positive are far away
    assert dice_3d(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))) == 1.0


# --- quantification -------------------------------------------------------------------------------

def test_quantification_of_uniform_cubes_is_analytic():
    pet = np.ones((30, 40, 40))
    mask = np.zeros(pet.shape, bool)
    mask[5:15, 5:15, 5:15] = True  # 10^3 voxels of 2 mm: 8 mL, SUV 5; the peak sphere fits inside
    pet[mask] = 5.0
    mask[20:22, 30:32, 30:32] = True  # 8 voxels, SUV 3
    pet[20:22, 30:32, 30:32] = 3.0
    q = quantify_lesions(mask, pet, (2.0, 2.0, 2.0))
    big, small = q["lesions"]
    assert big["mtv_ml"] == pytest.approx(8.0) and small["mtv_ml"] == pytest.approx(8 * 8 / 1000)
    assert big["suv_max"] == big["suv_mean"] == pytest.approx(5.0)
    assert big["suv_peak"] == pytest.approx(5.0)
    assert big["tlg"] == pytest.approx(40.0)
    assert small["suv_peak"] < 3.0  # the 1 cm^3 sphere is larger than the 2x2x2-voxel lesion
    t = q["total"]
    assert t["n_lesions"] == 2 and t["mtv_ml"] == pytest.approx(8.064)
    assert t["tlg"] == pytest.approx(40 + 3 * 0.064)
    assert t["suv_max"] == 5.0 and t["suv_mean"] == pytest.approx((5 * 1000 + 3 * 8) / 1008)


def test_suv_peak_is_the_sphere_mean_around_the_hottest_voxel():
    k = sphere_kernel((4.0, 4.0, 4.0))
    assert k.sum() == 19  # centre, 6 faces (4 mm), 12 edges (5.66 mm); corners (6.93 mm) are out
    pet = np.full((9, 9, 9), 2.0)
    pet[4, 4, 4] = 10.0
    mask = np.zeros(pet.shape, bool)
    mask[3:6, 3:6, 3:6] = True
    q = quantify_lesions(mask, pet, (4.0, 4.0, 4.0))
    assert q["lesions"][0]["suv_peak"] == pytest.approx((10 + 18 * 2) / 19)


def test_quantification_with_images_reports_mm_centroids():
    sitk = pytest.importorskip("SimpleITK")
    arr = np.zeros((6, 8, 8), np.uint8)
    arr[2:4, 2:4, 4:6] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.SetSpacing((2.0, 2.0, 3.0))
    mask.SetOrigin((-10.0, 5.0, 100.0))
    pet = sitk.GetImageFromArray(arr.astype(np.float32) * 4 + 1)
    pet.CopyInformation(mask)
    les = quantify_lesions(mask, pet)["lesions"][0]
    assert les["centroid"] == pytest.approx([-10 + 4.5 * 2, 5 + 2.5 * 2, 100 + 2.5 * 3])
    other = sitk.GetImageFromArray(arr.astype(np.float32))
    with pytest.raises(ValueError, match="same grid"):
        quantify_lesions(mask, other[:, :, :5])


# --- `vmambax evaluate` ---------------------------------------------------------------------------

@pytest.fixture()
def volumes(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(7)
    gt = blobs((12, 40, 40), rng, 0.55).astype(np.uint8)
    pred = ndimage.binary_dilation(gt, iterations=1).astype(np.uint8)
    pred[:, :, :3] = 0
    imgs = {}
    for name, arr in (("gt", gt), ("pred", pred)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.8, 0.8, 2.5))
        img.SetOrigin((1.0, 2.0, 3.0))
        sitk.WriteImage(img, str(tmp_path / f"{name}.nii.gz"))
        imgs[name] = img
    pet = sitk.GetImageFromArray((gt * 6.0 + 1.0).astype(np.float32))
    pet.CopyInformation(imgs["gt"])
    sitk.WriteImage(pet, str(tmp_path / "pet.nii.gz"))
    return tmp_path, gt, pred


def test_evaluate_volumes_prints_both_families_and_writes_json(volumes, capsys):
    d, gt, pred = volumes
    out = d / "res.json"
    rc = main(["evaluate", "--pred", str(d / "pred.nii.gz"), "--gt", str(d / "gt.nii.gz"),
               "--pet", str(d / "pet.nii.gz"), "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "micro" in text and "macro" in text and "3-D" in text and "SUVpeak" in text
    res = json.loads(out.read_text())
    rows = [k for k in range(gt.shape[0]) if gt[k].any()]
    expect = set_metrics([pred[k] for k in rows], [gt[k] for k in rows], spacing=(0.8, 0.8))
    for key in ("iou_micro", "dice_micro", "iou_macro", "dice_macro", "balanced_accuracy", "hd95_px", "hd95_mm"):
        assert res["slices"][key] == pytest.approx(expect[key])
    case = res["cases"][0]
    assert case["dice"] == pytest.approx(dice_3d(pred, gt))
    assert case["quantification"]["gt"]["total"]["suv_max"] == pytest.approx(7.0)


def test_evaluate_refuses_mismatched_grids_unless_resampling(volumes, capsys):
    sitk = pytest.importorskip("SimpleITK")
    d, _, _ = volumes
    small = sitk.ReadImage(str(d / "pred.nii.gz"))[:, :, :10]
    sitk.WriteImage(small, str(d / "small.nii.gz"))
    out = d / "res.json"
    rc = main(["evaluate", "--pred", str(d / "small.nii.gz"), "--gt", str(d / "gt.nii.gz"), "--json", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "size" in err and "--resample" in err
    assert not out.exists()
    assert main(["evaluate", "--pred", str(d / "small.nii.gz"), "--gt", str(d / "gt.nii.gz"), "--resample"]) == 0


def test_evaluate_folders_of_volume_cases(volumes, tmp_path, capsys):
    import shutil

    d, gt, pred = volumes
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    for case in ("a", "b"):
        (gt_root / case).mkdir(parents=True)
        shutil.copy(d / "gt.nii.gz", gt_root / case / "label.nii.gz")
        shutil.copy(d / "pet.nii.gz", gt_root / case / "pet.nii.gz")
    pred_root.mkdir()
    shutil.copy(d / "pred.nii.gz", pred_root / "a.nii.gz")  # <case>.nii.gz
    (pred_root / "b").mkdir()
    shutil.copy(d / "gt.nii.gz", pred_root / "b" / "label.nii.gz")  # <case>/label.nii.gz, perfect
    out = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(pred_root), "--gt", str(gt_root), "--pet", "case", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [c["case"] for c in res["cases"]] == ["a", "b"]
    assert res["cases"][1]["dice"] == 1.0 and res["cases"][0]["dice"] == pytest.approx(dice_3d(pred, gt))
    assert res["case_means"]["dice"] == pytest.approx((1.0 + dice_3d(pred, gt)) / 2)
    assert res["cases"][0]["quantification"]["pred"]["total"]["n_lesions"] >= 1
    assert res["slices"]["n_images"] == 2 * sum(gt[k].any() for k in range(gt.shape[0]))
    (pred_root / "a.nii.gz").unlink()
    assert main(["evaluate", "--pred", str(pred_root), "--gt", str(gt_root)]) == 2
    assert "no prediction" in capsys.readouterr().err


def write_png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def test_evaluate_png_folders_pclt_layout(tmp_path, capsys):
    rng = np.random.default_rng(3)
    gts, preds = [], []
    for i in range(3):
        g = blobs((32, 32), rng, 0.52)
        p = np.roll(g, i, axis=0)
        gts.append(g)
        preds.append(p)
        write_png(tmp_path / "gt" / f"pat{i}" / f"pat{i}_{i:03d}_mask.png", g * 255)
        # prediction as CIPA writes it: probability x 255 (> 127 = tumour)
        write_png(tmp_path / "pred" / f"pat{i}_{i:03d}.png", np.where(p, 200, 60))
    out = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    expect = set_metrics(preds, gts)
    assert res["slices"]["n_images"] == 3
    for key in ("iou_micro", "dice_macro", "hd95_px"):
        assert res["slices"][key] == pytest.approx(expect[key])
    # a missing prediction is a clear error and nothing is written
    (tmp_path / "pred" / "pat2_002.png").unlink()
    out.unlink()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json", str(out)]) == 2
    assert "no prediction" in capsys.readouterr().err and not out.exists()
    # a prediction of the wrong size
    write_png(tmp_path / "pred" / "pat2_002.png", np.zeros((16, 16)))
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    assert "size" in capsys.readouterr().err


def test_evaluate_bad_paths(tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path / "nope.nii.gz"), "--gt", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--pred", str(tmp_path / "empty"), "--gt", str(tmp_path / "empty")]) == 2
    assert "_mask.png" in capsys.readouterr().err
