#!/usr/bin/env python
"""The peer baseline: a 2-D nnU-Net (nnunetv2, PyPI) trained on VMambaX's own cross-validation
folds with the same time per fold, scored out of fold exactly like ``vmambax train --folds``.

    bash scripts/install_nnunet.sh        # once: .venv-nnunet with nnunetv2==2.8.1 (CPU torch kept)
    .venv-nnunet/bin/python scripts/nnunet_baseline.py --data CASES --out RUN --folds 5 \
        --fold-indices 1 --minutes-per-fold 20

CASES holds volume case folders (<case>/ct.nii.gz, pet.nii.gz, label.nii.gz), as for
``vmambax train --data``. Per fold K (1-based, as fold-K of ``vmambax train --folds``):

1. folds: ``vmambax.crossval.folds.assign_folds`` on the same case IDs and seed as vmambax
   (``TrainConfig.seed``, 42), and ``fold_cases`` for its training / validation / held-out cases,
   so the nnU-Net and vMambaX rows are paired case by case;
2. conversion: each case's PET resampled onto its CT (``vmambax.data.case.make_case``: linear, as
   vmambax's training and inference do), written as an nnU-Net raw dataset of its own per fold
   (channel 0 "CT" in HU, channel 1 "PET" in SUV, the label on the CT grid); only the fold's
   training and validation cases are in imagesTr, so nnU-Net's fingerprint (which uses the labels
   for the CT normalisation) never sees a held-out case; the held-out cases go to imagesTs;
3. ``nnUNetv2_plan_and_preprocess -c 2d`` (the 2-D configuration), then splits_final.json set to
   the fold's own training / validation cases;
4. training: ``scripts/nnunet_ext/nnunet_time_budget.py`` (what ``nnUNetv2_train DATASET 2d 0 -tr
   nnUNetTrainerTimeBudget -device cpu`` does: stock nnU-Net that stops at ``--minutes-per-fold``);
5. the held-out cases predicted with nnU-Net's predictor (checkpoint_final, nnU-Net's default
   mirroring unless --no-mirroring), and scored on the CT grid: the 3-D Dice per case next to the
   SUV >= 2.5 and 41 % SUVmax baselines (``vmambax.baselines``), as ``vmambax.crossval`` does.

Outputs in RUN: nnunet.csv, nnunet.md, nnunet.json (rows, summary, what nnU-Net did per fold),
fold-K/ (rows.json, predictions), nnUNet_raw/, nnUNet_preprocessed/, nnUNet_results/. A fold with
fold-K/rows.json is not run again. nnunetv2 is a benchmark tool only, never a vmambax dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXT_TRAINER_DIR = HERE / "nnunet_ext"
TRAINER = "nnUNetTrainerTimeBudget"
NNUNET_VERSION = "2.8.1"
INSTALL_HINT = ("nnunetv2 is not installed in this Python. The nnU-Net benchmark has its own "
                "environment: run `bash scripts/install_nnunet.sh` and then "
                "`.venv-nnunet/bin/python scripts/nnunet_baseline.py ...`.")


class MissingNnunet(SystemExit):
    pass


def require_nnunet() -> str:
    """nnunetv2's version, or exit with a message naming scripts/install_nnunet.sh."""
    try:
        import importlib.metadata as md

        import nnunetv2  # noqa: F401
        return md.version("nnunetv2")
    except ImportError:
        raise MissingNnunet(f"nnunet_baseline: {INSTALL_HINT}") from None


# --- folds and conversion (no nnunetv2 needed) -------------------------------------------------

def find_cases(data) -> dict[str, tuple[str, dict[str, Path]]]:
    """{vmambax case ID: (folder's case ID, paths)}. The IDs are those of vmambax's volume export
    (``sanitize_case_id``), which its folds are drawn from."""
    from vmambax.data.pclt_export import find_case_folders, sanitize_case_id

    return {sanitize_case_id(cid): (cid, paths) for cid, paths in find_case_folders(data)}


