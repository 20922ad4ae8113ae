"""VMambaX model files: one ``torch.save``d plain dict that loads with ``weights_only=True``.

    {"format": "vmambax-model", "format_version": 1, "config": name, "config_overrides": {...},
     "state_dict": {...}, "preprocessing": {...}, "metadata": {...}}

``load_model_file`` also accepts the reference (authors') checkpoints in every layout their code
writes (``reference_keys``: plain, Lightning, ``{"model", "args"}``), vMambaX's and CIPA's. Their
``argparse.Namespace`` hyper-parameters are the one class allowed beyond weights-only types.

Ablations: the reference builds (and saves) CGM and DCIM even when a model was trained with them
switched off, as its README's commands do. So a vMambaX-shaped authors' checkpoint may be the
full model or any ablation, and the weights cannot tell which. With ``config`` naming an ablation
the weights of the modules it does not build are dropped (and listed); recognised without a
config, the file loads as the full model only with a warning saying so, unless the checkpoint
records the training flags (``use_cgm``/``use_dcim`` in its hyper-parameters or ``args``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from vmambax.errors import ConfigError, ModelFileError
from vmambax.model.config import config_overrides, get_config, list_configs
from vmambax.model.pretrained import safe_torch_load
from vmambax.model.reference_keys import (from_reference_state_dict, is_reference_state_dict,
                                          reference_layout)
from vmambax.utils import atomic_path, torch_save

FORMAT = "vmambax-model"
#: Version 1: one network with the papers' inputs (older VMambaX reads it). Version 2 adds
#: ensembles (``members``) and model-defined inputs (``InputSpec``: windows, context, test-time
#: flips, post-processing); older readers refuse it instead of feeding it the wrong inputs.
FORMAT_VERSION = 2
_PLAIN = (str, int, float, bool, type(None))
# The only class allowed beyond weights-only types: the authors' hyper-parameters / args.
REFERENCE_SAFE_GLOBALS = (argparse.Namespace,)
# Modules a configuration builds only when its switch is on (prefix of our state-dict keys).
_OPTIONAL_MODULES = (("cgm.", "use_cgm"), ("dcim.", "use_dcim"), ("crm.", "use_crm"))


class ReferenceCheckpointWarning(UserWarning):
    """An authors' checkpoint was loaded with a guessed configuration, or lost unused weights."""


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


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _file_version(preprocessing: dict, ensemble: bool) -> int:
    """1 when an older VMambaX reads the file correctly (one network, the papers' inputs)."""
    from vmambax.data.input_spec import InputSpec

    spec = InputSpec.from_dict(preprocessing)
    plain = spec.is_paper and spec.tta == "none" and spec.postprocess == "none"
    return 1 if plain and not ensemble else FORMAT_VERSION


def save_model_file(path, model: nn.Module, *, config_name: str, preprocessing: dict,
                    metadata: dict) -> Path:
    """Write ``model`` (atomically) with its config name, the config fields in which it differs
    from that named config, and the preprocessing/metadata dicts (plain types only).

    An ``Ensemble`` is stored as its members' weights (``members``; ``state_dict`` is the first
    member's, the same tensors, so they are stored once)."""
    from vmambax.model.ensemble import Ensemble

    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError("save_model_file needs a VMambaX model (built with build_model).")
    overrides = config_overrides(config_name, config)
    overrides.pop("pretrained_encoder", None)  # the weights are in the file
    members = [_cpu_state(m) for m in model.members] if isinstance(model, Ensemble) else None
    payload = {
        "format": FORMAT,
        "format_version": _file_version(preprocessing, members is not None),
        "config": config_name,
        "config_overrides": _check_plain(overrides, "config_overrides"),
        "preprocessing": _check_plain(dict(preprocessing), "preprocessing"),
        "metadata": _check_plain(dict(metadata), "metadata"),
        "state_dict": members[0] if members else _cpu_state(model),
    }
    if members:
        payload["members"] = members
    path = Path(os.fspath(path)).expanduser()
    with atomic_path(path) as tmp:
        torch_save(payload, tmp)
    return path


def _recorded_flags(obj) -> dict:
    """``{"use_cgm": bool, "use_dcim": bool}`` when the authors' run recorded both (Lightning
    ``hyper_parameters`` or the ``args`` Namespace, possibly one level down), else ``{}``."""
    found: dict = {}

    def visit(value, depth: int) -> None:
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        if not isinstance(value, dict) or depth > 2:
            return
        for key in ("use_cgm", "use_dcim"):
            if isinstance(value.get(key), bool):
                found.setdefault(key, value[key])
        for sub in value.values():
            visit(sub, depth + 1)

    if isinstance(obj, dict):
        for key in ("hyper_parameters", "hparams", "args"):
            visit(obj.get(key), 0)
    return found if len(found) == 2 else {}


def _read(path, map_location="cpu", mmap=False):
    obj = safe_torch_load(path, map_location=map_location, what="model file", mmap=mmap,
                          allow=REFERENCE_SAFE_GLOBALS)
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
                "preprocessing": {}, "metadata": {}, "layout": reference_layout(obj),
                "recorded_flags": _recorded_flags(obj), "state_dict": from_reference_state_dict(obj)}
    raise ModelFileError(f"{path} is not a VMambaX model file (nor a reference vMambaX checkpoint). "
                         "Use a file written by `vmambax train`/`vmambax export`, or the authors' checkpoint.")


def model_file_info(path) -> dict:
    """The file's format, config, overrides, preprocessing, metadata and parameter count, without
    building the model."""
    obj = _read(path, mmap=True)
    info = {k: v for k, v in obj.items() if k not in ("state_dict", "members")}
    info["members"] = len(obj.get("members") or [None])
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


