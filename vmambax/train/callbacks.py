"""Callbacks and plugins: JSON-lines progress, clean stop requests, atomic checkpoint writes."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from vmambax.utils import atomic_path, torch_save


# ---------------------------------------------------------------------------- atomic checkpoints
class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint through the write-and-verify helper: a staging file in the target
    folder, flushed, read back with a weights-only load, then renamed onto the target.

    Lightning's own save writes the final file in place, so a crash or a full disk during the
    save can leave a truncated last.ckpt and nothing to resume from; here a failed save is an
    ``OutputError`` (path, free space) and the previous checkpoint stays. Loading always uses
    ``weights_only=True`` (the engine stores only tensors and plain types).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            torch_save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        return torch.load(path, map_location=map_location or (lambda storage, loc: storage),
                          weights_only=True)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that reports each save and can be suspended after a stop request (so the
    end-of-epoch save cannot overwrite the mid-epoch stop checkpoint)."""

    def __init__(self, *args, on_saved: Callable[[str], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_saved = on_saved
        self.suspended = False

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self.suspended:
            return
        super()._save_checkpoint(trainer, filepath)
        if self.on_saved is not None and trainer.is_global_zero:
            self.on_saved(filepath)


# ---------------------------------------------------------------------------- progress stream
class ProgressWriter:
    """JSON lines (one event a line, flushed) to a file and/or stdout; only global rank 0 writes.

    The Slicer training module tails the file; see docs/ARCHITECTURE.md for the schema.
    """

    def __init__(self, path: str | os.PathLike | None = None, stdout: bool = False, rank: int = 0,
                 tags: dict | None = None):
        self.path = Path(path) if path else None
        self.stdout = stdout
        self.rank = rank
        self.tags = dict(tags or {})  # fields on every event (cross-validation: {"fold": k})
        self._file: TextIO | None = None
        self._failed = False
        self._started = False
        self._held: list[dict] = []
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event. ``warning`` events that come before the run's ``start`` are held and
        written right after it (each run's events begin with ``start``), or before an ``error``
        / at close when the run never starts."""
        if self.rank != 0:
            return
        record = {"event": event, "time": round(time.time(), 3), **self.tags, **fields}
        if event == "warning" and not self._started:
            self._held.append(record)
            return
        if event != "start":
            self._flush_held()
        self._write(record)
        if event == "start":
            self._started = True
            self._flush_held()

    @property
    def started(self) -> bool:
        """Has the run's ``start`` event been written (training began)?"""
        return self._started

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for record in held:
            self._write(record)

    def _write(self, record: dict) -> None:
        line = json.dumps(record, default=_json_default, allow_nan=False) + "\n"
        with self._lock:
            if self.path is not None and not self._failed:
                try:
                    if self._file is None:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        self._file = open(self.path, "a", encoding="utf-8")
                    self._file.write(line)
                    self._file.flush()
                except OSError as exc:
                    # A full disk must not turn into a second error that hides the first (the
                    # failed checkpoint save that is being reported): say so once, go on.
                    self._failed = True
                    print(f"warning: cannot append to {self.path} ({exc.strerror or exc}); "
                          "progress events go to the terminal only.", file=sys.stderr)
            if self.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()

    def close(self) -> None:
        self._flush_held()
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    pass
                self._file = None


def _json_default(x):
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class ProgressStream(Callback):
    """Emits start / step (throttled) / epoch events. done/stopped/error come from the runner."""

    def __init__(self, writer: ProgressWriter, every_s: float = 2.0, every_steps: int = 50,
                 start_info: dict | None = None, stopping: Callable[[], bool] = lambda: False,
                 monitor: str = "val_dice"):
        self.writer, self.every_s, self.every_steps = writer, every_s, every_steps
        self.monitor = monitor
        self.stopping = stopping
        self.start_info = start_info or {}
        self._t0 = self._last_emit = 0.0
        self._step0 = 0
        self._losses: list[float] = []
        self._last_emit_step = 0
        self._lr: float | None = None
        self.best: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.writer.rank = trainer.global_rank
        self._t0 = self._last_emit = time.monotonic()
        self._step0 = self._last_emit_step = trainer.global_step
        self.writer.emit("start", epoch=trainer.current_epoch, step=trainer.global_step,
                         epochs=trainer.max_epochs, total_steps=self._total(trainer),
                         steps_per_epoch=trainer.num_training_batches, world_size=trainer.world_size,
                         resumed=trainer.global_step > 0, **self.start_info)

    @staticmethod
    def _total(trainer) -> int:
        return int(getattr(trainer.lightning_module, "total_steps", 0) or trainer.estimated_stepping_batches)

    def eta_s(self, trainer) -> float | None:
        done = trainer.global_step - self._step0
        if done <= 0:
            return None
        # Mean wall time per step since start, validation included, times the steps left.
        per_step = (time.monotonic() - self._t0) / done
        return max(self._total(trainer) - trainer.global_step, 0) * per_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The lr this step uses (the scheduler steps after the optimiser).
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses.append(float(loss.detach()))
        now = time.monotonic()
        steps = trainer.global_step - self._last_emit_step
        if steps <= 0 or (now - self._last_emit < self.every_s and steps < self.every_steps
                          and trainer.global_step != self._total(trainer)):
            return
        images = steps * _batch_size(batch) * trainer.world_size
        self.writer.emit(
            "step", epoch=trainer.current_epoch, step=trainer.global_step,
            total_steps=self._total(trainer), batch=batch_idx + 1,
            batches_per_epoch=trainer.num_training_batches,
            loss=_finite(sum(self._losses) / len(self._losses)) if self._losses else None,
            lr=self._lr, images_per_s=round(images / max(now - self._last_emit, 1e-9), 3),
            eta_s=_round(self.eta_s(trainer)))
        self._losses.clear()
        self._last_emit, self._last_emit_step = now, trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.stopping():
            return  # an interrupted epoch; the runner reports "stopped"
        m = trainer.callback_metrics
        rec: dict[str, Any] = {}
        if getattr(pl_module, "last_val_epoch", None) == trainer.current_epoch:  # validated now
            rec = {k: _finite(v) for k, v in pl_module.last_val.items() if k != "val_images"}
            score = rec.get(self.monitor)
            if score is not None:
                self.best = score if self.best is None else max(self.best, score)
        if "train_loss_epoch" in m:
            rec["train_loss"] = _finite(float(m["train_loss_epoch"]))
        self.writer.emit("epoch", epoch=trainer.current_epoch, step=trainer.global_step,
                         total_steps=self._total(trainer), best=self.best, eta_s=_round(self.eta_s(trainer)),
                         **rec)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")


def _batch_size(batch) -> int:
    return int(batch["ct"].shape[0]) if isinstance(batch, dict) else 1


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# ---------------------------------------------------------------------------- stop requests
def last_batch_of_epoch(trainer, pl_module) -> bool:
    """Did the step that just ended finish the epoch's training batches? (Counted by the module,
    whose count a resumed run restores; Lightning's batch_idx restarts in a resumed epoch.)"""
    done = getattr(pl_module, "batches_done", None)
    total = trainer.num_training_batches
    return done is not None and isinstance(total, int) and done >= total



class StepDecisions:
    """The per-step decisions of several callbacks (stop request, timed checkpoint), each
    OR-reduced over ranks, with one all-reduce per step for all of them.

    Each callback registers a ``local_vote(trainer, pl_module) -> bool``; the first one that
    asks in a batch collects every registered vote and reduces them together (a SUM of a small
    int tensor), the others of that batch read the result. Whether a callback asks must be the
    same on every rank (it is: the early returns depend on reduced state only), so the ranks
    enter the collective together.
    """

    def __init__(self):
        self._voters: list[Callable[[Any, Any], bool]] = []
        self._key: tuple | None = None
        self._result: list[bool] = []

    def register(self, local_vote: Callable[[Any, Any], bool]) -> int:
        self._voters.append(local_vote)
        self._key = None
        return len(self._voters) - 1

    def decide(self, index: int, trainer, pl_module, batch_idx) -> bool:
        key = (id(trainer), trainer.current_epoch, batch_idx, trainer.global_step)
        if key != self._key:
            votes = [bool(vote(trainer, pl_module)) for vote in self._voters]
            strategy = trainer.strategy
            if len(votes) == 1:
                self._result = [bool(strategy.reduce_boolean_decision(votes[0], all=False))]
            else:
                summed = strategy.reduce(torch.tensor([int(v) for v in votes], device=strategy.root_device),
                                         reduce_op="sum")
                self._result = [bool(x) for x in summed.tolist()]
            self._key = key
        return self._result[index]


class StopRequest(Callback):
    """Stop cleanly after the current step when a stop file appears or on SIGTERM/SIGINT.

    The decision is OR-reduced over ranks (the file may be visible on one node only, the signal
    may reach one process), then the checkpoint is written and all ranks leave ``fit`` together.
    A second SIGINT aborts at once (KeyboardInterrupt). ``decisions``: a StepDecisions shared
    with TimedCheckpoint, so that both decide with one all-reduce per step.
    """

    def __init__(self, stop_file: str | os.PathLike, checkpoint_path: str | os.PathLike,
                 on_stop: Callable[[str, int], None] | None = None, after_steps: int | None = None,
                 handle_signals: bool = True, checkpoints: list[RunCheckpoint] = (),
                 decisions: StepDecisions | None = None):
        self.stop_file = Path(stop_file)
        self.checkpoint_path = str(checkpoint_path)
        self.on_stop = on_stop
        self.after_steps = after_steps
        self.handle_signals = handle_signals
        self.checkpoints = list(checkpoints)
        self.signalled: str | None = None
        self.stopped = False
        self.cut = False  # stopped inside an epoch (True) or at its last batch (False)
        self.reason: str | None = None
        self.epoch: int | None = None
        self._previous: dict[int, Any] = {}
        self._pending: str | None = None
        self.decisions = decisions if decisions is not None else StepDecisions()
        self._vote = self.decisions.register(self._local_vote)

    # Signals ---------------------------------------------------------------
    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.signalled:
            raise KeyboardInterrupt
        self.signalled = signal.Signals(signum).name

    def on_train_start(self, trainer, pl_module) -> None:
        # Installed after Lightning's own SIGTERM handler, so ours decides; restored at the end.
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    # Stop ------------------------------------------------------------------
    def _local_reason(self, trainer) -> str | None:
        if self.signalled:
            return f"signal {self.signalled}"
        if self.stop_file.exists():
            return f"stop file {self.stop_file}"
        if self.after_steps is not None and trainer.global_step >= self.after_steps:
            return f"after {self.after_steps} steps"
        return None

    def _local_vote(self, trainer, pl_module) -> bool:
        self._pending = None if self.stopped else self._local_reason(trainer)
        return self._pending is not None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stopped:
            return
        if not self.decisions.decide(self._vote, trainer, pl_module, batch_idx):
            return
        self.reason = self._pending or "stop requested on another process"
        self.stopped = True
        trainer.should_stop = True
        if last_batch_of_epoch(trainer, pl_module):
            # The epoch's training is complete: let its validation and end-of-epoch checkpoints
            # run as usual (a mid-epoch save here would make the resumed run skip them).
            self.cut, self.epoch = False, trainer.current_epoch + 1
            return
        self.cut, self.epoch = True, trainer.current_epoch
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        for cb in self.checkpoints:
            cb.suspended = True
        # Lightning would validate before leaving; skip it, the epoch is incomplete (and the
        # resumed run validates it when the epoch ends).
        trainer.limit_val_batches = 0
        if self.on_stop is not None and trainer.is_global_zero:
            self.on_stop(self.checkpoint_path, trainer.global_step)


# ---------------------------------------------------------------------------- timed checkpoints
class TimedCheckpoint(Callback):
    """Save ``last.ckpt`` also every ``every_s`` seconds of training, after the step that crosses
    the interval, so that a kill -9 or a power cut loses at most the interval plus one step
    (plus one checkpoint write), not a whole epoch (hours on PCLT20K). The save is atomic and
    verified like every checkpoint, and records the position in the epoch, so ``--resume``
    continues from the next batch exactly as after a stop request.

    The decision is OR-reduced over ranks (every rank must enter the save together), through
    ``decisions`` (a StepDecisions, shared with StopRequest: one all-reduce per step).
    """

    def __init__(self, path: str | os.PathLike, every_s: float,
                 on_saved: Callable[[str, int], None] | None = None,
                 skip: Callable[[], bool] = lambda: False, clock: Callable[[], float] = time.monotonic,
                 decisions: StepDecisions | None = None):
        self.path, self.every_s = str(path), float(every_s)
        self.on_saved, self.skip, self.clock = on_saved, skip, clock
        self._last = 0.0
        self.saves = 0
        self.decisions = decisions if decisions is not None else StepDecisions()
        self._vote = self.decisions.register(self._local_vote)

    def _local_vote(self, trainer, pl_module) -> bool:
        return self.every_s > 0 and self.clock() - self._last >= self.every_s

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_s <= 0 or self.skip():  # off, or a stop request just saved it
            return
        if last_batch_of_epoch(trainer, pl_module):
            return  # the end-of-epoch checkpoint follows, after the validation it must not skip
        if not self.decisions.decide(self._vote, trainer, pl_module, batch_idx):
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last = self.clock()
        self.saves += 1
        if self.on_saved is not None and trainer.is_global_zero:
            self.on_saved(self.path, trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._last = self.clock()  # the end-of-epoch checkpoint restarts the interval
