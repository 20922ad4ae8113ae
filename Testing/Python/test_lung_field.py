"""Only the slices that can hold a lung tumour: the lung field, the whole-body phantom, --all-slices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vmambax.errors import InputError
from vmambax.infer.lung_field import lung_field
from vmambax.infer.segmenter import Segmenter

SIZE = 64  # in-plane matrix: the whole-body tests need many slices, not resolution


class HotSpotNet(torch.nn.Module):
    """Stand-in network: 'tumour' wherever the PET is bright, so the brain and the bladder of a
    whole-body study light up too (what running a lung model outside the chest risks)."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, ct, pet):
        self.seen += ct.shape[0]
        return (pet + 1.0) * 20.0 + 0.0 * ct


@pytest.fixture(scope="module")
def body():
    from vmambax.phantom import make_phantom

    return make_phantom(4, size=SIZE, whole_body=True, n_tumours=2, n_slices=120)


def _axial(image):
    return sitk.GetArrayFromImage(image), image.GetSpacing()[::-1]


def test_whole_body_phantom_spans_head_to_thigh_with_the_thorax_inside(body):
    from vmambax.phantom import make_phantom

    ct, spacing = _axial(body.ct)
    extent = ct.shape[0] * spacing[0]
    assert 850.0 < extent < 1200.0  # a whole-body study, not a thorax
    label = sitk.GetArrayFromImage(body.label)
    assert label.any() and len(body.lesions) == 2
    # Deterministic by seed, and the extra anatomy is only there when asked for.
    again = make_phantom(4, size=SIZE, whole_body=True, n_tumours=2, n_slices=120)
    assert np.array_equal(sitk.GetArrayFromImage(again.ct), ct)
    thorax = make_phantom(4, size=SIZE, n_tumours=2)
    assert thorax.ct.GetSize()[2] * thorax.ct.GetSpacing()[2] < 400.0
    # FDG-avid structures outside the chest: the brain (top) and the bladder (bottom) of the PET.
    pet, pet_spacing = _axial(body.pet_suv)
    top, bottom = pet[-int(150 / pet_spacing[0]):], pet[:int(300 / pet_spacing[0])]
    assert top.max() > 5.0 and bottom.max() > 6.0


def test_lung_field_covers_every_tumour_and_skips_head_and_pelvis(body):
    ct, spacing = _axial(body.ct)
    field = lung_field(ct, spacing)
    tumour_slices = np.flatnonzero(sitk.GetArrayFromImage(body.label).any(axis=(1, 2)))
    assert field.run[tumour_slices].all()
    assert 0.15 < field.n_run / field.run.size < 0.5
    # The 2 cm margin: the run extends the lung slices by 20 mm on both sides (up to the rounding).
    lung = np.flatnonzero(field.lung)
    run = np.flatnonzero(field.run)
    reach = int(np.floor(20.0 / spacing[0]))
    assert run[0] == max(lung[0] - reach, 0) and run[-1] == min(lung[-1] + reach, ct.shape[0] - 1)
    # Brain at the top, bladder at the bottom: both outside the field.
    assert not field.run[-int(150 / spacing[0]):].any() and not field.run[:int(250 / spacing[0])].any()
    s = field.summary()
    assert s["slices_run"] == field.n_run and s["slices_total"] == ct.shape[0]
    assert 1500.0 < s["lung_volume_ml"] < 8000.0


def test_bowel_gas_and_the_table_are_not_lung():
    """Air inside the body outside the chest (a gas pocket) and the table's foam core are never
    taken for lung: a body cylinder with only those gives the no-lungs error."""
    z, y, x = 60, 64, 64
    ct = np.full((z, y, x), -1000.0, np.float32)
    yy, xx = np.mgrid[:y, :x]
    ct[:, ((yy - 30) ** 2 + (xx - 32) ** 2) < 26 ** 2] = 40.0
    ct[20:26, 25:31, 25:31] = -990.0  # a 6x6x6 voxel gas pocket (~ 80 mL at 4x4x3 mm)
    ct[:, 58:62, 4:60] = 200.0
    ct[:, 59:61, 6:58] = -950.0  # the table's enclosed foam core
    with pytest.raises(InputError, match="no lungs found.*--all-slices"):
        lung_field(ct, (3.0, 4.0, 4.0))


