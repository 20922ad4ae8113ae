"""``vmambax bench forward``: time of one model forward (random weights, random slices).

Reports the median wall time per forward and per slice, in eval mode under ``torch.inference_mode``
(the inference setting), with the active selective-scan backend. Numbers go into
docs/benchmarks.md ("Model forward") by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from vmambax.bench import set_threads


def register(subparsers) -> None:
    """Add ``forward`` to the ``vmambax bench`` sub-commands."""
    parser = subparsers.add_parser("forward", help="time one model forward per slice")
    parser.add_argument("--config", default="vmambax", help="model configuration (default vmambax)")
    parser.add_argument("--size", type=int, default=512, help="slice size in pixels (default 512)")
    parser.add_argument("--batch", type=int, default=1, help="CT+PET slice pairs per forward (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def bench_forward(config: str = "vmambax", size: int = 512, batch: int = 1, repeats: int = 3,
                  warmup: int = 1, device: str = "auto", amp: bool = False) -> dict:
    import torch

    from vmambax import ops
    from vmambax.errors import ConfigError
    from vmambax.infer.devices import resolve_device
    from vmambax.model import build_model

    if batch < 1 or repeats < 1 or warmup < 0:
        raise ConfigError("--batch and --repeats must be at least 1 and --warmup at least 0.")
    dev = resolve_device(device)
    if amp and dev.type != "cuda":
        raise ConfigError("--amp is for CUDA; on CPU the forward runs in float32.")
    model = build_model(config, pretrained_encoder=None).to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    ct = (torch.rand(batch, 1, size, size, generator=gen) * 3.2 - 1.6).to(dev)
    pet = (torch.rand(batch, 1, size, size, generator=gen) * 3.2 - 1.6).to(dev)
    model.check_inputs(ct, pet)

    def once() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            model(ct, pet)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    for _ in range(warmup):
        once()
    times = [once() for _ in range(repeats)]
    median = statistics.median(times)
    return {
        "config": config, "size": size, "batch": batch, "device": str(dev), "amp": amp,
        "threads": torch.get_num_threads(), "scan_backend": ops.active_backend(dev),
        "seconds_per_forward": median, "seconds_per_slice": median / batch,
        "times": times,
    }


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    r = bench_forward(args.config, args.size, args.batch, args.repeats, args.warmup, args.device, args.amp)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['config']} forward, {r['batch']} x {r['size']}^2 CT+PET on {r['device']} "
              f"({r['threads']} threads, scan backend {r['scan_backend']}"
              f"{', bf16 autocast' if r['amp'] else ''}): "
              f"{r['seconds_per_forward']:.3f} s per forward, {r['seconds_per_slice']:.3f} s per slice "
              f"(median of {len(r['times'])})")
    return 0
