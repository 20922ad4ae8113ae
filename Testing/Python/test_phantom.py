"""Synthetic PET/CT phantoms: determinism, content, grids, case folders, DICOM + SUV tags, CLI."""

import json

import numpy as np
import pytest

from vmambax.cli import main
from vmambax.phantom import make_phantom, write_case
from vmambax.errors import ConfigError, InputError

sitk = pytest.importorskip("SimpleITK")


def arr(img):
    return sitk.GetArrayFromImage(img)


@pytest.fixture(scope="module")
def small():
    return make_phantom(3, size=128, n_slices=40)


@pytest.fixture(scope="module")
def case_dir(small, tmp_path_factory):
    return write_case(small, tmp_path_factory.mktemp("ph"), "case-3")


def test_same_seed_same_phantom_and_anatomy_independent_of_size(small):
    a = make_phantom(3, size=64, n_slices=16)
    b = make_phantom(3, size=64, n_slices=16)
    for name in ("ct", "pet_suv", "label"):
        assert np.array_equal(arr(getattr(a, name)), arr(getattr(b, name)))
    assert a.lesions == b.lesions and a.suv_factor == b.suv_factor
    # the patient, tumours and acquisition depend on the seed only, not on the matrix size
    assert [l["centre_mm"] for l in a.lesions] == [l["centre_mm"] for l in small.lesions]
    assert a.weight_kg == small.weight_kg and a.dose_bq == small.dose_bq
    c = make_phantom(4, size=64, n_slices=16)
    assert not np.array_equal(arr(a.pet_suv), arr(c.pet_suv))


def test_ct_content_is_a_plausible_thorax(small):
    ct, lab = arr(small.ct).astype(float), arr(small.label)
    assert ct.dtype.kind == "f" and small.ct.GetPixelID() == sitk.sitkInt16
    assert np.median(ct[:, :4, :4]) < -950  # air in the corners
    lung = (ct > -950) & (ct < -700)
    assert 0.12 < lung.sum() / (ct > -950).sum() < 0.5  # lungs are a large part of the thorax
    assert np.median(ct[lung]) == pytest.approx(-850, abs=60)
    assert (ct > 300).sum() > 1000  # bone: spine, ribs, sternum
    assert ((ct > -150) & (ct < -60)).sum() > 10000  # fat
    # the label is the tumours, soft tissue in the lung
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1} and lab.sum() > 0
    assert np.median(ct[lab > 0]) > -400
    assert small.ct.GetSpacing()[0] == pytest.approx(small.ct.GetSpacing()[1])
    assert 3.5 < small.ct.GetSpacing()[0] < 4.3  # 128 px: ~0.98 mm x 4 keeps the anatomy in mm


def test_pet_is_on_its_own_grid_in_suv_and_bqml(small):
    ct, pet = small.ct, small.pet_suv
    assert pet.GetSize() != ct.GetSize() and pet.GetOrigin() != ct.GetOrigin()
    assert 3.5 < pet.GetSpacing()[0] < 4.5 and pet.GetSpacing()[2] != ct.GetSpacing()[2]
    # the PET field of view covers the CT in z with margins
    z_ct = (ct.GetOrigin()[2], ct.GetOrigin()[2] + (ct.GetSize()[2] - 1) * ct.GetSpacing()[2])
    z_pet = (pet.GetOrigin()[2], pet.GetOrigin()[2] + (pet.GetSize()[2] - 1) * pet.GetSpacing()[2])
    assert z_pet[0] < z_ct[0] and z_pet[1] > z_ct[1]
    suv, bq = arr(pet), arr(small.pet_bqml)
    assert np.allclose(bq * small.suv_factor, suv, rtol=1e-5, atol=1e-6)
    # SUV factor = weight / decayed dose (F-18, decay-corrected to the scan start)
    decayed = small.dose_bq * 2 ** (-small.uptake_s / 6586.2)
    assert small.suv_factor == pytest.approx(small.weight_kg * 1000 / decayed)
    assert 55 * 60 <= small.uptake_s <= 75 * 60 and 180e6 <= small.dose_bq <= 400e6
    assert suv.min() >= 0 and 2.0 < suv.max() < 60
    # tumours are hotter than the lung; faint ones exist but stay below 3.5 or so
    assert all(l["suvmax_pet"] > 0.6 for l in small.lesions)


