"""``vmambax phantom``: write synthetic thorax PET/CT cases (CT, PET, tumour label, DICOM)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "phantom", help="write synthetic PET/CT cases with lung tumours (deterministic by seed)",
        description="Write N synthetic thorax PET/CT cases into DIR/<case_id>/ (ct.nii.gz in HU, pet.nii.gz "
                    "in SUV on the PET's own grid, label.nii.gz on the CT grid, dicom/ct and dicom/pet with "
                    "SUV tags, case.json). Case i uses seed SEED+i and is named phantom-NNNN after its seed; "
                    "the same seed always gives the same case.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--cases", type=int, default=1, metavar="N", help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    p.add_argument("--size", type=int, default=512,
                   help="CT in-plane matrix (default 512; 128/256 for quick tests, same anatomy in mm)")
    p.add_argument("--slices", type=int, default=None, metavar="N",
                   help="CT slice count (default: 2.5-3.3 mm slices over the extent)")
    p.add_argument("--extent-mm", type=float, default=None, metavar="MM",
                   help="CT axial extent in mm (default random 200-250)")
    p.add_argument("--tumours", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"),
                   help="number of tumours per case, inclusive range (default 1 4)")
    p.add_argument("--whole-body", action="store_true",
                   help="a head-to-thigh study (~1 m, 300+ slices) with the thorax inside, for "
                        "timing and testing slice selection (default: thorax only)")
    p.add_argument("--no-dicom", action="store_true", help="write NIfTI and case.json only")
    p.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    p.add_argument("--preview", metavar="PNG", default=None,
                   help="also save a 3-panel PNG (CT, PET, label) of the first case's largest tumour slice")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from vmambax.phantom import default_case_id, make_phantom, save_preview, write_case
    from vmambax.errors import ConfigError, InputError

    if args.cases < 1 or args.cases > 10000:
        raise ConfigError(f"--cases must be between 1 and 10000, got {args.cases}.")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder: choose a folder.")
    if args.preview is not None and not str(args.preview).lower().endswith(".png"):
        raise ConfigError(f"--preview must name a .png file, got {args.preview!r}.")
    seeds = [args.seed + i for i in range(args.cases)]
    if not args.overwrite:  # refuse before generating anything
        taken = [s for s in seeds if (out / default_case_id(s)).is_dir() and any((out / default_case_id(s)).iterdir())]
        if taken:
            raise InputError(f"case folder {out / default_case_id(taken[0])} already exists"
                             f"{f' (and {len(taken) - 1} more)' if len(taken) > 1 else ''}: choose another --out, "
                             "another --seed, or pass --overwrite.")
    for i, seed in enumerate(seeds):
        t0 = time.perf_counter()
        ph = make_phantom(seed, size=args.size, n_slices=args.slices, extent_mm=args.extent_mm,
                          n_tumours=tuple(args.tumours), whole_body=args.whole_body)
        path = write_case(ph, out, default_case_id(seed), dicom=not args.no_dicom, overwrite=args.overwrite)
        sizes = ", ".join(f"{l['diameter_mm']:.0f} mm" for l in ph.lesions) or "none"
        print(f"[{i + 1}/{len(seeds)}] {path}  CT {'x'.join(map(str, ph.ct.GetSize()))}, "
              f"PET {'x'.join(map(str, ph.pet_suv.GetSize()))}, tumours: {sizes}  "
              f"({time.perf_counter() - t0:.1f} s)")
        if i == 0 and args.preview:
            print(f"preview: {save_preview(ph, args.preview)}")
    return 0
