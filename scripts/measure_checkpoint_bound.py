"""What a kill -9 of `vmambax train` can lose: the --checkpoint-every interval plus one training
step plus one checkpoint write (a save in progress when the process dies leaves only a staging
file; the previous last.ckpt stays). This measures the two fixed terms on this machine: one
optimiser step (batch 2, SIZE px, CPU) and one verified checkpoint save (write, fsync, weights-only
read-back, rename) of the model + AdamW state, for each configuration given.

    python scripts/measure_checkpoint_bound.py [--size 128] [--configs vmambax-nano vmambax]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from vmambax.model import build_model, param_groups
from vmambax.train.callbacks import AtomicCheckpointIO
from vmambax.train.loss import bce_dice_loss


def measure(config: str, size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(config, pretrained_encoder=None).train()
    opt = torch.optim.AdamW(param_groups(model, 1e-2), lr=6e-5)
    ct, pet = torch.randn(2, 1, size, size), torch.randn(2, 1, size, size)
    mask = (torch.rand(2, 1, size, size) > 0.9).float()
    steps = []
    for _ in range(repeats + 1):  # the first step allocates the AdamW state
        t = time.perf_counter()
        opt.zero_grad()
        bce_dice_loss(model(ct, pet), mask).backward()
        opt.step()
        steps.append(time.perf_counter() - t)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "optimizer_states": [opt.state_dict()], "global_step": repeats, "epoch": 0}
    io, saves = AtomicCheckpointIO(), []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.ckpt"
        for _ in range(repeats):
            t = time.perf_counter()
            io.save_checkpoint(ckpt, path)
            saves.append(time.perf_counter() - t)
        mb = path.stat().st_size / 1e6
    return {"config": config, "size": size, "batch": 2, "step_s": round(min(steps[1:]), 3),
            "checkpoint_mb": round(mb, 1), "checkpoint_save_s": round(min(saves), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=["vmambax-nano", "vmambax"])
    args = p.parse_args()
    print(json.dumps([measure(c, args.size, args.repeats) for c in args.configs], indent=2))


if __name__ == "__main__":
    main()
