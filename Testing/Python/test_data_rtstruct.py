"""RTSTRUCT / DICOM SEG annotations -> labels on the CT grid (issue 12.1): the polygon fill, ROI
choice and refusals, ``vmambax import``, label.dcm in training case folders, and the real
contours of STS_001 (../shared/realdata)."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from rtstruct_helpers import label_contours, write_rtstruct
from vmambax.cli import main
from vmambax.data.dicom_label import frame_of_reference_of, read_dicom_label
from vmambax.data.rtstruct import fill_even_odd, rtstruct_to_label
from vmambax.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "realdata" / "sts_001"


def _dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _square(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


# ---------------------------------------------------------------------------- polygon fill
def test_fill_counts_pixel_centres_inside():
    mask = fill_even_odd([_square(1.5, 1.5, 5.5, 5.5)], (8, 8))
    assert mask.sum() == 16 and mask[2:6, 2:6].all()
    # a centre exactly on the left/top edge is in, on the right/bottom edge out (half open)
    mask = fill_even_odd([_square(2, 2, 4, 4)], (8, 8))
    assert mask.sum() == 4 and mask[2:4, 2:4].all()


def test_fill_nested_contours_are_holes_in_either_order():
    outer, inner = _square(0.5, 0.5, 9.5, 9.5), _square(3.5, 3.5, 6.5, 6.5)[::-1]
    for polys in ([outer, inner], [inner, outer]):
        ring = fill_even_odd(polys, (11, 11))
        assert ring.sum() == 81 - 9
        assert not ring[4:7, 4:7].any() and ring[1, 1] and ring[9, 9]


def test_fill_clips_polygons_at_the_image_border():
    mask = fill_even_odd([_square(-5.5, -5.5, 2.5, 2.5)], (4, 4))
    assert mask.sum() == 9 and mask[:3, :3].all()


# --------------------------------------------------------------------- synthetic RTSTRUCTs
@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    from vmambax.phantom import make_phantom, write_case

    phantom = make_phantom(seed=1, size=128, n_slices=8)
    folder = write_case(phantom, tmp_path_factory.mktemp("cases"), "rt-case")
    return folder


@pytest.fixture(scope="module")
def ct_image(case_dir):
    return sitk.ReadImage(str(case_dir / "ct.nii.gz"))


@pytest.fixture(scope="module")
def truth(case_dir):
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "label.nii.gz")))
    assert label.sum() > 50
    return label


@pytest.fixture(scope="module")
def for_uid(case_dir):
    uid = frame_of_reference_of(case_dir / "dicom" / "ct")
    assert uid
    return uid


def _ring_label(shape):
    """A ring (with a hole) on two slices."""
    label = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    r = np.hypot(yy - 64, xx - 40)
    label[3:5][:, (r <= 12) & (r >= 5)] = 1
    return label


def test_traced_contours_give_back_the_label_voxel_for_voxel(tmp_path, ct_image, truth, for_uid):
    ring = _ring_label(truth.shape)
    rs = write_rtstruct(tmp_path / "RS.dcm", [("GTV", label_contours(truth, ct_image)),
                                              ("Ring", label_contours(ring, ct_image))], for_uid)
    got = rtstruct_to_label(rs, ct_image, frame_of_reference_uid=for_uid)
    assert got.structure.name == "GTV" and got.kind == "RTSTRUCT" and got.notes == []
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got.label), truth)
    assert got.label.GetSpacing() == ct_image.GetSpacing() and got.label.GetOrigin() == ct_image.GetOrigin()
    ring_got = rtstruct_to_label(rs, ct_image, roi="ring")  # names match case-insensitively
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ring_got.label), ring)
    assert any("frame of reference" in n for n in ring_got.notes)  # no UID given: not checked


def test_roi_choice_lists_candidates_and_takes_names_or_numbers(tmp_path, ct_image, truth, for_uid):
    contours = label_contours(truth, ct_image)
    rs = write_rtstruct(tmp_path / "RS.dcm", [("GTV_Mass", contours), ("GTV_Edema", contours),
                                              ("Body", contours)], for_uid)
    with pytest.raises(InputError, match="several ROIs named like a tumour") as err:
        rtstruct_to_label(rs, ct_image)
    for row in ("1  'GTV_Mass'", "2  'GTV_Edema'", "3  'Body'"):
        assert row in str(err.value)
    assert "--roi" in str(err.value)
    assert rtstruct_to_label(rs, ct_image, roi="2").structure.name == "GTV_Edema"
    with pytest.raises(InputError, match="no ROI named 'liver'"):
        rtstruct_to_label(rs, ct_image, roi="liver")
    single = write_rtstruct(tmp_path / "one.dcm", [("Organ", contours)], for_uid)
    assert rtstruct_to_label(single, ct_image).structure.name == "Organ"  # the only ROI
    none = write_rtstruct(tmp_path / "none.dcm", [("Heart", contours), ("Lung", contours)], for_uid)
    with pytest.raises(InputError, match="none named like a tumour"):
        rtstruct_to_label(none, ct_image)


def test_refusals(tmp_path, ct_image, truth, for_uid):
    contours = label_contours(truth, ct_image)
    other = write_rtstruct(tmp_path / "other.dcm", [("GTV", contours)], "1.2.3.4.5")
    with pytest.raises(InputError, match="frame of reference 1.2.3.4.5.*another scan"):
        rtstruct_to_label(other, ct_image, frame_of_reference_uid=for_uid)
    empty = write_rtstruct(tmp_path / "empty.dcm", [("GTV", []), ("Body", contours)], for_uid)
    with pytest.raises(InputError, match="'GTV' of empty.dcm has no closed contours"):
        rtstruct_to_label(empty, ct_image)
    points = write_rtstruct(tmp_path / "points.dcm", [("GTV", [(contours[0][:1], "POINT")])], for_uid)
    with pytest.raises(InputError, match="no closed contours .1 point/open"):
        rtstruct_to_label(points, ct_image)
    tilted = contours[0].copy()
    tilted[:, 2] += np.linspace(0, 3 * ct_image.GetSpacing()[2], len(tilted))
    oblique = write_rtstruct(tmp_path / "oblique.dcm", [("GTV", [tilted])], for_uid)
    with pytest.raises(InputError, match="not parallel to the image's slices"):
        rtstruct_to_label(oblique, ct_image)
    far = write_rtstruct(tmp_path / "far.dcm", [("GTV", [c + [0, 0, 500.0] for c in contours])], for_uid)
    with pytest.raises(InputError, match="entirely outside the image"):
        rtstruct_to_label(far, ct_image)


def test_malformed_rtstruct_is_a_clear_error_not_a_traceback(tmp_path, ct_image, truth, for_uid):
    """Planning systems do export broken files: a missing ROINumber, ContourData that is not
    x,y,z triplets. Both are an InputError naming the file, never an AttributeError/ValueError."""
    contours = label_contours(truth, ct_image)
    good = write_rtstruct(tmp_path / "good.dcm", [("GTV", contours)], for_uid)
    ds = pydicom.dcmread(good)
    del ds.StructureSetROISequence[0].ROINumber
    ds.save_as(tmp_path / "no_number.dcm")
    ds = pydicom.dcmread(good)
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = [1.0, 2.0, 3.0, 4.0]
    ds.save_as(tmp_path / "short_contour.dcm")
    for name in ("no_number.dcm", "short_contour.dcm"):
        with pytest.raises(InputError, match=f"{name} is a malformed DICOM RTSTRUCT"):
            read_dicom_label(tmp_path / name, ct_image)


def test_a_ct_slice_is_not_an_rtstruct(case_dir, ct_image):
    ct_file = sorted((case_dir / "dicom" / "ct").glob("*.dcm"))[0]
    with pytest.raises(InputError, match="DICOM CT file, not an RTSTRUCT"):
        rtstruct_to_label(ct_file, ct_image)
    with pytest.raises(InputError, match="must be an RTSTRUCT .contours. or a SEG"):
        read_dicom_label(ct_file, ct_image)


# ----------------------------------------------------------------------- vmambax import
def test_import_command_end_to_end(tmp_path, case_dir, truth, for_uid, ct_image, capsys):
    contours = label_contours(truth, ct_image)
    rs = write_rtstruct(tmp_path / "RS.dcm", [("GTV primary", contours), ("Spinal cord", contours[:1])],
                        for_uid)
    out = tmp_path / "out" / "label.nii.gz"
    assert main(["import", "--ct", str(case_dir / "dicom" / "ct"), "--rtstruct", str(rs),
                 "-o", str(out)]) == 0
    text = capsys.readouterr()
    assert "'GTV primary'" in text.out and "warning" not in text.err  # DICOM CT: UID checked
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), truth)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left
    # An existing output is not replaced without --overwrite.
    before = out.read_bytes()
    assert main(["import", "--ct", str(case_dir / "ct.nii.gz"), "--rtstruct", str(rs), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    # A NIfTI CT works too (contours are in mm); the unchecked frame of reference is said.
    assert main(["import", "--ct", str(case_dir / "ct.nii.gz"), "--rtstruct", str(rs), "-o", str(out),
                 "--overwrite"]) == 0
    assert "frame of reference" in capsys.readouterr().err
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), truth)
    # Written as a DICOM SEG on the DICOM CT, and read back from it.
    seg = tmp_path / "label.dcm"
    assert main(["import", "--ct", str(case_dir / "dicom" / "ct"), "--rtstruct", str(rs),
                 "--roi", "GTV primary", "-o", str(seg)]) == 0
    assert pydicom.dcmread(str(seg), stop_before_pixels=True).Modality == "SEG"
    back = tmp_path / "back.nii.gz"
    assert main(["import", "--ct", str(case_dir / "dicom" / "ct"), "--rtstruct", str(seg), "-o", str(back)]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(back))), truth)


def test_import_command_refusals_exit_2_with_the_reason(tmp_path, case_dir, truth, ct_image, capsys):
    rs = write_rtstruct(tmp_path / "RS.dcm", [("GTV", label_contours(truth, ct_image))], "9.8.7.6")
    out = tmp_path / "label.nii.gz"
    assert main(["import", "--ct", str(case_dir / "dicom" / "ct"), "--rtstruct", str(rs), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "frame of reference 9.8.7.6" in err and "Traceback" not in err
    assert not out.exists()


def test_seg_on_another_grid_is_refused(tmp_path, case_dir, truth, ct_image):
    from vmambax.data.dicom_seg import write_dicom_seg

    label = sitk.GetImageFromArray(truth)
    label.CopyInformation(ct_image)
    seg = write_dicom_seg(label, case_dir / "dicom" / "ct", tmp_path / "seg.dcm")
    shifted = sitk.Image(ct_image)
    shifted.SetOrigin(np.add(ct_image.GetOrigin(), [0.4 * ct_image.GetSpacing()[0], 0, 0]).tolist())
    with pytest.raises(InputError, match="not on the CT's voxel grid"):
        read_dicom_label(seg, shifted)
    got = read_dicom_label(seg, ct_image)
    assert got.kind == "SEG"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got.label), truth)


# ------------------------------------------------------------- label.dcm in training cases
def test_training_case_folders_accept_label_dcm(tmp_path, case_dir, truth, ct_image, for_uid, capsys):
    from vmambax.train.datamodule import prepare_data_root

    contours = label_contours(truth, ct_image)
    cases = tmp_path / "cases"
    for name, uid in (("nifti-a", None), ("rtstruct-b", for_uid), ("other-scan", "1.2.3")):
        folder = (tmp_path / "bad" if uid == "1.2.3" else cases) / name
        shutil.copytree(case_dir, folder, ignore=shutil.ignore_patterns("pet"))  # dicom/ct stays
        if uid is not None:
            (folder / "label.nii.gz").unlink()
            write_rtstruct(folder / "label.dcm", [("GTV", contours)], uid)
    # `vmambax train --data cases` exports the volume cases through prepare_data_root.
    root, kind = prepare_data_root(cases, tmp_path / "run", image_size=128)
    assert kind == "volumes"

    # The volume export keeps every axial slice's mask (z, S, S): the RTSTRUCT case's masks
    # must be the NIfTI case's, slice for slice.
    a, b = (np.load(root / name / "mask.npy") for name in ("nifti-a", "rtstruct-b"))
    assert a.shape == b.shape and a.any()
    np.testing.assert_array_equal(a, b)
    # A label.dcm drawn on another scan is refused before anything is written.
    assert main(["export", "--cases", str(tmp_path / "bad"), "--out", str(tmp_path / "pclt"),
                 "--size", "128"]) == 2
    assert "frame of reference 1.2.3" in capsys.readouterr().err
    assert not (tmp_path / "pclt").exists()


# -------------------------------------------------------------------- real STS_001 contours
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data folder {REAL} (../shared/realdata) is absent")


@needs_real
@pytest.mark.parametrize("modality", ["CT", "PET"])
def test_real_sts001_contours_match_the_expert_masks(modality):
    reference = sitk.ReadImage(str(REAL / "nifti_cropped" / f"{modality}_mask.nii.gz"))
    got = read_dicom_label(REAL / "dicom_cropped" / modality / "mask" / "RS.dcm", reference)
    assert got.structure.name == f"GTV_Mass_{modality}"
    dice = _dice(sitk.GetArrayFromImage(got.label), sitk.GetArrayFromImage(reference))
    assert dice >= 0.95, dice


@needs_real
def test_real_sts001_import_command_checks_the_frame_of_reference(tmp_path):
    out = tmp_path / "gtv.nii.gz"
    ct = REAL / "dicom_cropped" / "CT" / "image"
    assert main(["import", "--ct", str(ct), "--rtstruct", str(REAL / "dicom_cropped/CT/mask/RS.dcm"),
                 "-o", str(out)]) == 0
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "nifti_cropped" / "CT_mask.nii.gz")))
    assert _dice(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), reference) >= 0.95
    # The raw study's RTSTRUCT has GTV_Mass and GTV_Edema: both are tumour-like, so it asks.
    with pytest.raises(InputError, match="several ROIs named like a tumour"):
        read_dicom_label(REAL / "pet_raw_bqml/mask/1-1.dcm", sitk.ReadImage(str(ct / "000000.dcm")))
    pet_ref = sitk.ReadImage(str(REAL / "nifti_cropped" / "PET_mask.nii.gz"))
    mass = read_dicom_label(REAL / "pet_raw_bqml/mask/1-1.dcm", pet_ref, structure="GTV_Mass",
                            frame_of_reference_uid=frame_of_reference_of(ct))
    assert _dice(sitk.GetArrayFromImage(mass.label), sitk.GetArrayFromImage(pet_ref)) >= 0.95


def test_import_picks_the_referenced_ct_series_in_a_study_folder(tmp_path, case_dir, truth, ct_image,
                                                                 for_uid, capsys):
    import datetime as dt

    from vmambax.data import dicom as _dicom
    from vmambax.data.dicom_write import StudyInfo, write_ct_series

    study = tmp_path / "study"
    shutil.copytree(case_dir / "dicom" / "ct", study / "ct")
    # another CT (another scan: own frame of reference) with more slices, which the usual
    # "most files" pick would take
    bigger = sitk.ConstantPad(sitk.ReadImage(str(case_dir / "ct.nii.gz")), [0, 0, 0], [0, 0, 2], -1000)
    other = StudyInfo("X", "Other^Scan", "O", 70.0, 1.7, dt.datetime(2024, 1, 1, 9), uid_seed="other-scan")
    write_ct_series(bigger, study / "ct2", other, dt.datetime(2024, 1, 1, 9))
    ct_uid = _dicom.pick_series(case_dir / "dicom" / "ct").uid
    contours = label_contours(truth, ct_image)
    out = tmp_path / "label.nii.gz"
    unreferenced = write_rtstruct(tmp_path / "plain.dcm", [("GTV", contours)], for_uid)
    # An RTSTRUCT that names no series: the folder's two CT series are listed, none is guessed.
    assert main(["import", "--ct", str(study), "--rtstruct", str(unreferenced), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds 2 CT series" in err and ct_uid in err and "--ct-series" in err
    assert main(["import", "--ct", str(study), "--rtstruct", str(unreferenced), "-o", str(out),
                 "--ct-series", ct_uid]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), truth)
    out.unlink()
    referenced = write_rtstruct(tmp_path / "ref.dcm", [("GTV", contours)], for_uid, series_uid=ct_uid)
    assert main(["import", "--ct", str(study), "--rtstruct", str(referenced), "-o", str(out)]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), truth)