def project_folds(case_ids, k: int, seed: int, val_fraction: float):
    """[(train, val, test)] for folds 1..k, as ``vmambax train --folds k`` draws them."""
    from vmambax.crossval.folds import assign_folds, fold_cases

    folds = assign_folds(sorted(case_ids), k, seed)
    return [fold_cases(folds, i, val_fraction, seed) for i in range(k)]


def load_case(source_id: str, paths: dict[str, Path]):
    """(case with the PET on the CT grid, binary label on the CT grid), as vmambax reads a case."""
    from vmambax.data.case import make_case
    from vmambax.data.io import as_binary_label
    from vmambax.data.pclt_export import load_case_folder

    vc = load_case_folder(source_id, paths)
    pct = make_case(vc.ct, vc.pet_suv)
    return pct, as_binary_label(vc.label, vc.ct, f"The label of case {source_id}")


def convert_cases(cases: dict, out_dir: Path) -> dict[str, dict[str, Path]]:
    """Every case once as nnU-Net files in ``out_dir``: <id>_0000 (CT, HU), <id>_0001 (PET, SUV on
    the CT grid), <id> (label, uint8 0/1); all on the CT grid. Returns {id: {"ct", "pet", "label"}}."""
    import SimpleITK as sitk

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for cid, (source_id, paths) in sorted(cases.items()):
        files = {"ct": out_dir / f"{cid}_0000.nii.gz", "pet": out_dir / f"{cid}_0001.nii.gz",
                 "label": out_dir / f"{cid}.nii.gz"}
        if not all(p.is_file() for p in files.values()):
            pct, label = load_case(source_id, paths)
            label = sitk.Cast(label, sitk.sitkUInt8)
            label.CopyInformation(pct.ct)
            pet = sitk.Cast(pct.pet_suv, sitk.sitkFloat32)
            pet.CopyInformation(pct.ct)
            for key, img in (("pet", pet), ("label", label), ("ct", pct.ct)):  # ct last: the marker
                tmp = files[key].with_name("tmp-" + files[key].name)
                sitk.WriteImage(img, str(tmp), useCompression=True)
                tmp.replace(files[key])
        written[cid] = files
    return written


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_fold_dataset(raw_root: Path, dataset_id: int, fold: int, files: dict, train, val, test) -> Path:
    """The fold's own nnU-Net raw dataset (training + validation cases in imagesTr, held-out cases
    in imagesTs) and the splits_final.json to put next to its preprocessed data."""
    name = f"Dataset{dataset_id:03d}_VMambaXFold{fold}"
    root = raw_root / name
    if root.exists():
        shutil.rmtree(root)
    for cid in list(train) + list(val):
        _place(files[cid]["ct"], root / "imagesTr" / files[cid]["ct"].name)
        _place(files[cid]["pet"], root / "imagesTr" / files[cid]["pet"].name)
        _place(files[cid]["label"], root / "labelsTr" / files[cid]["label"].name)
    for cid in test:
        _place(files[cid]["ct"], root / "imagesTs" / files[cid]["ct"].name)
        _place(files[cid]["pet"], root / "imagesTs" / files[cid]["pet"].name)
    dataset = {"name": name, "description": f"VMambaX cross-validation fold {fold}: PET/CT, PET "
               "resampled onto the CT grid (vmambax.data.case.make_case)",
               "channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "tumour": 1},
               "numTraining": len(train) + len(val), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1), encoding="utf-8")
    return root


def splits(train, val) -> list[dict]:
    """splits_final.json: one split (nnU-Net fold 0) = the project's fold."""
    return [{"train": sorted(train), "val": sorted(val)}]


# --- scoring (no nnunetv2 needed) ---------------------------------------------------------------

