"""The LightningModule: loss, optimiser and schedule, validation metrics, resumable state."""

from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from vmambax.train.loss import LOSSES
from vmambax.train.metrics import CaseCounts, SegmentationCounts
from vmambax.train.schedule import lr_factor

POSITION_KEY = "vmambax_position"
RNG_KEY = "vmambax_rng"


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    from vmambax.model import param_groups  # every parameter, no decay on A_log/D/bias/norm/scales

    return param_groups(model, weight_decay)


class SegmentationModule(pl.LightningModule):
    """Wraps a network ``model(ct, pet) -> logits`` for training.

    ``hparams`` is a plain dict (the TrainConfig as a dict plus the model config name/overrides),
    so checkpoints load with ``torch.load(weights_only=True)``.
    """

    def __init__(self, model: nn.Module, hparams: dict[str, Any],
                 param_groups_fn: Callable[[nn.Module, float], list[dict]] | None = None,
                 val_cases: int = 0):
        super().__init__()
        self.model = model
        self.save_hyperparameters(hparams, ignore=["model", "param_groups_fn", "val_cases"])
        self._param_groups_fn = param_groups_fn or default_param_groups
        self.loss_fn = LOSSES[hparams.get("loss", "bce+dice")]
        self.val_counts = SegmentationCounts()
        # Whole validation cases (volume exports): the mean 3-D Dice per case, val_dice_3d.
        self.case_counts = CaseCounts(val_cases) if val_cases else None
        self.total_steps: int | None = None  # the schedule's length; a time budget may shorten it
        self.batches_done = 0  # training batches finished in the current epoch (for resume)
        self.resume_position: dict[str, int] | None = None
        self.last_val: dict[str, float] = {}
        self.last_val_epoch: int | None = None

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> torch.Tensor:
        return self.model(ct, pet)

    def setup(self, stage: str) -> None:
        # Per-rank random streams (dropout/drop-path) once the ranks exist; the weights were
        # initialised from the common seed before, and DDP broadcasts rank 0's anyway.
        if self.trainer.world_size > 1:
            seed_rank(int(self.hparams.get("seed", 0)), self.global_rank)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self.batches_done = 0

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["ct"], batch["pet"])
        loss = self.loss_fn(logits, batch["mask"])
        if not torch.isfinite(loss):
            # Fail loudly: a NaN loss silently destroys the weights (e.g. fp16 overflow).
            raise FloatingPointError(
                f"training loss became {loss.item()} at step {self.global_step}; lower --lr or use "
                "--precision 32-true / bf16-mixed")
        self.batches_done += 1
        n = batch["ct"].shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n,
                 sync_dist=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        groups = self._param_groups_fn(self.model, hp["weight_decay"])
        opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"])
        total = int(self.trainer.estimated_stepping_batches)  # per process: accounts for world size
        steps_per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        warmup = hp["warmup_epochs"] * steps_per_epoch
        if hp.get("warmup_fraction"):
            warmup = int(round(hp["warmup_fraction"] * total))
        min_factor = hp["min_lr_factor"]
        self.total_steps = total

        def factor(step: int) -> float:
            # reads total_steps each step: a time budget that runs short shortens the cosine
            return lr_factor(step, self.total_steps or total, warmup, min_factor)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self.val_counts.reset()
        if self.case_counts is not None:
            self.case_counts.reset()

    def validation_step(self, batch, batch_idx):
        logits = self.model(batch["ct"], batch["pet"])
        self.val_counts.update(logits, batch["mask"])
        if self.case_counts is not None and "case" in batch:
            self.case_counts.update(logits, batch["mask"], batch["case"])

    def on_validation_epoch_end(self) -> None:
        strategy = self.trainer.strategy
        # Every rank must call the collective, also one that saw no validation image.
        reduce = lambda t: strategy.reduce(t.to(self.device), reduce_op="sum")  # noqa: E731
        metrics = self.val_counts.compute(reduce)
        if self.case_counts is not None:
            per_case = self.case_counts.per_case(reduce)
            metrics["val_dice_3d"] = sum(per_case) / max(len(per_case), 1)
        self.last_val, self.last_val_epoch = metrics, self.current_epoch
        if not self.trainer.sanity_checking:
            # Identical on every rank after the reduction; sync_dist only keeps Lightning quiet.
            for k, v in metrics.items():
                self.log(k, float(v), prog_bar=k in ("val_dice", "val_dice_macro"), sync_dist=True)

    # ------------------------------------------------------------------ resumable state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Called on every rank (only rank 0 writes the file): each rank's RNG state goes in, so
        # that a resumed DDP run continues every rank's drop-path stream, not only rank 0's.
        checkpoint[POSITION_KEY] = {"epoch": int(self.current_epoch), "batches_done": int(self.batches_done)}
        state = collect_rng_state()
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, state)
            state = {**ranks[0], "ranks": ranks}  # rank 0's at the top, as before
        checkpoint[RNG_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        pos = checkpoint.get(POSITION_KEY)
        if pos is not None:
            self.resume_position = dict(pos)
            self.batches_done = int(pos["batches_done"])
        if RNG_KEY in checkpoint:
            state = checkpoint[RNG_KEY]
            ranks = state.get("ranks") or []
            if len(ranks) == self.trainer.world_size and self.trainer.world_size > 1:
                restore_rng_state(ranks[self.global_rank])  # each rank where it stopped
                return
            # One process, or a checkpoint of another world size (or an older one with rank
            # 0's state only): rank 0 continues its stream, the others derive theirs from it.
            restore_rng_state(state)
            if self.global_rank > 0:
                seed_rank(int(torch.randint(0, 2**31 - 1, ())), self.global_rank)


def seed_rank(seed: int, rank: int) -> None:
    s = (seed + 1_000_003 * rank) % (2**32)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def collect_rng_state() -> dict:
    """Torch, CUDA, NumPy and Python RNG states as weights_only-loadable types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
