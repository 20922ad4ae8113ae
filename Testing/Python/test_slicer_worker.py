"""VMambaX Segment through the ``vmambax`` worker process (issue 17, point 1), on real MRML
(slicer-core): the same label as in Slicer's own process, cancel mid-batch and kill -9 leave no
process and an unchanged scene, and errors in the worker reach the panel as plain messages.
"""

import os
import signal
import time

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

import slicer  # noqa: F401  (slicer-core)

from vmambax.errors import Cancelled, ModelFileError
from vmambax.infer.worker import WorkerCrashed
from VMambaXCommon import mrml_sitk
from VMambaXCommon.testing import add_phantom_case
from VMambaXSegmentLib.logic import VMambaXSegmentLogic

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A nano model that runs at 512 px: a batch of 6 slices takes about 4 s here, so a cancel
    that waited for the batch to end would miss the 2 s."""
    import torch

    from vmambax.data.preprocess import preprocessing_info
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("models") / "nano512.pt"
    save_model_file(path, build_model("vmambax-nano"), config_name="vmambax-nano",
                    preprocessing=preprocessing_info(512), metadata={"note": "random init"})
    return str(path)


@pytest.fixture()
def case():
    scene = slicer.vtkMRMLScene()
    ct, pet, phantom, _ = add_phantom_case(scene, seed=4, size=128, n_slices=12, prefix="W ")
    return scene, ct, pet, phantom


def _scene_state(scene):
    return scene.GetNumberOfNodes(), sorted(scene.GetNodeByID(scene.GetNthNode(i).GetID()).GetName()
                                            for i in range(scene.GetNumberOfNodes()))


def _tree(pid):
    try:
        proc = psutil.Process(pid)
        return [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs):
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _start_and_wait_for_a_batch(logic, ct, pet, model, seen):
    """Start a worker run; return (task, job, its processes) once the worker reports its first
    segmented batch, i.e. while the next batch is being computed."""
    started = []
    logic.workerOptions = {"on_started": started.append}
    task = logic.segmentAsync(ct, pet, model=model, device="cpu", petUnits="suv",
                              allSlices=True, batchSize=6)
    deadline = time.monotonic() + 240
    while True:
        assert not task.done, f"the run ended before a batch was reported: {task.error!r}"
        assert time.monotonic() < deadline, "no batch within 240 s"
        _fraction, message = task.snapshot()
        seen.append(message)
        if message.startswith("Segmented ") and started:
            break
        time.sleep(0.02)
    job = started[0]
    procs = _tree(job.pid)
    assert procs and _alive(procs), "the worker is not running"
    return task, job, procs


def test_worker_segments_the_phantom_with_the_in_process_label(case, nano_file):
    scene, ct, pet, _phantom = case
    progress = []
    worker_out = VMambaXSegmentLogic().segment(ct, pet, model=str(nano_file), device="cpu",
                                               petUnits="suv", allSlices=True,
                                               progress=lambda f, m: progress.append((f, m)))
    logic = VMambaXSegmentLogic()
    local_out = logic.segment(ct, pet, model=str(nano_file), device="cpu", petUnits="suv",
                              allSlices=True, inProcess=True)
    # An in-process run does not turn the logic's later default runs into in-process ones.
    started = []
    logic.workerOptions = {"on_started": started.append}
    logic.segment(ct, pet, model=str(nano_file), device="cpu", petUnits="suv", allSlices=True)
    assert len(started) == 1
    a, b = worker_out.result, local_out.result
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a.label), sitk.GetArrayFromImage(b.label))
    assert a.label.GetSize() == ct.GetImageData().GetDimensions()
    # Everything the Segmenter returns passes through the worker.
    assert a.lesions == b.lesions and a.totals == pytest.approx(b.totals, nan_ok=True)
    assert a.slice_selection == b.slice_selection and a.warnings == b.warnings
    assert a.model == b.model and a.model_name == b.model_name and a.device == b.device
    assert set(a.timings) == set(b.timings) and a.n_slices == b.n_slices
    assert {"write_inputs", "worker_start", "worker_total", "read_result"} <= set(a.handover)
    # The worker's progress reached the caller, in order, to the end.
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.startswith("Segmented ") for _, m in progress)
    # The scene got the same output both times (one segmentation for this CT, updated).
    seg = worker_out.segmentationNode
    assert seg is local_out.segmentationNode
    np.testing.assert_array_equal(mrml_sitk.segment_to_array(seg, worker_out.segmentId, ct),
                                  sitk.GetArrayFromImage(b.label))


def test_worker_cancel_mid_batch_ends_the_process_tree_within_2s(case, slow_model):
    scene, ct, pet, _phantom = case
    before = _scene_state(scene)
    seen = []
    task, job, procs = _start_and_wait_for_a_batch(VMambaXSegmentLogic(), ct, pet, slow_model,
                                                   seen)
    t0 = time.monotonic()
    task.cancel()
    while not task.done or _alive(procs):
        elapsed = time.monotonic() - t0
        assert elapsed < 2.0, f"after {elapsed:.2f} s still alive: {_alive(procs)}"
        time.sleep(0.01)
    with pytest.raises(Cancelled):
        task.apply()
    assert _scene_state(scene) == before
    assert job.cancelled and not os.path.exists(job.command[-1])  # the job folder is gone


def test_worker_kill_9_is_a_clear_error_and_the_scene_is_unchanged(case, slow_model):
    scene, ct, pet, _phantom = case
    before = _scene_state(scene)
    task, job, procs = _start_and_wait_for_a_batch(VMambaXSegmentLogic(), ct, pet, slow_model, [])
    os.kill(job.pid, signal.SIGKILL)  # what the kernel's out-of-memory killer does
    assert task.wait(30)
    with pytest.raises(WorkerCrashed) as raised:
        task.apply()
    message = str(raised.value)
    assert "SIGKILL" in message and "memory" in message and "scene were not affected" in message
    assert not _alive(procs)
    assert _scene_state(scene) == before
    assert not os.path.exists(job.command[-1])


def test_worker_errors_are_the_users_messages_and_change_nothing(case, tmp_path):
    scene, ct, pet, _phantom = case
    before = _scene_state(scene)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelFileError) as raised:
        VMambaXSegmentLogic().segment(ct, pet, model=str(broken), device="cpu", petUnits="suv")
    assert "broken.pt" in str(raised.value)
    assert _scene_state(scene) == before
