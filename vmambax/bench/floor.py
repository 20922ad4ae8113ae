"""``vmambax bench floor``: the model forward against this CPU's compute floor, and training speed.

In one process: the machine's float32 matmul rate (median of square matmuls), the model's FLOPs
(fvcore's multiply-adds x 2, selective scans included, ``vmambax.model.flops``), the median
forward time, the floor (FLOPs / matmul rate) and the ratio forward / floor; optionally training
steps per second at given crop sizes (``--train-sizes``).

``--compare`` runs that measurement in child processes, alternating the current code paths with
the earlier ones (``VMAMBAX_SS2D=reference``: the authors' cross-scan/einsum/merge; and
``VMAMBAX_MALLOC=default``: glibc's allocator defaults), so that "before" and "after" are timed
side by side on the same (possibly shared, noisy) machine; it prints the medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from vmambax.bench import set_threads

#: The earlier code paths, as environment settings (see the module docstring).
BEFORE_ENV = {"VMAMBAX_SS2D": "reference", "VMAMBAX_MALLOC": "default"}
AFTER_ENV = {"VMAMBAX_SS2D": "fused", "VMAMBAX_MALLOC": ""}


def register(subparsers) -> None:
    """Add ``floor`` to the ``vmambax bench`` sub-commands."""
    p = subparsers.add_parser("floor", help="forward time against the CPU's matmul floor; training speed")
    p.add_argument("--config", default="vmambax", help="model configuration (default vmambax)")
    p.add_argument("--size", type=int, default=512, help="slice size of the forward (default 512)")
    p.add_argument("--repeats", type=int, default=2, help="timed forwards (default 2)")
    p.add_argument("--train-config", default="vmambax-nano",
                   help="configuration of the training measurement (default vmambax-nano)")
    p.add_argument("--train-sizes", type=int, nargs="*", default=[],
                   help="crop sizes to time training steps at (e.g. 128 256; default none)")
    p.add_argument("--train-batch", type=int, default=8, help="slices per training step (default 8)")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps (default 3)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--compare", action="store_true",
                   help="time the earlier code paths beside the current ones, in child processes")
    p.add_argument("--rounds", type=int, default=2, help="with --compare: before/after pairs (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def matmul_gflops(threads: int, n: int = 1536, repeats: int = 5) -> float:
    """Median float32 GFLOP/s of an n x n x n matmul (2 n³ FLOPs) with ``threads`` threads."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(n, n, generator=gen), torch.rand(n, n, generator=gen)
    a @ b  # warm-up: thread pool, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def measure(config: str = "vmambax", size: int = 512, repeats: int = 2, train_config: str = "vmambax-nano",
            train_sizes=(), train_batch: int = 8, train_steps: int = 3) -> dict:
    """One process's figures (see the module docstring); threads as set by the caller."""
    import torch

    from vmambax.allocator import tune_allocator
    from vmambax.bench.forward import bench_forward
    from vmambax.bench.train import bench_train
    from vmambax.model import build_model
    from vmambax.model.flops import count_flops
    from vmambax.model.ss2d import active_path

    threads = torch.get_num_threads()
    rate = matmul_gflops(threads)
    flops = count_flops(build_model(config, pretrained_encoder=None), size=size)
    gflop = 2 * flops["gflops_with_scans"]  # fvcore counts a multiply-add as one
    fwd = bench_forward(config, size, 1, repeats, 1, "cpu")
    floor_s = gflop / rate
    result = {
        "config": config, "size": size, "threads": threads, "ss2d_path": active_path(),
        "allocator_tuned": tune_allocator(), "matmul_gflops": rate, "model_gflop": gflop,
        "scan_gflop": 2 * flops["gflops_scans"], "forward_s": fwd["seconds_per_forward"],
        "floor_s": floor_s, "ratio": fwd["seconds_per_forward"] / floor_s, "train": [],
    }
    for crop in train_sizes:
        t = bench_train(train_config, crop, train_batch, train_steps, 1, "cpu", "32")
        result["train"].append({"config": train_config, "size": crop, "batch": train_batch,
                                "seconds_per_step": t["seconds_per_step"], "images_per_s": t["images_per_s"]})
    return result


