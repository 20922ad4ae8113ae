"""``vmambax train``: train vMambaX on PCLT20K-layout data or volume case folders."""

from __future__ import annotations

import argparse
import sys

from vmambax.errors import ConfigError

HELP = "train a model (PCLT20K layout or volume case folders) with resume, DDP and a progress stream"

EPILOG = """recipes (options given explicitly override them; --recipe, default auto):
  small-data  volume case folders (auto): vmambax-nano, whole slices at 128 px, CT window
              [-160, 240] HU, PET [0, 20] SUV, strong augmentation (rotations, scaling, flips,
              PET gain), AdamW lr 1e-3 with 3 % warm-up then cosine, test-time left-right flip,
              largest-component post-processing when the validation cases prefer it; chosen by
              5-fold cross-validation on 40 real PET/CT studies (docs/benchmarks.md)
  paper       PCLT20K layout (auto): spec section 8 (vmambax, 512 px, lr 6e-5, 50 epochs)

examples:
  vmambax train --data cases/ --out runs/clinic --time-budget 45      # a clinic's own cases
  vmambax train --data cases/ --out runs/cv --folds 5 --time-budget 240  # is it better here?
  vmambax train --data cases/ --out runs/ft --init default --time-budget 30   # fine-tune
  vmambax train --data cases/ --config vmambax-nano --out runs/nano --crop-size 256 --epochs 20
  vmambax train --data PCLT20K/ --config vmambax --out runs/paper            # the paper recipe
  vmambax train --out runs/paper --resume                                   # continue a run
  torchrun --nproc_per_node 4 -m vmambax train --data PCLT20K/ --out runs/ddp --batch-size 4
  touch runs/paper/STOP                                  # stop cleanly (checkpoint, exit 0)
"""


def _windows(text: str):
    from vmambax.data.input_spec import parse_windows

    try:
        return [list(w) for w in parse_windows(text)]
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _devices(text: str):
    return text if text == "auto" or "," in text else int(text)


def _workers(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a count (0 = load in the main process) "
                                         f"or auto") from None


def _count_or_fraction(text: str):
    return float(text) if "." in text else int(text)


