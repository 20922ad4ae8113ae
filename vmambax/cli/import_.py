"""``vmambax import``: an RTSTRUCT ROI (or a DICOM SEG segment) -> a label on the CT grid."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="turn an RTSTRUCT ROI (or DICOM SEG segment) into a label on the CT grid",
        description="Convert one ROI of a DICOM RTSTRUCT (radiotherapy contours, e.g. the GTV) "
                    "into a 0/1 label with exactly the CT's grid, for training or evaluation. The "
                    "contours are placed by patient coordinates and filled slice by slice (nested "
                    "contours are holes). A DICOM SEG file works in place of the RTSTRUCT.")
    p.add_argument("--ct", required=True,
                   help="the CT the contours were drawn on: DICOM series folder (its frame of "
                        "reference is checked) or NIfTI/NRRD/MHA file; a DICOM folder holding "
                        "only a PET series puts the label on the PET grid (contours drawn on the PET)")
    p.add_argument("--rtstruct", required=True, metavar="RS.dcm",
                   help="the RTSTRUCT file (or a DICOM SEG), or the folder holding it")
    p.add_argument("--roi", metavar="NAME",
                   help="ROI name or number (default: the only ROI, or the one named like a "
                        "tumour: GTV, tumour, tumor, lesion ...)")
    p.add_argument("-o", "--output", required=True,
                   help="label file: .nii.gz, .nii, .nrrd, .mha, or .dcm for a DICOM SEG "
                        "(DICOM CT input)")
    p.add_argument("--ct-series", metavar="UID",
                   help="SeriesInstanceUID of the CT in a folder with several CT series (default: "
                        "the series the RTSTRUCT references)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from vmambax.data.dicom_label import (annotation_grid_modality, ct_series_for, find_label_file,
                                          frame_of_reference_of, read_dicom_label)
    from vmambax.data.io import read_image_source, write_label
    from vmambax.errors import InputError
    from vmambax.utils import plural

    out = Path(args.output)
    if out.exists() and not args.overwrite:  # refuse before reading anything
        raise InputError(f"{out} exists; choose another --output or pass --overwrite.")
    label_file = find_label_file(args.rtstruct)
    folder = Path(args.ct).is_dir()
    # The image the contours go onto: the CT, or the PET of a folder that holds only a PET.
    modality = annotation_grid_modality(args.ct) if folder else "CT"
    grid = "CT" if modality == "CT" else "PET"
    # A study folder with several series: take the one the annotation says it was drawn on.
    uid = args.ct_series or (ct_series_for(args.ct, label_file, modality) if folder else None)
    ct, series = read_image_source(args.ct, series_uid=uid, modality=modality, what=f"The {grid}")
    imported = read_dicom_label(label_file, ct, structure=args.roi, image_what=f"the {grid}",
                                frame_of_reference_uid=frame_of_reference_of(
                                    args.ct, series.uid if series is not None else None, modality))
    for note in imported.notes:
        print(f"warning: {note}", file=sys.stderr)
    reference = series.folder if out.name.lower().endswith(".dcm") and series is not None else ct
    write_label(imported.label, out, reference,
                series_uid=series.uid if series is not None else None)
    spacing = ct.GetSpacing()
    ml = imported.voxels * spacing[0] * spacing[1] * spacing[2] / 1000.0
    what = "ROI" if imported.kind == "RTSTRUCT" else "segment"
    parts = plural(imported.structure.n_contours, imported.structure.unit)
    print(f"{imported.kind} {what} {imported.structure.name!r} ({parts}) -> {out}: "
          f"{plural(imported.voxels, 'voxel')}, {ml:.1f} mL on the {grid} grid "
          f"{'x'.join(map(str, ct.GetSize()))}")
    return 0