def test_lesion_and_confounder_records(small):
    assert 1 <= len(small.lesions) <= 4
    for l in small.lesions:
        assert 4.0 <= l["diameter_mm"] <= 60.0
        assert {"centre_mm", "suvmax_nominal", "faint", "touches_pleura", "touches_mediastinum",
                "label_volume_ml", "suvmax_pet"} <= set(l)
        assert l["label_volume_ml"] > 0
    assert any(c["type"] == "myocardium" for c in small.confounders)
    # label volume in case.json equals the label image
    vox_ml = np.prod(small.ct.GetSpacing()) / 1000
    assert sum(l["label_volume_ml"] for l in small.lesions) == pytest.approx(arr(small.label).sum() * vox_ml, rel=1e-3)


def test_case_folder_layout_and_nifti_round_trip(small, case_dir):
    names = {p.name for p in case_dir.iterdir()}
    assert {"ct.nii.gz", "pet.nii.gz", "label.nii.gz", "case.json", "dicom"} <= names
    info = json.loads((case_dir / "case.json").read_text())
    assert info["case_id"] == "case-3" and info["seed"] == 3
    assert info["suv_factor"] == pytest.approx(small.suv_factor)
    assert info["weight_kg"] == pytest.approx(small.weight_kg)
    assert info["dose_mbq"] == pytest.approx(small.dose_bq / 1e6)
    assert info["pet"]["size"] == list(small.pet_suv.GetSize())
    assert np.array_equal(arr(sitk.ReadImage(str(case_dir / "label.nii.gz"))), arr(small.label))
    assert np.array_equal(arr(sitk.ReadImage(str(case_dir / "ct.nii.gz"))), arr(small.ct))
    assert np.allclose(arr(sitk.ReadImage(str(case_dir / "pet.nii.gz"))), arr(small.pet_suv))
    assert not [p for p in case_dir.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def _series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_dicom_series_geometry_and_values(small, case_dir):
    ct = _series(case_dir / "dicom" / "ct")
    assert ct.GetSize() == small.ct.GetSize()
    assert np.allclose(ct.GetOrigin(), small.ct.GetOrigin(), atol=1e-3)
    assert np.allclose(ct.GetSpacing(), small.ct.GetSpacing(), atol=1e-4)
    assert np.array_equal(arr(ct).astype(np.int16), arr(small.ct))
    pet_files = sorted((case_dir / "dicom" / "pet").glob("*.dcm"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(case_dir / "dicom" / "pet")))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    pet = reader.Execute()
    assert pet.GetSize() == small.pet_bqml.GetSize() and len(pet_files) == pet.GetSize()[2]
    assert np.allclose(pet.GetOrigin(), small.pet_bqml.GetOrigin(), atol=1e-3)
    bq = arr(small.pet_bqml)
    assert np.allclose(arr(pet), bq, atol=bq.max() / 32767 + 1e-3)  # int16 with per-slice slopes


def test_dicom_pet_tags_give_the_phantom_suv(small, case_dir):
    pydicom = pytest.importorskip("pydicom")
    pet_files = sorted((case_dir / "dicom" / "pet").glob("*.dcm"))
    ct_file = next((case_dir / "dicom" / "ct").glob("*.dcm"))
    ds, ct_ds = pydicom.dcmread(pet_files[len(pet_files) // 2]), pydicom.dcmread(ct_file)
    assert ds.Modality == "PT" and ct_ds.Modality == "CT"
    assert ds.StudyInstanceUID == ct_ds.StudyInstanceUID and ds.FrameOfReferenceUID == ct_ds.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != ct_ds.SeriesInstanceUID
    assert ds.Units == "BQML" and ds.DecayCorrection == "START"
    assert {"DECY", "ATTN"} <= set(ds.CorrectedImage)
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    assert float(rp.RadionuclideHalfLife) == pytest.approx(6586.2)
    assert float(rp.RadionuclideTotalDose) == pytest.approx(small.dose_bq)
    assert float(ds.PatientWeight) == pytest.approx(small.weight_kg)
    assert ds.SeriesTime > rp.RadiopharmaceuticalStartTime
    # an independent SUV implementation reading only the tags reproduces pet.nii.gz
    pysuv = pytest.importorskip("pysuv")
    k = int(ds.ImageIndex) - 1
    expected = arr(small.pet_suv)[k]
    assert np.allclose(pysuv.compute_suv(ds), expected, atol=expected.max() / 32767 * 1.01 + 1e-4)
    assert pysuv.get_suv_factor(ds).suv_factor == pytest.approx(small.suv_factor, rel=1e-6)


def test_write_case_refuses_to_overwrite_and_is_atomic(small, tmp_path, monkeypatch):
    target = write_case(small, tmp_path, "c", dicom=False)
    stamp = (target / "ct.nii.gz").stat().st_mtime_ns
    with pytest.raises(InputError, match="already exists"):
        write_case(small, tmp_path, "c", dicom=False)
    assert (target / "ct.nii.gz").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="case id"):
        write_case(small, tmp_path, "bad_id")
    # a failure half-way (in the DICOM writer) leaves neither a case folder nor temporary files
    import vmambax.data.dicom_write as dw

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dw, "write_pet_series", boom)
    with pytest.raises(RuntimeError):
        write_case(small, tmp_path, "d")
    with pytest.raises(RuntimeError):
        write_case(small, tmp_path, "c", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert (target / "ct.nii.gz").stat().st_mtime_ns == stamp  # the old case is intact
    monkeypatch.undo()
    write_case(small, tmp_path, "c", overwrite=True)
    assert (target / "dicom").is_dir()


def test_bad_phantom_options_are_clear_errors():
    for kwargs, word in ((dict(seed=-1), "seed"), (dict(seed=1, size=8), "size"), (dict(seed=1, n_slices=1), "slices"),
                         (dict(seed=1, n_tumours=(3, 1)), "tumours"), (dict(seed=1, extent_mm=5000), "extent")):
        with pytest.raises(ConfigError, match=word):
            make_phantom(**kwargs)


def test_cli_phantom_writes_cases_and_preview(tmp_path, capsys):
    out, png = tmp_path / "cases", tmp_path / "prev.png"
    assert main(["phantom", "--out", str(out), "--cases", "2", "--seed", "7", "--size", "64", "--slices", "16",
                 "--no-dicom", "--preview", str(png)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["phantom-0007", "phantom-0008"]
    assert not (out / "phantom-0007" / "dicom").exists()
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1200, 450)
    # existing cases: refused before any work, nothing changed
    stamp = (out / "phantom-0007" / "ct.nii.gz").stat().st_mtime_ns
    assert main(["phantom", "--out", str(out), "--seed", "7", "--size", "64", "--slices", "16"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "phantom-0007" / "ct.nii.gz").stat().st_mtime_ns == stamp
    # bad options
    (tmp_path / "file").write_text("x")
    assert main(["phantom", "--out", str(tmp_path / "file")]) == 2
    assert main(["phantom", "--out", str(tmp_path / "o"), "--cases", "0"]) == 2
    assert main(["phantom", "--out", str(tmp_path / "o"), "--preview", str(tmp_path / "p.jpg")]) == 2
    assert not (tmp_path / "o").exists()


def test_full_size_default_phantom_has_distinct_realistic_grids():
    ph = make_phantom(1)  # the default 512 x 512 CT (a few seconds)
    ct, pet = ph.ct, ph.pet_suv
    sx, sy, sz = ct.GetSpacing()
    assert ct.GetSize()[:2] == (512, 512) and 0.9 <= sx <= 1.05 and sx == sy
    assert 2.5 <= sz <= 3.3 and 60 <= ct.GetSize()[2] <= 100
    assert 200 <= ct.GetSize()[2] * sz <= 250
    px, _, pz = pet.GetSpacing()
    assert 3.8 < px < 4.2 and pz in (3.27, 4.0, 3.0)
    assert pet.GetSize()[0] * px > ct.GetSize()[0] * sx  # larger PET field of view
    assert not np.allclose(pet.GetOrigin(), ct.GetOrigin(), atol=1.0)
    assert arr(ph.label).sum() > 0