def _override(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: use KEY=VALUE, e.g. drop_path=0.1")
    import json

    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="PCLT20K-layout folder (train.txt ...) or a folder of volume "
                   "cases (<case>/ct.nii.gz, pet.nii.gz, label.nii.gz or label.dcm: RTSTRUCT/DICOM SEG)")
    p.add_argument("--config", help="model configuration (default vmambax; see `vmambax info`)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder: checkpoints, "
                   "model.pt, progress.jsonl")
    p.add_argument("--override", action="append", type=_override, metavar="KEY=VALUE",
                   help="model config field override (repeatable), e.g. drop_path=0.1")
    r = p.add_argument_group("recipe (defaults: --recipe's, see below)")
    r.add_argument("--recipe", choices=("auto", "small-data", "paper"),
                   help="defaults for the options below (default auto: small-data for volume "
                   "case folders, paper for PCLT20K layout)")
    r.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="train for this long, everything included: steps, validation points and "
                   "the cosine are fitted to the step rate measured here; the last step is validated")
    r.add_argument("--folds", type=int, metavar="K", help="K-fold cross-validation (patient level): "
                   "K models, a table of out-of-fold 3-D Dice per case next to SUV >= 2.5 and 41 %% "
                   "SUVmax (RUN_DIR/crossval.md), and RUN_DIR/model.pt = the K models as one ensemble")
    r.add_argument("--init", metavar="MODEL", help="start from this model's weights: a registry "
                   "name (vmambax models list), a model.pt or a training checkpoint")
    r.add_argument("--epochs", type=int, help="default 50")
    r.add_argument("--batch-size", type=int, help="per process (default 8)")
    r.add_argument("--lr", type=float, help="AdamW learning rate (default 6e-5)")
    r.add_argument("--weight-decay", type=float, help="default 1e-2 (none on A_log, D, biases, norms)")
    r.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs before the cosine (default 0)")
    r.add_argument("--crop-size", type=int, help="train on random crops of this side (multiple of "
                   "128, pixel scale kept); default: whole slices")
    r.add_argument("--image-size", type=int, help="slice size when exporting volume cases "
                   "(multiple of 128; default 512, the papers'; 256 is ~4x faster on CPU)")
    r.add_argument("--negatives-per-positive", type=float, metavar="R", help="volume cases: "
                   "tumour-free slices exported per tumour slice (default 1)")
    r.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                   help="turn off augmentation")
    r.add_argument("--augmentation", choices=("paper", "strong", "flip", "none"),
                   help="augmentation preset (paper: spec section 8's)")
    r.add_argument("--loss", choices=("bce+dice", "bce+batchdice"), help="default bce+dice")
    r.add_argument("--warmup-fraction", type=float, metavar="F", help="linear warm-up as a share "
                   "of all steps (overrides --warmup-epochs)")
    i = p.add_argument_group("the model's inputs and outputs (stored in model.pt; volume cases)")
    i.add_argument("--ct-windows", type=_windows, metavar="W[,W...]", help="one CT channel per "
                   "window: names (soft, lung, bone, mediastinum, lung-paper) or LOW:HIGH in HU; "
                   "default the papers' -1200:-200")
    i.add_argument("--suv-windows", type=_windows, metavar="LOW:HIGH[,...]",
                   help="one PET channel per SUV window (default 0:15)")
    i.add_argument("--context-slices", type=int, metavar="N", help="neighbouring slices a side "
                   "as extra channels (default 0)")
    i.add_argument("--threshold", type=float, help="tumour probability threshold (default 0.5)")
    i.add_argument("--tta", choices=("none", "hflip", "hvflip"), help="test-time flips")
    i.add_argument("--postprocess", choices=("none", "largest", "auto"),
                   help="largest: keep the largest 3-D component; auto: choose on the validation cases")
    r.add_argument("--seed", type=int, help="default 42")
    r.add_argument("--val-every", type=int, help="validate every N epochs (default 1)")
    r.add_argument("--val-fraction", type=float, help="patient share carved for validation when "
                   "the data has no val.txt (default 0.1)")
    r.add_argument("--pretrained-encoder", metavar="PTH", help="VMamba-T ImageNet checkpoint for the encoder")
    h = p.add_argument_group("hardware and scale-out")
    h.add_argument("--accelerator", choices=("auto", "cpu", "gpu", "cuda", "mps"), help="default auto")
    h.add_argument("--devices", type=_devices, help="'auto', a count or a list like 0,1 (DDP when > 1)")
    h.add_argument("--nodes", type=int, help="number of nodes (torchrun/SLURM)")
    h.add_argument("--strategy", help="Lightning strategy (default: ddp when more than one process)")
    h.add_argument("--precision", help="auto (bf16-mixed/16-mixed on CUDA, 32-true on CPU), "
                   "32-true, 16-mixed, bf16-mixed")
    h.add_argument("--num-workers", type=_workers, metavar="N|auto", help="data loader workers "
                   "per process (default auto: the CPUs per process minus one, at most 4)")
    h.add_argument("--deterministic", action="store_const", const=True, help="deterministic kernels (slower)")
    s = p.add_argument_group("runs, resume and progress")
    s.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue RUN_DIR/checkpoints/last.ckpt (or the given checkpoint) with "
                   "the same schedule, optimizer and RNG state")
    s.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke runs)")
    s.add_argument("--limit-train-batches", type=_count_or_fraction, metavar="N|F",
                   help="batches per epoch (count, or fraction with a '.')")
    s.add_argument("--limit-val-batches", type=_count_or_fraction, metavar="N|F")
    s.add_argument("--progress-file", metavar="JSONL", help="default RUN_DIR/progress.jsonl; '-' for none")
    s.add_argument("--progress-stdout", action="store_const", const=True,
                   help="also write the JSON-lines progress to stdout")
    s.add_argument("--stop-file", help="stop cleanly when this file appears (default RUN_DIR/STOP)")
    s.add_argument("--checkpoint-every", type=float, metavar="MINUTES",
                   help="also save last.ckpt every MINUTES of training, mid-epoch (default 10; 0 = "
                   "only at epoch ends): a kill -9 loses at most that plus one step")
    s.add_argument("--min-positive-slices", type=int, metavar="N",
                   help="refuse training data with fewer than N slices with tumour (default 8)")
    s.add_argument("--no-progress-bar", dest="progress_bar", action="store_const", const=False)
    s.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)  # tests
    p.set_defaults(func=run)


