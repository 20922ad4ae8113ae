"""State-dict names of the reference (authors') vMambaX code <-> ours.

A systematic table of prefix renames (``_RULES``); the part of a key after the matched prefix is
kept as is. ``{i}``/``{j}`` are integers; the decoder stages are numbered from 1 in the reference
(its ``layers_up.0`` is the PatchExpand) and from 0 here.

Checkpoint layouts the authors' code writes (``unwrap_reference``): a plain state dict;
Lightning's ``{"state_dict": {"model.<key>": ...}, "hyper_parameters": ...}`` (vMambaX
``train.py``); ``{"model": state_dict, "args": argparse.Namespace, "optimizer": ...}`` (their
``pred.py``/resume and CIPA's ``train.py``); keys may carry DDP's ``module.`` prefix.

CIPA's CRM (``backbone.cross_mamba.{i}``, class ChannelRectifyModule) is
``channel_weights.mlp = Sequential(LN(HW), Linear(HW, 96), GELU, SS1D, LN(96), Linear(96, 1),
Sigmoid)``. Its SS1D keeps VMamba's stacked-parameter layout with one direction (K = 1), so its
``x_proj_weight``/``dt_projs_weight``/``dt_projs_bias`` are stored as ``(1, ...)`` stacks where
our SS1D has plain Linear weights; ``A_logs``/``Ds`` are already flat ``(Di, N)``/``(Di,)``.
These names follow CIPA's ``models/encoders/dual_vmamba.py`` (``cross_mamba``,
``ChannelRectifyModule(dim, HW)``) and the structure of spec §4; the parameter counts match the
spec's CRM counts exactly (1,673,601 / 469,377 / 168,321 / 93,057).
"""

from __future__ import annotations

import re

from vmambax.errors import ModelFileError

# (reference prefix, our prefix, shift of {i}: ours = reference - shift). Most specific first.
_RULES = (
    ("backbone.vssm.patch_embed.0.", "encoder.patch_embed.proj.", 0),
    ("backbone.vssm.patch_embed.2.", "encoder.patch_embed.norm.", 0),
    ("backbone.vssm.layers.{i}.blocks.{j}.op.", "encoder.stages.{i}.blocks.{j}.ssm.", 0),
    ("backbone.vssm.layers.{i}.", "encoder.stages.{i}.", 0),
    ("backbone.vssm.outnorm{i}.", "encoder.out_norms.{i}.", 0),
    ("backbone.modal_fusion.{i}.channel_gate_rgb.", "cgm.{i}.gate_ct.channel.", 0),
    ("backbone.modal_fusion.{i}.channel_gate_pet.", "cgm.{i}.gate_pet.channel.", 0),
    ("backbone.modal_fusion.{i}.spatial_gate_rgb.0.", "cgm.{i}.gate_ct.spatial.", 0),
    ("backbone.modal_fusion.{i}.spatial_gate_pet.0.", "cgm.{i}.gate_pet.spatial.", 0),
    ("backbone.region_patch.{i}.inner_convs.", "dcim.{i}.tokenizer.inner.", 0),
    ("backbone.region_patch.{i}.outer_convs.", "dcim.{i}.tokenizer.outer.", 0),
    ("backbone.channel_attn_mamba.{i}.inner_norm1.", "dcim.{i}.local_norm.", 0),
    ("backbone.channel_attn_mamba.{i}.inner_attn.", "dcim.{i}.local_ssm.", 0),
    ("backbone.channel_attn_mamba.{i}.outer_norm1.", "dcim.{i}.region_norm.", 0),
    ("backbone.channel_attn_mamba.{i}.outer_attn.", "dcim.{i}.region_ssm.", 0),
    ("backbone.cross_mamba.{i}.channel_weights.mlp.0.", "crm.{i}.norm_in.", 0),
    ("backbone.cross_mamba.{i}.channel_weights.mlp.1.", "crm.{i}.proj_in.", 0),
    ("backbone.cross_mamba.{i}.channel_weights.mlp.3.", "crm.{i}.ssm.", 0),  # suffixes: _SS1D
    ("backbone.cross_mamba.{i}.channel_weights.mlp.4.", "crm.{i}.norm_out.", 0),
    ("backbone.cross_mamba.{i}.channel_weights.mlp.5.", "crm.{i}.proj_out.", 0),
    ("decode_head.layers_up.0.", "decoder.expand.", 0),
    ("decode_head.layers_up.{i}.blocks.{j}.op.", "decoder.stages.{i}.blocks.{j}.ssm.", 1),
    ("decode_head.layers_up.{i}.blocks.{j}.conv_blk.cab.0.", "decoder.stages.{i}.blocks.{j}.cab.conv1.", 1),
    ("decode_head.layers_up.{i}.blocks.{j}.conv_blk.cab.2.", "decoder.stages.{i}.blocks.{j}.cab.conv2.", 1),
    ("decode_head.layers_up.{i}.blocks.{j}.conv_blk.cab.3.fc.", "decoder.stages.{i}.blocks.{j}.cab.attn.", 1),
    ("decode_head.layers_up.{i}.", "decoder.stages.{i}.", 1),
    ("decode_head.norm_up.", "decoder.norm.", 0),
    ("decode_head.up.", "decoder.final_up.", 0),
    ("decode_head.output.", "decoder.head.", 0),
)


