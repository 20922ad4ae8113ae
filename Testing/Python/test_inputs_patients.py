"""Wrong patient, other study or frame of reference, folders with several series (issue 10.4).

DICOM written with the test writer (``dicom_helpers.write_series``) with altered identity tags.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_helpers import CT_SPACING, PET_SPACING, ct_volume, pet_tags, pet_volume, write_series

from vmambax.cli import main
from vmambax.data.case import load_pet_ct
from vmambax.data.patient import DifferentPatientsError, check_same_patient
from vmambax.errors import InputError

def write_study(root: Path, *, pet_patient="TEST001", same_study=True, same_frame=True,
                ct_extra: dict | None = None) -> dict:
    uids = write_series(root / "ct", ct_volume(), modality="CT", spacing=CT_SPACING,
                        origin=(-9.0, -10.0, 0.0), description="CT thorax",
                        extra_tags=ct_extra)
    top, radio = pet_tags(weight=70.0, dose_bq=3.5e8, injection="100000", series_time="110000")
    write_series(root / "pet", pet_volume(), modality="PT", spacing=PET_SPACING,
                 origin=(-10.0, -12.0, -1.0), patient_id=pet_patient,
                 study_uid=uids["study"] if same_study else None,
                 frame_uid=uids["frame"] if same_frame else None, pet_top=top, pet_radio=radio,
                 description="PET AC")
    return uids


def test_same_patient_study_and_frame_load_without_notes(tmp_path):
    write_study(tmp_path)
    case = load_pet_ct(tmp_path / "ct", tmp_path / "pet")
    assert not [w for w in case.warnings if "patient" in w or "stud" in w or "frame" in w]


def test_different_patient_is_refused_unless_allowed(tmp_path):
    write_study(tmp_path, pet_patient="OTHER042")
    with pytest.raises(DifferentPatientsError,
                       match="(?s)TEST001.*OTHER042.*--allow-different-patients"):
        load_pet_ct(tmp_path / "ct", tmp_path / "pet")
    case = load_pet_ct(tmp_path / "ct", tmp_path / "pet", allow_different_patients=True)
    assert any("OTHER042" in w and "TEST001" in w for w in case.warnings), case.warnings


def test_other_study_or_frame_of_reference_is_a_warning(tmp_path):
    write_study(tmp_path / "a", same_study=False)
    case = load_pet_ct(tmp_path / "a" / "ct", tmp_path / "a" / "pet")
    assert any("different studies" in w for w in case.warnings), case.warnings
    write_study(tmp_path / "b", same_frame=False)
    case = load_pet_ct(tmp_path / "b" / "ct", tmp_path / "b" / "pet")
    assert any("frame of reference" in w for w in case.warnings), case.warnings


def test_identity_check_on_plain_tag_dicts():
    """What the Slicer module passes (tags from the nodes' DICOM files, or given by a script)."""
    ct = {"PatientID": "A", "StudyInstanceUID": "1.2", "FrameOfReferenceUID": "1.3"}
    assert check_same_patient(ct, dict(ct)) == []
    assert check_same_patient(ct, None) == [] and check_same_patient({}, ct) == []
    with pytest.raises(DifferentPatientsError):
        check_same_patient(ct, {**ct, "PatientID": "B"})
    # DICOM pads odd-length values with a space: not a different patient.
    assert check_same_patient(ct, {**ct, "PatientID": "A "}) == []
    notes = check_same_patient(ct, {"0010,0020": "A", "StudyInstanceUID": "9.9"})
    assert len(notes) == 1 and "different studies" in notes[0]


def test_folder_with_two_ct_series_is_not_resolved_silently(tmp_path):
    uids = write_study(tmp_path)
    second = write_series(tmp_path / "ct_soft", ct_volume()[:5], modality="CT",
                          spacing=CT_SPACING, origin=(-9.0, -10.0, 0.0),
                          study_uid=uids["study"], frame_uid=uids["frame"],
                          description="CT soft tissue")
    with pytest.raises(InputError) as err:
        load_pet_ct(tmp_path, tmp_path / "pet")
    text = str(err.value)
    for part in ("2 CT series", uids["series"], second["series"], "CT thorax", "CT soft tissue",
                 "6 slices", "5 slices", "--ct-series"):
        assert part in text, text
    case = load_pet_ct(tmp_path, tmp_path / "pet", ct_series_uid=second["series"])
    assert case.ct.GetSize()[2] == 5 and case.ct_series_uid == second["series"]


def test_folder_with_two_pet_series_asks_for_pet_series(tmp_path):
    uids = write_study(tmp_path)
    top, radio = pet_tags(weight=70.0, dose_bq=3.5e8, injection="100000", series_time="110000",
                          corrected="DECY")  # the non-attenuation-corrected twin
    nac = write_series(tmp_path / "pet_nac", pet_volume(), modality="PT", spacing=PET_SPACING,
                       origin=(-10.0, -12.0, -1.0), study_uid=uids["study"],
                       frame_uid=uids["frame"], pet_top=top, pet_radio=radio,
                       description="PET NAC")
    with pytest.raises(InputError, match="(?s)2 PT series.*--pet-series.*PET AC.*PET NAC"):
        load_pet_ct(tmp_path / "ct", tmp_path)
    with pytest.raises(InputError, match="not attenuation-corrected"):
        load_pet_ct(tmp_path / "ct", tmp_path, pet_series_uid=nac["series"])
    with pytest.raises(InputError, match="Series 1.2.3 is not in"):
        load_pet_ct(tmp_path / "ct", tmp_path, pet_series_uid="1.2.3")


# -- the command line ----------------------------------------------------------------------------
def test_cli_segment_and_baseline_refuse_another_patient(tmp_path, nano_file, capsys,
                                                         one_cpu_thread):
    write_study(tmp_path / "s", pet_patient="OTHER042")
    ct, pet = tmp_path / "s" / "ct", tmp_path / "s" / "pet"
    seg = ["segment", "--ct", str(ct), "--pet", str(pet), "-o", str(tmp_path / "l.nii.gz"),
           "--model", str(nano_file), "--device", "cpu", "--threads", "1", "-q",
           "--all-slices"]  # write_study makes a synthetic CT without lungs
    assert main(seg) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--allow-different-patients" in err
    assert not (tmp_path / "l.nii.gz").exists()
    assert main(seg + ["--allow-different-patients"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "OTHER042" in err, err
    base = ["baseline", "--pet", str(pet), "--ct", str(ct), "-o", str(tmp_path / "b.nii.gz")]
    assert main(base) == 2
    assert "--allow-different-patients" in capsys.readouterr().err
    assert main(base + ["--allow-different-patients"]) == 0
    assert "warning: " in capsys.readouterr().err


def test_cli_series_flags(tmp_path, capsys):
    uids = write_study(tmp_path)
    second = write_series(tmp_path / "ct2", ct_volume()[:5], modality="CT", spacing=CT_SPACING,
                          origin=(-9.0, -10.0, 0.0), study_uid=uids["study"],
                          frame_uid=uids["frame"], description="CT soft tissue")
    base = ["baseline", "--pet", str(tmp_path), "--ct", str(tmp_path), "-o",
            str(tmp_path / "b.nii.gz")]
    assert main(base) == 2
    assert "--ct-series" in capsys.readouterr().err
    assert main(base + ["--ct-series", second["series"]]) == 0, capsys.readouterr().err
    import SimpleITK as sitk

    assert sitk.ReadImage(str(tmp_path / "b.nii.gz")).GetSize()[2] == 5
