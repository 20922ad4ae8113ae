"""``train(cfg)``: the one entry point of ``vmambax train`` and the Slicer training module.

Outputs in ``cfg.out`` (RUN_DIR):
  checkpoints/last.ckpt         every epoch, every --checkpoint-every minutes and on a stop
                                request (staged, verified, renamed; resume from it)
  checkpoints/best-*.ckpt       best validation micro Dice so far
  model.pt                      the inference model file (from the best checkpoint)
  progress.jsonl                JSON-lines progress (schema in docs/ARCHITECTURE.md)
  logs/                         Lightning CSV metrics
  data/                         the PCLT-layout export when --data held volume cases
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from vmambax.errors import ConfigError, InputError, VMambaXError
from vmambax.train.config import TrainConfig

#: Options that define a run: a resumed run must keep them, or its schedule would change.
RECIPE_FIELDS = ("config", "config_overrides", "epochs", "batch_size", "lr", "weight_decay", "betas",
                 "eps", "min_lr_factor", "warmup_epochs", "augment", "crop_size", "image_size",
                 "negatives_per_positive", "seed", "max_steps", "limit_train_batches", "val_fraction",
                 "ct_windows", "suv_windows", "context_slices", "threshold", "tta", "postprocess",
                 "recipe", "augmentation", "loss", "warmup_fraction", "time_budget", "init",
                 "train_cases", "val_cases")
HPARAMS_KEY = "train_config"


@dataclass
class TrainResult:
    status: str  # "done" | "stopped"
    run_dir: Path
    model_file: Path | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    epoch: int
    global_step: int
    best_metrics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- resume helpers
def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The TrainConfig dict stored in a training checkpoint."""
    from vmambax.errors import ModelFileError
    from vmambax.model.pretrained import safe_torch_load

    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist; give --resume RUN_DIR/checkpoints/last.ckpt "
                         "of an earlier run (or start a new run without --resume).")
    try:  # weights-only, memory-mapped (legacy files the ordinary way); a folder is named one
        ckpt = safe_torch_load(path, what="checkpoint", mmap=True)
    except ModelFileError as exc:
        raise InputError(f"{exc} To resume, give another checkpoint of the run (RUN_DIR/checkpoints/).") from None
    hp = (ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
    if HPARAMS_KEY not in hp:
        raise InputError(f"{path} is not a `vmambax train` checkpoint (no training configuration in it).")
    return dict(hp[HPARAMS_KEY])


def resolve_resume_path(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    path = cfg.last_checkpoint if cfg.resume in ("last", "auto") else Path(cfg.resume)
    if path.is_dir():  # a RUN_DIR
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise InputError(f"nothing to resume: {path} does not exist. Resume needs the last.ckpt an "
                         "earlier run wrote; start a new run without --resume instead.")
    return path


def config_for_resume(checkpoint: str | os.PathLike, **changes) -> TrainConfig:
    """The saved TrainConfig of a run with operational ``changes`` (devices, progress, ...).

    Changing a recipe field (RECIPE_FIELDS) raises ConfigError: it would alter the schedule.
    """
    saved = read_checkpoint_config(checkpoint)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in saved.items() if k in known}
    base["betas"] = tuple(base.get("betas", (0.9, 0.999)))
    diffs = [f"--{k.replace('_', '-')} {v!r} (the run used {base.get(k)!r})"
             for k, v in changes.items() if k in RECIPE_FIELDS and _norm(v) != _norm(base.get(k))]
    if diffs:
        raise ConfigError("a resumed run keeps its recipe so the schedule continues unchanged; drop "
                          + "; ".join(diffs) + ", or start a new run in another --out folder.")
    base.update(changes)
    base["resume"] = str(checkpoint)
    return TrainConfig(**base)


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------- environment
def launch_topology(cfg: TrainConfig) -> tuple[Any, int]:
    """(devices, nodes): explicit values, or under torchrun/SLURM the launcher's layout."""
    devices, nodes = cfg.devices, cfg.nodes
    env = os.environ
    if devices == "auto":
        if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:  # torchrun / torch.distributed.run
            devices = int(env["LOCAL_WORLD_SIZE"])
            nodes = max(int(env["WORLD_SIZE"]) // devices, 1)
        elif "SLURM_NTASKS_PER_NODE" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
            devices = int(env["SLURM_NTASKS_PER_NODE"].split("(")[0])
            nodes = int(env.get("SLURM_NNODES", nodes))
    return devices, nodes


def global_rank_from_env(devices) -> int:
    """This process's global rank before the Trainer exists: torchrun sets RANK, SLURM sets
    SLURM_PROCID, Lightning's own launcher sets LOCAL_RANK (+ NODE_RANK) in the processes it
    starts. Rank 0 alone prepares the run folder and data and writes the outputs."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        return int(env["SLURM_PROCID"])
    if "LOCAL_RANK" in env:
        per_node = devices if isinstance(devices, int) else 1
        return int(env.get("NODE_RANK", 0)) * per_node + int(env["LOCAL_RANK"])
    return 0


def resolve_accelerator_precision(cfg: TrainConfig) -> tuple[str, str]:
    import torch

    accel = cfg.accelerator
    if accel == "auto":
        accel = "gpu" if torch.cuda.is_available() else "cpu"
    if accel == "cuda":
        accel = "gpu"
    if accel == "gpu" and not torch.cuda.is_available():
        raise ConfigError("--accelerator gpu was asked for but PyTorch sees no CUDA device; use "
                          "--accelerator cpu or install a CUDA build of PyTorch.")
    prec = cfg.precision
    if prec == "auto":
        if accel == "gpu":
            prec = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            prec = "32-true"
    if prec == "32":
        prec = "32-true"
    return accel, prec


def world_size_of(trainer_devices, nodes: int, accel: str) -> int:
    import torch

    if isinstance(trainer_devices, int):
        n = trainer_devices
    elif isinstance(trainer_devices, str) and trainer_devices != "auto":
        n = len([d for d in trainer_devices.split(",") if d.strip()])
    else:
        n = torch.cuda.device_count() if accel == "gpu" else 1
    return max(n, 1) * nodes


def _check_config_name(cfg: TrainConfig) -> None:
    from vmambax.model import get_config

    get_config(cfg.config, **cfg.config_overrides)  # ConfigError with the known names


def _open_run_dir(cfg: TrainConfig, resume: Path | None) -> None:
    """Refuse a new run in a folder that holds one; create RUN_DIR."""
    if resume is None and cfg.last_checkpoint.exists():
        raise ConfigError(f"{cfg.out} already holds a training run ({cfg.last_checkpoint}); continue "
                          "it with --resume, or choose a new --out folder.")
    try:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from vmambax.utils import output_error

        raise output_error(cfg.out_dir, exc) from None


def _prepare_run_dir(cfg: TrainConfig) -> list[Path]:
    """Remove the staging files a killed run (kill -9, power cut) left behind
    (``.last.<random>.tmp.ckpt``, ``.model.<random>.tmp.pt``, ``.data.<random>.tmp``) and a
    stale stop request. Rank 0 only, holding the run lock, before training starts: no save of
    ours can be in flight. Returns the files removed."""
    from vmambax.utils import remove_stale_staging

    if cfg.stop_path.exists():
        cfg.stop_path.unlink()  # a stale request from the run we are resuming
    return [p for d in (cfg.out_dir, cfg.checkpoint_dir) for p in remove_stale_staging(d)]


# ---------------------------------------------------------------------------- train
def train(cfg: TrainConfig, *, callbacks: Sequence[Any] = (), model=None,
          param_groups_fn: Callable | None = None, progress_tags: dict | None = None) -> TrainResult:
    """Train per ``cfg``; returns when done or stopped (stop file / signal). Options and the data
    folder are checked before anything is written; a failure is also reported as an ``error``
    event in the progress stream.

    ``callbacks``: extra Lightning callbacks. ``model`` / ``param_groups_fn`` (advanced): a
    prepared network (and its AdamW groups) instead of ``build_model(cfg.config)``.
    """
    started = time.monotonic()  # a --time-budget counts from here: the export is part of it
    cfg.validate()
    _check_config_name(cfg)
    resume = resolve_resume_path(cfg)
    if resume is not None:
        cfg = cfg.replace(resume=str(resume))
    accel, precision = resolve_accelerator_precision(cfg)
    devices, nodes = launch_topology(cfg)
    world = world_size_of(devices, nodes, accel)
    # SyncBN pools BatchNorm statistics across processes; torch implements it for CUDA only.
    sync_bn = world > 1 and accel == "gpu"
    if cfg.batch_size * (world if sync_bn else 1) < 2:
        # CGM's BatchNorm sees 1x1 pooled maps: its batch statistics need >= 2 samples per step.
        raise ConfigError("--batch-size 1 cannot train here: the CGM BatchNorm needs at least 2 "
                          "samples per step (pooled across GPUs only with SyncBN on CUDA). Use "
                          "--batch-size 2 or more (with --crop-size to save memory).")
    from vmambax.locks import RunLock
    from vmambax.train.callbacks import ProgressWriter
    from vmambax.train.datamodule import check_data_path
    from vmambax.utils import FolderSnapshot

    rank = global_rank_from_env(devices)
    check_data_path(cfg.data)
    stale: list[Path] = []
    lock = RunLock(cfg.out_dir)  # one trainer per run folder (rank 0 holds it for all ranks)
    # A run refused before training starts (bad data, one case only ...) leaves the run folder
    # as it found it: no export in RUN_DIR/data, no logs, no progress.jsonl of its own.
    stream = cfg.progress_path
    in_run = [stream.name] if stream is not None and stream.parent.resolve() == cfg.out_dir.resolve() else []
    found = FolderSnapshot(cfg.out_dir, append_only=in_run) if rank == 0 else None
    if rank == 0:
        _open_run_dir(cfg, resume)
        # The VMambaX Train panel takes the lock before it starts us: inherited, not refused.
        lock.acquire(inherit=True)
        try:
            stale = _prepare_run_dir(cfg)
        except BaseException:
            lock.release()
            found.restore()
            raise
    # The stream is append-only: a resumed run continues it; each run begins with "start".
    writer = ProgressWriter(cfg.progress_path, stdout=cfg.progress_stdout, rank=rank,
                            tags=progress_tags)
    if stale:
        _warn(writer, f"removed {len(stale)} unfinished file(s) an interrupted run left in "
                      f"{cfg.out_dir}: {', '.join(p.name for p in stale)}")
    finished = False
    try:
        run = _Run(cfg, writer, rank=rank, accel=accel, precision=precision, devices=devices,
                   nodes=nodes, world=world, sync_bn=sync_bn, started=started)
        run.fit(model, param_groups_fn, callbacks, resume)
        result = run.finish()
        finished = True
        return result
    except (KeyboardInterrupt, SystemExit):
        writer.emit("error", message="interrupted")
        raise
    except VMambaXError as exc:
        clean = _without_worker_traceback(exc)
        writer.emit("error", message=str(clean))
        if clean is exc:
            raise
        raise clean from None
    except OSError as exc:  # a full disk / no permission outside our own writers (e.g. logs/)
        from vmambax.utils import output_error

        error = output_error(exc.filename or cfg.out_dir, exc)
        writer.emit("error", message=str(error))
        raise error from None
    except BaseException as exc:
        writer.emit("error", message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        writer.close()
        lock.release()
        if found is not None and not finished and not writer.started:
            found.restore()  # refused (or interrupted) before the first step


def _warn(writer, message: str, rank: int = 0) -> None:
    """A warning the user must see: on stderr and as a ``warning`` event in the stream."""
    if rank == 0:
        print(f"warning: {message}", file=sys.stderr)
        writer.emit("warning", message=message)


def _without_worker_traceback(exc: VMambaXError) -> VMambaXError:
    """A user error raised in a DataLoader worker reaches us with the worker's traceback in its
    message ("Caught InputError in DataLoader worker ... Original Traceback ..."); keep only the
    original message, which names the problem and the fix."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    last = text.strip().splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return type(exc)(last[len(prefix):] if last.startswith(prefix) else last)


class _Run:
    """One ``train()`` call: data, module, trainer, then the export and the final event."""

    def __init__(self, cfg: TrainConfig, writer, *, rank: int, accel: str, precision: str,
                 devices, nodes: int, world: int, sync_bn: bool, started: float | None = None):
        self.cfg, self.writer, self.rank = cfg, writer, rank
        self.accel, self.precision = accel, precision
        self.devices, self.nodes, self.world, self.sync_bn = devices, nodes, world, sync_bn
        self.started = time.monotonic() if started is None else started
        self.budget_info: dict | None = None

    def _plan_budget(self, model, dm, resume) -> list:
        """With --time-budget: measure, plan and record the schedule (vmambax.train.budget);
        returns the guard callback. A resumed run keeps the plan it recorded."""
        cfg = self.cfg
        if not cfg.time_budget or resume is not None:
            return []
        if self.world > 1:
            raise ConfigError("--time-budget plans the schedule in one process; with several "
                              "processes (DDP) give --epochs instead.")
        import torch

        from vmambax.train import budget
        from vmambax.train.datamodule import SliceDataset
        from vmambax.train.loss import LOSSES

        device = torch.device("cuda") if self.accel == "gpu" else torch.device("cpu")
        train_ds = SliceDataset(self.train_src, train=True, crop_size=cfg.crop_size,
                                augment=cfg.augmentation_name, seed=cfg.seed)
        measured = budget.measure(model, LOSSES[cfg.loss], train_ds, SliceDataset(self.val_src, train=False),
                                  batch_size=cfg.batch_size, val_batch_size=cfg.val_batch_size or cfg.batch_size,
                                  lr=cfg.lr, device=device, scratch_dir=cfg.out_dir)
        deadline = self.started + cfg.time_budget * 60.0
        available = deadline - time.monotonic() - budget.RESERVE_S
        plan = budget.plan(available, measured, max(len(self.train_src) // cfg.batch_size, 1))
        self.cfg = cfg.replace(epochs=plan.epochs, limit_train_batches=plan.steps_per_epoch,
                               max_steps=plan.total_steps, val_every=1)
        self.budget_info = budget.state(plan, measured)
        if self.rank == 0:
            print(f"vmambax train: {plan.describe(measured)}", file=sys.stderr)

        def shortened(epochs: int, per_epoch: float) -> None:
            _warn(self.writer, f"this machine ran slower than measured ({per_epoch:.0f} s a round): "
                               f"the run ends after round {epochs} of {plan.epochs} to keep its "
                               f"{cfg.time_budget:g}-minute budget", rank=self.rank)

        return [budget.BudgetGuard(deadline, plan.steps_per_epoch, on_shorten=shortened)]

    def _data(self):
        from vmambax.train.datamodule import (SliceDataModule, check_positive_slices, export_info,
                                              load_splits, load_volume_splits, prepare_data_root,
                                              slice_size, split_summary)

        cfg = self.cfg
        notes: list[str] = []
        spec = cfg.input_spec()
        root, kind = prepare_data_root(cfg.data, cfg.out, spec=spec, export=self.rank == 0,
                                       data_dir=cfg.data_dir, resumed=bool(cfg.resume), notes=notes)
        if kind == "volumes":  # the exporter's warnings (PET coverage, ...), on every run
            notes = [f"exporting the cases: {w}" for w in export_info(root).get("warnings", [])] + notes
            train_src, val_src = load_volume_splits(
                root, spec, train_cases=cfg.train_cases, val_cases=cfg.val_cases,
                val_fraction=cfg.val_fraction, seed=cfg.seed,
                negatives_per_positive=cfg.negatives_per_positive)
        else:
            if not spec.is_paper or spec.context:
                raise ConfigError(f"{cfg.data} is a PCLT20K-layout folder: its PNG slices hold the "
                                  "papers' windows only, so --ct-windows/--suv-windows/--context-slices "
                                  "apply to volume case folders alone; drop them.")
            train_src, val_src = load_splits(root, val_fraction=cfg.val_fraction, seed=cfg.seed)
        for note in notes:
            _warn(self.writer, note, rank=self.rank)
        check_positive_slices(train_src, cfg.min_positive_slices, str(root))
        self.size = slice_size(train_src)
        self.spec = spec.replace(image_size=self.size)
        self.val_cases = len(val_src.case_ids) if kind == "volumes" else 0
        self.monitor = "val_dice_3d" if kind == "volumes" else "val_dice"
        if cfg.crop_size is not None and cfg.crop_size > self.size:
            raise ConfigError(f"--crop-size {cfg.crop_size} is larger than the {self.size}x{self.size} "
                              f"slices of {root}; use a crop of at most {self.size}.")
        self.data_info = {"kind": kind, "source": str(Path(cfg.data).resolve()),
                          "root": str(Path(root).resolve()), "image_size": self.size,
                          "train": split_summary(train_src), "val": split_summary(val_src)}
        if kind == "volumes":
            self.data_info["train_cases"] = list(train_src.case_ids)
            self.data_info["val_cases"] = list(val_src.case_ids)
        self.train_src, self.val_src, self.root, self.kind = train_src, val_src, Path(root), kind
        dm = SliceDataModule(train_src, val_src, batch_size=cfg.batch_size,
                             val_batch_size=cfg.val_batch_size or cfg.batch_size,
                             crop_size=cfg.crop_size, augment=cfg.augmentation_name, seed=cfg.seed,
                             num_workers=cfg.loader_workers(self.devices if isinstance(self.devices, int) else 1))
        dm.allow_zero_length_dataloader_with_multiple_devices = True
        return dm

    def _callbacks(self) -> list:
        from vmambax.train.callbacks import (ProgressStream, RunCheckpoint, StepDecisions, StopRequest,
                                             TimedCheckpoint)

        cfg, writer = self.cfg, self.writer

        def saved(path):
            writer.emit("checkpoint", path=str(path))

        # best validation Dice: micro over slices (PCLT20K; the reference used test-set IoU), or
        # the mean 3-D Dice per case for volume cases (what a clinic's cases are judged by)
        self.best_cb = RunCheckpoint(
            dirpath=str(cfg.checkpoint_dir),
            filename="best-epoch{epoch:03d}-dice{" + self.monitor + ":.4f}",
            auto_insert_metric_name=False, monitor=self.monitor, mode="max", save_top_k=1,
            on_saved=saved)
        self.last_cb = RunCheckpoint(  # every epoch, validated or not (Lightning's save_last
            # skips epochs in which the monitored checkpoint did not improve)
            dirpath=str(cfg.checkpoint_dir), filename="last", monitor=None, save_top_k=1,
            save_on_train_epoch_end=True, enable_version_counter=False, on_saved=saved)
        decisions = StepDecisions()  # the stop and the timed-checkpoint votes: one all-reduce per step
        self.stop_cb = StopRequest(
            cfg.stop_path, cfg.last_checkpoint, after_steps=cfg.stop_after_steps,
            checkpoints=[self.best_cb, self.last_cb], decisions=decisions,
            on_stop=lambda path, step: writer.emit("checkpoint", path=str(path), step=step))
        self.timed_cb = TimedCheckpoint(
            cfg.last_checkpoint, cfg.checkpoint_every * 60.0, skip=lambda: self.stop_cb.stopped,
            decisions=decisions,
            on_saved=lambda path, step: writer.emit("checkpoint", path=str(path), step=step,
                                                    reason="interval"))
        progress = ProgressStream(writer, every_s=cfg.progress_every_s, monitor=self.monitor,
                                  stopping=lambda: self.stop_cb.stopped and self.stop_cb.cut, start_info={
                                      "config": cfg.config, "data": self.data_info,
                                      "recipe": cfg.recipe, "inputs": self.spec.describe(),
                                      "budget": self.budget_info,
                                      "precision": self.precision, "accelerator": self.accel,
                                      "batch_size": cfg.batch_size, "out": str(cfg.out_dir)})
        return [progress, self.stop_cb, self.timed_cb]

    def fit(self, model, param_groups_fn, extra_callbacks, resume: Path | None) -> None:
        import pytorch_lightning as pl
        from pytorch_lightning.loggers import CSVLogger

        from vmambax.train.callbacks import AtomicCheckpointIO
        from vmambax.train.module import SegmentationModule

        cfg = self.cfg
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        dm = self._data()
        if model is None:
            from vmambax.model import build_model

            overrides = dict(cfg.config_overrides)
            if cfg.pretrained_encoder and resume is None:
                overrides["pretrained_encoder"] = cfg.pretrained_encoder
            if self.spec.in_chans != 3:  # several windows x neighbouring slices (InputSpec)
                overrides.setdefault("in_chans", self.spec.in_chans)
            model = build_model(cfg.config, **overrides)
            if cfg.init and resume is None:
                from vmambax.train.init import init_from

                for note in init_from(model, cfg.init):
                    _warn(self.writer, note, rank=self.rank)
        budget_cbs = self._plan_budget(model, dm, resume)
        cfg = self.cfg  # the budget's plan is part of the run's configuration
        hparams = {HPARAMS_KEY: cfg.to_dict(), "data": self.data_info}
        hparams.update({k: v for k, v in cfg.to_dict().items() if k in RECIPE_FIELDS})
        self.module = SegmentationModule(model, hparams, param_groups_fn=param_groups_fn,
                                         val_cases=self.val_cases)
        dm.limit_batches = cfg.limit_train_batches if isinstance(cfg.limit_train_batches, int) else None
        callbacks = [*self._callbacks(), *budget_cbs, *extra_callbacks, self.best_cb, self.last_cb]
        show_bar = cfg.progress_bar and sys.stderr.isatty()
        self.trainer = pl.Trainer(
            accelerator=self.accel, devices=self.devices, num_nodes=self.nodes,
            strategy=cfg.strategy if cfg.strategy != "auto" or self.world == 1 else "ddp",
            precision=self.precision, sync_batchnorm=self.sync_bn, max_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1, limit_train_batches=cfg.limit_train_batches,
            limit_val_batches=cfg.limit_val_batches, check_val_every_n_epoch=cfg.val_every,
            num_sanity_val_steps=0, use_distributed_sampler=False,  # our samplers shard
            deterministic=cfg.deterministic, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
            logger=CSVLogger(str(cfg.out_dir), name="logs"), log_every_n_steps=10,
            enable_progress_bar=show_bar, enable_model_summary=show_bar,
            default_root_dir=str(cfg.out_dir))
        with warnings.catch_warnings():
            # Our samplers/loaders are resumable and sharded on purpose; these do not apply.
            for message in (".*does not have many workers.*", ".*resuming from a checkpoint that ended before.*",
                            ".*Checkpoint directory .* exists and is not empty.*",
                            ".*is smaller than the logging interval.*", ".*treespec.*"):
                warnings.filterwarnings("ignore", message=message)
            self.trainer.fit(self.module, datamodule=dm, ckpt_path=str(resume) if resume else None,
                             **_weights_only_kwarg(self.trainer))

    def finish(self) -> TrainResult:
        """Export the model file (rank 0) and report done/stopped."""
        import copy

        from vmambax.train.export import export_model_file

        cfg, trainer, stop = self.cfg, self.trainer, self.stop_cb
        status = "stopped" if stop.stopped else "done"
        # Epochs fully trained (Lightning counts the interrupted one as ended too).
        epochs_done = int(stop.epoch) if stop.stopped else int(trainer.current_epoch)
        best = self.best_cb.best_model_path or None
        score = self.best_cb.best_model_score
        best_val = float(score) if score is not None else None
        best_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if best_val is not None:
            best_metrics["best_val_dice"] = best_val
        model_file = None
        if trainer.is_global_zero:
            metadata = {
                "status": status, "epochs_completed": epochs_done, "global_step": int(trainer.global_step),
                "best_checkpoint": Path(best).name if best else None, "best_val_dice": best_val,
                "validation_metric": self.monitor,
                "recipe": {k: v for k, v in cfg.to_dict().items() if k in RECIPE_FIELDS},
                "data": self.data_info, "precision": self.precision, "accelerator": self.accel,
                "world_size": int(trainer.world_size), "budget": self.budget_info,
                "training_data": "volume cases" if self.kind == "volumes" else "PCLT20K-layout slices",
            }
            # Into a CPU copy (the trained module stays as it is), from the best checkpoint when
            # there is one (else the current weights, e.g. stopped before the first validation).
            net = copy.deepcopy(self.module.model).cpu()
            if best:
                from vmambax.train.export import model_state_from_checkpoint

                net.load_state_dict(model_state_from_checkpoint(best))
            spec = self.spec
            if cfg.postprocess == "auto" and self.kind == "volumes":
                from vmambax.train.select import choose_postprocess

                spec, scores = choose_postprocess(net, self.val_src, spec)
                metadata["postprocess_choice"] = scores
            model_file = export_model_file(cfg.model_file, net, config_name=cfg.config,
                                           metadata=metadata, preprocessing=spec.to_dict())
            self.writer.emit(status, epochs_completed=epochs_done, step=int(trainer.global_step),
                             model_file=str(model_file), best_checkpoint=best,
                             last_checkpoint=str(cfg.last_checkpoint), reason=stop.reason,
                             best_val_dice=best_val)
        return TrainResult(status=status, run_dir=cfg.out_dir, model_file=model_file,
                           last_checkpoint=cfg.last_checkpoint if cfg.last_checkpoint.exists() else None,
                           best_checkpoint=Path(best) if best else None, epoch=epochs_done,
                           global_step=int(trainer.global_step), best_metrics=best_metrics)


def _weights_only_kwarg(trainer) -> dict:
    import inspect  # Lightning >= 2.4 takes weights_only; older ones load with torch's default

    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
