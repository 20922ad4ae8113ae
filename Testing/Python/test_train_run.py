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
    # The tiny subsets hold 1-4 tumour slices: below the default minimum of 8 (see
    # test_training_data_traps); these tests are about the engine, not the data.
    base = dict(data=str(data), out=str(out), config="vmambax-nano", batch_size=2, num_workers=0,
                progress_bar=False, progress_every_s=0, accelerator="cpu", lr=1e-3,
                min_positive_slices=1)
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
           "--num-workers", "0", "--no-progress-bar", "--no-augment", "--min-positive-slices", "1"]
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
    from vmambax.data.input_spec import InputSpec
    from vmambax.data.volume_export import read_export_info
    from vmambax.train.datamodule import load_volume_splits, prepare_data_root

    spec = InputSpec(image_size=128)
    root, kind = prepare_data_root(phantom_root / "cases", tmp_path, spec=spec)
    assert kind == "volumes" and root == tmp_path / "data"
    train, val = load_volume_splits(root, spec, val_fraction=0.3, seed=1)
    assert train.case_ids and val.case_ids and set(train.case_ids).isdisjoint(val.case_ids)
    assert len(val) == sum(read_export_info(root)["cases"][c]["slices"] for c in val.case_ids)
    stamp = (root / "export.json").stat().st_mtime_ns
    assert prepare_data_root(phantom_root / "cases", tmp_path, spec=spec)[0] == root
    assert (root / "export.json").stat().st_mtime_ns == stamp  # same source and settings: reused
    # Other export settings: a new run exports again, a resumed one keeps its export (and says so).
    notes: list[str] = []
    soft = spec.replace(ct_windows=((-160.0, 240.0),))
    prepare_data_root(phantom_root / "cases", tmp_path, spec=soft, resumed=True, notes=notes)
    assert (root / "export.json").stat().st_mtime_ns == stamp and "changed since" in notes[0]
    prepare_data_root(phantom_root / "cases", tmp_path, spec=soft)
    assert (root / "export.json").stat().st_mtime_ns != stamp


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
           "--num-workers", "0", "--no-progress-bar", "--lr", "1e-3", "--min-positive-slices", "1"]
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
                 "--no-progress-bar", "--min-positive-slices", "1"]) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "Traceback" not in err and "worker" not in err
    assert not run.exists()  # failed before its first step: the run folder is left as found


# ---------------------------------------------------------------------------- issue 10
def _state(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=True)
    return {"weights": ckpt["state_dict"], "optimizer": ckpt["optimizer_states"][0]["state"],
            "step": ckpt["global_step"]}


