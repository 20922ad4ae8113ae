"""PCLT20K layout: split parsing, patient-level validation split, dataset, exporter and CLI."""

import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vmambax.cli import main as cli_main
from vmambax.data.io import write_image
from vmambax.data.pclt import (PatientOverlapWarning, PcltDataset, make_splits, patient_of,
                               read_png, read_split, sample_path, to_tensors, write_png)
from vmambax.data.pclt_export import VolumeCase, export_cases, lung_slices
from vmambax.data.preprocess import volume_to_slices
from vmambax.errors import InputError


def make_pclt(root, patients=("P1", "P2", "P3", "P4", "P5"), slices=3, size=16):
    rng = np.random.default_rng(0)
    ids = []
    for p in patients:
        (root / p).mkdir(parents=True)
        for s in range(slices):
            sid = f"{p}_{s:03d}"
            write_png(sample_path(root, sid, "CT"), rng.integers(0, 256, (size, size), np.uint8))
            write_png(sample_path(root, sid, "PET"), rng.integers(0, 256, (size, size), np.uint8))
            mask = np.zeros((size, size), np.uint8)
            mask[4:8, 4:8] = 255
            write_png(sample_path(root, sid, "mask"), mask)
            ids.append(sid)
    return ids


def test_read_split_quirks(tmp_path):
    make_pclt(tmp_path, patients=("A",))
    (tmp_path / "train.txt").write_bytes(b"\xef\xbb\xbfA_000\r\n\r\n  A_001 \n# note\nA_000\nA_002")
    assert read_split(tmp_path, "train") == ["A_000", "A_001", "A_002"]  # last char kept
    (tmp_path / "test.txt").write_text("../etc/passwd\n")
    with pytest.raises(InputError, match="not a sample ID"):
        read_split(tmp_path, "test")
    with pytest.raises(InputError, match="val.txt is missing"):
        read_split(tmp_path, "val")
    assert patient_of("LUNG1-001_0042") == "LUNG1-001" and patient_of("X") == "X"


def test_patient_level_validation_split(tmp_path):
    ids = make_pclt(tmp_path, patients=[f"P{i}" for i in range(10)])
    train_ids, test_ids = ids[:24], ids[24:]
    (tmp_path / "train.txt").write_text("\n".join(train_ids))
    (tmp_path / "test.txt").write_text("\n".join(test_ids) + "\n")
    s1 = make_splits(tmp_path, val_fraction=0.25, seed=3)
    assert s1["test"] == test_ids  # never touched
    assert len({patient_of(i) for i in s1["val"]}) == 2
    assert not {patient_of(i) for i in s1["val"]} & {patient_of(i) for i in s1["train"]}
    assert sorted(s1["train"] + s1["val"]) == sorted(train_ids)
    assert make_splits(tmp_path, val_fraction=0.25, seed=3) == s1  # deterministic
    assert make_splits(tmp_path, val_fraction=0.25, seed=4)["val"] != s1["val"]
    (tmp_path / "val.txt").write_text("P0_000\nP0_001\nP0_002\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # val.txt's IDs leave train, so no patient is shared
        pass_through = make_splits(tmp_path)
    assert pass_through["val"] == ["P0_000", "P0_001", "P0_002"]
    assert not set(pass_through["val"]) & set(pass_through["train"])


def test_overlapping_patients_warn(tmp_path):
    make_pclt(tmp_path, patients=("A", "B"))
    (tmp_path / "train.txt").write_text("A_000\nB_000\n")
    (tmp_path / "test.txt").write_text("A_001\n")
    with pytest.warns(PatientOverlapWarning, match="train and test"):
        make_splits(tmp_path, val_fraction=0.0)


def test_dataset_items_and_tensors(tmp_path):
    ids = make_pclt(tmp_path, patients=("A", "B"))
    (tmp_path / "train.txt").write_text("\n".join(ids[:3]))
    (tmp_path / "test.txt").write_text("\n".join(ids[3:]))
    ds = PcltDataset(tmp_path, "test")
    assert len(ds) == 3 and ds.patients == ["B"]
    item = ds[0]
    assert item["id"] == "B_000" and item["ct"].dtype == np.uint8
    assert set(np.unique(item["mask"])) == {0, 1} and item["mask"].sum() == 16
    ct, pet, mask = to_tensors(item)
    assert ct.shape == (1, 16, 16) and ct.dtype == torch.float32
    assert torch.allclose(ct, torch.from_numpy(item["ct"]).float()[None] / 255 * 3.2 - 1.6)
    assert mask.max() == 1.0
    with pytest.raises(InputError, match="Unknown split"):
        PcltDataset(tmp_path, "dev")


def test_dataset_bad_files(tmp_path):
    ids = make_pclt(tmp_path, patients=("A",))
    (tmp_path / "train.txt").write_text("\n".join(ids) + "\nA_999\nA_998\n")
    (tmp_path / "test.txt").write_text("")
    with pytest.raises(InputError, match="6 PNG file\\(s\\).*missing.*A_999_CT.png"):
        PcltDataset(tmp_path, "train", val_fraction=0)
    ds = PcltDataset(tmp_path, ids=ids)
    ct_path = sample_path(tmp_path, ids[0], "CT")
    data = ct_path.read_bytes()
    ct_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        ds[0]
    write_png(sample_path(tmp_path, ids[1], "PET"), np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="differ in size"):
        ds[1]
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint16)).save(sample_path(tmp_path, ids[2], "CT"))
    with pytest.raises(InputError, match="16-bit"):
        read_png(sample_path(tmp_path, ids[2], "CT"))


