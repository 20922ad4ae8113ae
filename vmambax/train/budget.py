"""Training to a time budget: fit steps, validation points and the cosine to the minutes given.

``vmambax train --time-budget 45`` must end in 45 minutes on the machine it runs on, with its
last step validated and the learning rate decayed to its floor by then. So before training:

1. ``measure`` times a few real training steps (forward, loss, backward, AdamW step, on real
   augmented batches, in this process and with its threads) on a throw-away copy of the model,
   and one validation pass;
2. ``plan`` divides what is left of the budget (minus a reserve for writing the model file)
   into V validation points ("epochs" of n steps, each at most one pass over the data; V >= 10
   so the best checkpoint is chosen among enough points), giving ``epochs = V``,
   ``limit_train_batches = n`` and ``max_steps = V * n``: the ordinary schedule machinery then
   makes the cosine end at the last step, which is validated.

The plan is recorded in the run's configuration, so ``--resume`` continues the same schedule.
A machine that slows down mid-run (other jobs) is caught by ``BudgetGuard``: after each
validation it re-estimates the time per epoch and, when the remaining epochs no longer fit,
ends the run earlier at a validation point (the cosine is shortened to match).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback

from vmambax.errors import ConfigError

MIN_POINTS = 10  # validation points at the least
RESERVE_S = 20.0  # writing model.pt (and choosing its post-processing) after the last step
SAFETY = 0.95  # share of the remaining time planned for (step times wander)


@dataclasses.dataclass(frozen=True)
class Measured:
    step_s: float  # one training step
    val_s: float  # one whole validation pass
    overhead_s: float  # per epoch: loader start, checkpoint saves


@dataclasses.dataclass(frozen=True)
class Plan:
    epochs: int  # validation points
    steps_per_epoch: int
    available_s: float

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def describe(self, m: Measured) -> str:
        return (f"time budget: {self.total_steps} steps ({m.step_s:.2f} s each, measured) in "
                f"{self.epochs} rounds of {self.steps_per_epoch}, each validated "
                f"({m.val_s:.1f} s), within {self.available_s / 60:.1f} min")


def plan(available_s: float, m: Measured, steps_per_pass: int, min_points: int = MIN_POINTS) -> Plan:
    """The longest schedule that fits ``available_s`` seconds: V >= ``min_points`` rounds of n
    steps (n <= one pass over the training data), each followed by a validation."""
    usable = available_s * SAFETY
    per_round = m.val_s + m.overhead_s
    v = min_points
    n = math.floor((usable - v * per_round) / (v * m.step_s))
    if n > steps_per_pass:  # more rounds of one pass each rather than rounds longer than a pass
        n = max(int(steps_per_pass), 1)
        v = max(min_points, math.floor(usable / (n * m.step_s + per_round)))
    if n < 1:
        need = min_points * (m.step_s + m.val_s + m.overhead_s) / SAFETY
        raise ConfigError(
            f"the time budget leaves {available_s / 60:.1f} min for training, too little here: one "
            f"step takes {m.step_s:.1f} s and a validation {m.val_s:.1f} s, so the {min_points} "
            f"validated rounds need at least {need / 60:.1f} min. Give a longer --time-budget or a "
            "smaller model/slice size.")
    return Plan(epochs=int(v), steps_per_epoch=int(n), available_s=float(available_s))


def _batches(ds, batch_size: int, count: int, collate):
    """The first ``count`` batches of ``ds`` (epoch 0's samples, as training draws them)."""
    n = len(ds)
    out = []
    for b in range(count):
        items = [ds[((b * batch_size + i) % n, 0)] for i in range(batch_size)]
        out.append(collate(items))
    return out


def measure(model: torch.nn.Module, loss_fn, train_ds, val_ds, *, batch_size: int,
            val_batch_size: int, lr: float, device: torch.device, steps: int = 5,
            warmup: int = 2, scratch_dir=None) -> Measured:
    """Time training steps, a validation pass and a checkpoint write here and now (see the
    module docstring). The model is copied; the caller's model, RNG streams and data are left
    as they were. ``scratch_dir``: where the timed checkpoint is written (then deleted), i.e.
    the run folder, whose disk the real checkpoints go to."""
    import tempfile

    from torch.utils.data import default_collate

    rng = torch.get_rng_state()
    net = copy.deepcopy(model).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    batches = _batches(train_ds, batch_size, warmup + steps, default_collate)
    times = []
    try:
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            ct, pet, mask = (batch[k].to(device) for k in ("ct", "pet", "mask"))
            loss = loss_fn(net(ct, pet), mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        # data loading (augmentation) is part of a step when the loader has no worker to hide it
        t0 = time.perf_counter()
        _batches(train_ds, batch_size, 2, default_collate)
        load_s = (time.perf_counter() - t0) / 2
        net.eval()
        n_val = len(val_ds)
        probe = _batches(val_ds, min(val_batch_size, n_val), 2, default_collate)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for batch in probe:
                net(batch["ct"].to(device), batch["pet"].to(device))
        per_batch = (time.perf_counter() - t0) / len(probe)
        with tempfile.TemporaryDirectory(dir=scratch_dir) as tmp:
            t0 = time.perf_counter()
            torch.save({"state_dict": net.state_dict(), "optimizer": opt.state_dict()},
                       f"{tmp}/probe.ckpt")
            save_s = time.perf_counter() - t0
    finally:
        torch.set_rng_state(rng)
        del net, opt
    step_s = sorted(times)[len(times) // 2] + load_s
    val_s = per_batch * math.ceil(n_val / max(min(val_batch_size, n_val), 1))
    # per round: last.ckpt and (mostly) a new best checkpoint, each written, read back, renamed;
    # plus the loader's and Lightning's epoch start and end
    return Measured(step_s=step_s, val_s=val_s, overhead_s=4 * save_s + 1.5)


class BudgetGuard(Callback):
    """Ends a budgeted run earlier, at a validation point, when the machine became slower than
    measured (see the module docstring). ``deadline`` is a ``time.monotonic()`` value."""

    def __init__(self, deadline: float, steps_per_epoch: int, reserve_s: float = RESERVE_S,
                 on_shorten=None):
        self.deadline, self.steps_per_epoch = float(deadline), int(steps_per_epoch)
        self.reserve_s, self.on_shorten = reserve_s, on_shorten
        self._t0: float | None = None
        self._epoch0 = 0
        self.shortened_to: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._epoch0 = time.monotonic(), trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._t0 is None or trainer.should_stop:
            return
        done = trainer.current_epoch + 1 - self._epoch0
        now = time.monotonic()
        per_epoch = (now - self._t0) / max(done, 1)
        left = max(int(trainer.max_epochs) - trainer.current_epoch - 1, 0)
        fits = int((self.deadline - self.reserve_s - now) // per_epoch)
        if left <= fits:
            return
        new_epochs = trainer.current_epoch + 1 + max(fits, 0)
        trainer.fit_loop.max_epochs = new_epochs
        pl_module.total_steps = new_epochs * self.steps_per_epoch
        self.shortened_to = new_epochs
        if self.on_shorten is not None:
            self.on_shorten(new_epochs, per_epoch)
        if fits <= 0:
            trainer.should_stop = True


def state(plan_: Plan, measured: Measured) -> dict[str, Any]:
    """The plan and what it was made from, for the progress stream and the model file."""
    return {"epochs": plan_.epochs, "steps_per_epoch": plan_.steps_per_epoch,
            "total_steps": plan_.total_steps, "available_s": round(plan_.available_s, 1),
            "step_s": round(measured.step_s, 4), "val_s": round(measured.val_s, 3)}
