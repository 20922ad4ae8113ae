"""``vmambax bench infer``: inference speed (slices/s), peak memory, fp32-vs-optimised parity.

Runs the Segmenter's own batch loop (``Segmenter.predict_slices``) on synthetic slices, so the
numbers include host->device transfer, normalisation, autocast and the sigmoid exactly as a real
segmentation does. On CUDA it first runs fp32 eager (the reference), then the optimised settings
(bf16 autocast, channels-last, torch.compile) and reports the parity of the two; with
``--e2e-slices`` it also times a whole synthetic volume end to end (preprocess -> label).
"""

from __future__ import annotations

import argparse
import resource
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="vmambax-nano",
                        help="model configuration to build with random weights (default vmambax-nano)")
    parser.add_argument("--model", help="a model file instead of --config (its weights and config)")
    parser.add_argument("--size", type=int, default=512, help="slice size in pixels (default 512)")
    parser.add_argument("--batch", type=int, default=None, help="slices per batch (default: auto)")
    parser.add_argument("--slices", type=int, default=16, help="slices to time (default 16)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up batches (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int,
                        help="CPU threads (default: OMP_NUM_THREADS, else the idle CPUs, max 16)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                        help="torch.compile the model; MODE e.g. reduce-overhead (CUDA graphs) "
                             "or max-autotune")
    parser.add_argument("--e2e-slices", type=int, default=None,
                        help="also segment a synthetic volume of this many slices end to end "
                             "(default: 300 on CUDA, 0 = skip on CPU)")
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")


def register(subparsers) -> None:
    """Add ``infer`` to the ``vmambax bench`` sub-commands."""
    parser = subparsers.add_parser("infer", help="inference slices/s, peak memory and AMP parity")
    add_arguments(parser)
    parser.set_defaults(func=run)


