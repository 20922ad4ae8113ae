"""Inference: ``Segmenter`` (volume in, label out), file-to-file ``segment_files``, model registry,
JSON report and PNG preview.

Names are imported lazily so that ``vmambax.infer.registry`` (used by ``vmambax models``) does not
pull in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Segmenter": "vmambax.infer.segmenter",
    "SegmentationResult": "vmambax.infer.segmenter",
    "segment_files": "vmambax.infer.pipeline",
    "resolve_device": "vmambax.infer.devices",
    "resolve_model": "vmambax.infer.registry",
    "list_models": "vmambax.infer.registry",
    "add_user_model": "vmambax.infer.registry",
    "remove_user_model": "vmambax.infer.registry",
    "render_preview": "vmambax.infer.preview",
    "build_report": "vmambax.infer.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vmambax.infer' has no attribute {name!r}")
