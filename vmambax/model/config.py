"""Model configurations by name (spec §2–§6, §11).

A ``ModelConfig`` fixes the whole architecture; ``build_model(name, **overrides)`` builds it.
Fusion per stage follows from three switches (spec §5):

=================  ========  ========  ==================================
config             CGM       CRM       F_i
=================  ========  ========  ==================================
vmambax            yes       –         Ĉ + P̂ + DCIM(Ĉ, P̂)
cipa               –         yes       C + P + DCIM(C̃, P̃)
vmambax-no-dcim    yes       –         Ĉ + P̂
vmambax-no-cgm     –         –         C + P + DCIM(C, P)
dual-vmamba-base.  –         –         C + P
=================  ========  ========  ==================================

Unlike the reference, modules an ablation does not use are not built (the reference builds them
and so breaks DDP with unused parameters, spec §12.1); ablation parameter counts are therefore
smaller than 53.4 M.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field

from vmambax.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    # Encoder (VMamba-T, spec §2). Widths double per stage.
    dims: tuple = (96, 192, 384, 768)
    depths: tuple = (2, 2, 9, 2)
    d_state: int = 16
    ssm_ratio: float = 2.0
    drop_path: float = 0.0
    in_chans: int = 3  # the patch embedding's input channels; 1-channel slices are repeated
    # Fusion switches and their parameters (spec §3–§5).
    use_cgm: bool = True
    use_dcim: bool = True
    use_crm: bool = False
    cgm_reduction: int = 4
    cgm_min_channels: int = 32
    cgm_residual: bool = True
    dcim_region: int = 4
    crm_dim: int = 96
    img_size: int = 512  # CRM's LayerNorm/Linear act on H_i·W_i values, so CRM is built for one size
    # Decoder (MambaDecoder, spec §6): CVSS blocks per stage, deepest (C3) first.
    decoder_depths: tuple = (4, 4, 4)
    dec_d_state: int = 4
    dec_drop_path: float = 0.1
    num_classes: int = 1
    # Optional VMamba ImageNet checkpoint loaded into the encoder when the model is built.
    pretrained_encoder: str | None = None
    description: str = field(default="", compare=False)

    def validate(self) -> "ModelConfig":
        if len(self.dims) != 4 or len(self.depths) != 4:
            raise ConfigError(f"dims and depths need 4 entries each (got {self.dims}, {self.depths}).")
        c0 = int(self.dims[0])
        if c0 < 16 or c0 % 8 or any(int(d) != c0 * 2 ** i for i, d in enumerate(self.dims)):
            raise ConfigError(f"dims must double from stage to stage (patch merging and the decoder's "
                              f"expansions halve/double widths) and start at a multiple of 8 of at least "
                              f"16 (DCIM's tokeniser uses C//16 channels), e.g. (96, 192, 384, 768); "
                              f"got {self.dims}.")
        if any(int(d) < 1 for d in self.depths) or len(self.decoder_depths) != 3 \
                or any(int(d) < 1 for d in self.decoder_depths):
            raise ConfigError("depths need 4 and decoder_depths 3 entries, each at least 1 "
                              f"(got {self.depths}, {self.decoder_depths}).")
        if self.use_cgm and self.use_crm:
            raise ConfigError("use_cgm and use_crm cannot both be on: CGM (vMambaX) replaces CRM (CIPA).")
        if self.dcim_region != 4:
            raise ConfigError(f"dcim_region={self.dcim_region} is not supported: DCIM's tokeniser "
                              "downsamples PET by exactly 4 (two stride-2 convs); use 4.")
        if self.use_crm and (self.img_size <= 0 or self.img_size % 128):
            raise ConfigError(f"img_size must be a positive multiple of 128 (got {self.img_size}).")
        if not (0.0 <= self.drop_path < 1.0 and 0.0 <= self.dec_drop_path < 1.0):
            raise ConfigError("drop_path and dec_drop_path must lie in [0, 1).")
        if self.num_classes != 1:
            raise ConfigError("only num_classes=1 (a binary tumour logit) is supported.")
        return self

    @property
    def fusion(self) -> str:
        """Short name of the per-stage fusion formula."""
        if self.use_crm:
            return "crm+dcim" if self.use_dcim else "crm"
        if self.use_cgm:
            return "cgm+dcim" if self.use_dcim else "cgm"
        return "dcim" if self.use_dcim else "sum"

    def to_plain(self) -> dict:
        """Plain-type dict (tuples as lists) for JSON and model files."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_TUPLE_FIELDS = {f.name for f in dataclasses.fields(ModelConfig) if isinstance(f.default, tuple)}
_FIELD_NAMES = {f.name for f in dataclasses.fields(ModelConfig)}
_REGISTRY: dict[str, ModelConfig] = {}


def register_config(name: str, config: ModelConfig) -> None:
    """Add (or replace) a named configuration."""
    _REGISTRY[name] = config.validate()


def list_configs() -> list[str]:
    return list(_REGISTRY)


def get_config(name: str, **overrides) -> ModelConfig:
    """The named configuration, with ``overrides`` applied (lists are accepted for tuple fields)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown model configuration '{name}'.{hint} "
                          f"Available: {', '.join(_REGISTRY)}.")
    unknown = sorted(set(overrides) - _FIELD_NAMES)
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; "
                          f"valid options: {', '.join(sorted(_FIELD_NAMES))}.")
    clean = {k: tuple(v) if k in _TUPLE_FIELDS else v for k, v in overrides.items()}
    return dataclasses.replace(_REGISTRY[name], **clean).validate()


def config_overrides(name: str, config: ModelConfig) -> dict:
    """The plain-type fields in which ``config`` differs from the registered ``name``."""
    base = get_config(name).to_plain()
    return {k: v for k, v in config.to_plain().items() if k != "description" and base[k] != v}


register_config("vmambax", ModelConfig(
    description="vMambaX (paper): shared VMamba-T encoder, CGM + DCIM fusion, CVSS decoder"))
register_config("cipa", ModelConfig(
    use_cgm=False, use_crm=True,
    description="CIPA (CVPR 2025): CRM + DCIM fusion, F = C + P + DCIM(C~, P~); 512x512 only"))
register_config("vmambax-no-cgm", ModelConfig(
    use_cgm=False, description="ablation: DCIM only, F = C + P + DCIM(C, P)"))
register_config("vmambax-no-dcim", ModelConfig(
    use_dcim=False, description="ablation: CGM only, F = C^ + P^"))
register_config("dual-vmamba-baseline", ModelConfig(
    use_cgm=False, use_dcim=False, description="baseline: shared encoder + decoder, F = C + P"))
register_config("vmambax-nano", ModelConfig(
    dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), decoder_depths=(1, 1, 1), cgm_min_channels=8,
    description="narrow vMambaX (same architecture, 1.2 M parameters) for CPU tests and the demo model"))