def score_case(cid: str, source_id: str, paths: dict[str, Path], pred_file: Path, fold: int) -> dict:
    """One out-of-fold row: as ``vmambax.crossval.runner.evaluate_fold`` scores vMambaX (3-D Dice
    on the CT grid, the SUV baselines on the PET resampled onto the CT)."""
    import SimpleITK as sitk

    from vmambax.baselines import segment_pet
    from vmambax.metrics.segmentation import dice_3d

    pct, label = load_case(source_id, paths)
    gt = sitk.GetArrayFromImage(label) > 0
    pred_img = sitk.ReadImage(str(pred_file))
    pred = sitk.GetArrayFromImage(pred_img) > 0
    if pred.shape != gt.shape or not np.allclose(pred_img.GetSpacing(), pct.ct.GetSpacing(), atol=1e-4):
        raise ValueError(f"{pred_file}: the prediction is not on the CT grid of case {cid}")
    voxel_ml = float(np.prod(pct.ct.GetSpacing())) / 1000.0
    row = {"case": cid, "fold": fold, "dice_nnunet": float(dice_3d(pred, gt))}
    for key, method in (("dice_suv25", "suv2.5"), ("dice_pct41", "pct41")):
        row[key] = float(dice_3d(sitk.GetArrayFromImage(segment_pet(pct.pet_suv, method)) > 0, gt))
    row.update(gt_ml=round(float(gt.sum()) * voxel_ml, 2), nnunet_ml=round(float(pred.sum()) * voxel_ml, 2),
               suv_max=round(float(sitk.GetArrayViewFromImage(pct.pet_suv)[gt].max()) if gt.any() else 0.0, 3))
    return row


COLUMNS = ("case", "fold", "dice_nnunet", "dice_suv25", "dice_pct41", "gt_ml", "nnunet_ml", "suv_max")


def summarise(rows) -> dict:
    """vmambax.crossval.table.summarise with nnU-Net in the model's place (means, SEs, paired
    differences to the baselines)."""
    from vmambax.crossval.table import summarise as crossval_summary

    return crossval_summary([{**r, "dice_model": r["dice_nnunet"]} for r in rows])


def write_tables(run_dir: Path, rows, summary, folds_info) -> dict[str, Path]:
    import csv
    import io

    from vmambax.crossval.table import _f

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    lines = ["| case | fold | 2-D nnU-Net | SUV >= 2.5 | 41 % SUVmax | tumour mL |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['fold']} | {_f(r['dice_nnunet'])} | {_f(r['dice_suv25'])} "
                     f"| {_f(r['dice_pct41'])} | {_f(r['gt_ml'], 1)} |")
    s = summary
    lines.append(f"| **mean (SE)** | | **{_f(s['dice_model']['mean'])} ({_f(s['dice_model']['se'])})** | "
                 f"{_f(s['dice_suv25']['mean'])} ({_f(s['dice_suv25']['se'])}) | "
                 f"{_f(s['dice_pct41']['mean'])} ({_f(s['dice_pct41']['se'])}) | |")
    lines += ["", f"Out-of-fold 3-D Dice over {s['cases']} cases: 2-D nnU-Net {_f(s['dice_model']['mean'])} "
              f"(SE {_f(s['dice_model']['se'])})."]
    for key in ("model_minus_suv25", "model_minus_pct41"):
        d = s[key]
        lines.append(f"vs {d['baseline']}: {'+' if d['mean'] >= 0 else ''}{_f(d['mean'])} (paired SE "
                     f"{_f(d['se'])}); nnU-Net is better on {d['wins']} of {d['cases']} cases.")
    for f in folds_info:
        t = f.get("training") or {}
        lines.append(f"Fold {f['fold']}: {t.get('epochs', '?')} epochs of {t.get('iterations_per_epoch', '?')} "
                     f"iterations ({t.get('iterations', '?')} iterations, batch {t.get('batch_size', '?')}, "
                     f"patch {t.get('patch_size', '?')}) in {t.get('train_s', '?')} s of training.")
    paths = {"csv": run_dir / "nnunet.csv", "md": run_dir / "nnunet.md", "json": run_dir / "nnunet.json"}
    paths["csv"].write_text(buf.getvalue(), encoding="utf-8")
    paths["md"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths["json"].write_text(json.dumps({"rows": rows, "summary": summary, "folds": folds_info},
                                        indent=1, default=str), encoding="utf-8")
    return paths


# --- nnU-Net (needs nnunetv2) --------------------------------------------------------------------

def nnunet_env(run_dir: Path, args) -> dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(run_dir / "nnUNet_raw"), nnUNet_preprocessed=str(run_dir / "nnUNet_preprocessed"),
               nnUNet_results=str(run_dir / "nnUNet_results"),
               nnUNet_n_proc_DA=str(args.augmentation_workers), nnUNet_compile="false",
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               VMAMBAX_NNUNET_THREADS=str(args.threads), VMAMBAX_NNUNET_MINUTES=str(args.minutes_per_fold),
               VMAMBAX_NNUNET_ITERS=str(args.iterations_per_epoch))
    return env


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    if exe.is_file():
        return str(exe)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"nnunet_baseline: {name} not found next to {sys.executable}. {INSTALL_HINT}")
    return found


