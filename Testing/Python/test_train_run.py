"""End-to-end training runs of the real vmambax-nano on tiny phantom slices (CPU).

Phantom cases at 128² are exported to the PCLT layout at 128² (the network takes any multiple
of 128) and each test trains on a handful of slices for a few steps, so the whole file stays
around a minute or two on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmambax.errors import ConfigError
from vmambax.train import TrainConfig, config_for_resume, train
from vmambax.train.schedule import lr_factor

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from vmambax.cli import main
    from vmambax.data.pclt_export import export_case_folders

    root = tmp_path_factory.mktemp("train-data")
    assert main(["phantom", "--out", str(root / "cases"), "--cases", "3", "--seed", "11",
                 "--size", "128", "--slices", "8", "--no-dicom"]) == 0
    export_case_folders(root / "cases", root / "pclt", val_fraction=0.0, seed=0, size=128)
    return root


def _subset(phantom_root: Path, name: str, n_train: int, n_val: int) -> Path:
    """A PCLT folder with the first ``n_train`` slices of two patients for training and
    ``n_val`` slices of a third for validation."""
    from vmambax.data.pclt import patient_of, read_split, write_split

    src = phantom_root / "pclt"
    dst = phantom_root / name
    if dst.exists():
        return dst
    ids = read_split(src, "train")
    patients = sorted({patient_of(i) for i in ids})
    val = [i for i in ids if patient_of(i) == patients[-1]][:n_val]
    train_ids = [i for i in ids if patient_of(i) != patients[-1]][:n_train]
    assert len(train_ids) == n_train and len(val) == n_val
    shutil.copytree(src, dst)
    write_split(dst / "train.txt", train_ids)
    write_split(dst / "val.txt", val)
    return dst


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), config="vmambax-nano", batch_size=2, num_workers=0,
                progress_bar=False, progress_every_s=0, accelerator="cpu", lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def _events(run_dir: Path, kind: str | None = None) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines()]
    return [e for e in lines if kind is None or e["event"] == kind]


def _recorder():
    """A callback recording, per global step, the lr and the batch it trains on."""
    import pytorch_lightning as pl

    class Recorder(pl.Callback):
        def __init__(self):
            self.seen = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen[trainer.global_step] = (trainer.optimizers[0].param_groups[0]["lr"],
                                              batch["ct"].sum().item(), batch["mask"].sum().item())

    return Recorder()


def test_nano_run_learns_and_exports_a_weights_only_model_file(phantom_root, tmp_path):
    from vmambax.model.checkpoint import load_model_file

    data = _subset(phantom_root, "one-batch", n_train=2, n_val=2)
    run = tmp_path / "run"
    result = train(_cfg(data, run, epochs=4, augment=False, lr=3e-3))
    assert result.status == "done" and result.global_step == 4
    steps = _events(run, "step")
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    losses = [e["loss"] for e in steps]
    assert losses[-1] < losses[0]  # one fixed batch: the loss must fall
    # each step event reports the lr that step used: per-step cosine over the 4 steps
    assert [e["lr"] for e in steps] == pytest.approx([3e-3 * lr_factor(t, 4) for t in range(4)])
    epochs = _events(run, "epoch")
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert all(0 <= e["val_dice"] <= 1 for e in epochs)
    assert epochs[-1]["best"] == pytest.approx(max(e["val_dice"] for e in epochs))
    done = _events(run)[-1]
    assert done["event"] == "done" and done["model_file"] == str(run / "model.pt")

    # Training checkpoints and the model file load with weights_only=True.
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    raw = torch.load(run / "model.pt", weights_only=True)
    assert raw["format"] == "vmambax-model" and raw["config"] == "vmambax-nano"
    assert raw["preprocessing"]["image_size"] == 128  # the slice size it was trained on
    assert raw["preprocessing"]["ct_window_hu"] == [-1200.0, -200.0]
    meta = raw["metadata"]
    assert meta["status"] == "done" and meta["epochs_completed"] == 4
    assert meta["best_val_dice"] == pytest.approx(max(e["val_dice"] for e in epochs))
    assert meta["data"]["train"]["slices"] == 2 and meta["recipe"]["lr"] == 3e-3
    # The exported weights are the best checkpoint's and rebuild an identical network.
    best = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    model, _ = load_model_file(run / "model.pt")
    ref = type(model)(model.config)
    ref.load_state_dict({k[len("model."):]: v for k, v in best.items()})
    ref.eval()
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x, x.flip(-1)), ref(x, x.flip(-1)))


def test_stop_mid_epoch_then_resume_continues_exactly(phantom_root, tmp_path):
    from vmambax.data.pclt import PcltDataset
    from vmambax.train.datamodule import SliceDataset
    from vmambax.train.sampler import ShardedSampler

    data = _subset(phantom_root, "two-batches", n_train=4, n_val=1)
    run = tmp_path / "run"
    first, second = _recorder(), _recorder()
    stopped = train(_cfg(data, run, epochs=2, seed=5, stop_after_steps=3, val_every=2),
                    callbacks=[first])
    assert stopped.status == "stopped" and stopped.global_step == 3 and stopped.epoch == 1
    ev = _events(run)
    assert ev[-1]["event"] == "stopped" and ev[-1]["step"] == 3 and ev[-1]["epochs_completed"] == 1
    epochs = [e for e in ev if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0]  # no event for the cut epoch
    assert "val_dice" not in epochs[0] and epochs[0]["best"] is None  # --val-every 2
    saved = [(e["path"], e.get("step")) for e in ev if e["event"] == "checkpoint"]
    assert saved[0][0].endswith("last.ckpt")  # every epoch, validated or not
    assert saved[-1] == (str(run / "checkpoints" / "last.ckpt"), 3)  # the stop checkpoint
    # No validation yet, so no best checkpoint: the model file holds the current weights.
    assert stopped.best_checkpoint is None
    assert torch.load(run / "model.pt", weights_only=True)["metadata"]["status"] == "stopped"
    with pytest.raises(ConfigError, match="--resume"):  # a new run will not overwrite it
        train(_cfg(data, run, epochs=2, seed=5))
    with pytest.raises(ConfigError, match="--epochs"):  # the schedule cannot change on resume
        config_for_resume(run / "checkpoints" / "last.ckpt", epochs=9)

    cfg = config_for_resume(run / "checkpoints" / "last.ckpt", stop_after_steps=None)
    assert cfg.seed == 5 and cfg.epochs == 2 and cfg.val_every == 2 and cfg.resume.endswith("last.ckpt")
    torch.manual_seed(123)  # RNG state comes from the checkpoint, not from here
    resumed = train(cfg, callbacks=[second])
    assert resumed.status == "done" and resumed.global_step == 4 and resumed.epoch == 2
    assert sorted(second.seen) == [3]  # only the remaining batch of the cut epoch ran
    assert _events(run, "start")[-1]["resumed"] is True
    epochs = _events(run, "epoch")
    assert [e["epoch"] for e in epochs] == [0, 1] and 0 <= epochs[1]["val_dice"] <= 1
    assert resumed.best_checkpoint is not None

    # Every step saw the lr and the batch an uninterrupted run would: cosine over 4 steps, the
    # sampler's (seed, epoch) order and per-sample augmentation seeds.
    ds = SliceDataset(PcltDataset(data, split="train"), train=True, augment=True, seed=5)
    sampler = ShardedSampler(len(ds), seed=5)
    seen = {**first.seen, **second.seen}
    for step in range(4):
        epoch, k = divmod(step, 2)
        sampler.set_epoch(epoch)
        idx = list(sampler)[2 * k:2 * k + 2]
        items = [ds[i] for i in idx]
        lr, ct_sum, mask_sum = seen[step]
        assert lr == pytest.approx(1e-3 * lr_factor(step, 4), rel=1e-9), step
        assert ct_sum == pytest.approx(sum(float(s["ct"].sum()) for s in items), rel=1e-5), step
        assert mask_sum == sum(float(s["mask"].sum()) for s in items), step


def test_two_process_ddp_reduces_validation_metrics(phantom_root, tmp_path):
    """torchrun, 2 CPU processes with gloo: the ranks train on different halves and validate
    different slices (2 and 1); the logged metrics must equal the single-process metrics of the
    whole validation set with the same weights (sums all-reduced, not per-rank ratios averaged)."""
    from vmambax.data.pclt import PcltDataset
    from vmambax.model import build_model
    from vmambax.train.datamodule import SliceDataset
    from vmambax.train.metrics import SegmentationCounts

    data = _subset(phantom_root, "ddp", n_train=8, n_val=3)
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vmambax", "train", "--data", str(data), "--config", "vmambax-nano",
           "--out", str(run), "--epochs", "1", "--batch-size", "2", "--accelerator", "cpu",
           "--num-workers", "0", "--no-progress-bar", "--no-augment"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = _events(run, "start")[0]
    # 8 slices / (2 ranks x batch 2) = 2 steps: a second step would fail on unused parameters
    assert start["world_size"] == 2 and start["total_steps"] == 2
    logged = _events(run, "epoch")[0]

    val = SliceDataset(PcltDataset(data, split="val"), train=False)
    model = build_model("vmambax-nano")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    model.load_state_dict({k[len("model."):]: v for k, v in state.items()})
    model.eval()
    counts = SegmentationCounts()
    with torch.no_grad():
        for i in range(len(val)):
            s = val[i]
            counts.update(model(s["ct"][None], s["pet"][None]), s["mask"][None])
    whole = counts.compute()
    assert whole["val_images"] == 3
    for key in ("val_dice", "val_iou", "val_dice_macro", "val_balanced_acc"):
        assert logged[key] == pytest.approx(whole[key], abs=1e-6), key


def test_volume_case_folders_are_exported_once_into_the_run(phantom_root, tmp_path):
    from vmambax.data.pclt import read_split
    from vmambax.train.datamodule import prepare_data_root

    root, kind = prepare_data_root(phantom_root / "cases", tmp_path, image_size=128, seed=1)
    assert kind == "volumes" and root == tmp_path / "data"
    train_ids, val_ids = read_split(root, "train"), read_split(root, "val")
    assert train_ids and val_ids and read_split(root, "test") == []
    assert {i.split("_")[0] for i in train_ids}.isdisjoint({i.split("_")[0] for i in val_ids})
    stamp = (root / "train.txt").stat().st_mtime_ns
    assert prepare_data_root(phantom_root / "cases", tmp_path, image_size=128)[0] == root
    assert (root / "train.txt").stat().st_mtime_ns == stamp  # reused on resume, not redone


def test_sigterm_stops_cleanly_and_cli_resume_finishes(phantom_root, tmp_path):
    """A SIGTERM (what a cluster scheduler or `kill` sends) ends the step, writes last.ckpt and
    model.pt and exits 0; `vmambax train --out RUN --resume` then completes the same schedule."""
    import signal
    import time

    from vmambax.cli import main

    data = _subset(phantom_root, "one-batch", n_train=2, n_val=2)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vmambax", "train", "--data", str(data), "--config", "vmambax-nano",
           "--out", str(run), "--epochs", "8", "--batch-size", "2", "--accelerator", "cpu",
           "--num-workers", "0", "--no-progress-bar", "--lr", "1e-3"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "progress.jsonl").exists() and _events(run, "step")):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no training step within 240 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    stopped = _events(run)[-1]
    assert stopped["event"] == "stopped" and stopped["reason"] == "signal SIGTERM"
    assert 1 <= stopped["step"] < 8
    assert "--resume" in err  # tells the user how to continue
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == stopped["step"]

    assert main(["train", "--out", str(run), "--resume", "--no-progress-bar", "--num-workers", "0"]) == 0
    done = _events(run)[-1]
    assert done["event"] == "done" and done["step"] == 8 and done["epochs_completed"] == 8
    starts = _events(run, "start")
    assert [s["resumed"] for s in starts] == [False, True] and starts[1]["step"] == stopped["step"]


def test_unreadable_slice_in_a_loader_worker_is_a_clear_error(phantom_root, tmp_path, capsys):
    from vmambax.cli import main
    from vmambax.data.pclt import read_split, sample_path

    data = tmp_path / "data"
    shutil.copytree(_subset(phantom_root, "one-batch", n_train=2, n_val=2), data)
    bad = sample_path(data, read_split(data, "train")[0], "PET")
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--config", "vmambax-nano", "--out", str(run),
                 "--epochs", "1", "--batch-size", "2", "--num-workers", "1", "--accelerator", "cpu",
                 "--no-progress-bar"]) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "Traceback" not in err and "worker" not in err
    event = _events(run)[-1]
    assert event["event"] == "error" and bad.name in event["message"]
    assert not (run / "model.pt").exists()
