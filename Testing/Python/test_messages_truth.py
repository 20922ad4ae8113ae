"""Messages that tell the truth (issue 18): each input here once got a wrong or unhelpful message.

`vmambax import` refusals keep their own words (ROI table, full UID) instead of "malformed"; a
truncated RTSTRUCT says so with a fix; a folder can be given as --rtstruct; a DICOM PET folder can
be the target grid; one file as both CT and PET; build_native's OS errors and the
VMAMBAX_NATIVE_LIB / VMAMBAX_NATIVE_ISA settings; a namespace package shadowing the install; and
the model-level notices (demo model, a model never validated)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from rtstruct_helpers import label_contours, write_rtstruct
from vmambax.cli import main
from vmambax.data.dicom_label import frame_of_reference_of
from vmambax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "realdata" / "sts_001"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data folder {REAL} (../shared/realdata) is absent")


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    from vmambax.phantom import make_phantom, write_case

    return write_case(make_phantom(seed=1, size=128, n_slices=8), tmp_path_factory.mktemp("c"), "rt")


@pytest.fixture(scope="module")
def ct_image(case_dir):
    return sitk.ReadImage(str(case_dir / "ct.nii.gz"))


@pytest.fixture(scope="module")
def contours(case_dir, ct_image):
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "label.nii.gz")))
    return label_contours(truth, ct_image)


@pytest.fixture(scope="module")
def for_uid(case_dir):
    return frame_of_reference_of(case_dir / "dicom" / "ct")


def _import(capsys, case_dir, rtstruct, out, *extra, ct=None):
    code = main(["import", "--ct", str(ct or case_dir / "dicom" / "ct"), "--rtstruct", str(rtstruct),
                 "-o", str(out), "--overwrite", *extra])
    return code, capsys.readouterr()


# ----------------------------------------------------------------------- vmambax import
def test_import_refusals_of_a_well_formed_rtstruct_keep_their_own_message(tmp_path, capsys, case_dir,
                                                                         ct_image, contours, for_uid):
    """Before: every one of these was "a malformed DICOM RTSTRUCT ... Export the contours again",
    cut to its first line (the ROI table lost) and to 200 characters (a long UID cut)."""
    long_uid = ("1.2.826.0.1.3680043.8.498." + "1234567890" * 4)[:64]  # the longest a UID may be
    tilted = contours[0].copy()
    tilted[:, 2] += np.linspace(0, 3 * ct_image.GetSpacing()[2], len(tilted))
    files = {
        "several": [("GTV_Mass", contours), ("GTV_Edema", contours), ("Body", contours)],
        "no-such-roi": [("GTV", contours), ("Body", contours)],
        "other-frame": [("GTV", contours)],
        "empty": [("GTV", []), ("Body", contours)],
        "oblique": [("GTV", [tilted])],
    }
    expect = {
        "several": ["several ROIs named like a tumour", "1  'GTV_Mass'", "2  'GTV_Edema'",
                    "3  'Body'", "--roi"],
        "no-such-roi": ["no ROI named 'liver'", "1  'GTV'", "2  'Body'"],
        "other-frame": [f"frame of reference {long_uid}", f"the CT in {for_uid}", "another scan"],
        "empty": ["'GTV' of empty.dcm has no closed contours", "--roi"],
        "oblique": ["not parallel to the image's slices", "axial, as planned"],
    }
    out = tmp_path / "label.nii.gz"
    for name, rois in files.items():
        uid = long_uid if name == "other-frame" else for_uid
        rs = write_rtstruct(tmp_path / f"{name}.dcm", rois, uid)
        extra = ["--roi", "liver"] if name == "no-such-roi" else []
        code, text = _import(capsys, case_dir, rs, out, *extra)
        assert code == 2, name
        assert "malformed" not in text.err and "Export the contours again" not in text.err, text.err
        for words in expect[name]:
            assert words in text.err, (name, words, text.err)
        assert not out.exists()


def test_a_truncated_rtstruct_says_it_is_cut_short_and_how_to_fix_it(tmp_path, capsys, case_dir,
                                                                    contours, for_uid):
    """Before: "No tag to read at file position ..." or "malformed ... AttributeError" (no fix)."""
    good = write_rtstruct(tmp_path / "RS.dcm", [("GTV", contours)], for_uid)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 7, 400):
        bad = tmp_path / f"cut{cut}.dcm"
        bad.write_bytes(data[:cut])
        code, text = _import(capsys, case_dir, bad, tmp_path / "label.nii.gz")
        assert code == 2
        assert "cut short (truncated" in text.err and "Copy it again" in text.err, text.err
        assert "No tag to read" not in text.err and "Traceback" not in text.err


def test_a_folder_given_as_rtstruct_is_searched_for_its_one_structure_set(tmp_path, capsys, case_dir,
                                                                          contours, for_uid):
    """Before: "DICOM label FOLDER not found"."""
    folder = tmp_path / "RS"
    folder.mkdir()
    write_rtstruct(folder / "1-1.dcm", [("GTV", contours)], for_uid)
    (folder / "notes.txt").write_text("exported from the planning system")
    out = tmp_path / "label.nii.gz"
    code, text = _import(capsys, case_dir, folder, out)
    assert code == 0, text.err
    assert "'GTV'" in text.out and out.is_file()
    write_rtstruct(folder / "2-1.dcm", [("GTV", contours)], for_uid)
    code, text = _import(capsys, case_dir, folder, out)
    assert code == 2 and "holds 2 RTSTRUCT/SEG files" in text.err and "1-1.dcm" in text.err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = _import(capsys, case_dir, empty, out)
    assert code == 2 and "no RTSTRUCT or DICOM SEG file" in text.err and "not found" not in text.err


def test_a_dicom_pet_folder_can_be_the_target_grid(tmp_path, capsys, case_dir, contours, for_uid):
    """Contours drawn on the PET go onto the PET grid. Before: "holds no CT series (only PT);
    did you swap the CT and PET inputs?"."""
    import pydicom

    first = sorted((case_dir / "dicom" / "pet").glob("*.dcm"))[0]
    pet_uid = str(pydicom.dcmread(first, stop_before_pixels=True).FrameOfReferenceUID)
    rs = write_rtstruct(tmp_path / "RS.dcm", [("GTV", contours)], pet_uid)
    out = tmp_path / "pet-label.nii.gz"
    code, text = _import(capsys, case_dir, rs, out, ct=case_dir / "dicom" / "pet")
    assert code == 0, text.err
    assert "on the PET grid" in text.out and "swap" not in text.err
    pet = sitk.ReadImage(str(case_dir / "pet.nii.gz"))
    label = sitk.ReadImage(str(out))
    assert label.GetSize() == pet.GetSize()
    np.testing.assert_allclose(label.GetSpacing(), pet.GetSpacing(), rtol=1e-5)
    assert sitk.GetArrayFromImage(label).sum() > 0


