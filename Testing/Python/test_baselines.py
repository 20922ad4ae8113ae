"""Classic PET threshold baselines (SUV >= 2.5, 41 % of SUVmax) and `vmambax baseline`."""

import json

import numpy as np
import pytest

from vmambax.baselines import percent_max, segment_pet, suv_threshold
from vmambax.cli import main
from vmambax.errors import ConfigError

sitk = pytest.importorskip("SimpleITK")


def gaussian(shape, centre, peak, sigma):
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return peak * np.exp(-r2 / (2 * sigma ** 2))


def test_fixed_threshold_is_inclusive():
    suv = np.array([[2.49, 2.5, 2.51, 8.0]])
    assert suv_threshold(suv).tolist() == [[0, 1, 1, 1]]
    assert suv_threshold(suv, 3.0).tolist() == [[0, 0, 0, 1]]


def test_percent_max_is_the_41_percent_isocontour_of_each_hot_spot():
    shape = (24, 48, 48)
    hot = gaussian(shape, (12, 14, 14), 10.0, 3.0)
    faint = gaussian(shape, (12, 34, 34), 4.0, 3.0)  # SUVmax 4: 41 % = 1.64, below the 2.5 seed level
    suv = 0.5 + hot + faint
    mask = percent_max(suv, (1.0, 1.0, 1.0))
    hot_side = np.zeros(shape, bool)
    hot_side[:, :24, :24] = True
    for side, peak in ((hot_side, suv[hot_side].max()), (~hot_side, suv[~hot_side].max())):
        expected = (suv >= 0.41 * peak) & side  # each blob's iso-contour is one connected ball
        assert np.array_equal(mask.astype(bool) & side, expected)
    # the faint lesion's region is larger than its SUV >= 2.5 seed
    assert (mask.astype(bool) & ~hot_side).sum() > (suv >= 2.5)[~hot_side].sum()


def test_percent_max_growth_is_bounded_by_the_margin():
    suv = np.full((10, 60, 60), 0.3)
    suv[:, :, 30:] = 1.5  # a large organ at 1.5
    suv[5, 30, 32] = 3.0  # a faint hot spot on its edge: 41 % = 1.23 < 1.5
    mask = percent_max(suv, (2.0, 2.0, 2.0), margin_mm=10.0).astype(bool)
    zz, yy, xx = np.nonzero(mask)
    dist = np.sqrt(((zz - 5) * 2.0) ** 2 + ((yy - 30) * 2.0) ** 2 + ((xx - 32) * 2.0) ** 2)
    assert mask[5, 30, 32] and dist.max() <= 10.0 + 1e-6
    assert mask.sum() < (suv >= 1.23).sum() / 10  # it did not flood the organ


def test_bad_parameters_are_config_errors():
    suv = np.ones((3, 3, 3))
    for kwargs in (dict(percent=0), dict(percent=150), dict(seed_threshold=-1), dict(margin_mm=-2)):
        with pytest.raises(ConfigError):
            percent_max(suv, (1, 1, 1), **kwargs)
    with pytest.raises(ConfigError, match="threshold"):
        suv_threshold(suv, float("nan"))
    with pytest.raises(ConfigError, match="unknown baseline"):
        segment_pet(sitk.GetImageFromArray(suv), "otsu")


def test_segment_pet_on_a_reference_grid():
    arr = (0.5 + gaussian((12, 20, 20), (6, 10, 10), 6.0, 2.0)).astype(np.float32)
    pet = sitk.GetImageFromArray(arr)
    pet.SetSpacing((4.0, 4.0, 4.0))
    ct = sitk.Image(60, 60, 36, sitk.sitkInt16)
    ct.SetSpacing((1.0, 1.0, 1.0))
    ct.SetOrigin((10.0, 10.0, 6.0))
    label = segment_pet(pet, "suv2.5", reference=ct)
    assert label.GetSize() == ct.GetSize() and label.GetOrigin() == ct.GetOrigin()
    assert 0 < sitk.GetArrayViewFromImage(label).sum() < 60 * 60 * 36
    own = segment_pet(pet, "pct41")
    assert own.GetSize() == pet.GetSize()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from vmambax.phantom import make_phantom, write_case

    out = tmp_path_factory.mktemp("cases")
    return write_case(make_phantom(11, size=64, n_slices=20), out, "c1")


def test_cli_baseline_on_a_phantom(case, tmp_path, capsys):
    out = tmp_path / "b.nii.gz"
    report = tmp_path / "b.json"
    assert main(["baseline", "--pet", str(case / "pet.nii.gz"), "--ct", str(case / "ct.nii.gz"),
                 "--method", "pct41", "-o", str(out), "--report", str(report)]) == 0
    assert "pct41" in capsys.readouterr().out
    label, ct = sitk.ReadImage(str(out)), sitk.ReadImage(str(case / "ct.nii.gz"))
    assert label.GetSize() == ct.GetSize()
    assert np.allclose(label.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    assert sitk.GetArrayViewFromImage(label).sum() > 0
    rep = json.loads(report.read_text())
    assert rep["method"] == "pct41" and rep["total"]["n_lesions"] >= 1
    # DICOM PET (Bq/mL + SUV tags) gives the same segmentation as the SUV NIfTI on its own grid
    a, b = tmp_path / "n.nii.gz", tmp_path / "d.nii.gz"
    assert main(["baseline", "--pet", str(case / "pet.nii.gz"), "-o", str(a)]) == 0
    assert main(["baseline", "--pet", str(case / "dicom" / "pet"), "-o", str(b)]) == 0
    la, lb = sitk.GetArrayFromImage(sitk.ReadImage(str(a))), sitk.GetArrayFromImage(sitk.ReadImage(str(b)))
    assert la.shape == tuple(reversed(sitk.ReadImage(str(case / "pet.nii.gz")).GetSize()))
    assert (la != lb).sum() <= 0.001 * la.size  # only int16 quantisation at the threshold


def test_cli_baseline_refuses_bad_output_before_work(case, tmp_path, capsys):
    out = tmp_path / "exists.nii.gz"
    out.write_text("keep me")
    assert main(["baseline", "--pet", str(case / "pet.nii.gz"), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["baseline", "--pet", str(case / "pet.nii.gz"), "-o", str(tmp_path / "x.png")]) == 2
    assert ".nii.gz" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert main(["baseline", "--pet", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "y.nii.gz")]) == 2
    assert not (tmp_path / "y.nii.gz").exists()
