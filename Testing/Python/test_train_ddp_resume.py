"""DDP resume is bit-exact on every rank (issue 18): 2 CPU processes with gloo under torchrun.

The checkpoint used to hold rank 0's RNG state only; a resumed rank 1 derived a new stream from
it, so its drop-path masks (and with them the all-reduced gradients, hence everybody's weights)
left the uninterrupted run's path. Now each rank's state is gathered into the checkpoint and
each rank continues its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from test_train_run import _events, _subset, phantom_root  # noqa: F401 - phantom_root: a fixture

pytestmark = pytest.mark.timeout(900)


def _torchrun(*args, timeout=400):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vmambax", "train", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _final(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt


def test_ddp_stop_and_resume_reproduce_the_uninterrupted_run_on_every_rank(phantom_root, tmp_path):
    data = _subset(phantom_root, "ddp-resume", n_train=8, n_val=2)  # 8 / (2 ranks x 2) = 2 steps an epoch
    recipe = ["--data", str(data), "--config", "vmambax-nano", "--epochs", "2", "--batch-size", "2",
              "--seed", "5", "--lr", "3e-3", "--accelerator", "cpu", "--num-workers", "0",
              "--no-progress-bar", "--min-positive-slices", "1", "--checkpoint-every", "0",
              # strong stochastic depth: every rank's random stream shows in the weights (at the
              # default 0.1 the masks of a few tiny steps are nearly always all ones)
              "--override", "dec_drop_path=0.6"]
    whole = tmp_path / "whole"
    _torchrun(*recipe, "--out", str(whole))
    stopped = tmp_path / "stopped"
    _torchrun(*recipe, "--out", str(stopped), "--stop-after-steps", "1")
    assert _events(stopped)[-1]["event"] == "stopped"
    mid = _final(stopped)
    assert mid["vmambax_position"] == {"epoch": 0, "batches_done": 1}
    _torchrun("--out", str(stopped), "--resume", "--stop-after-steps", "1000")  # not the saved 1
    assert _events(stopped)[-1]["event"] == "done" and _events(stopped)[-1]["step"] == 4

    a, b = _final(whole), _final(stopped)
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[name], sb[name]), name
    assert len(mid["vmambax_rng"]["ranks"]) == 2  # every rank's state, not only rank 0's
    assert not torch.equal(mid["vmambax_rng"]["ranks"][0]["torch"], mid["vmambax_rng"]["ranks"][1]["torch"])
    for rank in range(2):  # and each rank's random stream ends where the uninterrupted one does
        assert torch.equal(a["vmambax_rng"]["ranks"][rank]["torch"], b["vmambax_rng"]["ranks"][rank]["torch"]), rank