@needs_real
def test_real_sts001_pet_contours_onto_the_dicom_pet_and_a_mask_folder(tmp_path, capsys):
    out = tmp_path / "gtv-pet.nii.gz"
    code = main(["import", "--ct", str(REAL / "dicom_cropped" / "PET" / "image"),
                 "--rtstruct", str(REAL / "dicom_cropped" / "PET" / "mask"), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "nifti_cropped" / "PET_mask.nii.gz")))
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert got.shape == reference.shape
    dice = 2 * np.logical_and(got > 0, reference > 0).sum() / ((got > 0).sum() + (reference > 0).sum())
    assert dice >= 0.95, dice


# ------------------------------------------------------------------------ segment inputs
def test_the_same_file_as_ct_and_pet_is_named_as_such(tmp_path, capsys, case_dir, nano_file):
    """Before: "The CT input looks like a PET ...; are they swapped?" (or the PET looks like a CT)."""
    for name in ("ct.nii.gz", "pet.nii.gz"):
        same = case_dir / name
        code = main(["segment", "--ct", str(same), "--pet", str(same), "-o", str(tmp_path / "l.nii.gz"),
                     "--model", str(nano_file), "-q"])
        err = capsys.readouterr().err
        assert code == 2 and "are the same file" in err and "swap" not in err, err
    # A DICOM folder holding both series is still one valid input for both.
    both = tmp_path / "both"
    shutil.copytree(case_dir / "dicom", both)
    code = main(["segment", "--ct", str(both), "--pet", str(both), "-o", str(tmp_path / "l.nii.gz"),
                 "--model", str(nano_file), "-q", "--all-slices"])
    assert code == 0, capsys.readouterr().err


