"""The segmentation worker's hand-over format (``vmambax.infer.worker``): what a host writes,
what the worker returns, and how it reports failures (issue 17, point 1)."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from vmambax.errors import InputError, ModelFileError
from vmambax.infer import segmenter as segmenter_module
from vmambax.infer import worker


def _images():
    rng = np.random.default_rng(0)
    ct = sitk.GetImageFromArray(rng.integers(-1000, 400, (4, 16, 16)).astype(np.int16))
    ct.SetSpacing((2.0, 2.0, 3.0))
    ct.SetOrigin((-16.0, -16.0, 10.0))
    pet = sitk.GetImageFromArray(rng.random((4, 16, 16)).astype(np.float32) * 5)
    pet.CopyInformation(ct)
    return ct, pet


@dataclasses.dataclass
class FutureResult(segmenter_module.SegmentationResult):
    """A result with a field this host has never heard of (as later versions may add)."""

    notices: list = dataclasses.field(default_factory=list)


class FakeSegmenter:
    """Records its arguments and returns a result with every kind of field."""

    calls = []

    def __init__(self, progress=None, **options):
        self.progress, self.options = progress, options
        FakeSegmenter.calls.append(options)

    def segment(self, ct, pet):
        self.progress(0.5, "Segmented 2/4 slices")
        label = sitk.GetImageFromArray((sitk.GetArrayFromImage(pet) > 2.5).astype(np.uint8))
        label.CopyInformation(ct)
        return FutureResult(
            label=label, probability=None, lesions=[{"id": 1, "suv_max": np.float32(4.5),
                                                     "suv_peak": float("nan")}],
            totals={"mtv_ml": 1.5}, timings={"total": 0.1}, model_name="demo",
            model={"name": "demo", "ensemble": ["a.pt", "b.pt"]}, device="cpu (1 threads)",
            scan_backend="chunked", batch_size=2, amp=None, n_slices=4, n_slices_run=3,
            slice_selection={"mode": "lung field", "slices_run": 3},
            warnings=["demo model trained on synthetic phantoms; not for patient data"],
            notices=["a new kind of notice"], )


def test_a_job_round_trip_passes_every_result_field_through(tmp_path, monkeypatch):
    monkeypatch.setattr(segmenter_module, "Segmenter", FakeSegmenter)
    ct, pet = _images()
    worker.write_job(tmp_path, ct, pet, segmenter={"model": "demo", "device": "cpu",
                                                   "batch_size": None, "tta_flips": True})
    progress = []
    worker.run_job(tmp_path, lambda f, m: progress.append((f, m)))
    assert FakeSegmenter.calls[-1] == {"model": "demo", "device": "cpu", "batch_size": None,
                                       "tta_flips": True}  # options as given, new ones too
    assert progress == [(0.0, "Loading the model"), (0.5, "Segmented 2/4 slices")]
    result = worker.read_result(tmp_path)
    assert result.notices == ["a new kind of notice"]  # unknown to the host, still there
    assert result.warnings == ["demo model trained on synthetic phantoms; not for patient data"]
    assert result.model["ensemble"] == ["a.pt", "b.pt"]
    assert result.lesions[0]["suv_max"] == pytest.approx(4.5) and np.isnan(result.lesions[0]["suv_peak"])
    assert result.slice_selection["slices_run"] == 3 and result.n_slices_run == 3
    assert result.probability is None and "notices" in result.fields
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.label),
                                  (sitk.GetArrayFromImage(pet) > 2.5).astype(np.uint8))
    assert result.label.GetSize() == ct.GetSize()


def test_a_bqml_pet_is_turned_into_suv_with_the_hosts_factor(tmp_path, monkeypatch):
    seen = []

    class Recording(FakeSegmenter):
        def segment(self, ct, pet):
            seen.append(sitk.GetArrayFromImage(pet))
            return super().segment(ct, pet)

    monkeypatch.setattr(segmenter_module, "Segmenter", Recording)
    ct, pet = _images()
    bqml = sitk.Cast(pet, sitk.sitkFloat32) * 5000.0
    worker.write_job(tmp_path, ct, bqml, pet_units="bqml", suv_factor=1 / 5000.0)
    worker.run_job(tmp_path, lambda f, m: None)
    np.testing.assert_allclose(seen[0], sitk.GetArrayFromImage(pet), rtol=1e-5)
    with pytest.raises(InputError, match="SUV factor"):
        worker.write_job(tmp_path, ct, bqml, pet_units="bqml")


def _run_worker(args, timeout=120):
    done = subprocess.run([sys.executable, "-m", "vmambax.infer.worker", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done, events


def test_the_worker_reports_a_users_problem_as_its_class_and_exit_2(tmp_path):
    ct, pet = _images()
    missing = tmp_path / "missing.pt"
    worker.write_job(tmp_path, ct, pet, segmenter={"model": str(missing), "device": "cpu"})
    done, events = _run_worker([str(tmp_path)])
    assert done.returncode == worker.EXIT_USER_ERROR
    assert events[-1]["event"] == "error" and events[-1]["user_error"] is True
    error = worker.error_from_event(events[-1])
    assert isinstance(error, InputError) and "missing.pt" in str(error)
    assert not (tmp_path / worker.RESULT_FILE).exists()
    other = worker.error_from_event({"error": "DeviceError", "message": "no GPU", "user_error": True})
    assert isinstance(other, worker.WorkerError) and other.kind == "DeviceError"
    bug = worker.error_from_event({"error": "KeyError", "message": "KeyError: 'x'",
                                   "traceback": "Traceback ...", "user_error": False})
    assert isinstance(bug, worker.WorkerFailed) and bug.details == "Traceback ..."
    assert isinstance(worker.error_from_event({"error": "ModelFileError", "message": "m",
                                               "user_error": True}), ModelFileError)


def test_the_device_probe_answers_without_the_host_importing_torch():
    done, events = _run_worker(["--devices"])
    assert done.returncode == 0 and events[-1]["event"] == "devices"
    import torch

    assert events[-1]["torch"] == torch.__version__.split("+")[0] or events[-1]["torch"]
    assert events[-1]["cuda"] == torch.cuda.is_available()


def test_a_crashed_worker_is_described_in_words():
    assert "SIGKILL" in worker.describe_exit(-9) and "memory" in worker.describe_exit(-9)
    assert "status 1" in worker.describe_exit(1)
    assert "lost the connection" in worker.describe_exit(worker.EXIT_ORPHANED)


def test_the_worker_stops_when_its_host_goes_away(tmp_path, nano_file):
    ct, pet = _images()
    worker.write_job(tmp_path, ct, pet, segmenter={"model": str(nano_file), "device": "cpu"})
    proc = subprocess.Popen(worker.worker_command(tmp_path), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.stdin.close()  # what a crashed Slicer leaves behind
    assert proc.wait(timeout=60) == worker.EXIT_ORPHANED
    assert not (tmp_path / worker.RESULT_FILE).exists()
