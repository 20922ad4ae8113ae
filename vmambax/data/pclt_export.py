"""Exporting volumes + labels to the PCLT20K slice layout, so that the real PCLT20K and cases
annotated in 3D Slicer feed training the same way.

Per case: the PET is resampled onto the CT (``case.make_case``: same checks as inference), the
volumes are turned into 512x512 uint8 slices by ``preprocess.volume_to_slices`` (the function
inference uses) and the label by ``preprocess.mask_to_slices``. Written slices: every slice with
tumour, plus ``negatives_per_positive`` x as many tumour-free slices drawn at random (seeded per
case), preferably among slices that show lung (>= 2 % of pixels in [-950, -500] HU), since
that is where the network must learn to say "no tumour"; a case without tumour contributes
``negatives_per_positive`` slices, at least one.

Case IDs become PCLT folder names, so any character other than letters, digits, ``.`` and ``-``
(the underscore in particular, which separates patient and slice in PCLT IDs) is replaced by
``-``. IDs are ``<case>_<slice:04d>`` with the slice index along the axial (inferior to superior)
array. Splits are by case (= patient): ``test_ids`` -> test.txt, a seeded ``val_fraction`` of
the remaining cases -> val.txt, the rest -> train.txt. ``export.json`` records the settings and
each case's pixel size at network resolution (for HD95 in mm).

Everything is written to a temporary folder that replaces ``out_root`` only when all cases
succeeded.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmambax.data.case import make_case
from vmambax.data.io import as_binary_label, read_image, read_label, read_pet_info
from vmambax.data.orientation import image_axis_map
from vmambax.data.pclt import split_patients, write_png, write_split
from vmambax.data.preprocess import IMAGE_SIZE, mask_to_slices, preprocessing_info, volume_to_slices
from vmambax.errors import InputError
from vmambax.utils import atomic_dir

LUNG_HU = (-950.0, -500.0)
LUNG_MIN_FRACTION = 0.02
CT_NAMES = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "dicom/ct")
PET_NAMES = ("pet.nii.gz", "pet.nii", "pet.nrrd", "pet.mha", "dicom/pet")
# label.dcm: an RTSTRUCT (contours, placed by patient mm) or a DICOM SEG (vmambax.data.dicom_label)
LABEL_NAMES = ("label.nii.gz", "label.nii", "label.nrrd", "label.mha", "label.seg.nrrd", "label.dcm")


@dataclasses.dataclass
class VolumeCase:
    """One case to export: CT (HU), PET (SUV, any grid) and label (CT grid, 0/1)."""

    case_id: str
    ct: Any
    pet_suv: Any
    label: Any
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. from reading label.dcm


@dataclasses.dataclass
class ExportSummary:
    root: Path
    splits: dict[str, list[str]]  # case IDs per split
    n_slices: int
    n_positive: int
    warnings: list[str]

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        return (f"Exported {sum(len(v) for v in self.splits.values())} cases ({counts}) as "
                f"{self.n_slices} slices ({self.n_positive} with tumour) to {self.root}")


def sanitize_case_id(case_id: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9.-]+", "-", str(case_id)).strip("-.")
    if not clean:
        raise InputError(f"Case ID {case_id!r} has no letters or digits; rename the case.")
    return clean


def lung_slices(ct_axial_hu: np.ndarray) -> np.ndarray:
    """Boolean per axial slice: does it show lung?"""
    lo, hi = LUNG_HU
    inside = (ct_axial_hu >= lo) & (ct_axial_hu <= hi)
    return inside.reshape(inside.shape[0], -1).mean(axis=1) >= LUNG_MIN_FRACTION


def select_slices(positive: np.ndarray, lung: np.ndarray, negatives_per_positive: float,
                  rng: random.Random) -> list[int]:
    """Indices to export: all positive slices plus sampled negatives (lung slices first)."""
    if negatives_per_positive < 0:
        raise InputError(f"negatives_per_positive {negatives_per_positive} must be >= 0.")
    pos = [int(k) for k in np.flatnonzero(positive)]
    n_neg = round(negatives_per_positive * max(len(pos), 1))
    negatives = np.flatnonzero(~positive)
    preferred = [int(k) for k in negatives if lung[k]]
    others = [int(k) for k in negatives if not lung[k]]
    rng.shuffle(preferred)
    rng.shuffle(others)
    return sorted(pos + (preferred + others)[:n_neg])


def _prepare_target(out_root: Path, overwrite: bool) -> None:
    if out_root.exists():
        if not out_root.is_dir():
            raise InputError(f"{out_root} exists and is not a folder; choose another output.")
        if any(out_root.iterdir()) and not overwrite:
            raise InputError(f"{out_root} is not empty; choose a new folder or pass --overwrite "
                             "(overwrite=True) to replace it.")


def _export_one(case: VolumeCase, cid: str, tmp: Path, size: int, ratio: float, seed: int,
                warnings_out: list[str]) -> tuple[list[str], int, dict]:
    import SimpleITK as sitk

    label = as_binary_label(case.label, case.ct, f"The label of case {case.case_id}")
    pct = make_case(case.ct, case.pet_suv)
    warnings_out += [f"{case.case_id}: {w}" for w in list(case.notes) + list(pct.warnings)]
    axes = image_axis_map(pct.ct)
    ct_ax = axes.to_axial(sitk.GetArrayViewFromImage(pct.ct))
    pet_ax = axes.to_axial(sitk.GetArrayViewFromImage(pct.pet_suv))
    label_ax = axes.to_axial(sitk.GetArrayViewFromImage(label))
    positive = label_ax.reshape(label_ax.shape[0], -1).any(axis=1)
    chosen = select_slices(positive, lung_slices(ct_ax), ratio, random.Random(f"{seed}:{cid}"))
    ct_u8, pet_u8, geometry = volume_to_slices(ct_ax[chosen], pet_ax[chosen], size)
    masks = mask_to_slices(label_ax[chosen], geometry)
    folder = tmp / cid
    folder.mkdir()
    ids = []
    for n, k in enumerate(chosen):
        sample_id = f"{cid}_{k:04d}"
        write_png(folder / f"{sample_id}_CT.png", ct_u8[n])
        write_png(folder / f"{sample_id}_PET.png", pet_u8[n])
        write_png(folder / f"{sample_id}_mask.png", masks[n] * np.uint8(255))
        ids.append(sample_id)
    spacing = axes.axial_spacing(pct.ct.GetSpacing())
    scale = max(ct_ax.shape[1:]) / size
    info = {"source_id": str(case.case_id), "slices_total": int(ct_ax.shape[0]),
            "slices_exported": len(chosen), "slices_with_tumour": int(positive.sum()),
            "slice_thickness_mm": spacing[0],
            "pixel_mm_at_network_size": [spacing[1] * scale, spacing[2] * scale],
            "pet_overlap": round(pct.overlap, 4)}
    return ids, int(positive[chosen].sum()), info


def export_cases(cases: Iterable[VolumeCase], out_root, *, test_ids: Sequence[str] = (),
                 val_fraction: float = 0.1, negatives_per_positive: float = 1.0, seed: int = 0,
                 size: int = IMAGE_SIZE, overwrite: bool = False,
                 extra_info: dict | None = None) -> ExportSummary:
    """Write ``cases`` to ``out_root`` in the PCLT20K layout (see the module docstring).
    ``extra_info``: more plain fields for export.json (e.g. the trainer's source key)."""
    out_root = Path(out_root)
    _prepare_target(out_root, overwrite)
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"Validation fraction {val_fraction} must be in [0, 1).")
    if negatives_per_positive < 0:
        raise InputError(f"negatives_per_positive {negatives_per_positive} must be >= 0.")
    # Staged, every file verified, then swapped in (the old export, if any, removed last).
    with atomic_dir(out_root, replace=True) as tmp:
        sample_ids: dict[str, list[str]] = {}
        manifest: dict[str, dict] = {}
        notes: list[str] = []
        n_slices = n_positive = 0
        for case in cases:
            cid = sanitize_case_id(case.case_id)
            if cid in sample_ids:
                raise InputError(f"Two cases map to the folder name {cid!r} (case IDs "
                                 f"{manifest[cid]['source_id']!r} and {case.case_id!r}); give "
                                 "them distinct IDs.")
            ids, pos, info = _export_one(case, cid, tmp, size, negatives_per_positive, seed,
                                         notes)
            sample_ids[cid], manifest[cid] = ids, info
            n_slices, n_positive = n_slices + len(ids), n_positive + pos
        if not sample_ids:
            raise InputError("No cases to export.")
        wanted = {sanitize_case_id(t): t for t in test_ids}
        unknown = [t for c, t in wanted.items() if c not in sample_ids]
        if unknown:
            raise InputError(f"Test case(s) {', '.join(map(str, unknown))} are not among the "
                             f"exported cases ({', '.join(sorted(sample_ids)[:10])}...).")
        test = [c for c in sample_ids if c in wanted]
        rest = [c for c in sample_ids if c not in wanted]
        train, val = split_patients(rest, val_fraction, seed, group=lambda c: c)
        splits = {"train": train, "val": val, "test": test}
        for name, members in splits.items():
            write_split(tmp / f"{name}.txt", [i for c in members for i in sample_ids[c]])
            for c in members:
                manifest[c]["split"] = name
        from vmambax import __version__

        (tmp / "export.json").write_text(json.dumps({
            "format": "pclt20k", "created_by": f"vmambax {__version__}",
            "preprocessing": preprocessing_info(size),
            "negatives_per_positive": negatives_per_positive, "val_fraction": val_fraction,
            "seed": seed, "cases": manifest, "warnings": notes, **(extra_info or {})}, indent=1))
    return ExportSummary(out_root, splits, n_slices, n_positive, notes)