# --------------------------------------------------------------------------- native scan
def _oserror(code):
    def fail(src, dst, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(dst))
    return fail


@pytest.mark.parametrize("code, words", [
    (errno.EROFS, "read-only file system"), (errno.ENOSPC, "free some space"),
    (errno.EACCES, "not writable")])
def test_build_native_os_errors_name_the_fix_that_fits(tmp_path, monkeypatch, code, words):
    """Before: every failure to write the library said "close the programs that use vmambax"
    (a Windows file-in-use hint), also for a read-only or full folder."""
    from vmambax.ops import build_native

    if build_native._find_cc() is None or sys.platform.startswith("win"):
        pytest.skip("needs a C compiler on PATH (POSIX)")
    monkeypatch.setattr(build_native.shutil, "copy2", _oserror(code))
    with pytest.raises(build_native.BuildError) as err:
        build_native.build(tmp_path / "out")
    text = str(err.value)
    assert words in text and "close the programs" not in text, text
    assert "--out-dir" in text and "VMAMBAX_NATIVE_LIB" in text


def test_a_bad_native_lib_variable_is_named_and_not_told_to_build(monkeypatch, tmp_path, capsys):
    """Before: "the compiled library X is missing ...; build it with build_native" (which cannot
    fix a variable pointing at the wrong file)."""
    from vmambax.ops import build_native, native

    missing = tmp_path / "elsewhere" / "libvmambax_scan.so"
    monkeypatch.setenv("VMAMBAX_NATIVE_LIB", str(missing))
    reason = native.unavailable_reason()
    assert f"VMAMBAX_NATIVE_LIB={missing}" in reason and "unset it" in reason, reason
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a library")
    monkeypatch.setenv("VMAMBAX_NATIVE_LIB", str(broken))
    assert "VMAMBAX_NATIVE_LIB=" in native.unavailable_reason()
    assert build_native.main(["--check"]) == 2
    assert "VMAMBAX_NATIVE_LIB" in capsys.readouterr().out


def test_a_native_isa_that_cannot_be_honoured_is_refused(monkeypatch):
    """Before: VMAMBAX_NATIVE_ISA=bogus (or avx2 on a CPU without it) silently ran the default."""
    from vmambax.ops import active_backend, native, selective_scan
    from test_ops import make_inputs

    if native.unavailable_reason() is not None:
        pytest.skip("native scan library not available")
    monkeypatch.delenv("VMAMBAX_SCAN_BACKEND", raising=False)
    x = {k: v.float() for k, v in make_inputs(1, 4, 2, 5, 2).items()}
    monkeypatch.setenv("VMAMBAX_NATIVE_ISA", "bogus")
    with pytest.raises(ConfigError, match="VMAMBAX_NATIVE_ISA='bogus' is not one of .*baseline"):
        active_backend("cpu")
    with pytest.raises(ConfigError, match="VMAMBAX_NATIVE_ISA"):
        selective_scan(**x)
    selective_scan(**x, backend="chunked")  # the setting does not concern other backends
    monkeypatch.setattr(native, "supported_isas", lambda: ["baseline"])  # a CPU without AVX2
    monkeypatch.setenv("VMAMBAX_NATIVE_ISA", "avx2")
    with pytest.raises(ConfigError, match="AVX2.*does not have.*baseline"):
        active_backend("cpu")
    monkeypatch.setenv("VMAMBAX_NATIVE_ISA", "baseline")
    assert active_backend("cpu") == "native" and "baseline kernels" in native.describe()


