"""Training options. The defaults are the paper recipe (spec §8) with the reference's bugs fixed.

One dataclass is shared by ``vmambax train``, the Slicer training module and the tests, so every
option is validated in one place (``TrainConfig.validate``) before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmambax.errors import ConfigError

#: The model needs square inputs whose side is a multiple of this (4 patch-merging stages of 2x
#: after a 4x patch embedding, and DCIM's 4x4 regions at the last stage).
SIZE_MULTIPLE = 128

PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "64-true")


@dataclass
class TrainConfig:
    data: str
    out: str
    config: str = "vmambax"
    config_overrides: dict[str, Any] = field(default_factory=dict)

    # Recipe (spec §8): AdamW(6e-5, wd 1e-2, betas 0.9/0.999, eps 1e-8), per-step cosine to
    # 1e-6*lr over all optimisation steps, 50 epochs, batch 8 per process.
    epochs: int = 50
    batch_size: int = 8
    lr: float = 6e-5
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    min_lr_factor: float = 1e-6
    # The reference's --warm_up was a type=bool flag ("False" turned it on); here it is a count
    # of epochs of linear warm-up from 1e-3*lr, 0 = off (the paper's default).
    warmup_epochs: int = 0
    augment: bool = True
    crop_size: int | None = None  # train on random crops of this side (scale kept); None = full
    # Slice size when volume cases are exported for training (the papers' 512 by default; 256
    # trains and segments ~4x faster on CPU). The model file records it for inference.
    image_size: int | None = None
    # Tumour-free slices exported per tumour slice from volume cases (the exporter's default 1).
    negatives_per_positive: float = 1.0

    val_every: int = 1
    val_batch_size: int | None = None  # None = batch_size
    val_fraction: float = 0.1  # patient-level validation carve-out when the data has no val.txt

    precision: str = "auto"
    accelerator: str = "auto"
    devices: int | str = "auto"
    nodes: int = 1
    strategy: str = "auto"
    num_workers: int | str = "auto"  # "auto": what the machine has (loader_workers)
    seed: int = 42
    deterministic: bool = False

    max_steps: int | None = None
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    pretrained_encoder: str | None = None
    resume: str | None = None

    # Inputs and outputs of the model (vmambax.data.input_spec.InputSpec; stored in model.pt).
    # None = the papers' single windows: CT [-1200, -200] HU, PET [0, 15] SUV.
    ct_windows: list | None = None  # [[low, high], ...] HU, one CT channel each
    suv_windows: list | None = None  # [[low, high], ...] SUV, one PET channel each
    context_slices: int = 0  # neighbouring slices a side as extra channels (volume cases)
    threshold: float = 0.5
    tta: str = "none"  # test-time flips the model file asks for: none | hflip | hvflip
    postprocess: str = "none"  # none | largest | auto (chosen on the validation cases)
    # Recipe extras beyond the paper's.
    recipe: str = "paper"  # the named recipe the defaults came from (vmambax.train.recipes)
    augmentation: str = "paper"  # vmambax.train.augment.PRESETS (augment=False means "none")
    loss: str = "bce+dice"  # vmambax.train.loss.LOSSES
    warmup_fraction: float = 0.0  # linear warm-up as a share of all steps (overrides warmup_epochs)
    # Train to a time budget (minutes, everything included): steps, validation points and the
    # cosine are fitted to a measured step rate (vmambax.train.budget).
    time_budget: float | None = None
    init: str | None = None  # start from this model's weights (registry name, model file, checkpoint)
    folds: int | None = None  # K-fold cross-validation (vmambax.train.crossval)
    # Set by cross-validation for each fold's run: explicit case lists and the shared export.
    train_cases: list | None = None
    val_cases: list | None = None
    data_dir: str | None = None  # the volume export folder (default RUN_DIR/data)

    progress_file: str | None = None  # None = <out>/progress.jsonl
    progress_stdout: bool = False
    progress_every_s: float = 2.0
    stop_file: str | None = None  # None = <out>/STOP
    # Minutes between mid-epoch saves of last.ckpt (besides the one every epoch); 0 = off. A
    # kill -9 loses at most this plus one step (README, Training).
    checkpoint_every: float = 10.0
    # Training slices with tumour below which the data is refused (too few to learn from).
    min_positive_slices: int = 8
    progress_bar: bool = True
    stop_after_steps: int | None = None  # testing aid: behave as if STOP appeared after N steps

    # ------------------------------------------------------------------ derived paths
    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    @property
    def model_file(self) -> Path:
        return self.out_dir / "model.pt"

    @property
    def progress_path(self) -> Path | None:
        if self.progress_file == "-":
            return None
        return Path(self.progress_file) if self.progress_file else self.out_dir / "progress.jsonl"

    @property
    def stop_path(self) -> Path:
        return Path(self.stop_file) if self.stop_file else self.out_dir / "STOP"

    def input_spec(self, image_size: int | None = None):
        """The model's InputSpec for this run (slice size: the data's, given by the caller)."""
        from vmambax.data.input_spec import PAPER, InputSpec

        return InputSpec(ct_windows=self.ct_windows or PAPER.ct_windows,
                         suv_windows=self.suv_windows or PAPER.suv_windows,
                         image_size=int(image_size or self.image_size or PAPER.image_size),
                         context=self.context_slices, threshold=self.threshold, tta=self.tta,
                         postprocess="none" if self.postprocess == "auto" else self.postprocess)

    @property
    def augmentation_name(self) -> str:
        return self.augmentation if self.augment else "none"

    def loader_workers(self, processes_per_node: int = 1) -> int:
        """Data-loader workers per process: the given count, or for "auto" what the machine
        has: one CPU per process stays for training itself, at most 4 workers (a fixed 4 on a
        2-core machine oversubscribed it, and the DataLoader warned about it on every run)."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS, Windows
            cpus = os.cpu_count() or 1
        return max(0, min(4, cpus // max(int(processes_per_node), 1) - 1))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed copy (for checkpoints, the model file and the progress stream)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Raise ``ConfigError`` naming the bad option and the fix; return self when all is well."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(isinstance(self.epochs, int) and self.epochs >= 1,
             f"--epochs must be a whole number >= 1 (got {self.epochs!r}).")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"--batch-size must be a whole number >= 1 (got {self.batch_size!r}).")
        need(self.val_batch_size is None or self.val_batch_size >= 1,
             f"the validation batch size must be >= 1 (got {self.val_batch_size!r}).")
        need(self.lr > 0, f"--lr must be positive (got {self.lr!r}).")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay!r}).")
        need(0 < self.min_lr_factor <= 1, "min_lr_factor must be in (0, 1].")
        need(isinstance(self.warmup_epochs, int) and 0 <= self.warmup_epochs < self.epochs,
             f"--warmup-epochs must be a whole number from 0 to epochs-1 (got {self.warmup_epochs!r} "
             f"with {self.epochs} epochs).")
        need(isinstance(self.val_every, int) and self.val_every >= 1,
             f"--val-every must be a whole number >= 1 (got {self.val_every!r}).")
        need(0 < self.val_fraction < 1, f"the validation fraction must be in (0, 1) (got {self.val_fraction}).")
        if self.crop_size is not None:
            need(isinstance(self.crop_size, int) and self.crop_size > 0
                 and self.crop_size % SIZE_MULTIPLE == 0,
                 f"--crop-size must be a positive multiple of {SIZE_MULTIPLE} (e.g. 128, 256, 384); "
                 f"got {self.crop_size!r}.")
        if self.image_size is not None:
            need(isinstance(self.image_size, int) and self.image_size > 0
                 and self.image_size % SIZE_MULTIPLE == 0,
                 f"--image-size must be a positive multiple of {SIZE_MULTIPLE} (e.g. 256, 512); "
                 f"got {self.image_size!r}.")
            need(self.crop_size is None or self.crop_size <= self.image_size,
                 f"--crop-size {self.crop_size} is larger than --image-size {self.image_size}.")
        need(self.negatives_per_positive >= 0,
             f"--negatives-per-positive must be >= 0 (got {self.negatives_per_positive!r}).")
        need(self.precision in PRECISIONS,
             f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r}).")
        need(self.accelerator in ("auto", "cpu", "gpu", "cuda", "mps"),
             f"--accelerator must be auto, cpu, gpu/cuda or mps (got {self.accelerator!r}).")
        need(self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1)
             or (isinstance(self.devices, str) and self.devices.replace(",", "").isdigit()),
             f"--devices must be 'auto', a count >= 1 or a list like '0,1' (got {self.devices!r}).")
        need(isinstance(self.nodes, int) and self.nodes >= 1, f"--nodes must be >= 1 (got {self.nodes!r}).")
        need(self.num_workers == "auto" or (isinstance(self.num_workers, int)
                                            and not isinstance(self.num_workers, bool)
                                            and self.num_workers >= 0),
             f"--num-workers must be 'auto' or a count >= 0 (got {self.num_workers!r}).")
        need(self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1.")
        for name in ("limit_train_batches", "limit_val_batches"):
            v = getattr(self, name)
            need(v is None or (v > 0 and (isinstance(v, int) or v <= 1.0)),
                 f"--{name.replace('_', '-')} must be a count >= 1 or a fraction in (0, 1] (got {v!r}).")
        need(self.progress_every_s >= 0, "progress_every_s must be >= 0.")
        need(isinstance(self.checkpoint_every, (int, float)) and self.checkpoint_every >= 0,
             f"--checkpoint-every must be a number of minutes >= 0, 0 = only at epoch ends (got "
             f"{self.checkpoint_every!r}).")
        need(isinstance(self.min_positive_slices, int) and self.min_positive_slices >= 1,
             f"--min-positive-slices must be a whole number >= 1 (got {self.min_positive_slices!r}).")
        need(isinstance(self.context_slices, int) and 0 <= self.context_slices <= 3,
             f"--context-slices must be 0..3 (got {self.context_slices!r}).")
        need(0 < self.threshold < 1, f"--threshold must lie in (0, 1) (got {self.threshold!r}).")
        need(self.tta in ("none", "hflip", "hvflip"),
             f"--tta must be none, hflip or hvflip (got {self.tta!r}).")
        need(self.postprocess in ("none", "largest", "auto"),
             f"--postprocess must be none, largest or auto (got {self.postprocess!r}).")
        need(0 <= self.warmup_fraction < 0.5,
             f"--warmup-fraction must be in [0, 0.5) (got {self.warmup_fraction!r}).")
        need(self.time_budget is None or (isinstance(self.time_budget, (int, float))
                                          and self.time_budget >= 1),
             f"--time-budget must be a number of minutes >= 1 (got {self.time_budget!r}).")
        need(self.folds is None or (isinstance(self.folds, int) and 2 <= self.folds <= 20),
             f"--folds must be a whole number from 2 to 20 (got {self.folds!r}).")
        from vmambax.train.augment import PRESETS
        from vmambax.train.loss import LOSSES

        need(self.augmentation in PRESETS, f"--augmentation must be one of {', '.join(PRESETS)} "
             f"(got {self.augmentation!r}).")
        need(self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)} (got {self.loss!r}).")
        self.input_spec()  # windows and channel counts the network can take (ConfigError)
        if self.pretrained_encoder is not None:
            need(os.path.isfile(self.pretrained_encoder),
                 f"--pretrained-encoder {self.pretrained_encoder!r} does not exist; give the path of a "
                 "VMamba-T ImageNet checkpoint (.pth).")
        return self
