"""State-dict names of the reference (authors') vMambaX code <-> ours.

A systematic table of prefix renames (``_RULES``); the part of a key after the matched prefix is
kept as is. ``{i}``/``{j}`` are integers; the decoder stages are numbered from 1 in the reference
(its ``layers_up.0`` is the PatchExpand) and from 0 here. Reference checkpoints come either as a
plain state dict or Lightning-style ``{"state_dict": {"model.<key>": ...}}``.
CIPA's CRM has no reference listing to map to, so only CRM-free configurations convert.
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


def _convert(sd: dict, rules, direction: str) -> dict:
    out, unknown = {}, []
    for key, value in sd.items():
        new = _rename(key, rules)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ModelFileError(f"{len(unknown)} state-dict key(s) have no {direction} name, e.g. "
                             f"{', '.join(unknown[:3])}; this is not a vMambaX state dict.")
    return out


def unwrap_reference(obj) -> dict:
    """A reference checkpoint (plain or Lightning ``{"state_dict": ...}``, keys optionally
    prefixed ``model.``) -> its plain reference-named state dict."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict):
        raise ModelFileError("this checkpoint holds no state dict.")
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    return sd


def is_reference_state_dict(obj) -> bool:
    try:
        sd = unwrap_reference(obj)
    except ModelFileError:
        return False
    return bool(sd) and all(isinstance(k, str) for k in sd) and \
        all(k.startswith(("backbone.", "decode_head.")) for k in sd)


def from_reference_state_dict(sd: dict) -> dict:
    """Reference names -> ours (accepts the Lightning wrapping and ``model.`` prefix)."""
    return _convert(unwrap_reference(sd), _TO_OURS, "VMambaX")


def to_reference_state_dict(sd: dict) -> dict:
    """Our names -> the reference code's names (plain state dict, no ``model.`` prefix)."""
    return _convert(sd, _TO_REF, "reference")