# ---------------------------------------------------------------------------------- exporter
def volume_case(case_id, seed=0, tumour=(4, 7), shape=(12, 40, 48)):
    rng = np.random.default_rng(seed)
    z, y, x = shape
    hu = np.full(shape, 40.0, np.float32) + rng.normal(0, 10, shape).astype(np.float32)
    hu[:, :, :3] = -1000.0
    hu[2:10, 8:32, 6:22] = -800.0  # lung in slices 2..9
    ct = sitk.GetImageFromArray(hu.astype(np.int16))
    ct.SetSpacing((0.8, 0.8, 3.0))
    label = np.zeros(shape, np.uint8)
    label[tumour[0]:tumour[1], 15:20, 10:15] = 1
    lab_img = sitk.GetImageFromArray(label)
    lab_img.CopyInformation(ct)
    suv = np.full((6, 16, 20), 0.7, np.float32)
    suv[2:4, 6:9, 4:7] = 9.0
    pet = sitk.GetImageFromArray(suv)
    pet.SetSpacing((2.0, 2.0, 6.0))
    return VolumeCase(case_id, ct, pet, lab_img)


def test_export_cases_layout_and_content(tmp_path):
    cases = [volume_case(f"case_{i}", seed=i) for i in range(4)]
    out = tmp_path / "pclt"
    summary = export_cases(cases, out, test_ids=["case_3"], val_fraction=0.34, seed=1,
                           negatives_per_positive=1.0, size=64)
    assert summary.splits["test"] == ["case-3"] and len(summary.splits["val"]) == 1
    # Underscores in case IDs would break the PCLT folder rule, so they become '-'.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"case-{i}" for i in range(4)]
    assert (out / "train.txt").read_text().endswith("\n")
    splits = make_splits(out)
    assert {patient_of(i) for i in splits["test"]} == {"case-3"}
    assert not {patient_of(i) for i in splits["val"]} & {patient_of(i) for i in splits["train"]}
    ds = PcltDataset(out, ids=[i for s in splits.values() for i in s])
    positives = [ds[i]["mask"].any() for i in range(len(ds))]
    assert sum(positives) == 4 * 3 and len(ds) == 4 * 6  # 3 tumour slices + 3 negatives each
    assert summary.n_positive == 12 and summary.n_slices == 24
    # The PNGs are exactly what inference computes for those slices.
    c0 = cases[0]
    from vmambax.data.case import make_case

    pct = make_case(c0.ct, c0.pet_suv)
    ct_u8, pet_u8, _ = volume_to_slices(pct.ct, pct.pet_suv, size=64)
    item = PcltDataset(out, ids=["case-0_0005"])[0]
    np.testing.assert_array_equal(item["ct"], ct_u8[5])
    np.testing.assert_array_equal(item["pet"], pet_u8[5])
    # Negatives come from lung slices (2..9) first.
    neg = [int(i.split("_")[1]) for i in ds.ids if patient_of(i) == "case-1"
           and not PcltDataset(out, ids=[i])[0]["mask"].any()]
    assert neg and all(2 <= k <= 9 for k in neg)
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["cases"]["case-0"]["pixel_mm_at_network_size"] == pytest.approx([0.6, 0.6])
    assert manifest["preprocessing"]["image_size"] == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_lung_slices():
    hu = np.full((3, 10, 10), 40.0)
    hu[1, :5, :5] = -800
    assert lung_slices(hu).tolist() == [False, True, False]


def test_export_failures_write_nothing(tmp_path):
    good = volume_case("a")
    bad = volume_case("b")
    bad.label = sitk.GetImageFromArray(np.zeros((12, 40, 47), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="label of case b.*size"):
        export_cases([good, bad], out, size=32)
    swapped = volume_case("c")
    swapped.ct, swapped.pet_suv = swapped.pet_suv, swapped.ct
    with pytest.raises(InputError):
        export_cases([good, swapped], out, size=32)
    with pytest.raises(InputError, match="not among"):
        export_cases([good], out, test_ids=["zzz"], size=32)
    with pytest.raises(InputError, match="distinct"):
        export_cases([volume_case("x_1"), volume_case("x-1")], out, size=32)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty.*--overwrite"):
        export_cases([good], out, size=32)
    export_cases([good], out, size=32, overwrite=True, val_fraction=0.0)
    assert not (out / "keep.txt").exists() and (out / "train.txt").is_file()


def test_cli_export_from_case_folders(tmp_path, capsys):
    cases = tmp_path / "cases"
    for i in range(3):
        c = volume_case(f"pt{i}", seed=i)
        write_image(c.ct, cases / f"pt{i}" / "ct.nii.gz")
        write_image(c.pet_suv, cases / f"pt{i}" / "pet.nii.gz")
        write_image(c.label, cases / f"pt{i}" / "label.nii.gz")
    out = tmp_path / "pclt"
    rc = cli_main(["export", "--cases", str(cases), "--out", str(out), "--size", "32",
                   "--test-ids", "pt2", "--val-fraction", "0.5", "--negatives-per-positive", "0"])
    assert rc == 0
    assert "Exported 3 cases" in capsys.readouterr().out
    splits = make_splits(out)
    assert {patient_of(i) for i in splits["test"]} == {"pt2"}
    assert len(splits["train"]) == len(splits["val"]) == 3  # tumour slices only
    (cases / "pt9").mkdir()
    write_image(volume_case("pt9").ct, cases / "pt9" / "ct.nii.gz")
    rc = cli_main(["export", "--cases", str(cases), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2 and "error: Incomplete case folder(s)" in err and "pt9 (no pet, label)" in err
    assert not (tmp_path / "o2").exists()
