"""SUV factor from DICOM tags: cross-checked against pysuv and against the formula by hand."""

import warnings

import pytest
from dicom_helpers import pet_dataset, pet_tags, seconds_between

from vmambax.data.dicom import tags_from_dataset
from vmambax.data.suv import F18_HALF_LIFE_S, suv_factor_from_tags, suv_factor_manual
from vmambax.errors import InputError

pysuv = pytest.importorskip("pysuv")


def by_hand(weight_kg, dose_bq, elapsed_s, half_life_s=F18_HALF_LIFE_S):
    return weight_kg * 1000.0 / (dose_bq * 2.0 ** (-elapsed_s / half_life_s))


@pytest.mark.parametrize("weight,dose,inj,scan,half", [
    (72.5, 3.7e8, "093000.00", "103000.00", 6586.2),
    (48.0, 1.9e8, "081512.50", "092003.25", 6586.2),
    (118.3, 5.5e8, "140000", "153247", 6586.2),
    (65.0, 1.5e8, "235000.00", "004500.00", 6586.2),  # across midnight, no date change in tags
    (80.0, 2.0e8, "100000.00", "110000.00", 4062.6),  # Ga-68
])
def test_factor_matches_pysuv_and_formula(weight, dose, inj, scan, half):
    top, radio = pet_tags(weight=weight, dose_bq=dose, injection=inj, series_time=scan,
                          half_life=half, date=None)
    ds = pet_dataset(top, radio)
    ours = suv_factor_from_tags(tags_from_dataset(ds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = pysuv.get_suv_factor(ds).suv_factor
    elapsed = seconds_between(inj.ljust(9, "0") if "." in inj else inj + ".0",
                              scan.ljust(9, "0") if "." in scan else scan + ".0") % 86400
    assert ours.factor == pytest.approx(theirs, rel=1e-9)
    assert ours.factor == pytest.approx(by_hand(weight, dose, elapsed, half), rel=1e-9)
    assert ours.elapsed_s == pytest.approx(elapsed)
    # A pydicom Dataset is accepted directly too.
    assert suv_factor_from_tags(ds).factor == pytest.approx(ours.factor, rel=1e-12)


def test_slicer_style_string_dict_with_tag_keys():
    """3D Slicer's DICOM database gives strings keyed by 'gggg,eeee'."""
    tags = {"0054,1001": "BQML", "0054,1102": "START", "0028,0051": "ATTN\\DECY",
            "0010,1030": "70", "0018,1074": "370000000", "0018,1075": "6586.2",
            "0018,1072": "100000", "0008,0021": "20240315", "0008,0031": "110000",
            "0008,0022": "20240315", "0008,0032": "110000"}
    f = suv_factor_from_tags(tags)
    assert f.factor == pytest.approx(by_hand(70, 3.7e8, 3600), rel=1e-12)
    assert f.decay_correction == "START" and "70" in f.method


def test_start_datetime_across_days():
    top, radio = pet_tags(injection=None, series_time="003000", date="20240316")
    radio["RadiopharmaceuticalStartDateTime"] = "20240315233000.000000+0100"
    f = suv_factor_from_tags(tags_from_dataset(pet_dataset(top, radio)))
    assert f.elapsed_s == pytest.approx(3600.0)
    assert f.factor == pytest.approx(by_hand(72.5, 3.7e8, 3600.0), rel=1e-12)


def test_bare_injection_time_before_midnight_with_dated_scan():
    top, radio = pet_tags(injection="235000", series_time="004500", date="20240316")
    f = suv_factor_from_tags(top | radio)
    assert f.elapsed_s == pytest.approx(55 * 60)
    assert any("midnight" in n for n in f.notes)
    top, radio = pet_tags(injection="103000", series_time="100000")  # injection after the scan
    with pytest.raises(InputError, match="30 min after the scan time"):
        suv_factor_from_tags(top | radio)


def test_admin_decay_correction_has_no_decay():
    top, radio = pet_tags(decay="ADMIN", series_time="120000")
    f = suv_factor_from_tags(tags_from_dataset(pet_dataset(top, radio)))
    assert f.factor == pytest.approx(72.5 * 1000 / 3.7e8, rel=1e-12)
    assert f.elapsed_s is None


def test_none_decay_correction_uses_acquisition_time():
    top, radio = pet_tags(decay="NONE", series_time="100000", acquisition_time="104500")
    f = suv_factor_from_tags(tags_from_dataset(pet_dataset(top, radio)))
    assert f.elapsed_s == pytest.approx(75 * 60)


def test_post_processed_series_time_falls_back_to_acquisition():
    """QIBA: a SeriesTime after the AcquisitionTime is not the scan start."""
    top, radio = pet_tags(series_time="150000", acquisition_time="103000")
    f = suv_factor_from_tags(tags_from_dataset(pet_dataset(top, radio)))
    assert f.elapsed_s == pytest.approx(3600.0)
    top["GEPrivateScanDateTime"] = "20240315102000"
    f = suv_factor_from_tags(top | radio)
    assert f.elapsed_s == pytest.approx(50 * 60)


def test_units_gml_and_philips_cnts():
    assert suv_factor_from_tags({"Units": "GML"}).factor == 1.0
    top, radio = pet_tags(units="CNTS")
    assert suv_factor_from_tags(top | radio | {"SUVScaleFactor": "0.000123"}).factor == \
        pytest.approx(0.000123)
    acsf = suv_factor_from_tags(top | radio | {"ActivityConcentrationScaleFactor": 2.5})
    assert acsf.factor == pytest.approx(2.5 * by_hand(72.5, 3.7e8, 3600.0), rel=1e-12)
    # Philips private tags read from a file with an unknown VR arrive as bytes.
    assert suv_factor_from_tags(top | radio | {"7053,1000": b"0.5 "}).factor == 0.5
    with pytest.raises(InputError, match="CNTS"):
        suv_factor_from_tags(top | radio)


@pytest.mark.parametrize("drop,names", [
    ("PatientWeight", ["PatientWeight"]),
    ("RadionuclideTotalDose", ["RadionuclideTotalDose"]),
    ("RadiopharmaceuticalStartTime", ["RadiopharmaceuticalStartTime"]),
    ("RadionuclideHalfLife", ["RadionuclideHalfLife"]),
])
def test_missing_tags_are_named_with_the_manual_fix(drop, names):
    top, radio = pet_tags()
    (top if drop in top else radio)[drop] = None
    with pytest.raises(InputError) as err:
        suv_factor_from_tags(tags_from_dataset(pet_dataset(top, radio)))
    message = str(err.value)
    for name in names:
        assert name in message
    assert "--weight-kg" in message and "--dose-mbq" in message


def test_hand_values_fill_missing_tags():
    top, radio = pet_tags(weight=None, dose_bq=None, injection=None, half_life=None)
    tags = tags_from_dataset(pet_dataset(top, radio))
    f = suv_factor_from_tags(tags, weight_kg=80, dose_mbq=300, uptake_minutes=60)
    assert f.factor == pytest.approx(by_hand(80, 3e8, 3600.0), rel=1e-12)
    assert any("fluorine-18" in n for n in f.notes)
    # Hand values override tags that are present.
    top, radio = pet_tags()
    f = suv_factor_from_tags(top | radio, weight_kg=60.0)
    assert f.factor == pytest.approx(by_hand(60.0, 3.7e8, 3600.0), rel=1e-12)


def test_missing_units_with_hand_values_is_bqml():
    top, radio = pet_tags(units=None)
    with pytest.raises(InputError, match="no Units tag"):
        suv_factor_from_tags(top | radio)
    f = suv_factor_from_tags(top | radio, weight_kg=72.5, dose_mbq=370)
    assert f.factor == pytest.approx(by_hand(72.5, 3.7e8, 3600.0), rel=1e-12)


def test_manual_factor():
    assert suv_factor_manual(70, 370).factor == pytest.approx(70e3 / 3.7e8)
    assert suv_factor_manual(70, 370, 60).factor == pytest.approx(by_hand(70, 3.7e8, 3600))


@pytest.mark.parametrize("change,match", [
    ({"CorrectedImage": "DECY\\NORM"}, "not attenuation-corrected"),
    ({"PatientWeight": 72500}, "grams"),
    ({"Units": "PROPCNTS"}, "PROPCNTS"),
    ({"DecayCorrection": "LATER"}, "DecayCorrection"),
    ({"RadiopharmaceuticalStartDateTime": "20240316093000"}, "injection after the scan"),
    ({"SeriesTime": "1a3000"}, "DICOM time"),
])
def test_bad_tags_give_clear_errors(change, match):
    top, radio = pet_tags()
    with pytest.raises(InputError, match=match):
        suv_factor_from_tags(top | radio | change)


def test_dose_in_mbq_is_refused():
    top, radio = pet_tags(dose_bq=370.0)
    with pytest.raises(InputError, match="MBq"):
        suv_factor_from_tags(top | radio)
