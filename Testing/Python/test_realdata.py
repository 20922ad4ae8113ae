"""Real scanner data (issue 10.11, 10.12): SUV factors of real vendor headers, and one real
PET/CT study (TCIA STS_001). The data live in ``../shared/realdata`` (see its README.md for the
sources and expected values); every test skips, naming that folder, when it is absent.
Only what each check needs is read (headers for the SUV factors; the cropped series in full).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from vmambax.data.dicom import identity_tags, pick_series, read_tags, series_tags
from vmambax.data.suv import suv_factor_from_tags
from vmambax.errors import InputError

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"


def _need(*parts: str) -> Path:
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real scanner data not found: {path} (../shared/realdata is absent; it is "
                    "not part of the project)")
    return path


# Body-weight SUV factors (g/Bq) from the README, i.e. what calculate-suv's own tests expect.
CALCULATE_SUV = {
    "GE_MEDICAL_AND_BQML": 5.367387682e-4,
    "SIEMENS": 4.274831619e-4,
    "PHILIPS_BQML": 7.463747014e-4,
    "BQML_AC_DT_lessThan_S_DT_SIEMENS": 4.069156854e-4,
    "CPS_AND_BQML_AC_DT_-_S_DT": 2.650331276e-4,
    "RADIOPHARM_DATETIME_UNDEFINED": 3.721089203e-4,
    "PHILIPS_CNTS_AND_BQML_SUV": 5.51e-4,
    "PHILIPS_CNTS_AND_SUV": 7.28e-4,
}
VENDOR_SLICES = {
    "siemens_biograph128mct_orthanc.dcm": 4.463640736e-4,
    "acrin_flt_breast_029_suyashkumar_1.dcm": 5.942485308e-4,
    "acrin_flt_breast_028_suyashkumar_2.dcm": 4.735489151e-4,
}
REL = 1e-6  # the README gives 10 significant digits; the data support better than 1e-9


def _instances(name: str) -> list[dict]:
    """The JSON instances as flat tag dicts; Philips' private group under our keywords."""
    items = json.loads(_need("suv_headers_calculate_suv", f"{name}-instances.json").read_text())
    flat = []
    for item in items:
        tags = {k: v for k, v in item.items() if k != "PhilipsPETPrivateGroup"}
        tags.update(item.get("PhilipsPETPrivateGroup") or {})
        flat.append(tags)
    return flat


@pytest.mark.parametrize("name", sorted(CALCULATE_SUV))
def test_calculate_suv_header_sets(name):
    instances = _instances(name)
    assert len(instances) == 3
    suv = suv_factor_from_tags(series_tags(instances))
    assert suv.factor == pytest.approx(CALCULATE_SUV[name], rel=REL), suv.method


@pytest.mark.parametrize("name", sorted(VENDOR_SLICES))
def test_vendor_pet_slices(name):
    path = _need("pet_single", name)
    suv = suv_factor_from_tags(series_tags(read_tags([str(path)])))
    assert suv.factor == pytest.approx(VENDOR_SLICES[name], rel=REL), suv.method
    assert suv.units == "BQML"


def test_philips_slice_without_weight_and_times_is_refused_naming_the_tags():
    path = _need("pet_single", "philips_geminitf_orthanc_issue94.dcm")
    with pytest.raises(InputError) as err:
        suv_factor_from_tags(series_tags(read_tags([str(path)])))
    text = str(err.value)
    for tag in ("PatientWeight (0010,1030)", "SeriesTime (0008,0031)",
                "AcquisitionTime (0008,0032)", "--weight-kg"):
        assert tag in text, text
    assert "RadionuclideTotalDose" not in text and "RadiopharmaceuticalStartTime" not in text


# -- sts_001 ---------------------------------------------------------------------------------------
def test_sts001_raw_bqml_series_suvbw_factor():
    series = pick_series(_need("sts_001", "pet_raw_bqml", "image"), modality="PT")
    assert len(series.files) == 267
    suv = suv_factor_from_tags(series_tags(read_tags(series.files)))  # headers only
    assert suv.units == "BQML" and suv.decay_correction == "START"
    assert suv.factor == pytest.approx(2.429029766e-4, rel=REL), suv.method


def test_sts001_cropped_pet_is_already_suv_and_matches_the_nifti():
    from vmambax.data.io import read_pet_info

    pet = read_pet_info(_need("sts_001", "dicom_cropped", "PET", "image"))
    assert pet.source_units == "GML" and pet.suv.factor == 1.0  # converting again is a bug
    nifti = sitk.ReadImage(str(_need("sts_001", "nifti_cropped", "PET_image.nii.gz")))
    assert pet.image.GetSize() == nifti.GetSize()
    np.testing.assert_allclose(pet.image.GetSpacing(), nifti.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(pet.image.GetOrigin(), nifti.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(pet.image.GetDirection(), nifti.GetDirection(), atol=1e-6)
    ours, theirs = sitk.GetArrayFromImage(pet.image), sitk.GetArrayFromImage(nifti)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-5)
    assert float(theirs.max()) > 7.9  # a real SUV image (SUVmax 7.9 in the GTV)


def test_sts001_ct_and_pet_are_one_patient_study_and_frame():
    from vmambax.data.case import load_pet_ct
    from vmambax.data.patient import check_same_patient

    ct_dir = _need("sts_001", "dicom_cropped", "CT", "image")
    pet_dir = _need("sts_001", "dicom_cropped", "PET", "image")
    ct_tags = identity_tags(pick_series(ct_dir, modality="CT"))
    pet_tags = identity_tags(pick_series(pet_dir, modality="PT"))
    assert ct_tags["PatientID"] == pet_tags["PatientID"] == "STS_001"
    assert check_same_patient(ct_tags, pet_tags) == []
    # The whole path agrees: no identity warning, and a PET of another patient is caught.
    case = load_pet_ct(ct_dir, pet_dir)
    assert not [w for w in case.warnings if "patient" in w or "stud" in w or "frame" in w]
    with pytest.raises(InputError, match="STS_001.*STS_002"):
        check_same_patient(ct_tags, {**pet_tags, "PatientID": "STS_002"})
