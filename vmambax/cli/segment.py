"""``vmambax segment``: segment lung tumours on one PET/CT pair."""

from __future__ import annotations

import argparse
import sys

MAX_TABLE_ROWS = 20  # lesions are sorted by MTV; the report has all of them


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment lung tumours on a PET/CT pair (label + report + preview)",
        description="Segment lung tumours on co-registered PET/CT. The PET is resampled onto the "
                    "CT; the label has exactly the CT's grid. Research software, not for clinical use.")
    p.add_argument("--ct", required=True, help="CT (HU): NIfTI/NRRD/MHA file or DICOM series folder")
    p.add_argument("--pet", required=True, help="PET: NIfTI/NRRD/MHA file (SUV unless --pet-units "
                   "says otherwise) or DICOM series folder (units from its tags)")
    p.add_argument("-o", "--output", required=True,
                   help="label file: .nii.gz, .nii, .nrrd, .seg.nrrd, .mha, or .dcm for a DICOM SEG "
                        "(DICOM CT input)")
    p.add_argument("--model", default="default",
                   help="registered model name or model file (default: the shipped demo model; "
                        "see `vmambax models list`)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N, mps")
    p.add_argument("--batch", type=int, help="slices per batch (default: 2-4 on CPU, by memory on CUDA)")
    p.add_argument("--threads", type=int, help="CPU threads (default: OMP_NUM_THREADS, else the CPUs "
                   "not busy with other work, max 16)")
    p.add_argument("--pet-units", choices=("auto", "suv", "bqml"), default="auto",
                   help="auto: DICOM tags, or SUV for NIfTI/NRRD; bqml needs --weight and --dose "
                        "unless the DICOM tags have them")
    p.add_argument("--weight", "--weight-kg", dest="weight", type=float, metavar="KG",
                   help="patient weight in kg (SUV from a Bq/mL PET without usable tags)")
    p.add_argument("--dose", "--dose-mbq", dest="dose", type=float, metavar="MBQ",
                   help="injected activity in MBq")
    p.add_argument("--uptake-minutes", type=float, metavar="MIN",
                   help="injection-to-scan time, when the PET is decay-corrected to the scan start "
                        "and the DICOM tags lack the injection time")
    p.add_argument("--report", metavar="JSON", help="write a JSON report (lesions, timings, model)")
    p.add_argument("--preview", metavar="PNG", help="write a PNG preview (PET MIP + lesion slices)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA (fp32)")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the model (CUDA; slow first batch); MODE e.g. "
                        "reduce-overhead (CUDA graphs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or lesion table")
    p.set_defaults(func=run)


def progress_bar(quiet: bool):
    """A tqdm bar on a terminal; silent otherwise (logs stay clean). Returns (callback, close)."""
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    import shutil

    from tqdm import tqdm

    width = shutil.get_terminal_size((100, 24)).columns or 100  # 0 on some pseudo-terminals
    bar = tqdm(total=100, unit="%", file=sys.stderr, ncols=min(width, 110),
               bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")

    def update(fraction: float, message: str) -> None:
        bar.set_description_str(message[:48].ljust(48))
        bar.update(max(0, round(fraction * 100) - bar.n))

    return update, bar.close


def print_summary(result, outputs: dict, file=None) -> None:
    """Lesion table and where outputs went."""
    file = file or sys.stdout
    print(f"model {result.model_name} on {result.device} (scan: {result.scan_backend}, batch "
          f"{result.batch_size}{', ' + result.amp if result.amp else ''}): {result.n_slices} slices in "
          f"{result.timings['inference']:.1f} s ({result.slices_per_second:.1f} slices/s)", file=file)
    if result.lesions:
        print(f"{'lesion':>6} {'voxels':>8} {'MTV mL':>8} {'SUVmax':>7} {'SUVmean':>7} "
              f"{'SUVpeak':>7} {'TLG':>8}", file=file)
        for les in result.lesions[:MAX_TABLE_ROWS]:
            peak = les.get("suv_peak")
            print(f"{les['id']:>6} {les['voxels']:>8} {les['mtv_ml']:>8.2f} {les['suv_max']:>7.2f} "
                  f"{les['suv_mean']:>7.2f} {peak if peak is None else format(peak, '7.2f'):>7} "
                  f"{les['tlg']:>8.2f}", file=file)
        if len(result.lesions) > MAX_TABLE_ROWS:
            print(f"{'...':>6} {len(result.lesions) - MAX_TABLE_ROWS} smaller lesion(s) not shown "
                  f"(all are in the --report JSON)", file=file)
        t = result.totals
        print(f"{'total':>6} {t.get('voxels', ''):>8} {t.get('mtv_ml', 0):>8.2f} "
              f"{t.get('suv_max', 0):>7.2f} {'':>7} {'':>7} {t.get('tlg', 0):>8.2f}", file=file)
    else:
        print("no lesion segmented", file=file)
    for kind, path in outputs.items():
        if path:
            print(f"{kind}: {path}", file=file)


def run(args: argparse.Namespace) -> int:
    from vmambax.infer.pipeline import segment_files

    update, close = progress_bar(args.quiet)
    try:
        result, report = segment_files(
            args.ct, args.pet, args.output, report=args.report, preview=args.preview,
            model=args.model, device=args.device, batch_size=args.batch, pet_units=args.pet_units,
            weight_kg=args.weight, dose_mbq=args.dose, uptake_minutes=args.uptake_minutes,
            overwrite=args.overwrite,
            threads=args.threads, amp=False if args.no_amp else None, compile=args.compile,
            progress=update)
    finally:
        close()
    if not args.quiet:
        print_summary(result, {"label": args.output, "report": args.report, "preview": args.preview})
    return 0
