"""VMambaX Train: time budgets and cross-validation from the panel (issue 20, items 3 and 4).

The Logic passes ``--time-budget`` / ``--folds`` and refuses bad values before anything runs;
resume keeps the run's own; progress events of a cross-validation name the fold; the table of
``RUN/crossval.json`` (written by the real ``vmambax.crossval`` code) is what the panel shows;
the ensemble model.pt registers like any model. Real MRML (slicer-core), fake Qt widgets.
"""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import slicer  # noqa: F401  (slicer-core)

from vmambax.errors import ConfigError, InputError
from VMambaXCommon import install
from VMambaXTrainLib import logic as train_logic
from VMambaXTrainLib.chart import TrainingChart
from VMambaXTrainLib.crossval import crossvalTable, readCrossvalTable
from VMambaXTrainLib.logic import TrainingRun, VMambaXTrainLogic
from VMambaXTrainLib.progress import describeEvent

from test_slicer_widgets import FakeRun, _train_panel, _widget, gui  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _case_folders(root: Path, n: int) -> Path:
    """``n`` volume case folders (the files only need to exist for the count)."""
    for i in range(n):
        case = root / f"case-{i}"
        case.mkdir(parents=True)
        for name in ("ct.nii.gz", "pet.nii.gz", "label.nii.gz"):
            (case / name).write_bytes(b"")
    return root


@pytest.fixture
def launches(monkeypatch):
    """Record every process the Logic would launch (each a real, finished ``python -c pass``)."""
    started = []

    def launch(command, stdout, env=None, cwd=None):
        started.append(list(command))
        process = subprocess.Popen([sys.executable, "-c", "pass"])
        process.wait()
        return process

    monkeypatch.setattr(train_logic, "launch", launch)
    return started


# ------------------------------------------------------------------------ the command line
def test_train_command_passes_the_time_budget_and_the_folds():
    command = VMambaXTrainLogic.trainCommand("/d", "/r", config="vmambax-nano", epochs=50,
                                             timeBudget=45, folds=5)
    assert command[command.index("--time-budget") + 1] == "45"
    assert command[command.index("--folds") + 1] == "5"
    assert "--epochs" not in command  # the budget fits the schedule (and so the epochs)
    plain = VMambaXTrainLogic.trainCommand("/d", "/r", epochs=50)
    assert "--time-budget" not in plain and "--folds" not in plain
    assert plain[plain.index("--epochs") + 1] == "50"
    assert VMambaXTrainLogic.trainCommand("/d", "/r", timeBudget=2.5)[-1] == "2.5"
    resume = VMambaXTrainLogic.trainCommand("/d", "/r", resume=True, timeBudget=45, folds=5)
    assert "--resume" in resume and "--time-budget" not in resume and "--folds" not in resume


@pytest.mark.parametrize("budget, folds, cases, error, match", [
    (0.5, None, 4, ConfigError, "at least 1 minute"),
    (float("nan"), None, 4, ConfigError, "at least 1 minute"),
    (-5, None, 4, ConfigError, "at least 1 minute"),
    ("soon", None, 4, ConfigError, "not a number of minutes"),
    (None, 1, 4, ConfigError, "2 to 10 folds"),
    (None, 11, 20, ConfigError, "2 to 10 folds"),
    (None, 2.5, 4, ConfigError, "whole number"),
    (None, True, 4, ConfigError, "whole number"),
    (45, 5, 3, InputError, "needs at least 5 cases.*there are 3"),
])
def test_bad_budgets_and_folds_are_refused_before_anything_starts(
        tmp_path, launches, budget, folds, cases, error, match):
    data = _case_folders(tmp_path / "cases", cases)
    with pytest.raises(error, match=match):
        VMambaXTrainLogic().startTraining(data, tmp_path / "run", timeBudget=budget, folds=folds)
    assert launches == [] and not (tmp_path / "run").exists()  # nothing launched, no lock


def test_folds_on_a_pclt_folder_are_refused(tmp_path, launches):
    (tmp_path / "pclt").mkdir()
    (tmp_path / "pclt" / "train.txt").write_text("P1\n")
    with pytest.raises(ConfigError, match="PCLT20K-layout"):
        VMambaXTrainLogic().startTraining(tmp_path / "pclt", tmp_path / "run", folds=2)
    assert launches == []


