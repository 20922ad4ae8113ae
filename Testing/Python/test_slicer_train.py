"""VMambaX Train logic against real MRML (slicer-core): case export, the background
``vmambax train`` process and its progress stream, stop/resume, chart, model registration."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]

import slicer  # noqa: E402  (slicer-core)

from vmambax.errors import ConfigError, InputError  # noqa: E402
from VMambaXCommon import mrml_sitk  # noqa: E402
from VMambaXSegmentLib.logic import VMambaXSegmentLogic  # noqa: E402
from VMambaXCommon.testing import add_phantom_case  # noqa: E402
from VMambaXTrainLib.chart import TrainingChart  # noqa: E402
from VMambaXTrainLib.logic import (TrainingCase, TrainingRun, VMambaXTrainLogic,  # noqa: E402
                                   tumourSegmentId)

SIZE = 128
N_SLICES = 8


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def scene_cases():
    scene = slicer.vtkMRMLScene()
    cases, phantoms = [], []
    for seed in (11, 12):
        ct, pet, phantom, seg = add_phantom_case(scene, seed=seed, size=SIZE, n_slices=N_SLICES,
                                                 segmentation=True, prefix=f"P{seed} ")
        cases.append(TrainingCase(ct, pet, seg))
        phantoms.append(phantom)
    return scene, cases, phantoms


def _add_segment(seg, name, ref):
    shape = mrml_sitk.array_from_volume_node(ref).shape
    return seg.AddSegmentFromBinaryLabelmapRepresentation(
        mrml_sitk.oriented_image_from_array(np.zeros(shape, np.uint8), mrml_sitk.ijk_to_ras(ref)),
        name, [0, 1, 0])


def test_tumour_segment_is_found_by_name_or_as_the_only_segment(scene_cases):
    scene, cases, _ = scene_cases
    ref = cases[0].ctNode
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "choices")
    with pytest.raises(InputError, match="has no segments"):
        tumourSegmentId(seg)
    only = _add_segment(seg, "Segment_1", ref)
    assert tumourSegmentId(seg) == only
    _add_segment(seg, "heart", ref)
    with pytest.raises(InputError, match="none named like a tumour"):
        tumourSegmentId(seg)
    gtv = _add_segment(seg, "GTV primary", ref)
    assert tumourSegmentId(seg) == gtv


def test_cases_are_validated_before_anything_is_written(scene_cases, tmp_path):
    _scene, cases, _ = scene_cases
    logic = VMambaXTrainLogic()
    with pytest.raises(InputError, match="at least 2 annotated cases"):
        logic.exportCases(cases[:1], tmp_path / "one")
    with pytest.raises(InputError, match="case 2: no PET selected"):
        logic.exportCases([cases[0], TrainingCase(cases[1].ctNode, None, cases[1].segmentationNode)],
                          tmp_path / "missing")
    # A Bq/mL PET without SUV information fails on reading, before any case folder is written.
    scene = slicer.vtkMRMLScene()
    ct, pet, _phantom, seg = add_phantom_case(scene, seed=13, size=64, n_slices=4,
                                              pet_units="bqml", segmentation=True)
    target = tmp_path / "bqml"
    with pytest.raises(InputError, match="weight and the injected dose"):
        logic.exportCases([cases[0], TrainingCase(ct, pet, seg)], target)
    assert not target.exists() or not any(target.iterdir())
    assert not (tmp_path / "one").exists() and not (tmp_path / "missing").exists()


def test_export_writes_volume_case_folders(scene_cases, tmp_path):
    _scene, cases, phantoms = scene_cases
    messages = []
    folder = VMambaXTrainLogic().exportCases(cases, tmp_path / "cases",
                                             progress=lambda f, m: messages.append((f, m)))
    case_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    assert [p.name for p in case_dirs] == ["P11-CT", "P12-CT"]
    for case_dir, phantom in zip(case_dirs, phantoms):
        ct = sitk.ReadImage(str(case_dir / "ct.nii.gz"))
        label = sitk.ReadImage(str(case_dir / "label.nii.gz"))
        pet = sitk.ReadImage(str(case_dir / "pet.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(phantom.ct))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(phantom.label))
        np.testing.assert_allclose(label.GetOrigin(), phantom.ct.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(label.GetDirection(), phantom.ct.GetDirection(), atol=1e-6)
        assert pet.GetSize() == phantom.pet_suv.GetSize()  # PET stays on its own grid
        np.testing.assert_allclose(sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(phantom.pet_suv),
                                   rtol=1e-5)
        info = json.loads((case_dir / "case.json").read_text())
        assert info["segment"] == "tumour" and info["source"] == "3D Slicer scene"
    assert messages[-1][0] == 1.0
    # Exporting again into the same folder never overwrites: new case IDs are used.
    VMambaXTrainLogic().exportCases(cases, folder)
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 4


def test_progress_stream_is_read_incrementally(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    run = TrainingRun(process, tmp_path, None)
    assert run.poll() == []
    path = tmp_path / "progress.jsonl"
    with open(path, "w") as fh:
        fh.write(json.dumps({"event": "start", "step": 0, "total_steps": 4}) + "\n")
        fh.write('{"event": "step", "step": 1, "loss"')  # a line still being written
    assert [e["event"] for e in run.poll()] == ["start"]
    with open(path, "a") as fh:
        fh.write(': 0.9}\n' + json.dumps({"event": "epoch", "step": 2, "val_dice": 0.4}) + "\n")
        fh.write(json.dumps({"event": "done", "step": 2, "model_file": str(tmp_path / "m.pt")}) + "\n")
    events = run.poll()
    assert [e["event"] for e in events] == ["step", "epoch", "done"] and events[0]["loss"] == 0.9
    assert run.poll() == [] and run.finalEvent["event"] == "done"
    assert run.modelFile == tmp_path / "m.pt" and not run.isRunning()


def test_chart_follows_loss_and_validation_dice():
    scene = slicer.vtkMRMLScene()
    chart = TrainingChart(scene)
    added = chart.addEvents([{"event": "start", "step": 0},
                             {"event": "step", "step": 5, "loss": 1.2},
                             {"event": "step", "step": 10, "loss": float("nan")},
                             {"event": "step", "step": 10, "loss": 0.8},
                             {"event": "epoch", "step": 10, "val_dice": 0.35},
                             {"event": "epoch", "step": 20, "val_dice": None}])
    assert added == 3
    assert chart.values("loss") == [(5.0, 1.2), (10.0, 0.8)]
    assert chart.values("dice") == [(10.0, 0.35)]
    assert chart.chartNode.GetNumberOfPlotSeriesNodes() == 2
    assert chart.lossSeries.GetTableNode() is chart.lossTable
    chart.remove()
    assert scene.GetNodesByClass("vtkMRMLPlotChartNode").GetNumberOfItems() == 0


def test_start_refuses_bad_run_folders(tmp_path):
    logic = VMambaXTrainLogic()
    with pytest.raises(InputError, match="does not exist"):
        logic.startTraining(tmp_path / "nope", tmp_path / "run")
    with pytest.raises(InputError, match="does not exist"):
        logic.startTraining(None, tmp_path / "run")
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError, match="nothing to resume"):
        logic.startTraining(tmp_path / "data", tmp_path / "run", resume=True)
    (tmp_path / "used" / "checkpoints").mkdir(parents=True)
    (tmp_path / "used" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="press Resume"):
        logic.startTraining(tmp_path / "data", tmp_path / "used")


def test_train_command_is_an_argument_list():
    command = VMambaXTrainLogic.trainCommand("/d", "/r", config="vmambax-nano", epochs=3,
                                             device="cuda")
    assert command[:4] == [sys.executable, "-m", "vmambax", "train"]
    assert command[command.index("--config") + 1] == "vmambax-nano"
    assert command[command.index("--epochs") + 1] == "3"
    assert command[command.index("--accelerator") + 1] == "gpu"
    assert command[command.index("--progress-file") + 1] == str(Path("/r") / "progress.jsonl")
    # Resuming keeps the run's own data and recipe: only the run folder (and device) are given.
    resume = VMambaXTrainLogic.trainCommand("/d", "/r", config="vmambax-nano", epochs=3,
                                            device="cpu", resume=True)
    assert "--resume" in resume and "--data" not in resume and "--epochs" not in resume
    assert resume[resume.index("--accelerator") + 1] == "cpu"


def _follow(run, timeout=300.0, stop_after_start=False):
    """Poll like the widget's timer until the trainer exits; optionally press Stop once it runs."""
    events = []
    deadline = time.monotonic() + timeout
    try:
        while run.isRunning():
            new = run.poll()
            events += new
            if stop_after_start and any(e["event"] == "start" for e in new):
                run.stop()  # STOP file: honoured at the end of the first step
            assert time.monotonic() < deadline, f"training did not finish in time: {run.failureMessage()}"
            time.sleep(0.2)
    finally:
        run.kill()  # never leave a trainer behind (no-op once it has exited)
    return events + run.poll()


