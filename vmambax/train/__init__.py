"""Training engine behind ``vmambax train`` and the Slicer training module.

    from vmambax.train import TrainConfig, train
    result = train(TrainConfig(data="cases/", out="runs/nano", config="vmambax-nano", crop_size=256))
    result.model_file   # runs/nano/model.pt, loadable with vmambax.model.checkpoint.load_model_file

Defaults follow the paper recipe (spec §8) with the reference's bugs fixed (see ``config``).
PyTorch Lightning is imported only when training starts.
"""

from vmambax.train.config import TrainConfig  # noqa: F401
from vmambax.train.run import TrainResult, config_for_resume, train  # noqa: F401
