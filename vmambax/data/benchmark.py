"""Data-layer timings on a synthetic whole-body-sized case (``python -m vmambax.data.benchmark``).

Writes a CT (512x512xN int16, .nii.gz) and a PET (192x192xM float32 SUV, .nii.gz) to a temporary
folder, then times: reading + checks + PET->CT resampling (``load_pet_ct``), the shared
preprocessing (``volume_to_slices``), mapping probability maps back (``slices_to_label``) and
the PCLT export of the case. Results go into docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slices", type=int, default=200, help="CT slices (default 200)")
    parser.add_argument("--size", type=int, default=512, help="network slice size (default 512)")


def register(subparsers) -> None:
    """Add ``data`` to the ``vmambax bench`` sub-commands."""
    parser = subparsers.add_parser("data", help="data loading, preprocessing and export timings")
    add_arguments(parser)
    parser.set_defaults(func=run)


def _synthetic(folder: Path, slices: int):
    import numpy as np
    import SimpleITK as sitk

    from vmambax.data.io import write_image

    rng = np.random.default_rng(0)
    z = np.arange(slices)[:, None, None]
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 240.0) ** 2 < 1
    lung = (((yy - 240) / 110.0) ** 2 + ((np.abs(xx - 256) - 110) / 70.0) ** 2 < 1)
    hu = np.where(body, 40, -1000)[None].repeat(slices, 0).astype(np.int16)
    hu[(z > slices // 3) & lung[None]] = -820
    hu += rng.normal(0, 15, hu.shape).astype(np.int16)
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((0.98, 0.98, 2.0))
    pet_slices = int(slices * 2.0 / 3.27) + 2
    suv = np.full((pet_slices, 192, 192), 0.6, np.float32) + rng.random((pet_slices, 192, 192),
                                                                          np.float32) * 0.4
    suv[pet_slices // 2:pet_slices // 2 + 4, 90:100, 60:70] = 9.0
    pet = sitk.GetImageFromArray(suv)
    pet.SetSpacing((2.73, 2.73, 3.27))
    pet.SetOrigin((-10.0, -10.0, -2.0))
    label = sitk.GetImageFromArray((hu > 1000).astype(np.uint8))
    label.CopyInformation(ct)
    return (write_image(ct, folder / "case" / "ct.nii.gz"),
            write_image(pet, folder / "case" / "pet.nii.gz"),
            write_image(label, folder / "case" / "label.nii.gz"))


def run(args) -> int:
    import numpy as np
    import torch  # noqa: F401 - imported up front so its start-up time is not counted

    from vmambax.data.case import load_pet_ct
    from vmambax.data.pclt_export import export_case_folders
    from vmambax.data.preprocess import slices_to_label, volume_to_slices

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ct_path, pet_path, _ = _synthetic(folder, args.slices)
        t = time.perf_counter()
        case = load_pet_ct(ct_path, pet_path)
        results["load_pet_ct_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ct_u8, _, geometry = volume_to_slices(case.ct, case.pet_suv, args.size)
        results["volume_to_slices_s"] = time.perf_counter() - t
        prob = (ct_u8 > 128).astype(np.float32)
        t = time.perf_counter()
        slices_to_label(prob, geometry)
        results["slices_to_label_s"] = time.perf_counter() - t
        t = time.perf_counter()
        summary = export_case_folders(folder / "case", folder / "pclt", size=args.size,
                                      negatives_per_positive=20.0, val_fraction=0.0)
        results["export_s"] = time.perf_counter() - t
        results["export_slices"] = summary.n_slices
    print(json.dumps({"slices": args.slices, "size": args.size,
                      **{k: round(v, 3) for k, v in results.items()}}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