def test_tiny_training_run_stop_resume_and_register(scene_cases, tmp_path, monkeypatch):
    monkeypatch.setenv("VMAMBAX_HOME", str(tmp_path / "home"))  # isolate the user registry
    _scene, cases, _ = scene_cases
    logic = VMambaXTrainLogic()
    data = logic.exportCases(cases, tmp_path / "cases")
    run_dir = tmp_path / "run"
    # One epoch of 2 steps on 128-px crops, one validation batch: the smallest real run.
    tiny = ["--batch-size", "2", "--num-workers", "0", "--limit-train-batches", "2", "--val-fraction", "0.5",
            "--crop-size", "128", "--limit-val-batches", "1", "--precision", "32",
            "--min-positive-slices", "1"]  # the scene cases have only a few tumour slices
    run = logic.startTraining(data, run_dir, config="vmambax-nano", epochs=1, device="cpu",
                              extraArgs=tiny)
    events = _follow(run, stop_after_start=True)
    assert run.finalEvent and run.finalEvent["event"] == "stopped", run.failureMessage()
    assert events[0]["event"] == "start" and events[0]["total_steps"] == 2
    assert run.finalEvent["step"] == 1 and (run_dir / "checkpoints" / "last.ckpt").is_file()

    resumed = logic.startTraining(None, run_dir, device="cpu", resume=True,
                                  extraArgs=["--num-workers", "0", "--precision", "32"])
    assert not (run_dir / "STOP").exists()  # the old stop request was cleared
    events = _follow(resumed)
    assert resumed.finalEvent and resumed.finalEvent["event"] == "done", resumed.failureMessage()
    assert events[0]["event"] == "start" and events[0]["resumed"] is True  # only the new events
    assert resumed.finalEvent["step"] == 2
    epoch = [e for e in events if e["event"] == "epoch"]
    assert epoch and 0.0 <= epoch[-1]["val_dice"] <= 1.0
    chart = TrainingChart(slicer.vtkMRMLScene())
    assert chart.addEvents(run.events + resumed.events) >= 1
    assert chart.values("dice")[-1] == (2.0, pytest.approx(epoch[-1]["val_dice"]))

    entry = logic.registerModel(resumed, "slicer-test-model")
    assert Path(entry.file) == resumed.modelFile.resolve()
    names = [name for name, _ in VMambaXSegmentLogic.availableModels()]
    assert "slicer-test-model" in names
