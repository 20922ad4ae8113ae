"""Unit tests of the training engine's pieces (no full training run; fast)."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vmambax.errors import ConfigError, OutputError
from vmambax.metrics import set_metrics
from vmambax.train.augment import affine_warp, augment, random_crop, sample_generator
from vmambax.train.callbacks import AtomicCheckpointIO, ProgressWriter
from vmambax.train.config import TrainConfig
from vmambax.train.loss import bce_dice_loss, soft_dice_loss
from vmambax.train.metrics import SegmentationCounts
from vmambax.train.module import collect_rng_state, restore_rng_state
from vmambax.train.sampler import ShardedSampler
from vmambax.train.schedule import lr_factor


# ---------------------------------------------------------------------------- schedule
def test_cosine_schedule_matches_spec_formula():
    total = 100
    assert lr_factor(0, total) == pytest.approx(1.0)
    for t in (1, 37, 50, 99):
        spec = 0.5 * (1 + math.cos(math.pi * t / total)) * (1 - 1e-6) + 1e-6
        assert lr_factor(t, total) == pytest.approx(spec, rel=1e-12)
    assert lr_factor(total, total) == pytest.approx(1e-6)
    assert lr_factor(total + 50, total) == pytest.approx(1e-6)  # never climbs back up
    values = [lr_factor(t, total) for t in range(total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_is_linear_then_cosine():
    assert lr_factor(0, 100, warmup_steps=10) == pytest.approx(1e-3)
    assert lr_factor(5, 100, warmup_steps=10) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert lr_factor(10, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(100, 100, warmup_steps=10) == pytest.approx(1e-6)


def test_optimizer_covers_every_parameter_and_schedule_spans_the_run():
    """Every nano parameter is optimised exactly once (spec §12.3), no decay on A_log/D/bias/
    norms, and the LambdaLR built by the module goes from lr to ~1e-6*lr over the run."""
    from types import SimpleNamespace

    from vmambax.model import build_model
    from vmambax.train.module import SegmentationModule

    model = build_model("vmambax-nano")
    hp = TrainConfig(data=".", out=".", lr=1e-3).to_dict()
    module = SegmentationModule(model, hp)
    module._trainer = SimpleNamespace(estimated_stepping_batches=20, max_epochs=2)
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    assert len(seen) == len(set(seen))
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    for name, p in model.named_parameters():
        if name.endswith(("A_logs", "Ds", "bias")) or ".norm" in name:
            assert id(p) in no_decay, name
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-9, rel=1e-3)  # after the last step
    assert lrs[-1] < 1e-5


# ---------------------------------------------------------------------------- loss
def test_loss_is_bce_plus_soft_dice():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    dice = [(2 * (p[i] * target[i]).sum() + 1) / (p[i].sum() + target[i].sum() + 1) for i in range(2)]
    expected = bce + 1 - torch.stack(dice).mean()
    assert bce_dice_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    perfect = (target * 2 - 1) * 20
    assert soft_dice_loss(perfect, target).item() < 1e-3
    empty = torch.zeros(1, 1, 8, 8)
    assert soft_dice_loss(torch.full_like(empty, -20), empty).item() < 1e-3  # +1 smoothing


# ---------------------------------------------------------------------------- augmentation
def _disc_sample(size=128):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = torch.sqrt((yy - 50.0) ** 2 + (xx - 70.0) ** 2)
    # A smooth-edged disc so interpolation cannot move the 0.5-level contour by much.
    ct = (200 / (1 + torch.exp((r - 25) / 2)) + 20).float()
    pet = ct.flip(-1)
    mask = (ct > 120).float()
    return torch.stack([ct, pet]), mask[None]


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_moves_mask_and_images_together(seed):
    image, mask = _disc_sample()
    gen = sample_generator(seed, 0, 0)
    out_img, out_mask = augment(image, mask, gen, p_affine=1.0, p_flip=seed % 2, p_crop=1.0)
    assert out_img.shape == image.shape and out_mask.shape == mask.shape
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert out_img.min() >= 0 and out_img.max() <= 255
    agree = ((out_img[0] > 120).float() == out_mask[0]).float().mean()
    assert agree > 0.995  # only a few contour pixels may differ
    assert out_mask.sum() > 0.3 * mask.sum()
    # PET was the mirrored CT: after any geometry the relation to the mask is consistent too.
    assert not torch.equal(out_img, image)


def test_augmentation_is_deterministic_per_key_and_flip_is_exact():
    image, mask = _disc_sample()
    a = augment(image, mask, sample_generator(1, 2, 3))
    b = augment(image, mask, sample_generator(1, 2, 3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    flipped, fmask = augment(image, mask, sample_generator(0), p_affine=0, p_flip=1, p_crop=0)
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(fmask, mask.flip(-1))


def test_affine_shift_fills_border_with_zero():
    x = torch.full((1, 64, 64), 100.0)
    out = affine_warp(x, shift=(0.1, 0.0), scale=(1.0, 1.0))
    assert out[0, :, :5].max() == 0  # uint8 0 becomes -1.6 after normalisation, as the reference
    assert out[0, :, 10:].min() == pytest.approx(100.0)


def test_random_crop_keeps_pixel_scale_and_finds_tumour():
    _, mask = _disc_sample(256)
    coords = torch.arange(256 * 256, dtype=torch.float32).reshape(1, 256, 256)  # pixel ids
    image = torch.cat([coords, coords])
    for i in range(20):
        ci, cm = random_crop(image, mask, 128, sample_generator(i), p_focus=1.0)
        assert ci.shape == (2, 128, 128) and cm.shape == (1, 128, 128)
        top, left = divmod(int(ci[0, 0, 0]), 256)
        # a crop is a window of the original (no resampling), the mask cut at the same place
        assert torch.equal(ci, image[:, top:top + 128, left:left + 128])
        assert torch.equal(cm, mask[:, top:top + 128, left:left + 128])
        assert cm.sum() > 0  # p_focus=1: the window holds tumour


# ---------------------------------------------------------------------------- sampler
def test_sharded_sampler_partitions_and_resumes():
    n = 11
    train = [ShardedSampler(n, rank=r, world_size=2, seed=3, even=True) for r in range(2)]
    for s in train:
        s.set_epoch(4)
    a, b = ([i for i, _ in s] for s in train)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    val = [ShardedSampler(n, rank=r, world_size=2, shuffle=False, even=False) for r in range(2)]
    va, vb = ([i for i, _ in s] for s in val)
    assert sorted(va + vb) == list(range(n))  # every image once: reduced metrics count each once
    s = ShardedSampler(n, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.skip_consumed(2, 4)
    assert list(s) == full[4:]
    s.set_epoch(3)
    assert len(list(s)) == n  # the skip applies to its own epoch only
    assert all(e == 3 for _, e in s)


# ---------------------------------------------------------------------------- metrics
def test_validation_metrics_reduce_sums_not_ratios():
    rng = np.random.default_rng(0)
    gts = [rng.random((16, 16)) > t for t in (0.5, 0.9, 0.99, 1.0, 0.7)]
    preds = [rng.random((16, 16)) > t for t in (0.6, 0.8, 1.0, 1.0, 0.2)]
    logits = [torch.from_numpy(np.where(p, 3.0, -3.0)).float()[None, None] for p in preds]
    targets = [torch.from_numpy(g.astype(np.float32))[None, None] for g in gts]
    rank0, rank1 = SegmentationCounts(), SegmentationCounts()
    for i in range(5):
        (rank0 if i < 2 else rank1).update(logits[i], targets[i])
    total = rank0.sums + rank1.sums
    m = rank0.compute(lambda t: total)  # what an all-reduce(sum) returns on every rank
    ref = set_metrics(preds, gts)  # vmambax.metrics: the evaluation's definitions
    assert m["val_dice"] == pytest.approx(ref["dice_micro"])
    assert m["val_iou"] == pytest.approx(ref["iou_micro"])
    assert m["val_dice_macro"] == pytest.approx(ref["dice_macro"])
    assert m["val_iou_macro"] == pytest.approx(ref["iou_macro"])
    assert m["val_balanced_acc"] == pytest.approx(ref["balanced_accuracy"])
    assert m["val_images"] == 5
    micro = ref["dice_micro"]
    averaged = (rank0.compute()["val_dice"] + rank1.compute()["val_dice"]) / 2
    assert averaged != pytest.approx(micro)  # the reference's per-rank average is different


# ---------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("changes, word", [
    ({"crop_size": 200}, "multiple of 128"),
    ({"epochs": 0}, "--epochs"),
    ({"warmup_epochs": 5, "epochs": 5}, "--warmup-epochs"),
    ({"batch_size": 0}, "--batch-size"),
    ({"precision": "8-bit"}, "--precision"),
    ({"pretrained_encoder": "/nonexistent/vmamba.pth"}, "--pretrained-encoder"),
])
def test_config_validation_names_the_option(changes, word):
    with pytest.raises(ConfigError, match=word.replace("-", r"\-")):
        TrainConfig(data=".", out=".", **changes).validate()


def test_cli_bad_inputs_give_clear_errors(tmp_path, capsys):
    from vmambax.cli import main

    def err(*argv):
        assert main(["train", *argv]) == 2
        return capsys.readouterr().err

    assert "does not exist" in err("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r1"))
    assert "--data is required" in err("--out", str(tmp_path / "r0"))
    assert "multiple of 128" in err("--data", str(tmp_path), "--out", str(tmp_path / "r2"), "--crop-size", "100")
    msg = err("--data", str(tmp_path), "--out", str(tmp_path / "r3"), "--config", "vmambax-mega")
    assert "vmambax-mega" in msg
    (tmp_path / "empty").mkdir()
    assert "PCLT20K" in err("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r4"),
                            "--config", "vmambax-nano")
    pclt = tmp_path / "pclt"
    pclt.mkdir()
    (pclt / "train.txt").write_text("\n")
    (pclt / "test.txt").write_text("\n")
    assert "empty" in err("--data", str(pclt), "--out", str(tmp_path / "r5"), "--config", "vmambax-nano")
    assert "nothing to resume" in err("--out", str(tmp_path / "r6"), "--resume")
    assert "--batch-size 1" in err("--data", str(pclt), "--out", str(tmp_path / "r7"),
                                   "--config", "vmambax-nano", "--batch-size", "1", "--accelerator", "cpu")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


# ---------------------------------------------------------------------------- checkpoints, progress
def test_interrupted_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1), "w": torch.ones(3)}, path)

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    real_save = torch.save

    def silently_truncated_save(obj, f, *a, **k):  # a writer that does not report ENOSPC
        real_save(obj, f, *a, **k)
        os.truncate(f, os.path.getsize(f) // 2)

    for save in (broken_save, silently_truncated_save):
        monkeypatch.setattr(torch, "save", save)
        with pytest.raises(OutputError, match=r"last\.ckpt.* free in"):
            io.save_checkpoint({"step": torch.tensor(2), "w": torch.zeros(3)}, path)
        monkeypatch.undo()
        back = io.load_checkpoint(path)
        assert int(back["step"]) == 1 and torch.equal(back["w"], torch.ones(3))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp left behind


def test_progress_writer_json_lines_rank_zero_only(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    w = ProgressWriter(path, stdout=True)
    w.emit("step", step=3, loss=torch.tensor(0.5))
    w.emit("epoch", val_dice=0.25)
    ProgressWriter(path, stdout=True, rank=1).emit("step", step=4)
    w.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["step", "epoch"]
    assert lines[0]["loss"] == 0.5 and lines[0]["step"] == 3
    assert capsys.readouterr().out.count("\n") == 2


def test_progress_writer_holds_early_warnings_and_survives_a_full_disk(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    w = ProgressWriter(path)
    w.emit("warning", message="PET covers only 40 %")  # before start: written right after it
    w.emit("start", step=0)
    w.emit("step", step=1)
    w.close()
    assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == ["start", "warning", "step"]

    blocked = tmp_path / "file"
    blocked.write_text("x")
    w = ProgressWriter(blocked / "p.jsonl")  # cannot be created, like a full disk
    w.emit("start", step=0)
    w.emit("error", message="cannot write last.ckpt")  # must not raise and hide this error
    w.close()
    assert capsys.readouterr().err.count("warning: cannot append") == 1


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    state = collect_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_bench_train_reports_throughput_and_memory():
    from vmambax.bench.train import bench_train
    from vmambax.ops import active_backend

    r = bench_train("vmambax-nano", size=128, batch=2, steps=1, warmup=0, device="cpu")
    assert r["images_per_s"] == pytest.approx(2 / r["seconds_per_step"])
    assert r["peak_rss_mb"] > 100 and r["peak_rss_rise_mb"] >= 0
    assert r["scan_backend"] == active_backend("cpu")  # native when its library is built, else chunked
    with pytest.raises(ConfigError, match="at least 2"):
        bench_train("vmambax-nano", size=128, batch=1, device="cpu")


# ----------------------------------------------------------------------------- checkpoint reads

def test_checkpoint_readers_use_the_shared_safe_load(tmp_path, monkeypatch):
    """read_checkpoint_config and model_state_from_checkpoint go through safe_torch_load: its
    folder check, and the legacy (non-zip) fallback of the memory-mapped load."""
    from vmambax.errors import InputError, ModelFileError
    from vmambax.model import pretrained
    from vmambax.train.export import model_state_from_checkpoint
    from vmambax.train.run import HPARAMS_KEY, read_checkpoint_config

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder.*To resume"):
        read_checkpoint_config(folder)
    with pytest.raises(ModelFileError, match="is a folder"):
        model_state_from_checkpoint(folder)
    with pytest.raises(InputError, match="does not exist"):
        read_checkpoint_config(tmp_path / "missing.ckpt")
    with pytest.raises(ModelFileError, match="does not exist"):
        model_state_from_checkpoint(tmp_path / "missing.ckpt")

    legacy = tmp_path / "legacy.ckpt"
    torch.save({"hyper_parameters": {HPARAMS_KEY: {"epochs": 3}},
                "state_dict": {"model.w": torch.ones(2), "other": torch.zeros(1)}},
               legacy, _use_new_zipfile_serialization=False)
    calls = []
    real = pretrained.safe_torch_load
    monkeypatch.setattr(pretrained, "safe_torch_load", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert read_checkpoint_config(legacy) == {"epochs": 3}
    assert list(model_state_from_checkpoint(legacy)) == ["w"]
    assert len(calls) == 2


def test_stop_and_timed_checkpoint_decide_with_one_all_reduce_per_step(tmp_path):
    """Under DDP each decision is a collective; the two callbacks share one per step. The fake
    strategy adds a second rank's votes (that rank sees the stop file at step 3)."""
    from types import SimpleNamespace

    from vmambax.train.callbacks import StepDecisions, StopRequest, TimedCheckpoint

    calls = []

    class Strategy:
        root_device = torch.device("cpu")
        world_size = 2

        def reduce(self, tensor, group=None, reduce_op="mean"):
            calls.append(("reduce", tensor.tolist()))
            assert reduce_op == "sum"
            other = torch.tensor([1 if trainer.global_step == 3 else 0, 0])  # [stop, timed]
            return tensor + other

        def reduce_boolean_decision(self, decision, all=True):
            calls.append(("boolean", decision))
            return decision

    saved = []
    trainer = SimpleNamespace(strategy=Strategy(), global_step=0, current_epoch=0, should_stop=False,
                              num_training_batches=100, is_global_zero=True, limit_val_batches=1.0,
                              save_checkpoint=lambda path, weights_only=False: saved.append(
                                  (path, trainer.global_step)))
    module = SimpleNamespace(batches_done=0)
    clock = iter([0.0] + [10.0 * i for i in range(1, 20)])
    decisions = StepDecisions()
    stop = StopRequest(tmp_path / "STOP", tmp_path / "stop.ckpt", handle_signals=False, decisions=decisions)
    timed = TimedCheckpoint(tmp_path / "last.ckpt", every_s=15.0, skip=lambda: stop.stopped,
                            clock=lambda: next(clock), decisions=decisions)
    timed.on_train_start(trainer, module)
    for step in range(1, 4):
        trainer.global_step = module.batches_done = step
        calls_before = len(calls)
        for cb in (stop, timed):
            cb.on_train_batch_end(trainer, module, None, None, step - 1)
        assert len(calls) - calls_before == 1 and calls[-1][0] == "reduce", calls
        if trainer.should_stop:
            break
    assert stop.stopped and stop.reason == "stop requested on another process" and trainer.global_step == 3
    assert saved == [(str(tmp_path / "last.ckpt"), 2), (str(tmp_path / "stop.ckpt"), 3)]
    # Without a shared StepDecisions each callback still decides on its own (as before).
    alone = StopRequest(tmp_path / "STOP", tmp_path / "stop.ckpt", handle_signals=False)
    (tmp_path / "STOP").write_text("")
    alone.on_train_batch_end(trainer, module, None, None, 5)
    assert alone.stopped and alone.reason == f"stop file {tmp_path / 'STOP'}"
