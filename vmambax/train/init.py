"""``--init``: start a training run from another model's weights (fine-tuning).

The source may be a VMambaX model file (``vmambax train``'s ``model.pt``, a registered model's
file; an ensemble gives its first member), an authors' checkpoint in any layout
``vmambax.model.checkpoint`` reads, or a ``vmambax train`` checkpoint (``*.ckpt``). Registry
names are resolved to files by the caller (the command line). Every weight of the new network
must come from the source with the same shape: a mismatch is a ``ConfigError`` naming the
layers, because a half-initialised network would silently train as something else.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vmambax.errors import ConfigError, ModelFileError


def _source_state(source) -> tuple[dict[str, torch.Tensor], list[str]]:
    from vmambax.model.checkpoint import _read
    from vmambax.model.pretrained import safe_torch_load
    from vmambax.train.export import MODEL_PREFIX

    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"--init {source}: no such model file or checkpoint; give a model name "
                          "(`vmambax models list`), a model.pt or a training checkpoint.")
    notes = []
    try:
        obj = _read(path)
    except ModelFileError as first:
        try:  # a vmambax train (Lightning) checkpoint
            ckpt = safe_torch_load(path, what="checkpoint")
        except ModelFileError:
            raise ConfigError(f"--init {source}: {first}") from None
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        if not state or not any(k.startswith(MODEL_PREFIX) for k in state):
            raise ConfigError(f"--init {source}: {first}") from None
        return {k[len(MODEL_PREFIX):]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}, notes
    if obj.get("members"):
        notes.append(f"--init {path.name} is an ensemble of {len(obj['members'])} models; starting "
                     "from its first member.")
    return obj["state_dict"], notes


def init_from(model: torch.nn.Module, source) -> list[str]:
    """Load ``source``'s weights into ``model`` (see the module docstring); returns notes for
    the user. Nothing is changed when they do not fit."""
    state, notes = _source_state(source)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            shown = ", ".join(f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} here"
                              for k in wrong[:3])
            parts.append(f"{len(wrong)} layer(s) differ in shape ({shown})")
        if missing:
            parts.append(f"{len(missing)} weight(s) of this network are not in the file (e.g. "
                         f"{', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} weight(s) in the file have no place here (e.g. "
                         f"{', '.join(unexpected[:3])})")
        raise ConfigError(f"cannot start from {source}: " + "; ".join(parts) + ". Train the same "
                          "--config (and input channels: --ct-windows x --context-slices) as that "
                          "model, or start without --init.")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return notes
