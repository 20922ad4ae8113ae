"""Loading VMamba ImageNet checkpoints into the shared encoder (spec §2 "Pretrained load").

The VMamba v0 (Jan 2024) classification checkpoints (e.g. ``vssmtiny_dp01_ckpt_epoch_292.pth``)
hold ``{"model": state_dict}`` with old names (``ln_1``, ``self_attention``, ``patch_embed.proj``)
and a classifier. Unlike the reference, which prints load failures and silently trains from
random weights, any missing, unexpected or mis-shaped encoder key is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vmambax.errors import DependencyError, ModelFileError

# Token renames (old VMamba / reference names -> ours); applied to every dot-separated part.
_TOKEN_RENAMES = {"ln_1": "norm", "self_attention": "ssm", "op": "ssm"}
_PATCH_EMBED_RENAMES = {"patch_embed.0.": "patch_embed.proj.", "patch_embed.2.": "patch_embed.norm."}
_CLASSIFIER_PREFIXES = ("classifier.", "head.", "norm.")  # top-level norm feeds only the classifier
_FRESH_PREFIXES = ("out_norms.",)  # per-stage out-norms are not in ImageNet checkpoints


def path_problem(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be a model/checkpoint file (missing, a folder), or None if it is a file."""
    if path.is_file():
        return None
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".ckpt"))
        found = (f"; it holds {', '.join(str(path / n) for n in inside[:4])}" if inside else
                 "; `vmambax train` writes RUN_DIR/model.pt")
        return (f"{what} {path} is a folder, not a file: give the model file itself (a .pt "
                f"written by `vmambax train` or `vmambax export`){found}.")
    return f"{what} not found: {path} does not exist. Check the path."


def describe_load_failure(exc: BaseException, path, what: str = "checkpoint") -> str:
    """A user-facing message for a failed ``torch.load(weights_only=True)``.

    A pickle that holds arbitrary Python objects is refused by the weights-only unpickler before
    anything in it runs; that is not damage, and saying "truncated" would send the user looking
    for the wrong problem (or tempt them to load it unsafely).
    """
    import pickle

    text = str(exc)
    # The unpickler's words for "an object it will not build" (vs. a damaged byte stream, which
    # it reports as an unsupported operand or a bad length).
    refused = ("GLOBAL", "allowlisted", "add_safe_globals")
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in text.lower() \
            and any(word in text for word in refused):
        detail = next((ln.strip().rstrip(".") for ln in text.splitlines()
                       if any(word in ln for word in refused)), "")
        detail = detail.split(". Please use")[0][:200]
        return (f"{what} {path} holds Python objects that a weights-only load refuses"
                + (f" ({detail})" if detail else "") + ", so it is not a VMambaX/PyTorch weights "
                "file; it was not executed. Use a file written by `vmambax train`/`vmambax "
                "export` (or the authors' checkpoint); if it is your own file, re-save only its "
                "state dict (tensors).")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return (f"cannot read {what} {path}: {first[:300]}. The file is damaged (corrupt or "
            "truncated) or not a PyTorch file; re-download or re-copy it.")


def safe_torch_load(path, map_location="cpu", what: str = "checkpoint", mmap: bool = False,
                    allow: tuple = ()):
    """``torch.load(weights_only=True)`` with every failure turned into a ModelFileError.

    ``allow``: classes the weights-only unpickler may also build, for this load only (e.g.
    ``argparse.Namespace``, which the authors' checkpoints hold as their hyper-parameters);
    ``torch.serialization.safe_globals`` scopes the permission to this call.
    """
    import contextlib

    path = Path(os.fspath(path)).expanduser()
    problem = path_problem(path, what)
    if problem:
        raise ModelFileError(problem)
    if allow:
        safe_globals = getattr(torch.serialization, "safe_globals", None)
        if safe_globals is None:  # added in torch 2.5
            from vmambax.deps import TORCH

            raise DependencyError(
                f"cannot read {what} {path}: this PyTorch (found {torch.__version__}) is too old to "
                f"load it safely (no torch.serialization.safe_globals); VMambaX needs {TORCH.spec}. "
                f"Update PyTorch (pip install -U \"{TORCH.spec}\", or in 3D Slicer update the "
                f"PyTorch extension).")
        scope = safe_globals(list(allow))
    else:
        scope = contextlib.nullcontext()
    try:
        with scope:
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
            except Exception:
                if not mmap:
                    raise
                # memory-mapping needs the zip format; legacy files load the ordinary way
                return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with disallowed globals, truncated file ...
        raise ModelFileError(describe_load_failure(exc, path, what)) from None


def _rename(key: str) -> str:
    for prefix in ("module.", "backbone.vssm.", "backbone.", "encoder."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    for old, new in _PATCH_EMBED_RENAMES.items():
        if key.startswith(old):
            key = new + key[len(old):]
    parts = [_TOKEN_RENAMES.get(p, p) for p in key.split(".")]
    if parts[0] == "layers":
        parts[0] = "stages"
    return ".".join(parts)


def _describe(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def encoder_state_from_checkpoint(obj) -> dict:
    """The encoder state dict (our names) inside a VMamba checkpoint object."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError("the file holds no state dict of tensors (expected a VMamba checkpoint "
                             "with a 'model' entry).")
    return {_rename(k): v for k, v in obj.items() if not k.startswith(_CLASSIFIER_PREFIXES)}


def load_pretrained_encoder(model_or_encoder: nn.Module, path) -> dict:
    """Load a VMamba ImageNet checkpoint into ``model.encoder`` (or an encoder itself).

    Returns ``{"loaded": n_tensors, "fresh": [...]}``; raises ModelFileError on missing,
    unexpected or mis-shaped keys, naming a few of them.
    """
    encoder = getattr(model_or_encoder, "encoder", model_or_encoder)
    state = encoder_state_from_checkpoint(safe_torch_load(path, what="pretrained encoder checkpoint"))
    own = {k: v for k, v in encoder.state_dict().items() if not k.startswith(_FRESH_PREFIXES)}
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    wrong = [f"{k} {tuple(state[k].shape)} (needs {tuple(own[k].shape)})"
             for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_describe(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_describe(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {', '.join(wrong[:3])}")
    if problems:
        dims = getattr(encoder, "dims", None)
        raise ModelFileError(
            f"{path} does not fit this encoder (dims {dims}): {'; '.join(problems)}. "
            "Use the VMamba v0 ImageNet checkpoint of the same variant (VMamba-T, "
            "vssmtiny_dp01_ckpt_epoch_292.pth, for the vmambax/cipa configs); the encoder was not changed.")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
    return {"loaded": len(state), "fresh": sorted(k for k in encoder.state_dict() if k.startswith(_FRESH_PREFIXES))}
