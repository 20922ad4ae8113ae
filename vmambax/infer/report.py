"""The JSON report of one segmentation run (inputs, model, device, timings, lesion table)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import platform

import numpy as np

REPORT_FORMAT = "vmambax-segmentation-report"
REPORT_VERSION = 1
DISCLAIMER = ("Research software, not for clinical use: the segmentation and the measurements "
              "must be reviewed by a qualified reader.")


def image_summary(image, path: str | None = None) -> dict:
    """Path, size, spacing, origin and direction of a SimpleITK image, for the report."""
    return {"path": path, "size": list(image.GetSize()),
            "spacing_mm": [round(float(s), 6) for s in image.GetSpacing()],
            "origin_mm": [round(float(o), 4) for o in image.GetOrigin()],
            "direction": [round(float(d), 6) for d in image.GetDirection()]}


def build_report(result, *, inputs: dict, pet: dict | None = None, outputs: dict | None = None,
                 timings: dict | None = None) -> dict:
    """Assemble the report dict from a ``SegmentationResult`` and the caller's context.

    ``inputs``: e.g. {"ct": image_summary(...), "pet": {...}}; ``pet``: units and SUV-factor
    source; ``timings``: extra stage times (load, write) merged with the engine's.
    """
    import vmambax

    # The engine's "total" covers preprocess..quantify; the caller's stages (load, write) and the
    # PET resampling add to it unless the caller measured the whole run itself.
    all_timings = dict(result.timings)
    extra = dict(timings or {})
    all_timings.update(extra)
    if "total" not in extra:
        outside = sum(all_timings.get(k, 0.0) for k in ("load", "resample", "write"))
        all_timings["total"] = round(result.timings["total"] + outside, 4)
    order = ("model_load", "load", "resample", "preprocess", "slice_selection", "inference", "postprocess",
             "quantify", "write", "total")
    all_timings = {k: all_timings[k] for k in sorted(
        all_timings, key=lambda k: order.index(k) if k in order else len(order) - 1)}
    inference = result.timings.get("inference", 0.0)
    return {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "vmambax_version": vmambax.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "note": DISCLAIMER,
        "inputs": inputs,
        "pet": pet or {},
        "model": result.model,
        "device": result.device,
        "scan_backend": result.scan_backend,
        "batch_size": result.batch_size,
        "amp": result.amp,
        "torch_version": _torch_version(),
        "python": platform.python_version(),
        "slices": result.n_slices,
        "slices_run": result.n_slices_run,
        "slice_selection": result.slice_selection,
        "slices_per_second": round(result.n_slices_run / inference, 3) if inference > 0 else None,
        "timings_s": all_timings,
        "outputs": outputs or {},
        "totals": {k: round(v, 4) if isinstance(v, float) else v for k, v in result.totals.items()},
        "lesions": result.lesions,
    }


def _torch_version() -> str:
    import torch

    return torch.__version__


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; e.g. SUVpeak of an empty mask
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return obj


def report_json(report: dict) -> str:
    """Strict JSON text (numpy scalars converted, NaN/inf written as null)."""
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False)
    # Keep short numeric lists (sizes, spacings, directions, centroids) on one line.
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                            text) + "\n"


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+,?\s*)+)\]")