def test_good_values_reach_the_trainer(tmp_path, launches):
    data = _case_folders(tmp_path / "cases", 4)
    run = VMambaXTrainLogic().startTraining(data, tmp_path / "run", config="vmambax-nano",
                                            timeBudget=30, folds=4)
    run.wait()
    command = launches[0]
    assert command[command.index("--time-budget") + 1] == "30"
    assert command[command.index("--folds") + 1] == "4"
    assert command[command.index("--data") + 1] == str(data)


def test_a_cross_validation_is_resumed_with_its_own_budget_and_folds(tmp_path, launches):
    logic = VMambaXTrainLogic()
    run_dir = tmp_path / "cv"
    run_dir.mkdir()
    assert not logic.canResume(run_dir)
    (run_dir / "crossval-state.json").write_text("{}")  # a stopped cross-validation: no last.ckpt
    assert logic.canResume(run_dir) and logic.isCrossValidation(run_dir)
    data = _case_folders(tmp_path / "cases", 4)
    with pytest.raises(ConfigError, match="press Resume"):
        logic.startTraining(data, run_dir, timeBudget=30, folds=2)
    assert launches == []
    run = logic.startTraining(None, run_dir, resume=True, timeBudget=30, folds=3)
    run.wait()
    assert "--resume" in launches[0]
    assert "--time-budget" not in launches[0] and "--folds" not in launches[0]