# CIPA's SS1D parameter names (after the crm.{i}.ssm. prefix): reference -> ours, with the
# reference storing the single direction's projections as (1, ...) stacks.
_SS1D = {"x_proj_weight": "x_proj.weight", "dt_projs_weight": "dt_proj.weight",
         "dt_projs_bias": "dt_proj.bias", "A_logs": "A_log", "Ds": "D"}
_SS1D_STACKED = {"x_proj_weight", "dt_projs_weight", "dt_projs_bias"}
_SS1D_OURS = {v: k for k, v in _SS1D.items()}
_CRM_SSM = re.compile(r"crm\.\d+\.ssm\.")


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile(pattern)


_TO_OURS = [(_compile(ref), ours, shift) for ref, ours, shift in _RULES]
_TO_REF = [(_compile(ours), ref, -shift) for ref, ours, shift in _RULES]


def _rename(key: str, rules) -> str | None:
    for pattern, template, shift in rules:
        m = pattern.match(key)
        if m:
            fields = m.groupdict()
            if "i" in fields:
                fields["i"] = str(int(fields["i"]) - shift)
            return template.format(**fields) + key[m.end():]
    return None


def _crm_ssm_to_ours(key: str, value):
    m = _CRM_SSM.match(key)
    if m and key[m.end():] in _SS1D:
        suffix = key[m.end():]
        if suffix in _SS1D_STACKED:
            if value.dim() == 0 or value.shape[0] != 1:
                raise ModelFileError(f"{key} has shape {tuple(value.shape)}; CIPA's SS1D stores it "
                                     "as a (1, ...) stack of one direction. This is not a CIPA checkpoint.")
            value = value[0]
        return key[:m.end()] + _SS1D[suffix], value
    return key, value


def _crm_ssm_to_reference(key: str, value):
    m = _CRM_SSM.match(key)
    if m and key[m.end():] in _SS1D_OURS:
        ref = _SS1D_OURS[key[m.end():]]
        return key[:m.end()] + ref, value.unsqueeze(0) if ref in _SS1D_STACKED else value
    return key, value


def _convert(sd: dict, rules, direction: str) -> dict:
    out, unknown = {}, []
    for key, value in sd.items():
        if direction == "reference":
            key, value = _crm_ssm_to_reference(key, value)
        new = _rename(key, rules)
        if new is None:
            unknown.append(key)
            continue
        if direction != "reference":
            new, value = _crm_ssm_to_ours(new, value)
        out[new] = value
    if unknown:
        raise ModelFileError(f"{len(unknown)} state-dict key(s) have no {direction} name, e.g. "
                             f"{', '.join(unknown[:3])}; this is not a vMambaX/CIPA state dict.")
    return out


def _strip(sd: dict, prefix: str) -> dict:
    if sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def reference_layout(obj) -> str:
    """Which of the authors' layouts ``obj`` is: "lightning", "model+args" or "plain"."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return "lightning"
    if isinstance(obj, dict) and _is_tensor_dict(obj.get("model")):
        return "model+args"
    return "plain"


def unwrap_reference(obj) -> dict:
    """A reference checkpoint in any of the authors' layouts (module docstring) -> its plain
    reference-named state dict (``model.`` and ``module.`` prefixes removed)."""
    layout = reference_layout(obj)
    sd = obj["state_dict"] if layout == "lightning" else obj["model"] if layout == "model+args" else obj
    if not isinstance(sd, dict):
        raise ModelFileError("this checkpoint holds no state dict.")
    return _strip(_strip(_strip(sd, "module."), "model."), "module.")


def is_reference_state_dict(obj) -> bool:
    try:
        sd = unwrap_reference(obj)
    except ModelFileError:
        return False
    return bool(sd) and all(isinstance(k, str) for k in sd) and \
        all(k.startswith(("backbone.", "decode_head.")) for k in sd)


def from_reference_state_dict(sd: dict) -> dict:
    """Reference names -> ours (any of the authors' layouts; see ``unwrap_reference``)."""
    return _convert(unwrap_reference(sd), _TO_OURS, "VMambaX")


def to_reference_state_dict(sd: dict) -> dict:
    """Our names -> the reference code's names (plain state dict, no ``model.`` prefix)."""
    return _convert(sd, _TO_REF, "reference")
