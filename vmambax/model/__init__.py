"""The vMambaX network (and CIPA, ablations, a nano variant), configs by name, model files.

    from vmambax.model import build_model
    model = build_model("vmambax")          # 53,403,682 parameters
    logits = model(ct, pet)                 # (B, 1, H, W) each -> (B, 1, H, W)
"""

from vmambax.model.config import (  # noqa: F401
    ModelConfig,
    config_overrides,
    get_config,
    list_configs,
    register_config,
)
from vmambax.model.factory import build_model  # noqa: F401
from vmambax.model.network import VMambaX  # noqa: F401
from vmambax.model.summary import count_parameters, param_groups  # noqa: F401
from vmambax.model.checkpoint import load_model_file, model_file_info, save_model_file  # noqa: F401,E402
from vmambax.model.pretrained import load_pretrained_encoder  # noqa: F401,E402