def _child(args: argparse.Namespace, env: dict) -> dict:
    cmd = [sys.executable, "-m", "vmambax", "bench", "floor", "--json", "--config", args.config,
           "--size", str(args.size), "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--train-config", args.train_config, "--train-batch", str(args.train_batch),
           "--train-steps", str(args.train_steps), "--train-sizes", *map(str, args.train_sizes)]
    child_env = {k: v for k, v in os.environ.items() if k not in env}
    child_env.update({k: v for k, v in env.items() if v})
    out = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
    if out.returncode != 0:
        from vmambax.errors import VMambaXError

        raise VMambaXError(f"the benchmark child ({' '.join(f'{k}={v}' for k, v in env.items() if v) or 'current'}) "
                           f"failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def _median_of(results: list[dict]) -> dict:
    med = dict(results[0])
    for key in ("matmul_gflops", "forward_s", "floor_s", "ratio"):
        med[key] = statistics.median(r[key] for r in results)
    med["train"] = [dict(t, seconds_per_step=statistics.median(r["train"][i]["seconds_per_step"] for r in results),
                         images_per_s=statistics.median(r["train"][i]["images_per_s"] for r in results))
                    for i, t in enumerate(results[0]["train"])]
    med["runs"] = len(results)
    return med


def compare(args: argparse.Namespace, progress=print) -> dict:
    """``rounds`` before/after pairs in alternating child processes; medians and speed-ups."""
    runs = {"before": [], "after": []}
    for i in range(args.rounds):
        for name, env in (("after", AFTER_ENV), ("before", BEFORE_ENV)) if i % 2 else (
                ("before", BEFORE_ENV), ("after", AFTER_ENV)):
            progress(f"round {i + 1}/{args.rounds}: {name} ...")
            runs[name].append(_child(args, env))
    before, after = _median_of(runs["before"]), _median_of(runs["after"])
    speedup = {"forward": before["forward_s"] / after["forward_s"],
               "train": [b["seconds_per_step"] / a["seconds_per_step"]
                         for b, a in zip(before["train"], after["train"])]}
    return {"before": before, "after": after, "speedup": speedup}


def _lines(r: dict, label: str = "") -> list[str]:
    head = f"{label}: " if label else ""
    lines = [f"{head}{r['config']} forward at {r['size']}^2, {r['threads']} threads (SS2D {r['ss2d_path']}, "
             f"allocator {'tuned' if r['allocator_tuned'] else 'default'}): {r['forward_s']:.2f} s; "
             f"floor {r['model_gflop']:.1f} GFLOP (scans {r['scan_gflop']:.1f}) / {r['matmul_gflops']:.1f} "
             f"GFLOP/s = {r['floor_s']:.3f} s; ratio {r['ratio']:.2f}x"]
    for t in r["train"]:
        lines.append(f"{head}{t['config']} training, batch {t['batch']} x {t['size']}^2: "
                     f"{t['seconds_per_step']:.3f} s per step, {t['images_per_s']:.2f} images/s")
    return lines


def run(args: argparse.Namespace) -> int:
    from vmambax.errors import ConfigError

    if args.repeats < 1 or args.rounds < 1 or args.train_steps < 1 or args.train_batch < 2:
        raise ConfigError("--repeats, --rounds and --train-steps must be at least 1, --train-batch at least 2.")
    set_threads(args.threads)
    if args.compare:
        r = compare(args, progress=(lambda m: None) if args.json else (lambda m: print(m, flush=True)))
        if args.json:
            print(json.dumps(r, indent=2))
            return 0
        for line in _lines(r["before"], "before") + _lines(r["after"], "after"):
            print(line)
        s = r["speedup"]
        print(f"speed-up (median of {r['after']['runs']} alternating runs each): forward {s['forward']:.2f}x"
              + "".join(f", training {t['size']}^2 {x:.2f}x" for t, x in zip(r["after"]["train"], s["train"])))
        return 0
    r = measure(args.config, args.size, args.repeats, args.train_config, args.train_sizes,
                args.train_batch, args.train_steps)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print("\n".join(_lines(r)))
    return 0