def _run(cmd, env, log: Path) -> float:
    t0 = time.monotonic()
    print("nnunet_baseline: $ " + " ".join(cmd), file=sys.stderr, flush=True)
    with open(log, "a", encoding="utf-8") as fh:
        done = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"nnunet_baseline: {cmd[0]} failed ({done.returncode}); see {log}")
    return time.monotonic() - t0


def predict(model_dir: Path, images_dir: Path, out_dir: Path, env: dict, threads: int, mirroring: bool) -> float:
    for k, v in env.items():  # nnunetv2.paths reads these when imported
        os.environ[k] = v
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(threads)
    t0 = time.monotonic()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    # what initialize_from_trained_model_folder does, minus its trainer lookup (see
    # scripts/nnunet_ext/nnunet_time_budget.py): the trainer's network is nnUNetTrainer's own
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = load_json(str(model_dir / "dataset.json"))
    plans = PlansManager(load_json(str(model_dir / "plans.json")))
    checkpoint = torch.load(model_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    config = plans.get_configuration(checkpoint["init_args"]["configuration"])
    network = nnUNetTrainer.build_network_architecture(
        plans, config, determine_num_input_channels(plans, config, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    predictor.manual_initialization(network, plans, config, [checkpoint["network_weights"]], dataset_json,
                                    checkpoint["trainer_name"], checkpoint.get("inference_allowed_mirroring_axes"))
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(str(images_dir), str(out_dir), save_probabilities=False,
                                            overwrite=True)
    return time.monotonic() - t0


def run_fold(run_dir: Path, args, fold: int, cases, files, train, val, test) -> tuple[list[dict], dict]:
    fold_dir = run_dir / f"fold-{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(run_dir, args)
    dataset_id = args.dataset_id + fold
    info = {"fold": fold, "train": list(train), "val": list(val), "test": list(test),
            "dataset_id": dataset_id, "minutes": args.minutes_per_fold}
    raw = write_fold_dataset(run_dir / "nnUNet_raw", dataset_id, fold, files, train, val, test)
    log = fold_dir / "nnunet.log"
    # the planner sets torch's threads to nnUNet_n_proc_DA (0 is refused there)
    plan_env = {**env, "nnUNet_n_proc_DA": str(max(1, args.augmentation_workers or args.threads))}
    info["plan_preprocess_s"] = round(_run([_tool("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id),
                                            "-c", "2d", "-np", "1", "--verify_dataset_integrity"],
                                           plan_env, log), 1)
    pre = run_dir / "nnUNet_preprocessed" / raw.name
    if args.batch_size:  # nnU-Net's own way: the batch size is a field of the plans
        plans_file = pre / "nnUNetPlans.json"
        plans = json.loads(plans_file.read_text(encoding="utf-8"))
        info["planned_batch_size"] = plans["configurations"]["2d"]["batch_size"]
        plans["configurations"]["2d"]["batch_size"] = args.batch_size
        plans_file.write_text(json.dumps(plans, indent=4), encoding="utf-8")
    (pre / "splits_final.json").write_text(json.dumps(splits(train, val), indent=1), encoding="utf-8")
    model_dir = run_dir / "nnUNet_results" / raw.name / f"{TRAINER}__nnUNetPlans__2d"
    if (model_dir / "fold_0").exists():
        shutil.rmtree(model_dir / "fold_0")  # a fold stopped half way starts again
    info["train_command_s"] = round(_run([sys.executable, str(EXT_TRAINER_DIR / "nnunet_time_budget.py"),
                                          raw.name], env, log), 1)
    info["training"] = json.loads((model_dir / "fold_0" / "time_budget.json").read_text(encoding="utf-8"))
    pred_dir = fold_dir / "pred"
    info["predict_s"] = round(predict(model_dir, raw / "imagesTs", pred_dir, env, args.threads,
                                      not args.no_mirroring), 1)
    info["mirroring"] = not args.no_mirroring
    rows = []
    for cid in test:
        source_id, paths = cases[cid]
        rows.append(score_case(cid, source_id, paths, pred_dir / f"{cid}.nii.gz", fold))
        print(f"nnunet_baseline: fold {fold} {cid}: Dice {rows[-1]['dice_nnunet']:.3f}", file=sys.stderr, flush=True)
    (fold_dir / "rows.json").write_text(json.dumps({"rows": rows, "info": info}, indent=1, default=str),
                                        encoding="utf-8")
    return rows, info


def parse_args(argv=None):
    from vmambax.train.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of volume case folders (as vmambax train --data)")
    p.add_argument("--out", required=True, help="run folder (created)")
    p.add_argument("--folds", type=int, default=5, help="K, as vmambax train --folds K (default 5)")
    p.add_argument("--fold-indices", type=int, nargs="+", default=None,
                   help="which folds to run, 1-based (default: all)")
    p.add_argument("--minutes-per-fold", type=float, required=True, help="training wall-clock budget per fold")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="fold seed (default: vmambax's, %(default)s)")
    p.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction,
                   help="validation carve-out (default: vmambax's, %(default)s)")
    p.add_argument("--dataset-id", type=int, default=900, help="nnU-Net dataset IDs are this + fold (default 900)")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads (default 1)")
    p.add_argument("--augmentation-workers", type=int, default=0,
                   help="nnUNet_n_proc_DA: 0 = augmentation in the training process (default)")
    p.add_argument("--iterations-per-epoch", type=int, default=50, help="nnU-Net 'epoch' length (default 50)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="replace the planned 2-D batch size (nnU-Net plans for a GPU's memory; "
                        "default: keep it)")
    p.add_argument("--no-mirroring", action="store_true", help="predict without nnU-Net's mirroring TTA")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    version = require_nnunet()
    if version != NNUNET_VERSION:
        print(f"nnunet_baseline: note: nnunetv2 {version}; the benchmark pins {NNUNET_VERSION}", file=sys.stderr)
    run_dir = Path(args.out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cases = find_cases(args.data)
    all_folds = project_folds(cases, args.folds, args.seed, args.val_fraction)
    wanted = args.fold_indices or list(range(1, args.folds + 1))
    if any(not 1 <= f <= args.folds for f in wanted):
        raise SystemExit(f"nnunet_baseline: --fold-indices must be in 1..{args.folds}")
    t0 = time.monotonic()
    files = convert_cases(cases, run_dir / "converted")
    print(f"nnunet_baseline: {len(files)} cases converted ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    rows, infos = [], []
    for fold in wanted:
        done = run_dir / f"fold-{fold}" / "rows.json"
        if done.is_file():
            saved = json.loads(done.read_text(encoding="utf-8"))
            r, info = saved["rows"], saved["info"]
        else:
            train, val, test = all_folds[fold - 1]
            print(f"nnunet_baseline: fold {fold} of {args.folds}: {len(train)} training, {len(val)} "
                  f"validation and {len(test)} held-out cases, {args.minutes_per_fold:g} min", file=sys.stderr)
            r, info = run_fold(run_dir, args, fold, cases, files, train, val, test)
        rows += r
        infos.append(info)
    info_all = {"nnunetv2": version, "argv": sys.argv, "folds": infos}
    summary = summarise(rows)
    tables = write_tables(run_dir, rows, summary, infos)
    (run_dir / "nnunet-run.json").write_text(json.dumps(info_all, indent=1, default=str), encoding="utf-8")
    print(tables["md"].read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
