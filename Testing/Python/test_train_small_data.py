"""Training on a clinic's own volume cases (issue 20): time budgets that end on time with the last
step validated, cross-validation folds that never share a patient, the ensemble model, --init
from every layout, recipes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vmambax.cli import main
from vmambax.errors import ConfigError
from vmambax.train import TrainConfig, train
from vmambax.train import budget

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("one_cpu_thread")]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-data") / "cases"
    assert main(["phantom", "--out", str(root), "--cases", "4", "--seed", "21", "--size", "128",
                 "--slices", "10", "--no-dicom"]) == 0
    return root


def _events(run_dir: Path, kind: str | None = None) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines()]
    return [e for e in lines if kind is None or e["event"] == kind]


def _cfg(data, out, **kw) -> TrainConfig:
    from vmambax.train.recipes import apply_recipe

    base = dict(data=str(data), out=str(out), num_workers=0, progress_bar=False,
                progress_every_s=0, accelerator="cpu", min_positive_slices=1, batch_size=4,
                val_fraction=0.25)
    base.update(kw)
    return TrainConfig(**apply_recipe("small-data", base))


# ------------------------------------------------------------------------------ time budget
def test_plan_fits_the_budget_with_at_least_ten_validated_rounds():
    m = budget.Measured(step_s=0.5, val_s=3.0, overhead_s=2.0)
    p = budget.plan(45 * 60, m, steps_per_pass=400)
    spent = p.total_steps * m.step_s + p.epochs * (m.val_s + m.overhead_s)
    assert p.epochs >= 10 and p.steps_per_epoch <= 400
    assert 0.9 * 45 * 60 * budget.SAFETY <= spent <= 45 * 60 * budget.SAFETY
    # more steps than one pass per round: more rounds, each one pass at most
    small = budget.plan(45 * 60, m, steps_per_pass=50)
    assert small.steps_per_epoch == 50 and small.epochs > 10
    with pytest.raises(ConfigError, match="too little here"):
        budget.plan(20, m, steps_per_pass=400)


def test_budget_run_ends_on_time_with_its_last_step_validated(cases, tmp_path, monkeypatch):
    """The measured step rate is made 5x too optimistic (a machine that slows down after the
    measurement): the guard ends the run earlier, on time, at a validated round."""
    real = budget.measure

    def optimistic(*a, **k):
        m = real(*a, **k)
        return budget.Measured(m.step_s / 5, m.val_s, m.overhead_s)

    monkeypatch.setattr(budget, "measure", optimistic)
    run = tmp_path / "run"
    minutes = 2.5
    t0 = time.monotonic()
    result = train(_cfg(cases, run, time_budget=minutes))
    elapsed = time.monotonic() - t0
    assert result.status == "done"
    assert elapsed <= minutes * 60 + 10, elapsed  # the guard's job (plus writing model.pt)
    epochs = _events(run, "epoch")
    last = epochs[-1]
    assert last["step"] == result.global_step and last.get("val_dice_3d") is not None
    start = _events(run, "start")[0]
    planned = start["budget"]["total_steps"]
    assert result.global_step < planned  # shortened by the guard...
    assert any("ran slower than measured" in e["message"] for e in _events(run, "warning"))
    # ...and the cosine was shortened with it: the last step ran at (about) the floor
    steps = [e for e in _events(run, "step") if e["step"] == result.global_step]
    assert steps and steps[-1]["lr"] < 0.05 * 1e-3
    info = torch.load(run / "model.pt", weights_only=True)
    assert info["metadata"]["budget"]["total_steps"] == planned
    assert info["preprocessing"]["ct_windows_hu"] == [[-160.0, 240.0]]  # the recipe's window


# ------------------------------------------------------------------------------ folds
def test_folds_never_share_a_patient():
    from vmambax.crossval.folds import assign_folds, fold_cases

    ids = [f"STS-{i:03d}" for i in range(1, 41)]
    folds = assign_folds(ids, 5, seed=42)
    assert sorted(c for f in folds for c in f) == ids and {len(f) for f in folds} == {8}
    assert assign_folds(list(reversed(ids)), 5, seed=42) == folds  # order-free, seeded
    assert assign_folds(ids, 5, seed=1) != folds
    for k in range(5):
        train_c, val_c, test_c = fold_cases(folds, k, 0.1, 42)
        assert set(test_c) == set(folds[k])
        assert not (set(train_c) & set(val_c)) and not (set(train_c) | set(val_c)) & set(test_c)
        assert sorted(train_c + val_c + test_c) == ids
    with pytest.raises(ConfigError, match="folds"):
        assign_folds(ids[:3], 5)


def test_summary_has_the_paired_differences_and_their_standard_errors():
    from vmambax.crossval.table import summarise

    rows = [{"dice_model": m, "dice_suv25": a, "dice_pct41": b} for m, a, b in
            ((0.8, 0.5, 0.6), (0.6, 0.7, 0.4), (0.9, 0.2, 0.5), (0.7, 0.6, 0.7))]
    s = summarise(rows)
    assert s["dice_model"]["mean"] == pytest.approx(0.75)
    diffs = np.array([0.3, -0.1, 0.7, 0.1])
    assert s["model_minus_suv25"]["mean"] == pytest.approx(diffs.mean())
    assert s["model_minus_suv25"]["se"] == pytest.approx(diffs.std(ddof=1) / 2)
    assert s["model_minus_suv25"]["wins"] == 3 and s["model_minus_pct41"]["wins"] == 3


def test_cross_validation_end_to_end_stop_resume_and_ensemble(cases, tmp_path):
    from vmambax.crossval import run_crossval
    from vmambax.model.checkpoint import load_model_file
    from vmambax.model.ensemble import Ensemble

    run = tmp_path / "cv"
    cfg = _cfg(cases, run, folds=2, epochs=2, limit_train_batches=2, batch_size=2,
               negatives_per_positive=4.0)
    # Stop after fold 1's first step: the cross-validation stops with it and resumes later.
    first = run_crossval(cfg.replace(stop_after_steps=1))
    assert first.status == "stopped" and not (run / "crossval.csv").exists()
    assert main(["train", "--out", str(run), "--resume", "--no-progress-bar", "--num-workers", "0"]) == 0
    table = (run / "crossval.csv").read_text().splitlines()
    assert table[0].startswith("case,fold,dice_model,dice_suv25,dice_pct41")
    rows = json.loads((run / "crossval.json").read_text())["rows"]
    state = json.loads((run / "crossval-state.json").read_text())
    all_cases = sorted(c for f in state["folds"] for c in f)
    assert sorted(r["case"] for r in rows) == all_cases  # every case scored once, out of fold
    for k, fold in enumerate(state["folds"], 1):
        meta = load_model_file(run / f"fold-{k}" / "model.pt")[1]["metadata"]
        trained_on = set(meta["data"]["train_cases"]) | set(meta["data"]["val_cases"])
        assert not trained_on & set(fold), k  # its held-out cases were never seen
        assert {r["case"] for r in rows if r["fold"] == k} == set(fold)
    ensemble, info = load_model_file(run / "model.pt")
    assert isinstance(ensemble, Ensemble) and info["members"] == 2
    assert "crossval" in info["metadata"]
    assert "Out-of-fold 3-D Dice over 4 cases" in (run / "crossval.md").read_text()
    ev = _events(run)
    assert ev[-1]["event"] == "done" and ev[-2]["event"] == "crossval"
    assert {e.get("fold") for e in ev if e["event"] == "step"} == {1, 2}  # tagged fold events
    # the ensemble segments like any model file
    assert main(["segment", "--ct", str(cases / "phantom-0021" / "ct.nii.gz"), "--pet",
                 str(cases / "phantom-0021" / "pet.nii.gz"), "-o", str(tmp_path / "l.nii.gz"),
                 "--model", str(run / "model.pt"), "--all-slices"]) == 0


# ------------------------------------------------------------------------------ --init
def _randomised(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=g))
    return model


def test_init_from_every_layout_and_a_clear_error_on_a_mismatch(tmp_path):
    import argparse

    from vmambax.data.input_spec import InputSpec
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file
    from vmambax.model.ensemble import Ensemble
    from vmambax.model.reference_keys import to_reference_state_dict
    from vmambax.train.init import init_from

    src = _randomised(build_model("vmambax-nano"), 3)
    want = src.state_dict()
    spec = InputSpec(image_size=128).to_dict()
    files = {"model file": save_model_file(tmp_path / "m.pt", src, config_name="vmambax-nano",
                                           preprocessing=spec, metadata={}),
             "ensemble": save_model_file(tmp_path / "e.pt", Ensemble([src, _randomised(build_model("vmambax-nano"), 4)]),
                                         config_name="vmambax-nano", preprocessing=spec, metadata={})}
    ref = to_reference_state_dict(src.state_dict())
    for name, obj in (("reference plain", ref),
                      ("reference lightning", {"state_dict": {f"model.{k}": v for k, v in ref.items()},
                                               "hyper_parameters": {"args": argparse.Namespace(lr=1)}}),
                      ("reference model+args", {"model": ref, "args": argparse.Namespace(lr=1)}),
                      ("training checkpoint", {"state_dict": {f"model.{k}": v for k, v in want.items()},
                                               "hyper_parameters": {"train_config": {}}})):
        files[name] = tmp_path / f"{name.replace(' ', '_')}.ckpt"
        torch.save(obj, files[name])
    for name, path in files.items():
        fresh = build_model("vmambax-nano")
        notes = init_from(fresh, path)
        got = fresh.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), name
        assert ("first member" in " ".join(notes)) == (name == "ensemble"), name
    wider = build_model("vmambax-nano", dims=[32, 64, 128, 256])
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ConfigError, match=r"cannot start from .*layer\(s\) differ in shape \("):
        init_from(wider, files["model file"])
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # untouched
    with pytest.raises(ConfigError, match="no such model file"):
        init_from(wider, tmp_path / "missing.pt")


def test_cli_init_takes_a_registry_name_and_recipes_fill_only_what_is_not_given(cases, tmp_path):
    import argparse

    from vmambax.cli.train import config_from_args, register
    from vmambax.infer.registry import resolve_model

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", str(cases), "--out", str(tmp_path / "r"),
                              "--init", "default", "--lr", "5e-4"])
    cfg = config_from_args(args)
    assert cfg.init == str(resolve_model("default")[0])
    assert cfg.recipe == "small-data" and cfg.lr == 5e-4 and cfg.image_size == 128
    assert cfg.ct_windows == [[-160.0, 240.0]]
    paper = config_from_args(parser.parse_args(["train", "--data", str(cases), "--out", "x",
                                                "--recipe", "paper"]))
    assert paper.recipe == "paper" and paper.config == "vmambax" and paper.ct_windows is None
