"""Warnings reach the user's eyes; a sliver of PET and absurd CT voxels are refused (issue 10.5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from vmambax.cli import main
from vmambax.data.case import make_case
from vmambax.errors import InputError

SIZE = 128


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from vmambax.phantom import make_phantom, write_case

    root = tmp_path_factory.mktemp("cases")
    phantom = make_phantom(3, size=SIZE, n_slices=6)
    folder = Path(write_case(phantom, root, "p3"))
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    pet = sitk.ReadImage(str(folder / "pet.nii.gz"))
    # A PET on the CT grid that covers only the CT's 2 middle rows of slices out of 6 (~33 %).
    part = sitk.Resample(pet, ct[:, :, 2:4], sitk.Transform(), sitk.sitkLinear, 0.0,
                         sitk.sitkFloat32)
    sitk.WriteImage(part, str(folder / "pet_part.nii.gz"))
    return folder, ct, pet


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_segment_prints_its_warnings_on_stderr(case, nano_file, tmp_path, capsys,
                                               one_cpu_thread):
    folder, _, _ = case
    rc = main(["segment", "--ct", str(folder / "ct.nii.gz"), "--pet",
               str(folder / "pet_part.nii.gz"), "-o", str(tmp_path / "l.nii.gz"), "--model",
               str(nano_file), "--device", "cpu", "--threads", "1", "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = _warnings(err)
    assert any("PET covers only 33%" in w for w in lines), err
    assert any("PET taken as SUV" in w for w in lines), err


def test_baseline_prints_its_warnings_on_stderr(case, tmp_path, capsys):
    folder, _, _ = case
    rc = main(["baseline", "--pet", str(folder / "pet_part.nii.gz"), "--ct",
               str(folder / "ct.nii.gz"), "-o", str(tmp_path / "b.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert any("PET covers only 33%" in w for w in _warnings(err)), err
    rc = main(["baseline", "--pet", str(folder / "pet.nii.gz"), "-o", str(tmp_path / "c.nii.gz")])
    assert any("PET taken as SUV" in w for w in _warnings(capsys.readouterr().err))


def test_pet_covering_under_10_percent_is_refused(case, tmp_path, capsys):
    folder, ct, pet = case
    sliver = sitk.Resample(pet, ct[: SIZE // 2, :, 2:3], sitk.Transform(), sitk.sitkLinear, 0.0,
                           sitk.sitkFloat32)  # half of one slice in six: 8 %
    with pytest.raises(InputError, match="covers only 8.3% of the CT.*at least 10%"):
        make_case(ct, sliver)
    sitk.WriteImage(sliver, str(tmp_path / "sliver.nii.gz"))
    rc = main(["baseline", "--pet", str(tmp_path / "sliver.nii.gz"), "--ct",
               str(folder / "ct.nii.gz"), "-o", str(tmp_path / "b.nii.gz")])
    assert rc == 2 and "at least 10%" in capsys.readouterr().err
    assert not (tmp_path / "b.nii.gz").exists()


def test_absurd_ct_voxels_are_refused_and_non_square_pixels_warned(case):
    _, ct, pet = case
    coarse = sitk.Image(ct)
    coarse.SetSpacing((25.0, 25.0, ct.GetSpacing()[2]))
    with pytest.raises(InputError, match="25 x 25 mm pixels.*more than 20 mm"):
        make_case(coarse, pet)
    stretched = sitk.Image(ct)
    sx, sy, sz = ct.GetSpacing()
    stretched.SetSpacing((sx, 1.5 * sy, sz))
    notes = make_case(stretched, pet).warnings
    assert any("not square" in w and "1.50x" in w for w in notes), notes
    assert not any("not square" in w for w in make_case(ct, pet).warnings)


def test_the_segmenter_returns_the_warnings_too(case, nano_file, one_cpu_thread):
    """Python callers of Segmenter get them on the result (``result.warnings``)."""
    from vmambax.infer.segmenter import Segmenter

    _, ct, pet = case
    stretched = sitk.Image(ct)
    stretched.SetSpacing((ct.GetSpacing()[0], 1.5 * ct.GetSpacing()[1], ct.GetSpacing()[2]))
    pet_on = sitk.Resample(pet, stretched, sitk.Transform(), sitk.sitkLinear, 0.0,
                           sitk.sitkFloat32)
    result = Segmenter(str(nano_file), device="cpu", threads=1).segment(stretched, pet_on)
    assert any("not square" in w for w in result.warnings), result.warnings
    assert np.asarray(sitk.GetArrayViewFromImage(result.label)).shape[0] == 6
