"""File to file: CT + PET paths in; label, JSON report and PNG preview out (``vmambax segment``).

Order matters for the "nothing half-written" rule: cheap checks first (inputs exist, output
formats, no accidental overwrite, folders writable), then the model (checksum, architecture),
then the images (swapped PET/CT, non-overlap), then the segmentation; outputs are staged under
temporary names and renamed into place only when all of them were written successfully.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from vmambax.errors import InputError
from vmambax.utils import atomic_group, plural

LABEL_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
DICOM_SEG_SUFFIX = ".dcm"


@dataclass
class OutputPlan:
    label: Path
    report: Path | None
    preview: Path | None
    dicom_seg: bool

    def paths(self) -> list[Path]:
        return [p for p in (self.label, self.report, self.preview) if p is not None]


def is_dicom_input(path: Path) -> bool:
    """A DICOM series is given as its folder (or one of its .dcm files)."""
    return path.is_dir() or path.suffix.lower() == ".dcm"


def label_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in LABEL_SUFFIXES + (DICOM_SEG_SUFFIX,):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def _check_writable(path: Path) -> None:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: folder {parent} is not writable; choose another "
                         f"output location")


def plan_outputs(output, report=None, preview=None, *, ct_path: Path, pet_path: Path,
                 overwrite: bool = False) -> OutputPlan:
    """Validate the output paths before any work is done."""
    label = Path(output).expanduser()
    suffix = label_suffix(label)
    if suffix is None:
        raise InputError(f"unsupported output {label}: name the label file with one of "
                         f"{', '.join(LABEL_SUFFIXES)}, or {DICOM_SEG_SUFFIX} for a DICOM SEG "
                         f"(DICOM inputs only)")
    dicom_seg = suffix == DICOM_SEG_SUFFIX
    if dicom_seg and not is_dicom_input(ct_path):
        raise InputError(f"a DICOM SEG output ({label.name}) needs the CT as a DICOM series "
                         f"folder (it references the CT's instances); write .nii.gz or .nrrd instead")
    plan = OutputPlan(label=label,
                      report=Path(report).expanduser() if report else None,
                      preview=Path(preview).expanduser() if preview else None,
                      dicom_seg=dicom_seg)
    if plan.report and plan.report.suffix.lower() != ".json":
        raise InputError(f"--report {plan.report} must end in .json")
    if plan.preview and plan.preview.suffix.lower() != ".png":
        raise InputError(f"--preview {plan.preview} must end in .png")
    inputs = {ct_path.resolve(), pet_path.resolve()}
    for path in plan.paths():
        if path.resolve() in inputs or any(i in path.resolve().parents for i in inputs):
            raise InputError(f"output {path} would overwrite an input; choose another name")
        if path.exists() and not overwrite:
            raise InputError(f"output {path} already exists; pass --overwrite to replace it or "
                             f"choose another name")
        if path.is_dir():
            raise InputError(f"output {path} is a folder; give a file name")
        _check_writable(path)
    return plan


def check_inputs(ct_path, pet_path) -> tuple[Path, Path]:
    from vmambax.data.case import check_distinct_inputs

    ct, pet = Path(ct_path).expanduser(), Path(pet_path).expanduser()
    for name, path in (("CT", ct), ("PET", pet)):
        if not path.exists():
            raise InputError(f"{name} input {path} does not exist; give a NIfTI/NRRD/MHA file or a "
                             f"DICOM series folder")
    check_distinct_inputs(ct, pet)
    return ct, pet


class _Stages:
    """Maps the stages (load, segment, write) onto one 0..1 progress scale."""

    def __init__(self, progress):
        self.progress = progress
        self.last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self.last = max(self.last, fraction)
        if self.progress:
            self.progress(self.last, message)

    def scaled(self, lo: float, hi: float):
        return lambda f, m: self(lo + (hi - lo) * f, m)


def segment_files(ct_path, pet_path, output, *, report=None, preview=None, model="default",
                  device="auto", batch_size=None, pet_units="auto", weight_kg=None,
                  dose_mbq=None, uptake_minutes=None, overwrite=False, threads=None, amp=None,
                  compile=False, progress=None, cancel=None, segmenter=None, all_slices=False,
                  ct_series_uid=None, pet_series_uid=None, allow_different_patients=False):
    """Segment one PET/CT pair from files and write the outputs. Returns ``(result, report)``.

    ``segmenter`` reuses an already loaded ``Segmenter`` (batch scripts over many cases).
    ``ct_series_uid``/``pet_series_uid`` pick a series in a DICOM folder that holds several;
    ``allow_different_patients`` accepts DICOM CT and PET of different PatientIDs.
    ``report["warnings"]`` lists what the user must be told (the CLI prints it on stderr).
    Raises a ``VMambaXError`` (nothing written) for every user-fixable problem.
    """
    from vmambax.data.case import load_pet_ct
    from vmambax.infer.report import build_report, image_summary, report_json
    from vmambax.infer.segmenter import Segmenter

    t_all = time.perf_counter()
    stages = _Stages(progress)
    ct_path, pet_path = check_inputs(ct_path, pet_path)
    plan = plan_outputs(output, report, preview, ct_path=ct_path, pet_path=pet_path,
                        overwrite=overwrite)

    t = time.perf_counter()
    stages(0.0, "Loading the model")
    own_segmenter = segmenter is None
    if own_segmenter:
        segmenter = Segmenter(model, device=device, batch_size=batch_size, amp=amp,
                              threads=threads, compile=compile, cancel=cancel,
                              all_slices=all_slices)
    t_model = time.perf_counter() - t

    t = time.perf_counter()
    stages(0.02, "Reading CT and PET")
    case = load_pet_ct(ct_path, pet_path, pet_units=pet_units, weight_kg=weight_kg,
                       dose_mbq=dose_mbq, uptake_minutes=uptake_minutes,
                       ct_series_uid=ct_series_uid, pet_series_uid=pet_series_uid,
                       allow_different_patients=allow_different_patients)
    t_load = time.perf_counter() - t

    own_progress, segmenter.progress = segmenter.progress, stages.scaled(0.1, 0.9)
    try:
        result = segmenter.segment(case.ct, case.pet_suv)
    finally:
        segmenter.progress = own_progress

    stages(0.9, "Writing outputs")
    t = time.perf_counter()
    png = None
    if plan.preview:
        from vmambax.infer.preview import render_preview

        png = render_preview(case.ct, case.pet_suv, result.label, result.lesions,
                             title=f"VMambaX - CT {'/'.join(ct_path.resolve().parts[-3:])} - "
                                   f"model {result.model_name}")
    report_data = build_report(
        result,
        inputs={"ct": image_summary(case.ct, str(ct_path)),
                "pet": image_summary(case.pet_suv_native, str(pet_path))},
        pet=_pet_info(case, pet_units),
        outputs={"label": str(plan.label), "label_format": "DICOM SEG" if plan.dicom_seg
                 else label_suffix(plan.label), "report": str(plan.report) if plan.report else None,
                 "preview": str(plan.preview) if plan.preview else None},
        timings={**({"model_load": round(t_model, 4)} if own_segmenter else {}),
                 "load": round(t_load, 4), "write": 0.0})
    report_data["warnings"] = list(dict.fromkeys(case.warnings + result.warnings))
    _write_all(plan, result, case, png, report_data, report_json, t, t_all)
    stages(1.0, f"Done: {plural(len(result.lesions), 'lesion')}")
    return result, report_data


def _version() -> str:
    import vmambax

    return vmambax.__version__


def _write_all(plan, result, case, png, report_data, report_json, t_write, t_all) -> None:
    """Stage every output under a temporary name, verify all, then rename all into place (or
    none): a full disk never leaves a new report next to an old label."""
    from vmambax.data.io import write_label

    targets = [plan.label] + ([plan.preview] if png is not None else []) + ([plan.report] if plan.report else [])
    with atomic_group(targets) as staged:
        tmp_label = staged[0]
        if plan.dicom_seg:
            write_label(result.label, tmp_label, reference=case.ct_dicom_dir,
                        series_uid=case.ct_series_uid,
                        algorithm_version=f"{result.model_name} (vmambax {_version()})")
        else:
            write_label(result.label, tmp_label)
        if png is not None:
            staged[1].write_bytes(png)
        if plan.report:
            report_data["timings_s"]["write"] = round(time.perf_counter() - t_write, 4)
            report_data["timings_s"]["total"] = round(time.perf_counter() - t_all, 4)
            staged[-1].write_text(report_json(report_data), encoding="utf-8")
    report_data["timings_s"]["write"] = round(time.perf_counter() - t_write, 4)
    report_data["timings_s"]["total"] = round(time.perf_counter() - t_all, 4)


def _pet_info(case, pet_units) -> dict:
    """PET units and where the SUV factor came from (DICOM tags, by hand, or already SUV)."""
    suv = case.suv
    info = {"units_requested": pet_units,
            "source_units": suv.units if suv is not None else "SUV",
            "suv_factor": suv.factor if suv is not None else None,
            "suv_factor_source": suv.method if suv is not None else "input already in SUV",
            "from_dicom": case.pet_is_dicom,
            "pet_covers_ct_fraction": round(float(case.overlap), 4),
            "notes": list(case.warnings)}
    if suv is not None:
        info.update(weight_kg=suv.weight_kg, dose_mbq=None if suv.dose_bq is None
                    else round(suv.dose_bq / 1e6, 4), elapsed_s=suv.elapsed_s,
                    decay_correction=suv.decay_correction)
    return info