def _assert_bit_equal(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["weights"].keys() == b["weights"].keys()
    diff = {k: float((a["weights"][k].double() - b["weights"][k].double()).abs().max())
            for k in a["weights"] if not torch.equal(a["weights"][k], b["weights"][k])}
    assert not diff, f"max |dw| {max(diff.values()):.3g} in {len(diff)} tensors"
    for p, st in a["optimizer"].items():
        for name, value in st.items():
            assert torch.equal(value, b["optimizer"][p][name]), (p, name)


def _snapshots(steps: set[int], folder: Path):
    """Copies last.ckpt right after the given steps (the timed checkpoint saved it just before)."""
    import pytorch_lightning as pl

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step in steps:
                shutil.copy(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt",
                            folder / f"step{trainer.global_step}.ckpt")

    folder.mkdir(parents=True, exist_ok=True)
    return Snapshot()


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(phantom_root, tmp_path):
    """Stopped mid-epoch (the STOP-file path) and resumed, or resumed from a mid-epoch timed
    checkpoint (what a kill -9 leaves): final weights and AdamW state equal the uninterrupted
    run's exactly (the decoder's drop-path draws from the global RNG)."""
    data = _subset(phantom_root, "two-batches", n_train=4, n_val=1)
    kw = dict(epochs=2, seed=5, lr=3e-3)
    snaps = tmp_path / "snaps"
    whole = train(_cfg(data, tmp_path / "whole", checkpoint_every=0.001, **kw),
                  callbacks=[_snapshots({1}, snaps)])
    assert whole.status == "done" and whole.global_step == 4
    reference = _state(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    timed = [e for e in _events(tmp_path / "whole", "checkpoint") if e.get("reason") == "interval"]
    # every step but an epoch's last, where the end-of-epoch checkpoint follows its validation
    assert [e["step"] for e in timed] == [1, 3]
    assert torch.load(snaps / "step1.ckpt", weights_only=True)["vmambax_position"] == {"epoch": 0, "batches_done": 1}

    run = tmp_path / "stopped"
    assert train(_cfg(data, run, stop_after_steps=3, checkpoint_every=0, **kw)).status == "stopped"
    torch.manual_seed(99)  # the RNG state comes from the checkpoint
    assert train(config_for_resume(run / "checkpoints" / "last.ckpt", stop_after_steps=None)).status == "done"
    _assert_bit_equal(_state(run / "checkpoints" / "last.ckpt"), reference)

    # Stopped at the last batch of epoch 0: that epoch is still validated and checkpointed.
    run = tmp_path / "stopped-at-epoch-end"
    stopped = train(_cfg(data, run, stop_after_steps=2, checkpoint_every=0, **kw))
    assert stopped.status == "stopped" and stopped.epoch == 1 and stopped.best_checkpoint is not None
    assert train(config_for_resume(run / "checkpoints" / "last.ckpt", stop_after_steps=None)).status == "done"
    assert [(e["epoch"], "val_dice" in e) for e in _events(run, "epoch")] == [(0, True), (1, True)]
    _assert_bit_equal(_state(run / "checkpoints" / "last.ckpt"), reference)

    # From the timed checkpoint of step 1 (mid-epoch 0), into another run folder.
    other = tmp_path / "from-timed"
    resumed = train(config_for_resume(snaps / "step1.ckpt", out=str(other), checkpoint_every=0))
    assert resumed.status == "done" and _events(other, "start")[0]["step"] == 1
    _assert_bit_equal(_state(other / "checkpoints" / "last.ckpt"), reference)


def test_full_disk_during_training_keeps_the_last_good_checkpoint(phantom_root, tmp_path, monkeypatch):
    """The second save of last.ckpt comes out short without an error (a writer on a full disk):
    an error event names the file and the free space, the run stops, last.ckpt is still the
    previous one and no staging file is left. A resume (after a kill -9 during a save, which
    leaves a staging file) removes the stale file and finishes."""
    from fault_helpers import staging_left_by_a_killed_writer
    from vmambax.errors import OutputError

    data = _subset(phantom_root, "one-batch", n_train=2, n_val=2)
    run = tmp_path / "run"
    real_save, saves = torch.save, []

    def full_disk_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if Path(f).name.startswith(".last."):
            saves.append(f)
            if len(saves) == 2:
                os.truncate(f, os.path.getsize(f) // 3)

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(OutputError, match=r"last\.ckpt: the written file .* free in"):
        train(_cfg(data, run, epochs=3, checkpoint_every=0))
    monkeypatch.undo()
    error = _events(run)[-1]
    assert error["event"] == "error" and "last.ckpt" in error["message"] and "free in" in error["message"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
    assert not (run / "model.pt").exists()

    stale = staging_left_by_a_killed_writer(run / "checkpoints" / "last.ckpt", b"PK\x03\x04 cut by kill -9")
    assert stale.name.startswith(".last.") and stale.name.endswith(".tmp.ckpt")
    done = train(config_for_resume(run / "checkpoints" / "last.ckpt"))
    assert done.status == "done" and done.global_step == 3 and not stale.exists()
    assert any(stale.name in e["message"] for e in _events(run, "warning"))


def test_kill_9_loses_at_most_the_checkpoint_interval(phantom_root, tmp_path):
    """A real kill -9 mid-epoch: the timed checkpoint (every 0.001 min = every step here) holds
    the last step or the one before, and --resume continues from it to the end."""
    import signal
    import time

    from vmambax.cli import main

    data = _subset(phantom_root, "two-batches", n_train=4, n_val=1)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vmambax", "train", "--data", str(data), "--config", "vmambax-nano",
           "--out", str(run), "--epochs", "3", "--batch-size", "2", "--accelerator", "cpu",
           "--num-workers", "0", "--no-progress-bar", "--min-positive-slices", "1",
           "--checkpoint-every", "0.001"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "progress.jsonl").exists()
                   and any(e.get("reason") == "interval" and e["step"] == 3 for e in _events(run, "checkpoint"))):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    last_step = max(e["step"] for e in _events(run) if "step" in e)
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert saved >= 3 and last_step - saved <= 1  # at most the interval (one step here) lost
    assert main(["train", "--out", str(run), "--resume", "--no-progress-bar", "--num-workers", "0"]) == 0
    starts = _events(run, "start")
    assert starts[-1]["resumed"] is True and starts[-1]["step"] == saved
    assert _events(run)[-1]["event"] == "done" and _events(run)[-1]["step"] == 6


def test_training_data_traps(phantom_root, tmp_path, capsys):
    """All-empty labels and too few tumour slices are refused with the counts, and the refused
    run leaves no run folder behind; the fixed cases export with their tumour slices; the
    exporter's warnings reach stderr (the refused run's stream is not left behind)."""
    from vmambax.errors import InputError
    from vmambax.train.datamodule import export_info, prepare_data_root

    cases = tmp_path / "cases"
    shutil.copytree(phantom_root / "cases", cases)
    originals = {}
    for label in sorted(cases.glob("*/label.nii.gz")):
        originals[label] = label.read_bytes()
        img = sitk_read(label)
        empty = type(img)(img.GetSize(), img.GetPixelID())
        empty.CopyInformation(img)
        sitk_write(empty, label)
    run = tmp_path / "run"
    cfg = _cfg(cases, run, epochs=1, image_size=128, min_positive_slices=8)
    with pytest.raises(InputError, match=r"every training label .* is empty: 0 of \d+ training "
                                         r"slices from \d patient\(s\)"):
        train(cfg)
    assert not run.exists()  # refused: the run folder is left as it was found (not there)

    for label, data in originals.items():  # the user fixes the labels
        label.write_bytes(data)
    root, _ = prepare_data_root(cases, run, image_size=128)
    assert sum(c["slices_with_tumour"] for c in export_info(root)["cases"].values()) > 0

    # Too few tumour slices: this PCLT subset has one.
    few = _subset(phantom_root, "one-batch", n_train=2, n_val=2)
    with pytest.raises(InputError, match=r"too few training slices with tumour .*: 1 of 2 training "
                                         r"slices .* at least 2 are needed"):
        train(_cfg(few, tmp_path / "few", min_positive_slices=2))

    # An export warning (a PET that covers only part of the CT) is printed and streamed.
    import SimpleITK as sitk

    one = sorted(cases.iterdir())[0]
    pet = sitk.ReadImage(str(one / "pet.nii.gz"))
    size_x = pet.GetSize()[0] * pet.GetSpacing()[0]
    pet.SetOrigin((pet.GetOrigin()[0] + 0.4 * size_x, *pet.GetOrigin()[1:]))
    sitk.WriteImage(pet, str(one / "pet.nii.gz"))
    capsys.readouterr()
    warned = tmp_path / "warned"
    with pytest.raises(InputError, match="too few"):  # refused, after the warnings were shown
        train(_cfg(cases, warned, epochs=1, image_size=128, min_positive_slices=10_000))
    err = capsys.readouterr().err
    assert "warning: exporting the cases: " in err and "covers only" in err
    assert not warned.exists()
    # A run that trains streams them too (after its start event).
    assert train(_cfg(cases, warned, epochs=1, image_size=128, max_steps=1)).status == "done"
    assert "covers only" in capsys.readouterr().err
    assert any("covers only" in e["message"] for e in _events(warned, "warning"))


def sitk_read(path):
    import SimpleITK as sitk

    return sitk.ReadImage(str(path))


def sitk_write(image, path):
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path), True)


def test_real_full_tmpfs_during_training(phantom_root, tmp_path, mount_tmpfs):
    """RUN_DIR on a real 40 MB tmpfs: the nano checkpoints (15 MB each: last, best, and the one
    being staged) fill it in epoch 1. The run stops with an error event naming the file and the
    free space, and the last good last.ckpt (epoch 0) stays. Skipped where mounting is not
    permitted (the injected-fault test above covers the same path)."""
    from vmambax.errors import OutputError

    mnt = mount_tmpfs("40m")
    data = _subset(phantom_root, "one-batch", n_train=2, n_val=2)
    run = mnt / "run"
    with pytest.raises(OutputError, match=r"No space left on device \(ENOSPC\); .* free in"):
        train(_cfg(data, run, epochs=4, checkpoint_every=0))
    error = _events(run)[-1]
    assert error["event"] == "error" and "No space left" in error["message"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] >= 1
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
