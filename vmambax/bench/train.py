"""``vmambax bench train``: training throughput (images/s) and peak memory of one config.

Times full optimisation steps (forward, BCE + soft Dice loss, backward, AdamW step over every
parameter) on random slices with a random blob target, as ``vmambax train`` runs them (bf16
autocast on CUDA unless ``--precision 32``). Peak memory: on CUDA ``max_memory_allocated``; on CPU
the process's peak resident set size (``ru_maxrss``, includes Python/torch, ~0.4 GB) and its rise
during the benchmark. Numbers go into docs/benchmarks.md ("Training throughput") by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from vmambax.bench import set_threads


def register(subparsers) -> None:
    """Add ``train`` to the ``vmambax bench`` sub-commands."""
    p = subparsers.add_parser("train", help="training throughput (images/s) and peak memory")
    p.add_argument("--config", default="vmambax-nano", help="model configuration (default vmambax-nano)")
    p.add_argument("--size", type=int, default=512, help="slice size (default 512)")
    p.add_argument("--batch", type=int, default=2, help="slices per step (default 2; >= 2 for BatchNorm)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "32", "bf16", "fp16"),
                   help="auto = bf16 autocast on CUDA, float32 on CPU")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _peak_rss_mb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def bench_train(config: str = "vmambax-nano", size: int = 512, batch: int = 2, steps: int = 3,
                warmup: int = 1, device: str = "auto", precision: str = "auto") -> dict:
    import torch

    from vmambax import ops
    from vmambax.errors import ConfigError
    from vmambax.infer.devices import resolve_device
    from vmambax.model import build_model, param_groups
    from vmambax.train.loss import bce_dice_loss

    if batch < 2:
        raise ConfigError("--batch must be at least 2 (the CGM BatchNorm needs 2 samples per step).")
    if steps < 1 or warmup < 0:
        raise ConfigError("--steps must be at least 1 and --warmup at least 0.")
    dev = resolve_device(device)
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "32"
    if precision != "32" and dev.type != "cuda":
        raise ConfigError("--precision bf16/fp16 is for CUDA; on CPU training runs in float32.")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    rss0 = _peak_rss_mb()
    model = build_model(config, pretrained_encoder=None).to(dev).train()
    opt = torch.optim.AdamW(param_groups(model, 1e-2), lr=6e-5)
    fp16 = precision == "fp16"
    scaler = (torch.amp.GradScaler("cuda", enabled=fp16) if hasattr(torch.amp, "GradScaler")
              else torch.cuda.amp.GradScaler(enabled=fp16))  # torch < 2.3
    gen = torch.Generator().manual_seed(0)
    ct = (torch.rand(batch, 1, size, size, generator=gen) * 3.2 - 1.6).to(dev)
    pet = (torch.rand(batch, 1, size, size, generator=gen) * 3.2 - 1.6).to(dev)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = (((yy - size / 2) ** 2 + (xx - size / 3) ** 2) < (size / 8) ** 2).float()
    target = blob.expand(batch, 1, size, size).contiguous().to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = bce_dice_loss(model(ct, pet), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    times = [step() for _ in range(steps)]
    median = statistics.median(times)
    result = {
        "config": config, "size": size, "batch": batch, "device": str(dev), "precision": precision,
        "threads": torch.get_num_threads(), "scan_backend": ops.active_backend(dev),
        "seconds_per_step": median, "images_per_s": batch / median, "times": times,
    }
    if dev.type == "cuda":
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = _peak_rss_mb()
        result["peak_rss_mb"] = peak
        result["peak_rss_rise_mb"] = peak - rss0
    return result


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    r = bench_train(args.config, args.size, args.batch, args.steps, args.warmup, args.device, args.precision)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    mem = (f"peak GPU memory {r['peak_gpu_memory_mb']:.0f} MB" if "peak_gpu_memory_mb" in r else
           f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['peak_rss_rise_mb']:.0f} MB during the run)")
    print(f"{r['config']} training, batch {r['batch']} x {r['size']}^2 on {r['device']} "
          f"({r['threads']} threads, {r['precision']}, scan {r['scan_backend']}): "
          f"{r['seconds_per_step']:.3f} s per step, {r['images_per_s']:.2f} images/s, {mem} "
          f"(median of {len(r['times'])} steps)")
    return 0
