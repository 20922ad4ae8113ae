"""End-to-end training runs of the real vmambax-nano on tiny phantom slices (CPU).

Phantom cases at 128² are exported to a PCLT-layout folder at 128² (the network takes any
multiple of 128), so every run here is a few seconds of CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmambax.train import TrainConfig, config_for_resume, train

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pclt128(tmp_path_factory):
    from vmambax.cli import main
    from vmambax.data.pclt_export import export_case_folders

    root = tmp_path_factory.mktemp("train-data")
    assert main(["phantom", "--out", str(root / "cases"), "--cases", "3", "--seed", "11",
                 "--size", "128", "--slices", "10", "--no-dicom"]) == 0
    export_case_folders(root / "cases", root / "pclt", val_fraction=0.34, seed=0, size=128)
    return root / "pclt"


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), config="vmambax-nano", batch_size=2, num_workers=0,
                progress_bar=False, progress_every_s=0, accelerator="cpu", lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def _events(run_dir: Path, kind: str | None = None) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines()]
    return [e for e in lines if kind is None or e["event"] == kind]


class LrRecorder:
    """Records (global step -> lr, batch sum) at each batch start."""

    def __new__(cls):
        import pytorch_lightning as pl

        class _Rec(pl.Callback):
            def __init__(self):
                self.seen = {}

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                self.seen[trainer.global_step] = (trainer.optimizers[0].param_groups[0]["lr"],
                                                  float(batch["mask"].sum()), float(batch["ct"].sum()))

        return _Rec()


def test_nano_run_learns_and_exports_a_weights_only_model_file(pclt128, tmp_path):
    from vmambax.model.checkpoint import load_model_file

    run = tmp_path / "run"
    result = train(_cfg(pclt128, run, epochs=3, limit_train_batches=4, limit_val_batches=2,
                        augment=False, lr=2e-3))
    assert result.status == "done" and result.global_step == 12
    steps = _events(run, "step")
    assert [e["step"] for e in steps] == list(range(1, 13))
    losses = [e["loss"] for e in steps]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # it learns
    assert steps[0]["lr"] < 2e-3 and steps[-1]["lr"] == pytest.approx(2e-9, rel=1e-3)
    epochs = _events(run, "epoch")
    assert len(epochs) == 3 and all(0 <= e["val_dice"] <= 1 for e in epochs)
    assert epochs[-1]["best"] == pytest.approx(max(e["val_dice"] for e in epochs))
    done = _events(run)[-1]
    assert done["event"] == "done" and done["model_file"] == str(run / "model.pt")

    # Training checkpoints and the model file load with weights_only=True.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12
    raw = torch.load(run / "model.pt", weights_only=True)
    assert raw["format"] == "vmambax-model" and raw["config"] == "vmambax-nano"
    assert raw["preprocessing"]["ct_window_hu"] == [-1200.0, -200.0]
    meta = raw["metadata"]
    assert meta["status"] == "done" and meta["epochs_completed"] == 3
    assert meta["best_val_dice"] == pytest.approx(max(e["val_dice"] for e in epochs))
    assert meta["data"]["train"]["slices"] > 0 and meta["recipe"]["lr"] == 2e-3
    # The exported weights are the best checkpoint's, and rebuild an identical network.
    best = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    model, info = load_model_file(run / "model.pt")
    ref = type(model)(model.config)
    ref.load_state_dict({k[len("model."):]: v for k, v in best.items()})
    ref.eval()
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x, x.flip(-1)), ref(x, x.flip(-1)))


def test_stop_mid_epoch_then_resume_continues_exactly(pclt128, tmp_path):
    common = dict(epochs=2, limit_train_batches=3, limit_val_batches=1, seed=5)
    a_rec, b_rec, c_rec = LrRecorder(), LrRecorder(), LrRecorder()
    torch.manual_seed(0)
    full = train(_cfg(pclt128, tmp_path / "a", **common), callbacks=[a_rec])
    assert full.global_step == 6

    torch.manual_seed(0)
    stopped = train(_cfg(pclt128, tmp_path / "b", stop_after_steps=4, **common), callbacks=[b_rec])
    assert stopped.status == "stopped" and stopped.global_step == 4 and stopped.epoch == 1
    ev = _events(tmp_path / "b")
    assert ev[-1]["event"] == "stopped" and ev[-1]["step"] == 4
    assert [e["epoch"] for e in ev if e["event"] == "epoch"] == [0]  # no event for the cut epoch
    assert (tmp_path / "b" / "model.pt").is_file()
    with pytest.raises(Exception, match="--resume"):  # a new run will not overwrite it
        train(_cfg(pclt128, tmp_path / "b", **common))

    cfg = config_for_resume(tmp_path / "b" / "checkpoints" / "last.ckpt", progress_every_s=0)
    assert cfg.seed == 5 and cfg.stop_after_steps == 4
    cfg = cfg.replace(stop_after_steps=None)
    torch.manual_seed(123)  # the RNG state comes from the checkpoint, not from here
    resumed = train(cfg, callbacks=[c_rec])
    assert resumed.status == "done" and resumed.global_step == 6 and resumed.epoch == 2
    # Only the remaining 2 batches of the cut epoch ran, with the uninterrupted run's lr and data.
    assert sorted(c_rec.seen) == [4, 5]
    for step in range(6):
        got = (b_rec.seen if step < 4 else c_rec.seen)[step]
        assert got == pytest.approx(a_rec.seen[step], rel=1e-12), step
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wc = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in wa:
        torch.testing.assert_close(wc[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    assert _events(tmp_path / "b", "start")[-1]["resumed"] is True


def test_resume_refuses_a_changed_recipe(pclt128, tmp_path):
    from vmambax.errors import ConfigError

    train(_cfg(pclt128, tmp_path / "r", epochs=1, max_steps=1, limit_val_batches=1))
    with pytest.raises(ConfigError, match="--epochs"):
        config_for_resume(tmp_path / "r" / "checkpoints" / "last.ckpt", epochs=9)


def test_two_process_ddp_reduces_validation_metrics(pclt128, tmp_path):
    """torchrun, 2 CPU processes with gloo: each rank validates a different half of the
    validation slices; the logged metrics must equal the single-process metrics of the whole
    validation set with the same weights (sums all-reduced, not per-rank ratios averaged)."""
    from vmambax.data.pclt import PcltDataset
    from vmambax.model import build_model
    from vmambax.train.datamodule import SliceDataset
    from vmambax.train.metrics import SegmentationCounts

    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vmambax", "train", "--data", str(pclt128), "--config", "vmambax-nano",
           "--out", str(run), "--epochs", "1", "--limit-train-batches", "1", "--batch-size", "2",
           "--accelerator", "cpu", "--num-workers", "0", "--no-progress-bar", "--no-augment"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = _events(run, "start")[0]
    assert start["world_size"] == 2
    logged = _events(run, "epoch")[0]

    val = SliceDataset(PcltDataset(pclt128, split="val", val_fraction=0.1, seed=42), train=False)
    assert len(val) >= 2
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
    assert whole["val_images"] == len(val)
    for key in ("val_dice", "val_iou", "val_dice_macro", "val_balanced_acc"):
        assert logged[key] == pytest.approx(whole[key], abs=1e-6), key
