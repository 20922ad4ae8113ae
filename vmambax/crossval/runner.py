"""``vmambax train --folds K``: K models on patient-level folds, an honest out-of-fold score per
case next to the SUV thresholds, and the K models together as one ensemble model.

Outputs in RUN_DIR:
  data/                    one volume export shared by every fold
  fold-1/ ... fold-K/      ordinary training runs (model.pt, checkpoints/, logs/)
  crossval.csv             per case: fold, out-of-fold 3-D Dice of the model, of SUV >= 2.5
                           and of 41 % SUVmax, tumour and predicted volume, SUVmax
  crossval.json            the rows and their summary (means, SEs, paired differences, wins)
  crossval.md              the same as a Markdown table with the summary sentences
  model.pt                 the ensemble: the K fold models, probabilities averaged
  crossval-state.json      folds, finished folds and their rows (``--resume`` continues)
  progress.jsonl           every fold's events tagged ``"fold": k``, then ``crossval`` and ``done``

Each held-out case is segmented exactly as ``vmambax segment --all-slices`` would (the fold's
model file through the Segmenter, on the CT's own grid), so the table predicts what a clinic
gets on new cases of its own. With ``--time-budget`` the whole command ends within the budget:
each fold gets an equal share of what is left, after a reserve for its evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vmambax.crossval.folds import assign_folds, fold_cases
from vmambax.crossval.table import summarise, summary_lines, to_csv, to_markdown
from vmambax.errors import ConfigError, InputError
from vmambax.train.config import TrainConfig

STATE = "crossval-state.json"
ENSEMBLE_RESERVE_S = 30.0
EVAL_S_PER_CASE = 6.0  # first guess of one held-out case's evaluation; measured after fold 1


@dataclasses.dataclass
class CrossValResult:
    status: str  # "done" | "stopped"
    run_dir: Path
    model_file: Path | None
    rows: list[dict]
    summary: dict | None
    tables: dict[str, Path]


def _write_json(path: Path, obj) -> None:
    from vmambax.utils import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")


def evaluate_fold(model_file, case_ids, export_root: Path, fold: int, *, device: str = "auto",
                  progress=None) -> list[dict]:
    """Out-of-fold rows for ``case_ids`` (see the module docstring)."""
    import SimpleITK as sitk

    from vmambax.baselines import segment_pet
    from vmambax.data.case import make_case
    from vmambax.data.pclt_export import load_case_folder
    from vmambax.data.volume_export import read_export_info
    from vmambax.infer import Segmenter
    from vmambax.metrics.segmentation import dice_3d

    info = read_export_info(export_root)["cases"]
    seg = Segmenter(model_file, device=device, all_slices=True)
    rows = []
    for cid in case_ids:
        paths = {k: Path(v) for k, v in info[cid]["source"].items()}
        case = load_case_folder(info[cid]["source_id"], paths)
        pct = make_case(case.ct, case.pet_suv)
        gt = sitk.GetArrayFromImage(case.label) > 0
        result = seg.segment(pct.ct, pct.pet_suv)
        pred = sitk.GetArrayFromImage(result.label) > 0
        voxel_ml = float(np.prod(pct.ct.GetSpacing())) / 1000.0
        row = {"case": cid, "fold": fold, "dice_model": float(dice_3d(pred, gt))}
        for key, method in (("dice_suv25", "suv2.5"), ("dice_pct41", "pct41")):
            base = sitk.GetArrayFromImage(segment_pet(pct.pet_suv, method)) > 0
            row[key] = float(dice_3d(base, gt))
        row.update(gt_ml=round(float(gt.sum()) * voxel_ml, 2), model_ml=round(float(pred.sum()) * voxel_ml, 2),
                   suv_max=round(float(sitk.GetArrayViewFromImage(pct.pet_suv)[gt].max()) if gt.any() else 0.0, 3))
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def _fold_config(cfg: TrainConfig, run_dir: Path, k: int, train_c, val_c, root: Path,
                 budget_min: float | None) -> TrainConfig:
    from vmambax.train.run import config_for_resume

    fold_dir = run_dir / f"fold-{k + 1}"
    ops = {"progress_file": str(cfg.progress_path), "stop_file": str(cfg.stop_path),
           "progress_stdout": cfg.progress_stdout, "progress_bar": cfg.progress_bar,
           "num_workers": cfg.num_workers, "accelerator": cfg.accelerator, "devices": cfg.devices,
           "out": str(fold_dir), "data_dir": str(root), "stop_after_steps": cfg.stop_after_steps}
    last = fold_dir / "checkpoints" / "last.ckpt"
    if last.is_file():  # a fold stopped earlier: continue its own schedule
        return config_for_resume(last, **ops)
    return cfg.replace(folds=None, train_cases=list(train_c), val_cases=list(val_c),
                       time_budget=budget_min, resume=None, **ops)


def run_crossval(cfg: TrainConfig, *, resume: bool = False) -> CrossValResult:
    """Cross-validate per ``cfg`` (``cfg.folds`` folds); see the module docstring."""
    from vmambax.train import train
    from vmambax.train.callbacks import ProgressWriter
    from vmambax.train.datamodule import check_data_path, is_pclt_root, prepare_data_root
    from vmambax.data.volume_export import read_export_info

    started = time.monotonic()
    run_dir = Path(cfg.out)
    state_path = run_dir / STATE
    if resume:
        if not state_path.is_file():
            raise InputError(f"nothing to resume: {state_path} does not exist; start the "
                             "cross-validation without --resume.")
        state = json.loads(state_path.read_text(encoding="utf-8"))
        saved = state["config"]
        saved.update({k: getattr(cfg, k) for k in ("progress_stdout", "progress_bar", "num_workers",
                                                   "accelerator", "devices", "stop_after_steps")})
        cfg = TrainConfig(**{**saved, "betas": tuple(saved["betas"])})
    else:
        if state_path.exists() or (run_dir / "fold-1").exists():
            raise ConfigError(f"{run_dir} already holds a cross-validation; continue it with --resume, "
                              "or choose a new --out folder.")
        state = {"config": cfg.to_dict(), "folds": None, "rows": {}, "started": time.time()}
    cfg.validate()
    data = check_data_path(cfg.data)
    if is_pclt_root(data):
        raise ConfigError(f"--folds needs volume case folders (<case>/ct.nii.gz, pet.nii.gz, label); "
                          f"{data} is a PCLT20K-layout folder, which has no whole volumes to score "
                          "out of fold.")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.stop_path.exists() and not resume:
        cfg.stop_path.unlink()
    writer = ProgressWriter(cfg.progress_path, stdout=cfg.progress_stdout)
    try:
        return _run(cfg, state, state_path, writer, started, train, prepare_data_root,
                    read_export_info)
    except Exception as exc:
        writer.emit("error", message=str(exc))
        raise
    finally:
        writer.close()


def _run(cfg, state, state_path, writer, started, train, prepare_data_root, read_export_info):
    run_dir = Path(cfg.out)
    spec = cfg.input_spec()
    root, _ = prepare_data_root(cfg.data, run_dir, spec=spec, data_dir=cfg.data_dir or run_dir / "data")
    cases = sorted(read_export_info(root)["cases"])
    folds = state["folds"] or assign_folds(cases, cfg.folds, cfg.seed)
    state["folds"] = folds
    _write_json(state_path, state)
    deadline = started + cfg.time_budget * 60.0 if cfg.time_budget else None
    writer.emit("crossval_start", folds=len(folds), cases=len(cases), fold_cases=folds,
                time_budget=cfg.time_budget, out=str(run_dir))
    eval_per_case = EVAL_S_PER_CASE
    models = []
    for k in range(len(folds)):
        train_c, val_c, test_c = fold_cases(folds, k, cfg.val_fraction, cfg.seed)
        fold_dir = run_dir / f"fold-{k + 1}"
        if str(k + 1) in state["rows"]:
            models.append(fold_dir / "model.pt")
            continue
        if cfg.stop_path.exists():
            return _stopped(writer, run_dir, state, f"stop file {cfg.stop_path}")
        budget_min = None
        if deadline is not None:
            left = len(folds) - k
            reserve = ENSEMBLE_RESERVE_S + sum(len(f) for f in folds[k:]) * eval_per_case
            share = (deadline - time.monotonic() - reserve) / left
            if share < 60:
                raise ConfigError(f"the time budget has {share / 60:.1f} min left for fold {k + 1} of "
                                  f"{len(folds)}; give a longer --time-budget or fewer --folds.")
            budget_min = share / 60.0
        print(f"vmambax train: fold {k + 1} of {len(folds)}: {len(train_c)} training, {len(val_c)} "
              f"validation and {len(test_c)} held-out cases"
              + (f", {budget_min:.1f} min" if budget_min else ""), file=sys.stderr)
        fold_cfg = _fold_config(cfg, run_dir, k, train_c, val_c, root, budget_min)
        result = train(fold_cfg, progress_tags={"fold": k + 1})
        if result.status != "done":
            return _stopped(writer, run_dir, state, f"fold {k + 1} was stopped")
        t0 = time.monotonic()
        rows = evaluate_fold(result.model_file, test_c, root, k + 1, device=_device(cfg),
                             progress=lambda r: writer.emit("crossval_case", **r))
        eval_per_case = (time.monotonic() - t0) / max(len(test_c), 1)
        state["rows"][str(k + 1)] = rows
        _write_json(state_path, state)
        models.append(result.model_file)
        writer.emit("fold", fold=k + 1, cases=test_c, mean_dice=float(np.mean([r["dice_model"] for r in rows])),
                    model_file=str(result.model_file))
    rows = [r for k in range(len(folds)) for r in state["rows"][str(k + 1)]]
    summary = summarise(rows)
    tables = _write_tables(run_dir, rows, summary)
    model_file = _write_ensemble(run_dir / "model.pt", models, summary, cfg)
    for line in summary_lines(summary):
        print(line, file=sys.stderr)
    writer.emit("crossval", table=str(tables["md"]), csv=str(tables["csv"]), summary=summary,
                rows=rows)
    writer.emit("done", model_file=str(model_file), folds=len(folds), reason=None,
                best_val_dice=summary["dice_model"]["mean"])
    return CrossValResult("done", run_dir, model_file, rows, summary, tables)


def _device(cfg) -> str:
    return "cuda" if cfg.accelerator in ("gpu", "cuda") else ("cpu" if cfg.accelerator == "cpu" else "auto")


def _stopped(writer, run_dir, state, reason) -> CrossValResult:
    writer.emit("stopped", reason=reason, model_file=None,
                folds_done=sorted(int(k) for k in state["rows"]))
    return CrossValResult("stopped", run_dir, None, [], None, {})


def _write_tables(run_dir: Path, rows, summary) -> dict[str, Path]:
    from vmambax.utils import atomic_group

    paths = {"csv": run_dir / "crossval.csv", "json": run_dir / "crossval.json",
             "md": run_dir / "crossval.md"}
    with atomic_group(list(paths.values())) as (csv_tmp, json_tmp, md_tmp):
        Path(csv_tmp).write_text(to_csv(rows), encoding="utf-8")
        Path(json_tmp).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1), encoding="utf-8")
        Path(md_tmp).write_text(to_markdown(rows, summary), encoding="utf-8")
    return paths


def _write_ensemble(path: Path, model_files, summary: dict, cfg) -> Path:
    """One model file holding the fold models (averaged probabilities); post-processing as most
    folds chose it on their validation cases."""
    from collections import Counter

    from vmambax.data.input_spec import InputSpec
    from vmambax.model.checkpoint import load_model_file, save_model_file
    from vmambax.model.ensemble import Ensemble

    nets, specs, metas = [], [], []
    for f in model_files:
        net, info = load_model_file(f)
        nets.append(net)
        specs.append(InputSpec.from_dict(info.get("preprocessing")))
        metas.append(info.get("metadata") or {})
    post = Counter(s.postprocess for s in specs).most_common(1)[0][0]
    spec = specs[0].replace(postprocess=post)
    meta: dict[str, Any] = {
        **{k: v for k, v in metas[0].items() if k not in ("data", "best_checkpoint", "best_val_dice",
                                                       "global_step", "epochs_completed")},
        "ensemble_of": [str(Path(f).relative_to(path.parent)) if Path(f).is_relative_to(path.parent)
                        else str(f) for f in model_files],
        "crossval": {"cases": summary["cases"], "dice_model": summary["dice_model"],
                     "dice_suv25": summary["dice_suv25"], "dice_pct41": summary["dice_pct41"]},
        "best_val_dice": summary["dice_model"]["mean"], "validation_metric": "out-of-fold 3-D Dice",
    }
    return save_model_file(path, Ensemble(nets), config_name=cfg.config,
                           preprocessing=spec.to_dict(), metadata=meta)
