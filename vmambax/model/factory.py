"""``build_model(name, **overrides)``: a configuration by name -> a VMambaX network."""

from __future__ import annotations

from vmambax.model.config import get_config
from vmambax.model.network import VMambaX


def build_model(name: str, **overrides) -> VMambaX:
    """Build the named configuration (see ``list_configs()``), with field overrides.

    When the config names a ``pretrained_encoder`` checkpoint, it is loaded into the encoder;
    a missing or mismatching file raises ModelFileError (never a silent random init).
    """
    config = get_config(name, **overrides)
    model = VMambaX(config)
    model.config_name = name
    if config.pretrained_encoder:
        from vmambax.model.pretrained import load_pretrained_encoder

        load_pretrained_encoder(model, config.pretrained_encoder)
    return model