# ------------------------------------------------------------------------- volume case folders
def _first(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).exists():
            return folder / name
    return None


def find_case_folders(cases_dir) -> list[tuple[str, dict[str, Path]]]:
    """``[(case_id, {"ct", "pet", "label"})]`` for the volume case folders under ``cases_dir``.

    A case folder holds ``ct.nii.gz`` (HU), ``pet.nii.gz`` (SUV) and ``label.nii.gz`` (CT grid);
    .nii/.nrrd/.mha and ``dicom/ct``, ``dicom/pet`` work too. ``cases_dir`` may itself be one.
    """
    cases_dir = Path(cases_dir)
    if not cases_dir.is_dir():
        raise InputError(f"Case folder {cases_dir} does not exist or is not a folder.")
    candidates = [cases_dir] + sorted(p for p in cases_dir.iterdir() if p.is_dir())
    found, incomplete = [], []
    for folder in candidates:
        paths = {"ct": _first(folder, CT_NAMES), "pet": _first(folder, PET_NAMES),
                 "label": _first(folder, LABEL_NAMES)}
        present = [k for k, v in paths.items() if v is not None]
        if len(present) == 3:
            found.append((folder.name, paths))  # type: ignore[arg-type]
        elif present and folder != cases_dir:
            missing = [k for k in paths if paths[k] is None]
            incomplete.append(f"{folder.name} (no {', '.join(missing)})")
    if incomplete:
        raise InputError(f"Incomplete case folder(s) in {cases_dir}: {'; '.join(incomplete)}. "
                         "Each case needs ct.nii.gz, pet.nii.gz (SUV) and label.nii.gz (or label.dcm: "
                         "an RTSTRUCT or DICOM SEG).")
    if not found:
        raise InputError(f"No case folders in {cases_dir}: expected {cases_dir}/<case_id>/ with "
                         "ct.nii.gz (HU), pet.nii.gz (SUV) and label.nii.gz (CT grid).")
    return found


