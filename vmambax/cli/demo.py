"""``vmambax demo``: the main job end to end on a synthetic case, with Dice against the truth.

Generates one phantom PET/CT patient (DICOM CT + DICOM PET in Bq/mL with SUV tags, plus NIfTI and
the true tumour label), segments it from the DICOM series with the shipped demo model exactly as
``vmambax segment`` would, writes the label, JSON report and PNG preview, and prints the 3-D Dice
against the phantom's truth next to the classic SUV-threshold baselines.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="synthetic PET/CT case -> segmentation, report, preview and Dice (start here)",
        description="Generate a synthetic PET/CT case, segment it with the demo model, write the "
                    "label/report/preview and print Dice against the phantom's truth.")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--seed", type=int, default=7, help="phantom seed (default 7)")
    p.add_argument("--size", type=int, default=512, help="CT matrix size (default 512)")
    p.add_argument("--slices", type=int, default=80, help="CT slices (default 80)")
    p.add_argument("--model", default="default", help="model name or file (default: demo model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch", type=int, help="slices per batch (default: auto)")
    p.add_argument("--threads", type=int, help="CPU threads (default: idle CPUs, see `segment`)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _dice(a, b) -> float:
    from vmambax.metrics import dice_3d

    return float(dice_3d(a, b))


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from vmambax import baselines
    from vmambax.cli.messages import print_warnings
    from vmambax.cli.segment import print_summary, progress_bar
    from vmambax.phantom import default_case_id, make_phantom, write_case
    from vmambax.infer.pipeline import segment_files
    from vmambax.infer.registry import DEMO_MODEL_NOTICE
    from vmambax.infer.segmenter import Segmenter

    t0 = time.perf_counter()
    out = Path(args.out).expanduser()
    print(f"[1/3] Generating synthetic PET/CT case (seed {args.seed}, {args.size}x{args.size}x"
          f"{args.slices} CT) ...", flush=True)
    # The model is loaded first: a missing/corrupt demo model fails before minutes of work.
    segmenter = Segmenter(args.model, device=args.device, batch_size=args.batch,
                          threads=args.threads)
    phantom = make_phantom(args.seed, size=args.size, n_slices=args.slices)
    case_dir = write_case(phantom, out / "case", default_case_id(args.seed), overwrite=True)
    t_case = time.perf_counter() - t0

    print(f"[2/3] Segmenting {case_dir / 'dicom'} with model {segmenter.model_info['name']} on "
          f"{segmenter.device_name} ...", flush=True)
    update, close = progress_bar(args.quiet)
    try:
        result, report = segment_files(
            case_dir / "dicom" / "ct", case_dir / "dicom" / "pet", out / "label.nii.gz",
            report=out / "report.json", preview=out / "preview.png", overwrite=True,
            segmenter=segmenter, progress=update)
    finally:
        close()
    # The demo model on a phantom is what it was made for: its notice is a note here, not a warning.
    print_warnings(w for w in report["warnings"] if w != DEMO_MODEL_NOTICE)
    if DEMO_MODEL_NOTICE in report["warnings"]:
        print("note: the demo model was trained on synthetic phantoms like this one; it is not "
              "for patient data (train your own model: vmambax train, or VMambaX Train in Slicer)")
    print_summary(result, {"label": out / "label.nii.gz", "report": out / "report.json",
                           "preview": out / "preview.png", "case": case_dir})

    print("[3/3] Comparing with the phantom's true tumour label ...", flush=True)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "label.nii.gz")))
    pred = sitk.GetArrayFromImage(result.label)
    rows = [(f"vMambaX ({result.model_name})", _dice(pred, truth))]
    for method, name in (("suv2.5", "SUV >= 2.5"), ("pct41", "41 % of SUVmax")):
        mask = baselines.segment_pet(phantom.pet_suv, method, reference=result.label)
        rows.append((f"baseline: {name}", _dice(sitk.GetArrayFromImage(mask), truth)))
    width = max(len(r[0]) for r in rows)
    print(f"{'method'.ljust(width)}  Dice (3-D, vs truth: {int(truth.sum())} tumour voxels)")
    for name, dice in rows:
        print(f"{name.ljust(width)}  {dice:.3f}")
    print(f"done in {time.perf_counter() - t0:.1f} s (case {t_case:.1f} s, segmentation "
          f"{report['timings_s']['total']:.1f} s). Open {out / 'preview.png'} to look at it.")
    return 0
