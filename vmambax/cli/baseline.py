"""``vmambax baseline``: classic PET threshold segmentation (SUV >= 2.5, 41 % of SUVmax)."""

from __future__ import annotations

import argparse

from vmambax.cli.messages import print_warnings
from vmambax.cli.segment import add_identity_options


def add_pet_unit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pet-units", choices=("auto", "suv", "bqml"), default="auto",
                   help="auto: DICOM tags, or SUV for NIfTI/NRRD; bqml needs --weight and --dose "
                        "unless the DICOM tags have them")
    p.add_argument("--weight", "--weight-kg", dest="weight", type=float, metavar="KG",
                   help="patient weight in kg (SUV from a Bq/mL PET without usable tags)")
    p.add_argument("--dose", "--dose-mbq", dest="dose", type=float, metavar="MBQ", help="injected activity in MBq")
    p.add_argument("--uptake-minutes", type=float, metavar="MIN",
                   help="injection-to-scan time for a Bq/mL PET decay-corrected to the scan start")


def read_pet_args(path: str, args: argparse.Namespace):
    from vmambax.data.io import read_pet

    return read_pet(path, args.pet_units, args.weight, args.dose, uptake_minutes=args.uptake_minutes)


def read_inputs(args: argparse.Namespace):
    """``(PET in SUV, CT or None, (CT DICOM folder or None, its series UID) or None, warnings)``.

    With ``--ct`` the pair goes through the same checks as ``vmambax segment``
    (``load_pet_ct``: roles, overlap, same patient) and the PET comes back on the CT grid.
    """
    if args.ct:
        from vmambax.data.case import load_pet_ct

        case = load_pet_ct(args.ct, args.pet, args.pet_units, args.weight, args.dose,
                           uptake_minutes=args.uptake_minutes, ct_series_uid=args.ct_series,
                           pet_series_uid=args.pet_series,
                           allow_different_patients=args.allow_different_patients)
        return case.pet_suv, case.ct, (case.ct_dicom_dir, case.ct_series_uid), case.warnings
    from vmambax.data.io import read_pet_info

    pet = read_pet_info(args.pet, args.pet_units, args.weight, args.dose,
                        uptake_minutes=args.uptake_minutes, series_uid=args.pet_series)
    return pet.image, None, None, list(pet.notes)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "baseline", help="segment with a classic PET threshold (SUV >= 2.5 or 41 %% of SUVmax)",
        description="Clinical threshold baselines: 'suv2.5' keeps every voxel with SUV >= --threshold; "
                    "'pct41' keeps, around each hot spot (26-connected SUV >= --threshold), the region "
                    "connected to its maximum with SUV >= --percent % of that maximum, within 20 mm of the "
                    "hot spot. Both also segment physiological uptake (heart, kidneys, brown fat, "
                    "inflamed nodes); that is the point of a baseline.")
    p.add_argument("--pet", required=True, help="PET: NIfTI/NRRD/MHA (SUV unless --pet-units) or DICOM folder")
    p.add_argument("--ct", help="CT (file or DICOM folder): the PET is resampled onto it and the label has "
                                "the CT's grid (default: the PET's own grid)")
    p.add_argument("--method", choices=("suv2.5", "pct41"), default="suv2.5", help="default suv2.5")
    p.add_argument("-o", "--output", required=True,
                   help="label file (.nii.gz, .nii, .nrrd, .mha; .dcm = DICOM SEG, needs a DICOM --ct)")
    p.add_argument("--threshold", type=float, default=2.5,
                   help="SUV threshold (suv2.5) or hot-spot seed threshold (pct41); default 2.5")
    p.add_argument("--percent", type=float, default=41.0, help="percentage of SUVmax for pct41 (default 41)")
    add_pet_unit_options(p)
    add_identity_options(p)
    p.add_argument("--report", metavar="JSON", help="also write the lesion table as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from vmambax.baselines import segment_pet
    from vmambax.data.io import LABEL_SUFFIXES, write_label
    from vmambax.errors import ConfigError, InputError
    from vmambax.metrics import quantify_lesions
    from vmambax.utils import atomic_group

    out = Path(args.output)
    name = out.name.lower()
    if not (name.endswith(LABEL_SUFFIXES) or name.endswith(".dcm")):
        raise ConfigError(f"cannot write {out.name}: use a .nii.gz, .nii, .nrrd, .mha or .dcm name.")
    if name.endswith(".dcm") and not (args.ct and Path(args.ct).is_dir()):
        raise ConfigError("a DICOM SEG output (.dcm) needs --ct to be the CT's DICOM series folder.")
    for path in (out, Path(args.report) if args.report else None):
        if path is not None and path.exists() and not args.overwrite:
            raise InputError(f"{path} already exists: choose another name or pass --overwrite.")
    pet, ct, ct_series, notes = read_inputs(args)
    print_warnings(notes)
    label = segment_pet(pet, args.method, threshold=args.threshold, percent=args.percent)
    q = quantify_lesions(label, pet)
    t = q["total"]
    grid = "CT" if ct is not None else "PET"
    report = dict(method=args.method, threshold=args.threshold,
                  percent=args.percent if args.method == "pct41" else None,
                  pet=str(args.pet), ct=args.ct, grid=grid, label=str(out), warnings=notes, **q)
    # Both outputs staged and verified, then moved into place together (or neither).
    with atomic_group([out] + ([Path(args.report)] if args.report else [])) as staged:
        if name.endswith(".dcm"):
            write_label(label, staged[0], reference=ct_series[0], series_uid=ct_series[1])
        else:
            write_label(label, staged[0])
        if args.report:
            staged[1].write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.method}: {t['n_lesions']} region(s), MTV {t['mtv_ml']:.2f} mL, TLG {t['tlg']:.2f} "
          f"on the {grid} grid ({'x'.join(map(str, label.GetSize()))})")
    print_lesions(q["lesions"])
    print(f"label: {out}")
    if args.report:
        print(f"report: {args.report}")
    return 0


def print_lesions(lesions: list[dict], limit: int = 15) -> None:
    if not lesions:
        return
    print(f"{'lesion':>6} {'MTV mL':>8} {'SUVmax':>7} {'SUVmean':>7} {'SUVpeak':>7} {'TLG':>8}  centroid (mm)")
    for les in lesions[:limit]:
        c = ", ".join(f"{v:.0f}" for v in les["centroid"])
        print(f"{les['id']:>6} {les['mtv_ml']:>8.2f} {les['suv_max']:>7.2f} {les['suv_mean']:>7.2f} "
              f"{les['suv_peak']:>7.2f} {les['tlg']:>8.2f}  ({c})")
    if len(lesions) > limit:
        print(f"   ... {len(lesions) - limit} more (smaller) regions")