def test_the_fallback_to_the_chunked_scan_is_a_warning(monkeypatch, tmp_path):
    """Before: only "scan: chunked" in the summary line said that the native scan was missing."""
    from vmambax.infer.segmenter import Segmenter
    from vmambax.model import build_model

    monkeypatch.delenv("VMAMBAX_SCAN_BACKEND", raising=False)
    monkeypatch.setenv("VMAMBAX_NATIVE_LIB", str(tmp_path / "missing.so"))
    seg = Segmenter(build_model("vmambax-nano"), device="cpu", image_size=128, all_slices=True)
    hu = np.full((2, 64, 64), -800, np.float32)
    hu[:, :, :10] = -1000
    ct = sitk.GetImageFromArray(hu)
    pet = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0.5, 2.0, (2, 64, 64)).astype(np.float32))
    result = seg.segment(ct, pet)
    assert result.scan_backend == "chunked"
    assert any("chunked scan runs" in w and "VMAMBAX_NATIVE_LIB" in w for w in result.warnings)


# ------------------------------------------------------------------ a shadowed install
def test_a_folder_named_vmambax_shadowing_the_install_is_explained(tmp_path):
    """Before: ``TypeError: expected str ... not NoneType`` from the registry."""
    (tmp_path / "vmambax" / "Resources").mkdir(parents=True)  # a checkout or output folder
    script = tmp_path / "script.py"
    script.write_text("from vmambax.infer.registry import list_models\nprint(len(list_models()))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode == 0:
        pytest.skip("this install is not shadowed by a namespace folder (not an import-hook editable install)")
    assert "TypeError" not in proc.stderr, proc.stderr
    assert f"{tmp_path / 'vmambax'}" in proc.stderr and "shadows it" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------ model notices
def test_the_demo_model_says_it_is_trained_on_phantoms(tmp_path, capsys, case_dir):
    """Before: the phantom-trained demo model segmented patient data without a word."""
    from vmambax.infer.registry import DEMO_MODEL_NOTICE, get_model
    from vmambax.infer.segmenter import Segmenter

    assert DEMO_MODEL_NOTICE == "demo model trained on synthetic phantoms; not for patient data"
    assert get_model("default").training_data == "synthetic phantoms"
    out = tmp_path / "label.nii.gz"
    code = main(["segment", "--ct", str(case_dir / "ct.nii.gz"), "--pet", str(case_dir / "pet.nii.gz"),
                 "-o", str(out), "--report", str(tmp_path / "r.json"), "-q"])
    assert code == 0
    assert f"warning: {DEMO_MODEL_NOTICE}" in capsys.readouterr().err
    assert DEMO_MODEL_NOTICE in json.loads((tmp_path / "r.json").read_text())["warnings"]
    # The same file given by its path, or registered under another name, is still the demo model.
    path = get_model("default").local_path()
    seg = Segmenter(str(path), device="cpu")
    ct, pet = sitk.ReadImage(str(case_dir / "ct.nii.gz")), sitk.ReadImage(str(case_dir / "pet.nii.gz"))
    assert DEMO_MODEL_NOTICE in seg.segment(ct, pet).warnings


def test_a_model_saved_without_any_validation_says_so(tmp_path, case_dir):
    from vmambax.data.preprocess import preprocessing_info
    from vmambax.infer.registry import DEMO_MODEL_NOTICE
    from vmambax.infer.segmenter import Segmenter
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file

    model = build_model("vmambax-nano")
    never = tmp_path / "never-validated.pt"
    save_model_file(never, model, config_name="vmambax-nano", preprocessing=preprocessing_info(128),
                    metadata={"status": "stopped", "epochs_completed": 0, "best_checkpoint": None,
                              "best_val_dice": None})
    validated = tmp_path / "validated.pt"
    save_model_file(validated, model, config_name="vmambax-nano", preprocessing=preprocessing_info(128),
                    metadata={"status": "done", "epochs_completed": 3, "best_val_dice": 0.61})
    ct, pet = sitk.ReadImage(str(case_dir / "ct.nii.gz")), sitk.ReadImage(str(case_dir / "pet.nii.gz"))
    warned = Segmenter(str(never), device="cpu").segment(ct, pet).warnings
    assert any("never-validated.pt was saved without any validation" in w for w in warned), warned
    plain = Segmenter(str(validated), device="cpu").segment(ct, pet).warnings
    assert not any("validation" in w or w == DEMO_MODEL_NOTICE for w in plain), plain