def _registered_name(config) -> str | None:
    """The registered configuration equal to ``config`` (descriptions aside), if any."""
    return next((n for n in list_configs() if get_config(n) == config), None)


def _recognise(path, obj) -> tuple[str, dict, list[str], list[str]]:
    """(config name, overrides, warnings, notes) for an authors' checkpoint given no config."""
    found = _matching_configs(obj["state_dict"])
    if not found:
        raise ModelFileError(f"{path} is a reference checkpoint that matches none of the configs "
                             f"{', '.join(list_configs())}; pass the config explicitly.")
    name = found[0]
    base = get_config(name)
    if not base.use_cgm:  # CIPA: its code hard-codes CRM and DCIM on, nothing to guess
        return name, {}, [], []
    flags = obj.get("recorded_flags") or {}
    if flags:
        target = dataclasses.replace(base, **flags)
        registered = _registered_name(target)
        overrides = {} if registered else dict(flags)
        return registered or name, overrides, [], [
            f"{Path(path).name} records use_cgm={flags['use_cgm']}, use_dcim={flags['use_dcim']}: "
            f"loaded as '{registered or name}'{'' if registered else ' with those switches'}."]
    return name, {}, [
        f"{Path(path).name} is an authors' checkpoint with CGM and DCIM weights, which the reference "
        "code saves even when a model was trained without them (its README's commands train with "
        f"both off), so the file cannot tell '{name}' from its ablations. Loaded as '{name}' (CGM + "
        "DCIM). If it was trained without --use_cgm/--use_dcim, name its configuration: "
        f"`vmambax models convert {Path(path).name} OUT.pt --config dual-vmamba-baseline` (neither; "
        "or vmambax-no-cgm, vmambax-no-dcim), or load_model_file(..., config=...)."], []


def _drop_unused(state: dict, cfg, name: str) -> tuple[dict, list[str], list[str]]:
    """Remove the weights of modules ``cfg`` does not build -> (state, dropped keys, message)."""
    prefixes = tuple(prefix for prefix, switch in _OPTIONAL_MODULES if not getattr(cfg, switch))
    dropped = sorted(k for k in state if prefixes and k.startswith(prefixes))
    if not dropped:
        return state, [], []
    groups: dict[str, list[str]] = {}
    for key in dropped:
        groups.setdefault(key.split(".")[0], []).append(key)
    parts = []
    for module, keys in groups.items():
        stages = sorted({int(k.split(".")[1]) for k in keys if k.split(".")[1].isdigit()})
        parts.append(f"{module} (stages {', '.join(map(str, stages))}; {len(keys)} tensors)")
    kept = {k: v for k, v in state.items() if k not in set(dropped)}
    return kept, dropped, [f"configuration '{name}' does not use {', '.join(parts)}: the reference "
                           f"saves those weights even when they were not trained; dropped "
                           f"{len(dropped)} tensors (e.g. {', '.join(dropped[:3])})."]


def _build_with(path, name: str, cfg, state: dict, original: dict):
    """A VMambaX of ``cfg`` holding ``state``; ModelFileError naming the misfits otherwise."""
    from vmambax.model.network import VMambaX

    model = VMambaX(cfg)
    model.config_name = name
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        fits = [n for n in _matching_configs(original) if n != name]
        hint = f" It looks like a '{fits[0]}' model." if fits else ""
        details = "; ".join(f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                            (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", wrong)) if v)
        raise ModelFileError(f"the weights in {path} do not fit configuration '{name}': {details}.{hint} "
                             "Pick the configuration the model was trained with.")
    model.load_state_dict(state)
    return model


def load_model_file(path, map_location="cpu", config: str | None = None, warn: bool = True):
    """-> (model in eval mode, info dict). ``config`` names the config of a reference checkpoint
    (recognised from its weights when omitted) or overrides a model file's own.

    ``info["warnings"]`` lists what the user must hear (a guessed configuration, dropped unused
    weights); with ``warn`` they are also issued as ``ReferenceCheckpointWarning``. An ensemble
    file gives an ``Ensemble`` of its members (``info["members"]`` counts them).
    """
    obj = _read(path, map_location=map_location)
    state = obj["state_dict"]
    reference = obj["format"] == "reference"
    name = config or obj["config"]
    overrides = dict(obj.get("config_overrides") or {}) if name == obj["config"] else {}
    messages, notes = [], []
    if name is None:
        name, overrides, messages, notes = _recognise(path, obj)
    try:
        cfg = get_config(name, **{**overrides, "pretrained_encoder": None})
    except ConfigError as exc:
        raise ModelFileError(f"{path} needs model configuration '{name}', which cannot be built: {exc}") from None
    dropped: list[str] = []
    if reference:
        state, dropped, more = _drop_unused(state, cfg, name)
        messages += more
    members = obj.get("members") if not reference else None
    if members is not None and (not isinstance(members, list) or len(members) < 2
                                or not all(isinstance(m, dict) for m in members)):
        raise ModelFileError(f"{path} is a damaged VMambaX ensemble file (its members are not a list "
                             "of at least two weight sets); export it again.")
    nets = [_build_with(path, name, cfg, sd, obj["state_dict"]) for sd in (members or [state])]
    if len(nets) > 1:
        from vmambax.model.ensemble import Ensemble

        model = Ensemble(nets)
    else:
        model = nets[0]
    model.config_name = name
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    if warn:
        for message in messages:
            warnings.warn(message, ReferenceCheckpointWarning, stacklevel=2)
    info = {k: v for k, v in obj.items() if k not in ("state_dict", "members")}
    info.update(config=name, path=str(path), warnings=messages, notes=notes, dropped=dropped,
                members=len(members) if members else 1)
    if overrides and reference:
        info["config_overrides"] = overrides
    return model, info
