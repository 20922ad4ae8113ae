"""DICOM series in (CT in HU, PET to SUV from tags) and DICOM SEG out."""

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_helpers import CT_SPACING, PET_SPACING, X, Y, Z, ct_volume, pet_tags, pet_volume, write_series

from vmambax.data.case import load_pet_ct
from vmambax.data.dicom import find_series
from vmambax.data.io import read_image, read_pet_info, write_label
from vmambax.errors import InputError

@pytest.fixture
def study(tmp_path):
    """CT and PET series of one study, in sub-folders of one folder."""
    uids = write_series(tmp_path / "study" / "ct", ct_volume(), modality="CT",
                        spacing=CT_SPACING, origin=(-9.0, -10.0, 0.0))
    top, radio = pet_tags(weight=70.0, dose_bq=3.5e8, injection="100000", series_time="110000")
    write_series(tmp_path / "study" / "pet", pet_volume(), modality="PT", spacing=PET_SPACING,
                 origin=(-10.0, -12.0, -1.0), study_uid=uids["study"], frame_uid=uids["frame"],
                 pet_top=top, pet_radio=radio)
    return tmp_path / "study"


def expected_factor(weight=70.0, dose=3.5e8, elapsed=3600.0):
    return weight * 1000 / (dose * 2 ** (-elapsed / 6586.2))


def test_ct_series_geometry_and_hu(study):
    ct = read_image(study / "ct")
    assert ct.GetSize() == (X, Y, Z)
    np.testing.assert_allclose(ct.GetSpacing(), CT_SPACING)
    np.testing.assert_allclose(ct.GetOrigin(), (-9.0, -10.0, 0.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), ct_volume())


def test_pet_series_to_suv_with_per_slice_slopes(study):
    info = read_pet_info(study / "pet")
    assert info.is_dicom and info.source_units == "BQML"
    assert info.suv.factor == pytest.approx(expected_factor(), rel=1e-9)
    suv = sitk.GetArrayFromImage(info.image)
    np.testing.assert_allclose(suv, pet_volume() * expected_factor(), rtol=2e-4)
    # The study folder holds both series: the modality picks the right one.
    assert len(find_series(study)) == 2
    both = read_pet_info(study)
    np.testing.assert_allclose(sitk.GetArrayFromImage(both.image), suv)
    assert read_image(study, modality="CT").GetSize() == (X, Y, Z)


def test_decay_correction_none_is_applied_per_slice(tmp_path):
    top, radio = pet_tags(weight=70.0, dose_bq=3.5e8, injection="100000", series_time="110000",
                          decay="NONE")
    times = ["110000", "110500", "111000", "111500"]
    write_series(tmp_path / "pet", pet_volume(), modality="PT", spacing=PET_SPACING,
                 pet_top=top, pet_radio=radio, per_slice_acq_times=times)
    suv = sitk.GetArrayFromImage(read_pet_info(tmp_path / "pet").image)
    for k, t in enumerate(times):
        elapsed = (int(t[2:4]) - 0) * 60 + 3600
        np.testing.assert_allclose(suv[k], pet_volume()[k] * expected_factor(elapsed=elapsed),
                                   rtol=2e-4)


def test_missing_pet_tags_then_by_hand(tmp_path):
    top, radio = pet_tags(weight=None, dose_bq=None)
    write_series(tmp_path / "pet", pet_volume(), modality="PT", pet_top=top, pet_radio=radio)
    with pytest.raises(InputError, match="PatientWeight.*RadionuclideTotalDose.*--weight-kg"):
        read_pet_info(tmp_path / "pet")
    info = read_pet_info(tmp_path / "pet", weight_kg=70, dose_mbq=350)
    assert info.suv.factor == pytest.approx(expected_factor(), rel=1e-9)
    with pytest.raises(InputError, match="Bq/mL"):  # the user wrongly says it is SUV already
        read_pet_info(tmp_path / "pet", units="suv")


def test_missing_slice_and_corrupt_file(tmp_path, study):
    gap = tmp_path / "gap"
    shutil.copytree(study / "ct", gap)
    files = find_series(gap)[0].files
    (gap / files[2].split("/")[-1]).unlink()  # a slice in the middle
    with pytest.raises(InputError, match="uneven slice spacing"):
        read_image(gap)
    broken = tmp_path / "broken"
    shutil.copytree(study / "ct", broken)
    victim = find_series(broken)[0].files[3]
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) - 300])  # truncated pixel data
    with pytest.raises(InputError, match="broken|truncated|damaged"):
        read_image(broken)


def test_single_file_path_reads_its_series_and_duplicates_are_refused(study, tmp_path):
    one_file = find_series(study / "ct")[0].files[0]
    assert read_image(one_file).GetSize() == (X, Y, Z)
    dup = tmp_path / "dup"
    shutil.copytree(study / "pet", dup)
    for f in list(dup.iterdir()):  # a second frame at every position (dynamic/gated series)
        shutil.copy(f, dup / f"b_{f.name}")
        ds = pydicom.dcmread(dup / f"b_{f.name}")
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(dup / f"b_{f.name}")
    with pytest.raises(InputError, match="same position.*single 3-D series"):
        read_pet_info(dup)


def test_ct_folder_without_ct_says_swapped(study):
    with pytest.raises(InputError, match="no CT series.*swap"):
        load_pet_ct(study / "pet", study / "ct")


def test_load_pet_ct_from_dicom_and_seg_round_trip(study, tmp_path):
    hd = pytest.importorskip("highdicom")
    case = load_pet_ct(study / "ct", study / "pet")
    assert case.ct_is_dicom and case.pet_is_dicom
    assert case.suv_factor == pytest.approx(expected_factor(), rel=1e-9)
    assert case.pet_suv.GetSize() == case.ct.GetSize()
    label = np.zeros((Z, Y, X), np.uint8)
    label[2:4, 9:14, 7:12] = 1
    label_img = sitk.GetImageFromArray(label)
    label_img.CopyInformation(case.ct)
    out = write_label(label_img, tmp_path / "out" / "seg.dcm", reference=case.ct_dicom_dir)
    seg = hd.seg.segread(out)
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    # Each frame must sit on the CT slice it references.
    ct_files = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID:
                float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
                for f in find_series(study / "ct")[0].files}
    pixels = seg.pixel_array
    for n, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        sop = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = int(round(ct_files[sop] / CT_SPACING[2]))
        np.testing.assert_array_equal(pixels[n], label[k])
    assert len(pixels) == 2  # empty frames omitted
    empty = sitk.Image(label_img)
    empty *= 0
    out2 = write_label(empty, tmp_path / "out" / "empty.dcm", reference=study / "ct")
    assert hd.seg.segread(out2).pixel_array.max() == 0
    wrong = sitk.GetImageFromArray(label[:, :, :-1])
    with pytest.raises(InputError, match="does not match the CT"):
        write_label(wrong, tmp_path / "out" / "bad.dcm", reference=study / "ct")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["empty.dcm", "seg.dcm"]
