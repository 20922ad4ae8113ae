"""PET onto CT in physical space, orientation handling, and the PET/CT case checks."""

import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from vmambax.data.case import load_pet_ct, make_case
from vmambax.data.io import write_image
from vmambax.data.orientation import axis_map, image_axis_map
from vmambax.data.resample import PartialOverlapWarning, overlap_fraction, resample_to
from vmambax.errors import InputError


def grid(size, spacing, origin, direction=None, pixel=sitk.sitkFloat32):
    img = sitk.Image(list(size), pixel)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction:
        img.SetDirection(direction)
    return img


def fill(img, fn):
    """Set every voxel to fn(x, y, z) of its physical position."""
    size = img.GetSize()
    k, j, i = np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij")
    idx = np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float)
    d = np.array(img.GetDirection()).reshape(3, 3)
    pts = np.array(img.GetOrigin()) + (idx * np.array(img.GetSpacing())) @ d.T
    values = fn(pts[:, 0], pts[:, 1], pts[:, 2]).reshape(size[::-1]).astype(np.float32)
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(img)
    return out, pts.reshape(*size[::-1], 3)


def linear(x, y, z):
    return 2.0 + 0.01 * x - 0.02 * y + 0.03 * z


def test_pet_to_ct_with_different_spacing_size_origin_thickness():
    """A field linear in physical space must survive linear resampling exactly."""
    ct = grid((40, 36, 14), (0.98, 0.98, 1.25), (-20.0, -17.0, 3.0))
    pet, _ = fill(grid((16, 15, 7), (4.0, 4.0, 3.27), (-28.0, -26.0, -2.0)), linear)
    out = resample_to(pet, ct, "linear")
    assert out.GetSize() == ct.GetSize() and out.GetSpacing() == ct.GetSpacing()
    assert out.GetOrigin() == ct.GetOrigin()
    _, pts = fill(ct, linear)
    got = sitk.GetArrayFromImage(out)
    inside = pts[..., 2] <= -2.0 + 6 * 3.27  # within the PET's voxel centres (no extrapolation)
    assert 0.5 < inside.mean() < 1
    np.testing.assert_allclose(got[inside], linear(*np.moveaxis(pts[inside], -1, 0)), atol=1e-4)


def test_hot_spot_lands_at_the_same_physical_point():
    ct = grid((50, 50, 18), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    pet_grid = grid((20, 20, 10), (4.0, 4.0, 4.0), (-10.0, -6.0, -4.0))
    centre = np.array([26.0, 30.0, 16.0])  # a PET voxel centre, and a CT voxel centre
    pet, _ = fill(pet_grid, lambda x, y, z: np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2
                                                       + (z - centre[2]) ** 2) / 60.0))
    arr = sitk.GetArrayFromImage(resample_to(pet, ct))
    k, j, i = np.unravel_index(np.argmax(arr), arr.shape)
    peak = ct.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
    np.testing.assert_allclose(peak, centre)


def test_nearest_for_labels_keeps_values_and_type():
    ref = grid((30, 30, 10), (1.0, 1.0, 1.0), (0, 0, 0))  # inside the label's extent
    lab = np.zeros((6, 11, 11), np.uint8)
    lab[2, 3:6, 3:6] = 3
    label = sitk.GetImageFromArray(lab)
    label.SetSpacing((3.0, 3.0, 2.0))
    out = resample_to(label, ref, "nearest")
    assert out.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(out))) == {0, 3}
    with pytest.raises(InputError, match="interpolator"):
        resample_to(label, ref, "cubic")


def test_no_overlap_and_partial_overlap():
    ct = grid((20, 20, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    far = grid((10, 10, 5), (4.0, 4.0, 4.0), (0.0, 0.0, 500.0))
    with pytest.raises(InputError, match="do not overlap: CT spans .* PET spans .* same study"):
        resample_to(far, ct)
    half = grid((20, 20, 5), (1.0, 1.0, 2.0), (0.0, 0.0, 9.0))
    assert overlap_fraction(half, ct) == pytest.approx(0.5)
    with pytest.warns(PartialOverlapWarning, match="50%"):
        resample_to(half, ct)


PERMUTED = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # a sagittal acquisition


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (1, 0, 0, 0, 1, 0, 0, 0, -1), PERMUTED])
def test_axis_map_matches_dicomorient_and_inverts(direction):
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    img = sitk.GetImageFromArray(arr)
    img.SetDirection(direction)
    amap = image_axis_map(img)
    expected = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))
    np.testing.assert_array_equal(amap.to_axial(arr), expected)
    np.testing.assert_array_equal(amap.from_axial(amap.to_axial(arr)), arr)


def test_oblique_is_refused_and_small_tilt_tolerated():
    a = np.radians(20)
    oblique = (1, 0, 0, 0, np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a))
    with pytest.raises(InputError, match="oblique \\(20.0 degrees.*resample"):
        axis_map(oblique)
    b = np.radians(2)
    assert axis_map((1, 0, 0, 0, np.cos(b), -np.sin(b), 0, np.sin(b), np.cos(b))).is_identity


def ct_and_pet(tmp_path=None):
    rng = np.random.default_rng(0)
    hu = rng.normal(-800, 30, (8, 32, 32)).astype(np.int16)
    hu[:, 10:20, 10:20] = 30
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((1.0, 1.0, 2.5))
    suv = np.full((4, 10, 10), 0.8, np.float32)
    suv[1:3, 3:7, 3:7] = 9.0
    pet = sitk.GetImageFromArray(suv)
    pet.SetSpacing((3.5, 3.5, 5.0))
    return ct, pet


def test_make_case_and_swapped_inputs(tmp_path):
    ct, pet = ct_and_pet()
    case = make_case(ct, pet)
    assert case.pet_suv.GetSize() == ct.GetSize()
    assert case.pet_suv.GetPixelID() == sitk.sitkFloat32 and case.warnings == []
    with pytest.raises(InputError, match="swapped"):
        make_case(pet, ct)
    bq = sitk.Cast(pet, sitk.sitkFloat32) * 5000.0
    with pytest.raises(InputError, match="Bq/mL"):
        make_case(ct, bq)
    arr = np.full((8, 32, 32), 40, np.int16)  # soft tissue only
    arr[0, 0, 0] = 41
    no_air = sitk.GetImageFromArray(arr)
    no_air.CopyInformation(ct)
    with pytest.raises(InputError, match="no air or lung values"):
        make_case(no_air, pet)
    shifted = sitk.Image(pet)
    shifted.SetOrigin((0.0, 0.0, 1000.0))
    with pytest.raises(InputError, match="do not overlap"):
        make_case(ct, shifted)


def test_load_pet_ct_files_partial_overlap_recorded(tmp_path):
    ct, pet = ct_and_pet()
    pet.SetOrigin((0.0, 0.0, 10.0))  # covers only the upper part of the CT
    ctp = write_image(ct, tmp_path / "ct.nii.gz")
    petp = write_image(pet, tmp_path / "pet.nrrd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported in case.warnings, not as a warning
        case = load_pet_ct(ctp, petp)
    assert not case.ct_is_dicom and case.suv is None
    assert 0 < case.overlap < 0.9
    assert any("covers only" in w for w in case.warnings)
    assert any("taken as SUV" in w for w in case.warnings)
