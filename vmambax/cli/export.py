"""``vmambax export``: volume case folders -> PCLT20K slice layout for training."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export volume case folders to the PCLT20K slice layout",
        description="Turn volume case folders (<DIR>/<case_id>/ct.nii.gz in HU, pet.nii.gz in "
                    "SUV, label.nii.gz on the CT grid) into the PCLT20K layout (512x512 PNG "
                    "slices + train/val/test lists) with the same preprocessing inference uses.")
    p.add_argument("--cases", required=True, metavar="DIR", help="folder of case folders")
    p.add_argument("--out", required=True, metavar="PCLT_DIR", help="output folder (new or empty)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of non-test cases (patients) for val.txt (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.0, metavar="F",
                   help="share of cases for test.txt, picked with the seed (default 0)")
    p.add_argument("--test-ids", default="", metavar="ID,ID",
                   help="comma-separated case IDs for test.txt (instead of --test-fraction)")
    p.add_argument("--negatives-per-positive", type=float, default=1.0, metavar="R",
                   help="tumour-free slices exported per tumour slice (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for slice sampling and splits")
    p.add_argument("--size", type=int, default=512, help=argparse.SUPPRESS)  # tests only
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from vmambax.data.pclt_export import export_case_folders

    test_ids = [t.strip() for t in args.test_ids.split(",") if t.strip()]
    summary = export_case_folders(
        args.cases, args.out, test_ids=test_ids, test_fraction=args.test_fraction,
        val_fraction=args.val_fraction, negatives_per_positive=args.negatives_per_positive,
        seed=args.seed, size=args.size, overwrite=args.overwrite)
    print(summary)
    for warning in summary.warnings:  # where the user looks, not into the output stream
        print(f"warning: {warning}", file=sys.stderr)
    return 0