def test_a_folds_own_end_is_not_the_end_of_the_run(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    run = TrainingRun(process, tmp_path, None)
    with open(tmp_path / "progress.jsonl", "w") as fh:
        for event in ({"event": "crossval_start", "folds": 2, "cases": 4},
                      {"event": "done", "fold": 1, "model_file": str(tmp_path / "fold-1" / "model.pt")}):
            fh.write(json.dumps(event) + "\n")
    assert len(run.poll()) == 2 and run.finalEvent is None
    with open(tmp_path / "progress.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "done", "model_file": str(tmp_path / "model.pt")}) + "\n")
    run.poll()
    assert run.finalEvent["event"] == "done" and run.modelFile == tmp_path / "model.pt"


# ------------------------------------------------------------------------------ progress
def test_progress_of_a_cross_validation_names_the_fold():
    start = describeEvent({"event": "crossval_start", "folds": 5, "cases": 10, "time_budget": 240})
    assert start.folds == 5 and start.percent == 0
    assert start.status.startswith("Cross-validation: 5 folds over 10 cases, 240 min in all")
    step = describeEvent({"event": "step", "fold": 2, "epoch": 0, "step": 30, "total_steps": 60,
                          "loss": 0.25, "eta_s": 120}, start.folds)
    assert step.status == ("Fold 2 of 5: epoch 1, step 30/60, loss 0.2500, about 2 min left "
                           "in this fold")
    assert step.percent == 30 and step.folds == 5  # (1 fold done + half of fold 2) / 5
    epoch = describeEvent({"event": "epoch", "fold": 2, "epoch": 0, "step": 60, "total_steps": 60,
                           "val_dice": 0.61}, 5)
    assert epoch.status.startswith("Fold 2 of 5: epoch 1") and "validation Dice 0.610" in epoch.status
    assert epoch.percent == 40
    trained = describeEvent({"event": "done", "fold": 2, "model_file": "fold-2/model.pt"}, 5)
    assert trained.status == "Fold 2 of 5: trained; scoring its held-out cases…"
    case = describeEvent({"event": "crossval_case", "fold": 2, "case": "P07", "dice_model": 0.7,
                          "dice_suv25": 0.41, "dice_pct41": float("nan")}, 5)
    assert case.status == "Fold 2 of 5: case P07: Dice 0.700 (SUV >= 2.5: 0.410, 41 % SUVmax: n/a)"
    assert case.percent is None  # the bar stays where it was
    fold = describeEvent({"event": "fold", "fold": 2, "mean_dice": 0.7123}, 5)
    assert fold.status == "Fold 2 of 5: done, mean out-of-fold Dice 0.712" and fold.percent == 40
    end = describeEvent({"event": "crossval", "summary": {"cases": 10, "dice_model": {"mean": 0.68}}}, 5)
    assert end.status == "Cross-validation done: out-of-fold Dice 0.680 over 10 cases." and end.percent == 100
    # The command's own end is the panel's to report; a fold's stop is followed by the command's.
    assert describeEvent({"event": "done", "model_file": "model.pt"}, 5) == (None, None, 5)
    assert describeEvent({"event": "stopped", "fold": 3}, 5).status is None


def test_progress_of_a_plain_run_is_as_before():
    update = describeEvent({"event": "step", "epoch": 0, "step": 1, "total_steps": 4, "loss": 0.5})
    assert update.status == "Training: epoch 1, step 1/4, loss 0.5000" and update.percent == 25
    assert update.folds is None
    assert describeEvent({"event": "warning", "message": " slow "}).status == "Warning: slow"
    assert describeEvent({"event": "done"}) == (None, None, None)


def test_the_chart_starts_again_for_each_fold():
    chart = TrainingChart(slicer.vtkMRMLScene())
    chart.addEvents([{"event": "crossval_start", "folds": 2},
                     {"event": "start", "fold": 1, "step": 0},
                     {"event": "step", "fold": 1, "step": 5, "loss": 0.9},
                     {"event": "epoch", "fold": 1, "step": 5, "val_dice": 0.3}])
    assert chart.values("loss") == [(5.0, 0.9)] and chart.chartNode.GetTitle().startswith("Fold 1 of 2")
    chart.addEvents([{"event": "crossval_case", "fold": 1, "case": "a", "dice_model": 0.5},
                     {"event": "start", "fold": 2, "step": 0},
                     {"event": "step", "fold": 2, "step": 2, "loss": 0.7}])
    assert chart.values("loss") == [(2.0, 0.7)] and chart.values("dice") == []
    assert chart.chartNode.GetTitle().startswith("Fold 2 of 2")
    chart.addEvents([{"event": "step", "fold": 2, "step": 4, "loss": 0.6}])  # same fold: appended
    assert chart.values("loss") == [(2.0, 0.7), (4.0, 0.6)]


# --------------------------------------------------------------------------------- table
ROWS = [{"case": c, "fold": f, "dice_model": m, "dice_suv25": a, "dice_pct41": b, "gt_ml": v,
         "model_ml": v, "suv_max": 9.0}
        for c, f, m, a, b, v in (("P1", 1, 0.8, 0.5, 0.6, 12.34), ("P2", 2, 0.6, 0.7, 0.4, 3.0),
                                 ("P3", 1, 0.9, 0.2, 0.5, 40.0), ("P4", 2, 0.7, 0.6, 0.7, 7.5))]


def test_the_crossval_table_is_read_from_the_runs_crossval_json(tmp_path):
    from vmambax.crossval.runner import _write_tables
    from vmambax.crossval.table import summarise, summary_lines

    summary = summarise(ROWS)
    _write_tables(tmp_path, ROWS, summary)  # crossval.json/.csv/.md as `vmambax train --folds`
    table = readCrossvalTable(tmp_path)
    assert table.cases == 4 and len(table.headers) == 6 and table.headers[0] == "Case"
    assert table.rows[0] == ("P1", "1", "0.800", "0.500", "0.600", "12.3")
    assert len(table.rows) == 5 and table.rows[-1][0] == "mean (SE)"
    se = summary["dice_model"]["se"]
    assert table.rows[-1][2] == f"0.750 ({se:.3f})"
    # The sentences carry the numbers of the CLI's summary (crossval.md).
    cli = summary_lines(summary)
    assert table.summary[0] == cli[0]
    assert "+0.250" in table.summary[1] and "3 of 4 cases" in table.summary[1]
    assert "+0.200" in table.summary[2] and "3 of 4 cases" in table.summary[2]
    assert "+0.250" in cli[1] and "3 of 4" in cli[1]
    # The crossval event (same rows and summary) gives the same table.
    assert crossvalTable({"rows": ROWS, "summary": summary}).rows == table.rows
    assert crossvalTable({"rows": ROWS}).summary == table.summary  # summary recomputed


def test_a_missing_or_damaged_crossval_table_says_why(tmp_path):
    with pytest.raises(InputError, match="has not finished.*Resume"):
        readCrossvalTable(tmp_path)
    path = tmp_path / "crossval.json"
    path.write_text('{"rows": [')
    with pytest.raises(InputError, match="cannot be read"):
        readCrossvalTable(tmp_path)
    for bad in ({"rows": []}, {"rows": [{"case": "P1", "fold": 1}]}, ["not", "a", "table"]):
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match="not a cross-validation table"):
            readCrossvalTable(tmp_path)
    path.write_text(json.dumps({"rows": ROWS, "summary": {"dice_model": {"mean": 0.7}}}))
    with pytest.raises(InputError, match="damaged summary"):
        readCrossvalTable(tmp_path)


def test_the_ensemble_model_file_registers(tmp_path, monkeypatch):
    from vmambax.data.input_spec import InputSpec
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file
    from vmambax.model.ensemble import Ensemble
    from VMambaXSegmentLib.logic import VMambaXSegmentLogic

    monkeypatch.setenv("VMAMBAX_HOME", str(tmp_path / "home"))
    model_file = save_model_file(tmp_path / "cv" / "model.pt",
                                 Ensemble([build_model("vmambax-nano"), build_model("vmambax-nano")]),
                                 config_name="vmambax-nano",
                                 preprocessing=InputSpec(image_size=128).to_dict(),
                                 metadata={"crossval": {"cases": 4}})
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    run = TrainingRun(process, tmp_path / "cv", None)
    run.finalEvent = {"event": "done", "model_file": str(model_file), "folds": 2}
    entry = VMambaXTrainLogic().registerModel(run, "cv-ensemble")
    assert Path(entry.file) == Path(model_file).resolve() and entry.config == "vmambax-nano"
    assert "cv-ensemble" in [name for name, _ in VMambaXSegmentLogic.availableModels()]


# --------------------------------------------------------------------------------- panel
def test_budget_and_folds_live_in_the_parameter_node(gui):  # noqa: F811
    train = _widget(gui, gui.train, "VMambaXTrainWidget")
    p = train._parameterNode
    assert p.timeBudget == 45 and train.ui.timeBudgetSpinBox.value == 45  # the default
    assert p.folds == 0 and train.ui.foldsComboBox.currentData == 0
    assert train.ui.foldsComboBox.labels() == ["Off"] + [str(k) for k in range(2, 11)]
    assert not train.ui.epochsSpinBox.enabled  # a time limit fits the epochs
    train.ui.timeBudgetSpinBox.value = 0  # "until the epochs end"
    assert p.timeBudget == 0 and train.ui.epochsSpinBox.enabled
    train.ui.timeBudgetSpinBox.value = 90
    combo = train.ui.foldsComboBox
    combo.setCurrentIndex(combo.findData(5))
    assert p.folds == 5
    train.exit()  # the GUI lets go of the node; the scene keeps it
    combo.setCurrentIndex(combo.findData(0))
    train.ui.timeBudgetSpinBox.value = 10
    assert p.folds == 5 and p.timeBudget == 90
    train.enter()
    assert combo.currentData == 5 and train.ui.timeBudgetSpinBox.value == 90
    p.folds = 3  # e.g. a scene loaded with another value
    assert combo.currentData == 3


def test_the_panel_refuses_more_folds_than_cases_before_exporting(gui, monkeypatch, tmp_path):  # noqa: F811
    from VMambaXCommon.testing import add_phantom_case

    train, record = _train_panel(gui, monkeypatch, tmp_path)
    train.ui.sceneCasesRadioButton.checked, train.ui.folderCasesRadioButton.checked = True, False
    p = train._parameterNode
    cases = [add_phantom_case(gui.scene, seed=s, size=32, n_slices=4, prefix=f"C{s} ",
                              segmentation=True) for s in (1, 2)]
    p.caseCts, p.casePets = [c[0] for c in cases], [c[1] for c in cases]
    p.caseSegmentations = [c[3] for c in cases]
    p.folds = 3
    exports = []
    monkeypatch.setattr(train.logic, "exportCases", lambda *a, **k: exports.append(a))
    train.onStart(resume=False)
    assert record.runs == [] and exports == []
    assert len(gui.dialogs.errors) == 1 and "needs at least 3 cases" in str(gui.dialogs.errors[0])


def test_a_cross_validated_run_shows_its_folds_table_and_registers_the_ensemble(
        gui, monkeypatch, tmp_path):  # noqa: F811
    from vmambax.crossval.runner import _write_tables
    from vmambax.crossval.table import summarise

    train, record = _train_panel(gui, monkeypatch, tmp_path)
    train._parameterNode.folds = 2
    train._parameterNode.modelName = "cv-model"
    train.onStart(resume=False)
    assert gui.dialogs.errors == [] and len(record.runs) == 1
    run = record.runs[0]
    run.runDir = tmp_path / "run"
    run.events = [{"event": "crossval_start", "folds": 2, "cases": 4},
                  {"event": "start", "fold": 1, "epoch": 0, "step": 0, "total_steps": 10},
                  {"event": "step", "fold": 1, "epoch": 0, "step": 5, "total_steps": 10, "loss": 0.4}]
    train._onTimer()
    assert train.ui.statusLabel.text.startswith("Fold 1 of 2: epoch 1, step 5/10")
    assert train.ui.progressBar.value == 25
    assert train.ui.crossvalTableWidget.cells() == []  # nothing until the end
    summary = summarise(ROWS)
    _write_tables(run.runDir, ROWS, summary)
    run.events = [{"event": "fold", "fold": 2, "mean_dice": 0.65},
                  {"event": "crossval", "summary": summary, "rows": ROWS},
                  {"event": "done", "model_file": str(run.runDir / "model.pt")}]
    run.running, run.finalEvent = False, run.events[-1]
    train._onTimer()
    assert record.registered == ["cv-model"] and gui.dialogs.errors == []
    table = train.ui.crossvalTableWidget
    assert table.headers[:3] == ["Case", "Fold", "vMambaX Dice"]
    assert table.cells()[0] == ["P1", "1", "0.800", "0.500", "0.600", "12.3"]
    assert table.cells()[-1][0] == "mean (SE)" and len(table.cells()) == 5
    assert train.ui.crossvalSummaryLabel.text.startswith("Out-of-fold 3-D Dice over 4 cases")
    assert train.ui.crossvalCollapsibleButton.collapsed is False
    assert "Done. Model 'cv-model' is registered" in train.ui.statusLabel.text
    train.onStart(resume=False)  # the next run does not show this run's table
    assert train.ui.crossvalTableWidget.cells() == []
    assert not train.ui.crossvalSummaryLabel.text.startswith("Out-of-fold")
    record.runs[1].running = False  # (FakeRun cannot be stopped at the end of the test)


# ---------------------------------------------------------------------- a real tiny run
@pytest.mark.timeout(600)
def test_a_tiny_cross_validation_from_the_logic_stops_resumes_and_registers(tmp_path, monkeypatch):
    """2 folds on 4 phantom cases, one step each: stopped in fold 1, resumed (the run folder has
    no checkpoints/last.ckpt of its own), finished; the panel's texts, table and registration."""
    from vmambax.cli import main
    from VMambaXSegmentLib.logic import VMambaXSegmentLogic

    from test_slicer_train import _follow

    monkeypatch.setenv("VMAMBAX_HOME", str(tmp_path / "home"))
    cases = tmp_path / "cases"
    assert main(["phantom", "--out", str(cases), "--cases", "4", "--seed", "21", "--size", "128",
                 "--slices", "10", "--no-dicom"]) == 0
    logic, run_dir = VMambaXTrainLogic(), tmp_path / "cv"
    tiny = ["--batch-size", "2", "--num-workers", "0", "--limit-train-batches", "1",
            "--limit-val-batches", "1", "--precision", "32", "--min-positive-slices", "1",
            "--crop-size", "128"]
    run = logic.startTraining(cases, run_dir, config="vmambax-nano", epochs=1, device="cpu",
                              folds=2, extraArgs=tiny)
    events = _follow(run, stop_after_start=True)
    assert run.finalEvent and run.finalEvent["event"] == "stopped", run.failureMessage()
    assert not (run_dir / "checkpoints" / "last.ckpt").exists() and logic.canResume(run_dir)
    with pytest.raises(InputError, match="has not finished"):
        readCrossvalTable(run_dir)

    resumed = logic.startTraining(None, run_dir, device="cpu", resume=True, timeBudget=30,
                                  folds=3, extraArgs=["--num-workers", "0"])
    events = _follow(resumed)
    assert resumed.finalEvent and resumed.finalEvent["event"] == "done", resumed.failureMessage()
    assert resumed.modelFile == run_dir / "model.pt"  # the ensemble, not a fold's model
    folds, statuses = None, []
    for event in events:
        update = describeEvent(event, folds)
        folds = update.folds
        statuses.append(update.status)
    assert folds == 2  # the resumed run's own folds, not the 3 passed
    assert any(s and s.startswith("Fold 2 of 2: epoch 1") for s in statuses)
    assert any(s and s.startswith("Fold 1 of 2: case ") for s in statuses)
    assert statuses[-2].startswith("Cross-validation done: out-of-fold Dice")
    table = readCrossvalTable(run_dir)
    assert table.cases == 4 and len(table.rows) == 5
    assert sorted(r[0] for r in table.rows[:-1]) == sorted(p.name for p in cases.iterdir())
    entry = logic.registerModel(resumed, "cv-tiny")
    assert Path(entry.file) == (run_dir / "model.pt").resolve()
    assert "cv-tiny" in [name for name, _ in VMambaXSegmentLogic.availableModels()]
