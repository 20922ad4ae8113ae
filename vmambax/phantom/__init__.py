"""Synthetic PET/CT patients with lung tumours, deterministic by seed: a subject of its own.

The phantom generator is what demos, tests, smoke training and benchmarks run on (no real data
ships with VMambaX). It sits on top of the data layer (it writes volume case folders and DICOM
series with ``vmambax.data``) and nothing in the data layer depends on it.

Modules: ``generator`` (``make_phantom``, ``write_case``, ``save_preview``: the patient, its CT,
PET and label), ``anatomy`` (the thorax: patient parameters and painted layers), ``body`` (the
whole-body extension: head, abdomen, pelvis, thighs), ``lesions`` (tumours and confounders),
``shapes`` (grids, signed distance functions, the painter).
"""

from vmambax.phantom.generator import (Phantom, check_case_id, default_case_id, make_phantom,
                                       preview_slice, save_preview, write_case)

__all__ = ["Phantom", "check_case_id", "default_case_id", "make_phantom", "preview_slice",
           "save_preview", "write_case"]
