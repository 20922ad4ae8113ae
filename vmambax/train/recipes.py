"""Training recipes by name: the defaults ``vmambax train`` fills in for options not given.

- ``paper``: spec §8, the authors' recipe for PCLT20K (53 M parameters, 512-pixel slices, the
  papers' lung window, lr 6e-5 for 50 epochs; it assumes a GPU and tens of thousands of slices).
- ``small-data``: for a clinic's own few dozen annotated PET/CT volumes on the hardware at hand,
  chosen by 5-fold cross-validation on 40 real FDG-PET/CT studies (docs/benchmarks.md,
  "Learning real tumours"): a narrow vMambaX, whole slices at 128 pixels, soft-tissue CT window,
  a wider PET window, strong augmentation, a higher learning rate with warm-up, test-time flips
  and post-processing chosen on the validation cases. Meant to be run with ``--time-budget``.

``auto`` (the command line's default) is ``small-data`` for volume case folders and ``paper``
for PCLT20K-layout data. Options given explicitly always win over the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmambax.errors import ConfigError

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},  # TrainConfig's own defaults
    "small-data": {
        "config": "vmambax-nano",
        "image_size": 128,
        "batch_size": 8,
        "lr": 1e-3,
        "weight_decay": 1e-2,
        "warmup_fraction": 0.03,
        "epochs": 40,
        "augmentation": "strong",
        "ct_windows": [[-160.0, 240.0]],
        "suv_windows": [[0.0, 20.0]],
        "loss": "bce+dice",
        "tta": "hflip",
        "postprocess": "auto",
        "negatives_per_positive": 1.0,
        "val_fraction": 0.1,
    },
}


def recipe_for_data(data) -> str:
    """``auto``'s choice: small-data for volume case folders, paper for PCLT20K layout."""
    from vmambax.train.datamodule import is_pclt_root

    return "paper" if data is not None and is_pclt_root(Path(data)) else "small-data"


def apply_recipe(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig keyword arguments: the recipe's values, then the options ``given``."""
    if name == "auto":
        name = recipe_for_data(given.get("data"))
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of auto, {', '.join(RECIPES)}.")
    return {**RECIPES[name], **given, "recipe": name}


def describe(name: str) -> str:
    values = RECIPES[name]
    if not values:
        return f"{name}: the TrainConfig defaults (spec section 8)"
    return f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