def test_segmenter_runs_only_the_field_and_keeps_the_chest_result(body):
    net_all, net_field = HotSpotNet(), HotSpotNet()
    full = Segmenter(net_all, device="cpu", batch_size=16, image_size=SIZE, all_slices=True,
                     threads=1).segment(body.ct, body.pet_suv)
    part = Segmenter(net_field, device="cpu", batch_size=16, image_size=SIZE,
                     threads=1).segment(body.ct, body.pet_suv)
    n = body.ct.GetSize()[2]
    field = lung_field(*_axial(body.ct))
    assert net_all.seen == n and net_field.seen == field.n_run  # skipped slices never ran
    assert full.n_slices_run == n and part.n_slices_run == field.n_run < n
    assert part.slice_selection["mode"] == "lung field"
    assert full.slice_selection == {"mode": "all slices", "slices_total": n, "slices_run": n}
    a, b = sitk.GetArrayFromImage(full.label), sitk.GetArrayFromImage(part.label)
    # Inside the field the label is the same slice for slice; outside it is empty, while the
    # stand-in network did "find" the brain and bladder there when run on every slice.
    assert np.array_equal(a[field.run], b[field.run])
    assert not b[~field.run].any() and a[~field.run].any()
    truth = sitk.GetArrayFromImage(body.label).astype(bool)
    assert np.array_equal(a[truth], b[truth])


def test_ct_without_lungs_is_a_clear_error_unless_all_slices():
    z, y, x = 24, 48, 48
    ct = np.full((z, y, x), -1000.0, np.float32)
    yy, xx = np.mgrid[:y, :x]
    ct[:, ((yy - 24) ** 2 + (xx - 24) ** 2) < 20 ** 2] = 30.0  # soft-tissue cylinder (a thigh)
    pet = np.where(ct > 0, 1.0, 0.0).astype(np.float32)
    seg = Segmenter(HotSpotNet(), device="cpu", image_size=SIZE, threads=1)
    with pytest.raises(InputError, match="no lungs found in the CT.*--all-slices"):
        seg.segment_arrays(ct, pet, spacing=(4.0, 4.0, 5.0))
    result = Segmenter(HotSpotNet(), device="cpu", image_size=SIZE, threads=1,
                       all_slices=True).segment_arrays(ct, pet, spacing=(4.0, 4.0, 5.0))
    assert result.n_slices_run == z


def test_cli_reports_slices_run_and_all_slices_flag(tmp_path, capsys, nano_file):
    from vmambax.cli import main
    from vmambax.phantom import make_phantom

    model = nano_file
    body = make_phantom(5, size=SIZE, whole_body=True, n_tumours=1, n_slices=50)
    sitk.WriteImage(body.ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(body.pet_suv, str(tmp_path / "pet.nii.gz"))
    base = ["segment", "--ct", str(tmp_path / "ct.nii.gz"), "--pet", str(tmp_path / "pet.nii.gz"),
            "--model", str(model), "--device", "cpu", "--batch", "8", "--threads", "1"]
    assert main(base + ["-o", str(tmp_path / "a.nii.gz"), "--report", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "a.json").read_text())
    n = body.ct.GetSize()[2]
    assert report["slices"] == n and report["slices_run"] < n
    assert report["slice_selection"]["mode"] == "lung field"
    assert f"{report['slices_run']} of {n} slices (lung field" in out
    rc = main(base + ["-o", str(tmp_path / "b.nii.gz"), "--report", str(tmp_path / "b.json"),
                      "--all-slices", "-q"])
    assert rc == 0 and json.loads((tmp_path / "b.json").read_text())["slices_run"] == n


def test_cli_phantom_whole_body_and_the_benchmark_run(tmp_path, capsys):
    from vmambax.cli import main

    assert main(["phantom", "--out", str(tmp_path), "--whole-body", "--size", "32", "--slices", "40",
                 "--no-dicom", "--seed", "2"]) == 0
    ct = sitk.ReadImage(str(tmp_path / "phantom-0002" / "ct.nii.gz"))
    assert ct.GetSize()[2] == 40 and ct.GetSize()[2] * ct.GetSpacing()[2] > 850.0
    capsys.readouterr()
    out = tmp_path / "bench.json"
    assert main(["bench", "wholebody", "--config", "vmambax-nano", "--size", "32", "--slices", "60",
                 "--sample", "1", "--device", "cpu", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert runs["all slices"]["slices_run"] == 60 > runs["lung field"]["slices_run"] > 0
    assert runs["lung field"]["estimated"] and result["speedup"] > 1.0


def test_air_that_is_nowhere_a_lung_cross_section_is_no_lung_field():
    """A long narrow air tube (airway-like, ~1.4 cm^2 across 1.2 m: ~170 mL, enough volume)
    fills no slice with lung: the field must say "no lungs", not run nothing and report no
    tumour."""
    z, y, x = 150, 64, 64
    ct = np.full((z, y, x), -1000.0, np.float32)
    yy, xx = np.mgrid[:y, :x]
    ct[:, ((yy - 32) ** 2 + (xx - 32) ** 2) < 28 ** 2] = 40.0
    ct[:, ((yy - 32) ** 2 + (xx - 32) ** 2) < 2.0 ** 2] = -950.0  # ~2 cm^2 at 4 mm pixels
    with pytest.raises(InputError, match="no lungs found.*less than 5 cm"):
        lung_field(ct, (8.0, 4.0, 4.0))