def _synthetic_slices(n: int, size: int, seed: int = 0):
    """Body-like uint8 CT/PET slices: an ellipse of soft tissue with lungs and a few hot spots."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    body = (xx / 0.42) ** 2 + (yy / 0.3) ** 2 < 1
    lungs = ((np.abs(xx) - 0.17) / 0.12) ** 2 + (yy / 0.2) ** 2 < 1
    ct = np.where(body, 200, 0) - np.where(lungs, 150, 0)
    ct = np.clip(ct[None] + rng.normal(0, 8, (n, size, size)), 0, 255).astype(np.uint8)
    pet = np.where(body, 25, 0)[None] + rng.gamma(2.0, 4.0, (n, size, size)) * body
    for k in range(n):
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        pet[k, cy - size // 40:cy + size // 40, cx - size // 40:cx + size // 40] += 180
    return ct, np.clip(pet, 0, 255).astype(np.uint8)


def _peak_memory_mib(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kib / 1024, "process peak RSS"


def _time_slices(seg, ct, pet, warmup: int):
    """Warm up, then time ``seg.predict_slices`` over all slices -> (seconds, probabilities)."""
    import torch

    bs = seg.batch_size
    if warmup:
        seg.predict_slices(ct[: bs * warmup], pet[: bs * warmup])
    if seg.device.type == "cuda":
        torch.cuda.synchronize(seg.device)
        torch.cuda.reset_peak_memory_stats(seg.device)
    t = time.perf_counter()
    prob = seg.predict_slices(ct, pet)
    if seg.device.type == "cuda":
        torch.cuda.synchronize(seg.device)
    return time.perf_counter() - t, prob


def benchmark(config: str = "vmambax-nano", model_file: str | None = None, size: int = 512,
              batch: int | None = None, slices: int = 16, warmup: int = 1, device: str = "auto",
              threads: int | None = None, amp: bool = False, channels_last: bool = False,
              compile: bool | str = False, e2e_slices: int | None = None, log=print) -> dict:
    import numpy as np
    import torch

    from vmambax.infer.devices import resolve_device
    from vmambax.infer.segmenter import Segmenter

    dev = resolve_device(device)
    if model_file:
        from vmambax.model.checkpoint import load_model_file

        net, info = load_model_file(model_file, map_location="cpu")
        config = info.get("config", config)
    else:
        from vmambax.model import build_model

        net = build_model(config)
    net.eval()
    ct, pet = _synthetic_slices(slices, size)
    out: dict = {"config": config, "model_file": model_file, "size": size, "slices": slices,
                 "device_requested": device, "torch": torch.__version__}

    def run(label: str, **opts) -> np.ndarray:
        seg = Segmenter(net, device=str(dev), batch_size=batch, threads=threads, image_size=size,
                        **opts)
        seconds, prob = _time_slices(seg, ct, pet, warmup)
        mem, mem_kind = _peak_memory_mib(dev)
        out[label] = {"slices_per_s": round(slices / seconds, 3), "seconds": round(seconds, 3),
                      "batch": seg.batch_size, "peak_mem_mib": round(mem, 1), "mem_kind": mem_kind,
                      "device": seg.device_name, "scan_backend": seg.scan_backend,
                      "amp_dtype": str(seg.amp_dtype).replace("torch.", "") if seg.amp_dtype else None,
                      **{k: v if isinstance(v, str) else bool(v) for k, v in opts.items()}}
        log(f"{label:>9}: {slices / seconds:8.2f} slices/s  ({seconds:.2f} s for {slices} slices, "
            f"batch {seg.batch_size}, {mem_kind} {mem:.0f} MiB, {out[label]['device']}, "
            f"scan {seg.scan_backend})")
        return prob

    ref = run("fp32", amp=False, channels_last=False, compile=False)
    optimised = amp or channels_last or compile
    seg = None
    if optimised:
        fast = run("optimised", amp=amp, channels_last=channels_last, compile=compile)
        a, b = ref > 0.5, fast > 0.5
        denom = a.sum() + b.sum()
        out["parity"] = {"max_abs_prob_diff": float(np.abs(ref - fast).max()),
                         "mean_abs_prob_diff": float(np.abs(ref - fast).mean()),
                         "mask_dice": float(2 * (a & b).sum() / denom) if denom else 1.0,
                         "mask_pixels_differing": int((a ^ b).sum())}
        log(f"   parity: max |p_fp32 - p_opt| = {out['parity']['max_abs_prob_diff']:.2e}, "
            f"mask Dice {out['parity']['mask_dice']:.5f} "
            f"({out['parity']['mask_pixels_differing']} px differ)")
    if e2e_slices is None:
        e2e_slices = 300 if dev.type == "cuda" else 0
    if e2e_slices:
        # The volume is noise (no anatomy), so every slice runs: this times the engine.
        seg = Segmenter(net, device=str(dev), batch_size=batch, threads=threads, image_size=size,
                        amp=amp, channels_last=channels_last, compile=compile, all_slices=True)
        rng = np.random.default_rng(1)
        hu = rng.normal(-300, 300, (e2e_slices, size, size)).astype(np.float32)
        suv = rng.gamma(2.0, 0.8, (e2e_slices, size, size)).astype(np.float32)
        seg.segment_arrays(hu[:2], suv[:2], spacing=(0.98, 0.98, 3.0))  # warm-up/compile
        t = time.perf_counter()
        res = seg.segment_arrays(hu, suv, spacing=(0.98, 0.98, 3.0))
        total = time.perf_counter() - t
        out["end_to_end"] = {"slices": e2e_slices, "seconds": round(total, 3),
                             "timings": res.timings}
        log(f"      e2e: {e2e_slices} slices in {total:.2f} s (preprocess "
            f"{res.timings['preprocess']:.2f} s, inference {res.timings['inference']:.2f} s, "
            f"postprocess {res.timings['postprocess']:.2f} s, quantify {res.timings['quantify']:.2f} s)")
    return out


def run(args: argparse.Namespace) -> int:
    from vmambax.bench import emit_json

    if args.slices < 1 or args.size < 1:
        from vmambax.errors import ConfigError

        raise ConfigError("--slices and --size must be positive")
    result = benchmark(config=args.config, model_file=args.model, size=args.size, batch=args.batch,
                       slices=args.slices, warmup=args.warmup, device=args.device,
                       threads=args.threads, amp=args.amp, channels_last=args.channels_last,
                       compile=args.compile, e2e_slices=args.e2e_slices)
    emit_json(result, args.json_out)
    return 0