OPTION_FIELDS = ("data", "config", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                 "crop_size", "image_size", "negatives_per_positive", "augment", "seed", "val_every", "val_fraction", "pretrained_encoder",
                 "accelerator", "devices", "nodes", "strategy", "precision", "num_workers",
                 "deterministic", "max_steps", "limit_train_batches", "limit_val_batches",
                 "progress_file", "progress_stdout", "stop_file", "progress_bar", "stop_after_steps",
                 "checkpoint_every", "min_positive_slices", "ct_windows", "suv_windows",
                 "context_slices", "threshold", "tta", "postprocess", "augmentation", "loss",
                 "warmup_fraction", "time_budget", "init", "folds")


def config_from_args(args):
    """TrainConfig from the options actually given (resumed runs inherit the rest)."""
    from vmambax.train.config import TrainConfig
    from vmambax.train.run import config_for_resume, resolve_resume_path

    given = {k: getattr(args, k) for k in OPTION_FIELDS if getattr(args, k, None) is not None}
    if args.override:
        given["config_overrides"] = dict(args.override)
    given["out"] = args.out
    if args.resume:
        probe = TrainConfig(data=given.get("data", ""), out=args.out, resume=args.resume)
        return config_for_resume(resolve_resume_path(probe), **given)
    if "data" not in given:
        raise ConfigError("--data is required for a new run (or pass --resume to continue one).")
    from vmambax.train.recipes import apply_recipe

    if "init" in given:
        given["init"] = _init_path(given["init"])
    return TrainConfig(**apply_recipe(args.recipe or "auto", given))


def _init_path(name: str) -> str:
    """A registry name -> its (verified) file; paths stay as they are."""
    from pathlib import Path

    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    from vmambax.infer.registry import resolve_model

    path, _ = resolve_model(name)
    return str(path)


def _crossval_dir(args) -> bool:
    from pathlib import Path

    from vmambax.crossval.runner import STATE

    return bool(args.resume) and (Path(args.out) / STATE).is_file()


def run(args) -> int:
    from vmambax.train.run import train
    from vmambax.utils import plural

    if getattr(args, "folds", None) or _crossval_dir(args):
        return _run_crossval(args)
    cfg = config_from_args(args)
    result = train(cfg)
    if result.model_file is None:
        return 0  # ranks > 0 of a distributed run
    best = result.best_metrics.get("best_val_dice")
    note = f", best validation Dice {best:.4f}" if best is not None else ""
    if result.status == "stopped":
        print(f"training stopped in epoch {result.epoch} at step {result.global_step}{note}; model "
              f"file {result.model_file}; continue with: vmambax train --out {cfg.out} --resume",
              file=sys.stderr)
    else:
        print(f"training done: {plural(result.global_step, 'step')}{note}; model file "
              f"{result.model_file}", file=sys.stderr)
    return 0


def _run_crossval(args) -> int:
    from vmambax.crossval import run_crossval
    from vmambax.train.config import TrainConfig

    if args.resume:
        probe = TrainConfig(data=args.data or "", out=args.out,
                            **{k: getattr(args, k) for k in ("progress_stdout", "progress_bar",
                                                             "num_workers", "accelerator", "devices")
                               if getattr(args, k, None) is not None})
        result = run_crossval(probe, resume=True)
    else:
        result = run_crossval(config_from_args(args))
    if result.status == "stopped":
        print(f"cross-validation stopped; continue with: vmambax train --out {args.out} --resume",
              file=sys.stderr)
    else:
        print(f"cross-validation done: table {result.tables['md']}; ensemble model file "
              f"{result.model_file}", file=sys.stderr)
    return 0