def load_case_folder(case_id: str, paths: dict[str, Path], pet_units: str = "auto") -> VolumeCase:
    ct = read_image(paths["ct"], modality="CT", what=f"The CT of case {case_id}")
    pet = read_pet_info(paths["pet"], pet_units).image
    if paths["label"].name.lower().endswith(".dcm"):
        label, notes = _dicom_label(case_id, paths, ct)
        return VolumeCase(case_id, ct, pet, label, notes)
    label = read_label(paths["label"], ct, what=f"The label of case {case_id}")
    return VolumeCase(case_id, ct, pet, label)


def _dicom_label(case_id: str, paths: dict[str, Path], ct):
    """label.dcm (RTSTRUCT or SEG) on the case's CT grid. Its frame of reference is checked
    against the case's DICOM CT (the ct path itself, or dicom/ct next to a ct.nii.gz)."""
    from vmambax.data.dicom_label import frame_of_reference_of, read_dicom_label

    folder = paths["label"].parent
    ct_dicom = paths["ct"] if (paths["ct"].is_dir() or paths["ct"].suffix.lower() == ".dcm") \
        else folder / "dicom" / "ct"
    uid = frame_of_reference_of(ct_dicom) if ct_dicom.exists() else None
    option = (f"`vmambax import --ct {paths['ct']} --rtstruct {paths['label']} --roi NAME "
              f"-o {folder / 'label.nii.gz'}` (and remove label.dcm)")
    imported = read_dicom_label(paths["label"], ct, frame_of_reference_uid=uid, option=option)
    if not imported.voxels:
        raise InputError(f"The label.dcm of case {case_id} ({imported.kind} {imported.structure.name!r}) "
                         "covers no voxel of the CT; check that it belongs to this CT.")
    return imported.label, [f"label.dcm {imported.kind} {imported.structure.name!r}: {n}"
                            for n in imported.notes]


def export_case_folders(cases_dir, out_root, *, test_ids: Sequence[str] = (),
                        test_fraction: float = 0.0, val_fraction: float = 0.1,
                        negatives_per_positive: float = 1.0, seed: int = 0,
                        size: int = IMAGE_SIZE, overwrite: bool = False,
                        extra_info: dict | None = None) -> ExportSummary:
    """Export the volume case folders under ``cases_dir`` to the PCLT layout in ``out_root``.

    ``test_fraction`` (0..1) picks that share of cases for the test split (seeded) when
    ``test_ids`` is empty. Cases are read one at a time.
    """
    folders = find_case_folders(cases_dir)
    out_root = Path(out_root)
    _prepare_target(out_root, overwrite)
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"Test fraction {test_fraction} must be in [0, 1).")
    if not test_ids and test_fraction > 0:
        _, test_ids = split_patients([c for c, _ in folders], test_fraction, seed + 1,
                                     group=lambda c: c)
    return export_cases((load_case_folder(c, p) for c, p in folders), out_root,
                        test_ids=test_ids, val_fraction=val_fraction,
                        negatives_per_positive=negatives_per_positive, seed=seed, size=size,
                        overwrite=overwrite, extra_info=extra_info)
