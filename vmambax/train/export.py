"""Turn a training checkpoint into the slim inference model file (``vmambax.model.checkpoint``)."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vmambax
from vmambax.errors import ModelFileError

MODEL_PREFIX = "model."


def preprocessing_parameters(image_size: int | None = None) -> dict[str, Any]:
    """The preprocessing the weights expect (from the one shared implementation), at the slice
    size they were trained on (inference resizes slices to it)."""
    from vmambax.data.preprocess import IMAGE_SIZE, preprocessing_info

    return {**preprocessing_info(int(image_size or IMAGE_SIZE)), "inputs": ["ct", "pet"], "threshold": 0.5}


def git_commit() -> str | None:
    """The source checkout's commit (+ "-dirty" with uncommitted changes to vmambax/), when
    VMambaX runs from a git checkout; else None."""
    root = Path(vmambax.__file__).resolve().parent.parent

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git("status", "--porcelain", "--", "vmambax") else "")


def model_state_from_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The network's weights from a Lightning training checkpoint (weights-only load)."""
    from vmambax.model.pretrained import safe_torch_load

    # ModelFileError for a missing file, a folder, a truncated or foreign file, a refused pickle
    ckpt = safe_torch_load(path, what="training checkpoint")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not state:
        raise ModelFileError(f"{path} is not a VMambaX training checkpoint (no state_dict).")
    return {k[len(MODEL_PREFIX):]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def export_model_file(out_path: str | Path, model: nn.Module, *, config_name: str,
                      checkpoint: str | Path | None = None, metadata: dict | None = None,
                      image_size: int | None = None, preprocessing: dict | None = None) -> Path:
    """Write ``out_path`` from ``model`` (a VMambaX of the run's config), loading the weights of
    ``checkpoint`` into it first when given. ``preprocessing``: the model's InputSpec as a dict
    (default the papers' at ``image_size``). Atomic (save_model_file writes via a temp file)."""
    from vmambax.model.checkpoint import save_model_file

    if checkpoint is not None:
        model.load_state_dict(model_state_from_checkpoint(checkpoint))
    meta = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "vmambax_version": vmambax.__version__,
        "torch_version": str(torch.__version__),
        "git_commit": git_commit(),
        **(metadata or {}),
    }
    return save_model_file(out_path, model, config_name=config_name,
                           preprocessing=preprocessing or preprocessing_parameters(image_size),
                           metadata=meta)
