"""``vmambax evaluate``: segmentation metrics (2-D set metrics as in the papers, 3-D per case)
and PET lesion quantification."""

from __future__ import annotations

import argparse
from pathlib import Path

PRED_NAMES = ("{id}.nii.gz", "{id}.nii", "{id}.nrrd", "{id}.mha", "{id}/label.nii.gz", "{id}/pred.nii.gz")


def register(subparsers) -> None:
    from vmambax.cli.baseline import add_pet_unit_options

    p = subparsers.add_parser(
        "evaluate", help="compare predicted and ground-truth masks (micro/macro IoU, Dice, HD95, 3-D, SUV)",
        description="Compare predictions with ground truth. --pred/--gt are either two label volumes; "
                    "or two folders of volume cases (GT: <case>/label.nii.gz as `vmambax phantom` writes; "
                    "prediction: <case>.nii.gz or <case>/label.nii.gz); or PCLT20K-style PNG folders (GT "
                    "<ID>_mask.png, prediction <ID>.png or <ID>_pred.png, > 127 = tumour). Prints the "
                    "2-D slice set metrics (micro = pooled pixels, macro = per-slice mean) and, for "
                    "volumes, 3-D per-case metrics.")
    p.add_argument("--pred", required=True, help="predicted label volume, or folder")
    p.add_argument("--gt", required=True, help="ground-truth label volume, or folder")
    p.add_argument("--pet", help="PET for lesion quantification of prediction and ground truth (volume "
                                 "input); with case folders, 'case' uses each case's pet.nii.gz")
    add_pet_unit_options(p)
    p.add_argument("--slices", choices=("gt", "all"), default="gt",
                   help="2-D metrics over slices with tumour in the ground truth (gt, as PCLT20K; "
                        "default) or over every slice (all)")
    p.add_argument("--empty-score", type=float, default=1.0, choices=(0.0, 1.0),
                   help="macro IoU/Dice of a slice where both masks are empty: 1 (default) or 0 "
                        "(as the reference Lightning module)")
    p.add_argument("--resample", action="store_true",
                   help="resample a prediction on another grid onto the ground truth (nearest neighbour)")
    p.add_argument("--json", metavar="OUT", help="write all results (per slice and per case) as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=run)


def _volume_cases(args):
    """(case_id, pred path, gt path, pet path) for single volumes or folders of volume cases."""
    from vmambax.errors import InputError

    pred, gt = Path(args.pred), Path(args.gt)
    if gt.is_file() or (not gt.is_dir() and gt.suffix):
        if pred.is_dir():
            raise InputError(f"--gt {gt} is a file but --pred {pred} is a folder: give two label volumes "
                             "or two folders.")
        return [(gt.name.split(".")[0], pred, gt, Path(args.pet) if args.pet else None)]
    cases = sorted(d for d in gt.iterdir() if (d / "label.nii.gz").is_file())
    if not cases:
        return None
    out, missing = [], []
    for d in cases:
        found = next((pred / n.format(id=d.name) for n in PRED_NAMES if (pred / n.format(id=d.name)).is_file()), None)
        if found is None:
            missing.append(d.name)
            continue
        pet = None
        if args.pet:
            if args.pet != "case":
                raise InputError("with case folders, --pet must be 'case' (each case's pet.nii.gz).")
            pet = d / "pet.nii.gz"
            if not pet.is_file():
                raise InputError(f"--pet case: {pet} does not exist.")
        out.append((d.name, found, d / "label.nii.gz", pet))
    if missing:
        raise InputError(f"{len(missing)} of {len(cases)} cases have no prediction in {pred} (e.g. "
                         f"{', '.join(missing[:3])}): expected {PRED_NAMES[0].format(id='<case>')} or "
                         f"{PRED_NAMES[4].format(id='<case>')}.")
    return out


def _load_volumes(entries, args):
    from vmambax.cli.baseline import read_pet_args
    from vmambax.data.io import check_same_grid, read_label
    from vmambax.data.resample import resample_to
    from vmambax.errors import InputError

    loaded = []
    for case_id, pred_path, gt_path, pet_path in entries:
        gt = read_label(gt_path, what="The ground truth")
        pred = read_label(pred_path, what="The prediction")
        if args.resample:
            import sys
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pred = resample_to(pred, gt, "nearest", names=("prediction", "ground truth"))
            for w in caught:
                print(f"note: {w.message}", file=sys.stderr)
        else:
            try:
                check_same_grid(pred, gt, f"The prediction {Path(pred_path).name}", "the ground truth")
            except InputError as exc:
                raise InputError(f"{exc} Or pass --resample.") from None
        pet = read_pet_args(str(pet_path), args) if pet_path else None
        loaded.append((case_id, pred, gt, pet))
    return loaded


def _fmt(v, spec=".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def print_results(res: dict) -> None:
    s = res["slices"]
    what = {"gt": "slices with tumour", "all": "slices"}.get(res.get("slice_selection"), "images")
    print(f"2-D set metrics over {s['n_images']} {what} (micro: pooled pixels; macro: per-image mean)")
    print(f"  IoU   micro {_fmt(s['iou_micro'])}   macro {_fmt(s['iou_macro'])}")
    print(f"  Dice  micro {_fmt(s['dice_micro'])}   macro {_fmt(s['dice_macro'])}")
    print(f"  balanced accuracy {_fmt(s['balanced_accuracy'])}  (sensitivity {_fmt(s['sensitivity_micro'])}, "
          f"specificity {_fmt(s['specificity_micro'])})")
    print(f"  HD95 {_fmt(s['hd95_px'], '.2f')} px, {_fmt(s['hd95_mm'], '.2f')} mm  (mean over {s['n_hd95']} images "
          f"with both masks non-empty; reference convention {_fmt(s['hd95_px_reference'], '.2f')} px)")
    print(f"  images: {s['n_missed']} missed (tumour, no prediction), {s['n_false_alarm']} false alarm, "
          f"{s['n_both_empty']} both empty (macro score {s['empty_score']:g})")
    for c in res.get("cases", []):
        print(f"3-D {c['case']}: Dice {_fmt(c['dice'])}, IoU {_fmt(c['iou'])}, HD95 {_fmt(c['hd95_mm'], '.2f')} mm, "
              f"volume {c['volume_pred_ml']:.2f} / {c['volume_gt_ml']:.2f} mL (pred / gt), lesions detected "
              f"{c['lesions_detected']}/{c['lesions_gt']}, false-positive lesions {c['false_positive_lesions']}")
        q = c.get("quantification")
        if q:
            for name in ("gt", "pred"):
                t = q[name]["total"]
                print(f"    {name:>4}: {t['n_lesions']} lesion(s), SUVmax {_fmt(t['suv_max'], '.2f')}, SUVmean "
                      f"{_fmt(t['suv_mean'], '.2f')}, SUVpeak {_fmt(t['suv_peak'], '.2f')}, MTV {t['mtv_ml']:.2f} mL, "
                      f"TLG {t['tlg']:.2f}")
    if len(res.get("cases", [])) > 1:
        m = res["case_means"]
        print(f"3-D mean over {len(res['cases'])} cases: Dice {_fmt(m['dice'])}, IoU {_fmt(m['iou'])}, "
              f"HD95 {_fmt(m['hd95_mm'], '.2f')} mm, lesion sensitivity {_fmt(m['lesion_sensitivity'])}")


def run(args: argparse.Namespace) -> int:
    import json

    from vmambax.errors import InputError
    from vmambax.metrics.evaluation import evaluate_png_folders, evaluate_volumes
    from vmambax.utils import atomic_path

    for flag, path in (("--pred", args.pred), ("--gt", args.gt)):
        if not Path(path).exists():
            raise InputError(f"{flag} {path} does not exist.")
    if args.json and Path(args.json).exists() and not args.overwrite:  # before any work
        raise InputError(f"--json {args.json} already exists: choose another name or pass --overwrite.")
    if args.json and Path(args.json).suffix.lower() != ".json":
        raise InputError(f"--json {args.json} must end in .json.")
    entries = _volume_cases(args)
    if entries is not None:
        res = evaluate_volumes(_load_volumes(entries, args), args.slices, args.empty_score)
    else:
        if not Path(args.pred).is_dir():
            raise InputError(f"--gt {args.gt} is a folder of PNG masks, so --pred must be a folder too.")
        if args.pet:
            raise InputError("--pet needs label volumes; PNG masks carry no SUV.")
        res = evaluate_png_folders(args.pred, args.gt, args.empty_score)
    res["pred"], res["gt"] = str(args.pred), str(args.gt)
    print_results(res)
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(res, indent=2, default=float) + "\n")
        print(f"results: {args.json}")
    return 0
