"""Volume I/O: geometry kept, PET units, label writing, and every kind of bad input."""

import numpy as np
import pytest
import SimpleITK as sitk

from vmambax.data.io import (read_image, read_label, read_pet, read_pet_info, write_image,
                             write_label)
from vmambax.errors import InputError

DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # axis-aligned, not identity


def image(array, spacing=(0.9, 0.8, 2.5), origin=(-100.0, 50.0, 12.5), direction=None):
    img = sitk.GetImageFromArray(np.asarray(array))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction:
        img.SetDirection(direction)
    return img


def ct_array(shape=(6, 20, 24), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 50, shape) - 600).astype(np.int16)


@pytest.mark.parametrize("ext", ["nii.gz", "nii", "nrrd", "mha"])
def test_round_trip_keeps_geometry_and_values(tmp_path, ext):
    src = image(ct_array(), direction=DIRECTION)
    path = write_image(src, tmp_path / f"ct.{ext}")
    back = read_image(path)
    assert back.GetSize() == src.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), src.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), src.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def _full(tmp_path, name="ok.nii.gz"):
    return write_image(image(np.random.default_rng(1).random((4, 16, 16)).astype(np.float32)),
                       tmp_path / name)


@pytest.mark.parametrize("ext,integer", [("nii.gz", False), ("nii.gz", True), ("nii", False),
                                         ("nii", True), ("nrrd", False), ("mha", False)])
def test_truncated_files_are_refused(tmp_path, ext, integer):
    good = (write_image(image(ct_array()), tmp_path / f"good.{ext}") if integer
            else _full(tmp_path, f"good.{ext}"))
    read_image(good)  # the complete file reads
    data = good.read_bytes()
    bad = tmp_path / f"bad.{ext}"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"bad\.|truncated|corrupt"):
        read_image(bad)


def test_corrupt_missing_and_unsupported_files(tmp_path):
    garbage = tmp_path / "junk.nii.gz"
    garbage.write_bytes(b"not an image at all" * 20)
    with pytest.raises(InputError, match="junk.nii.gz"):
        read_image(garbage)
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")
    png = tmp_path / "slice.png"
    png.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="unsupported file type"):
        read_image(png)
    with pytest.raises(InputError, match="No DICOM series"):
        read_image(tmp_path)  # a folder without DICOM


def test_2d_4d_vector_nan_constant_are_refused(tmp_path):
    vol = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    two_d = write_image(sitk.GetImageFromArray(vol[0]), tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="2-D image"):
        read_image(two_d)
    four_d = tmp_path / "dyn.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([image(vol), image(vol)]), str(four_d))
    with pytest.raises(InputError, match="4 dimensions.*one 3-D frame"):
        read_image(four_d)
    vector = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Compose(image(vol), image(vol)), str(vector))
    with pytest.raises(InputError, match="2 values per voxel"):
        read_image(vector)
    nan = vol.copy()
    nan[1, 2, 3] = np.nan
    nan[2, 2, 3] = np.inf
    with pytest.raises(InputError, match="2 NaN/infinite"):
        read_image(write_image(image(nan), tmp_path / "nan.nii.gz"))
    with pytest.raises(InputError, match="all 256 voxels equal 3"):
        read_image(write_image(image(np.full((4, 8, 8), 3.0, np.float32)), tmp_path / "c.mha"))
    from vmambax.data.io import validate_volume

    with pytest.raises(InputError, match="empty"):
        validate_volume(sitk.Image([0, 0, 0], sitk.sitkFloat32), "The CT")


def test_read_pet_units(tmp_path):
    suv = np.random.default_rng(0).random((4, 10, 10)).astype(np.float32) * 8
    path = write_image(image(suv), tmp_path / "pet.nii.gz")
    info = read_pet_info(path)
    assert info.source_units == "SUV" and info.suv is None and info.notes
    np.testing.assert_allclose(sitk.GetArrayFromImage(info.image), suv)
    bq = write_image(image(suv * 5000.0), tmp_path / "pet_bq.nii.gz")
    out = read_pet(bq, units="bqml", weight_kg=70, dose_mbq=350)
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), suv * 5000 * 70e3 / 3.5e8, rtol=1e-5)
    with pytest.raises(InputError, match="--weight-kg and --dose-mbq"):
        read_pet(bq, units="bqml")
    with pytest.raises(InputError, match="Bq/mL.*--pet-units bqml"):
        read_pet(bq)  # Bq/mL mistaken for SUV
    with pytest.raises(InputError, match="Unknown PET units"):
        read_pet(path, units="kbq")
    ct = write_image(image(ct_array()), tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="looks like a CT.*swapped"):
        read_pet(ct)


def test_write_label_formats_and_grid_check(tmp_path):
    ref = image(ct_array((5, 12, 14)))
    lab = np.zeros((5, 12, 14), np.uint8)
    lab[2, 4:7, 5:9] = 1
    label = image(lab)
    for ext in ("nii.gz", "nrrd"):
        out = write_label(label, tmp_path / f"label.{ext}", reference=ref)
        back = read_label(out, ref)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), lab)
        assert back.GetPixelID() == sitk.sitkUInt8
    # Values 2 (a second lesion label) still count as tumour.
    multi = lab.copy()
    multi[4, 0, 0] = 2
    out = write_label(image(multi), tmp_path / "multi.nii.gz")
    assert sitk.GetArrayFromImage(read_label(out))[4, 0, 0] == 1


def test_label_errors_write_nothing(tmp_path):
    ref = image(ct_array((5, 12, 14)))
    wrong_size = image(np.zeros((5, 12, 13), np.uint8))
    with pytest.raises(InputError, match="does not match the CT size"):
        write_label(wrong_size, tmp_path / "a.nii.gz", reference=ref)
    shifted = image(np.zeros((5, 12, 14), np.uint8), origin=(-90.0, 50.0, 12.5))
    with pytest.raises(InputError, match="origin"):
        write_label(shifted, tmp_path / "b.nii.gz", reference=ref)
    soft = image(np.full((5, 12, 14), 0.3, np.float32))
    with pytest.raises(InputError, match="non-integer"):
        write_label(soft, tmp_path / "c.nii.gz")
    with pytest.raises(InputError, match="DICOM series folder"):
        write_label(image(np.zeros((5, 12, 14), np.uint8)), tmp_path / "seg.dcm")
    with pytest.raises(InputError, match="as out.png"):
        write_label(image(np.zeros((5, 12, 14), np.uint8)), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []
    path = write_image(wrong_size, tmp_path / "lab.nii.gz")
    with pytest.raises(InputError, match="size"):
        read_label(path, ref)
