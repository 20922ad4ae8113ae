"""VMambaX model files: one ``torch.save``d plain dict that loads with ``weights_only=True``.

    {"format": "vmambax-model", "format_version": 1, "config": name, "config_overrides": {...},
     "state_dict": {...}, "preprocessing": {...}, "metadata": {...}}

``load_model_file`` also accepts the reference (authors') checkpoints: a plain state dict or a
Lightning ``{"state_dict": {"model.backbone...": ...}}`` whose config is given or recognised.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import nn

from vmambax.errors import ConfigError, ModelFileError
from vmambax.model.config import config_overrides, get_config, list_configs
from vmambax.model.pretrained import safe_torch_load
from vmambax.model.reference_keys import from_reference_state_dict, is_reference_state_dict
from vmambax.utils import atomic_path, torch_save

FORMAT = "vmambax-model"
FORMAT_VERSION = 1
_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value, where: str):
    """Only plain types go into a model file (so weights-only loading can read it back)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_check_plain(v, where) for v in value]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{where} keys must be strings (got {bad[0]!r}).")
        return {k: _check_plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where} holds a {type(value).__name__}; model files store only str, numbers, "
                      "bools, None, lists and dicts.")


def save_model_file(path, model: nn.Module, *, config_name: str, preprocessing: dict,
                    metadata: dict) -> Path:
    """Write ``model`` (atomically) with its config name, the config fields in which it differs
    from that named config, and the preprocessing/metadata dicts (plain types only)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError("save_model_file needs a VMambaX model (built with build_model).")
    overrides = config_overrides(config_name, config)
    overrides.pop("pretrained_encoder", None)  # the weights are in the file
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_name,
        "config_overrides": _check_plain(overrides, "config_overrides"),
        "preprocessing": _check_plain(dict(preprocessing), "preprocessing"),
        "metadata": _check_plain(dict(metadata), "metadata"),
        "state_dict": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()},
    }
    path = Path(os.fspath(path)).expanduser()
    with atomic_path(path) as tmp:
        torch_save(payload, tmp)
    return path


def _read(path, map_location="cpu", mmap=False):
    obj = safe_torch_load(path, map_location=map_location, what="model file", mmap=mmap)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(f"{path} is a VMambaX model file of format version {version}; this "
                                 f"VMambaX reads up to version {FORMAT_VERSION}. Update VMambaX.")
        missing = [k for k in ("config", "state_dict") if k not in obj]
        if missing:
            raise ModelFileError(f"{path} is an incomplete VMambaX model file (no {', '.join(missing)}).")
        return obj
    if is_reference_state_dict(obj):
        return {"format": "reference", "format_version": 0, "config": None, "config_overrides": {},
                "preprocessing": {}, "metadata": {}, "state_dict": from_reference_state_dict(obj)}
    raise ModelFileError(f"{path} is not a VMambaX model file (nor a reference vMambaX checkpoint). "
                         "Use a file written by `vmambax train`/`vmambax export`, or the authors' checkpoint.")


def model_file_info(path) -> dict:
    """The file's format, config, overrides, preprocessing, metadata and parameter count, without
    building the model."""
    obj = _read(path, mmap=True)
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    info["num_parameters"] = int(sum(v.numel() for k, v in obj["state_dict"].items()
                                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))))
    return info


@functools.lru_cache(maxsize=None)
def _signature(name: str, config) -> dict:
    """{key: shape} of a configuration's state dict, built on the meta device (no memory)."""
    from vmambax.model.network import VMambaX

    with torch.device("meta"):
        model = VMambaX(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _matching_configs(state: dict) -> list[str]:
    """Registered configurations whose weights have exactly these names and shapes."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return [n for n in list_configs() if _signature(n, get_config(n)) == shapes]


def load_model_file(path, map_location="cpu", config: str | None = None):
    """-> (model in eval mode, info dict). ``config`` names the config of a reference checkpoint
    (recognised from its weights when omitted) or overrides a model file's own."""
    from vmambax.model.network import VMambaX

    obj = _read(path, map_location=map_location)
    state = obj["state_dict"]
    name = config or obj["config"]
    overrides = dict(obj.get("config_overrides") or {}) if name == obj["config"] else {}
    if name is None:
        found = _matching_configs(state)
        if not found:
            raise ModelFileError(f"{path} is a reference checkpoint that matches none of the configs "
                                 f"{', '.join(list_configs())}; pass the config explicitly.")
        name = found[0]
    try:
        cfg = get_config(name, **{**overrides, "pretrained_encoder": None})
    except ConfigError as exc:
        raise ModelFileError(f"{path} needs model configuration '{name}', which cannot be built: {exc}") from None
    model = VMambaX(cfg)
    model.config_name = name
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        fits = [n for n in _matching_configs(state) if n != name]
        hint = f" It looks like a '{fits[0]}' model." if fits else ""
        details = "; ".join(f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                            (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", wrong)) if v)
        raise ModelFileError(f"the weights in {path} do not fit configuration '{name}': {details}.{hint} "
                             "Pick the configuration the model was trained with.")
    model.load_state_dict(state)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    info.update(config=name, path=str(path))
    return model, info
