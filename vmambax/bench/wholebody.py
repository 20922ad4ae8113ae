"""``vmambax bench wholebody``: a whole-body PET/CT segmented with and without slice selection.

Makes a synthetic head-to-thigh study (``make_phantom(whole_body=True)``, 300 slices by default)
and segments it twice in one run with the same Segmenter settings: every slice (what VMambaX did
before the lung field, and what ``--all-slices`` does) and only the lung field + 2 cm (the
default). Both are end to end (preprocess, slice selection, network, mapping back, lesion
measures). For models too slow on a CPU to run 300 slices twice (the full vMambaX: ~10 s per
512² slice), ``--sample K`` times the network on K slices and scales it to the slice count;
the output then says "estimated" and gives the measured per-slice time.
"""

from __future__ import annotations

import argparse
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("wholebody", help="whole-body study: all slices vs the lung field")
    p.add_argument("--model", default="default",
                   help="model name or file (default: the shipped demo model)")
    p.add_argument("--config", help="build this configuration with random weights instead of --model "
                   "(e.g. vmambax, the full network)")
    p.add_argument("--size", type=int, default=512, help="CT matrix of the phantom (default 512)")
    p.add_argument("--slices", type=int, default=300, help="CT slices (default 300)")
    p.add_argument("--seed", type=int, default=4, help="phantom seed (default 4)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads (default: the idle CPUs)")
    p.add_argument("--batch", type=int, help="slices per batch")
    p.add_argument("--sample", type=int, default=0, metavar="K",
                   help="time the network on K slices only and scale up (slow models on CPU)")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def benchmark(model="default", config=None, size=512, slices=300, seed=4, device="auto",
              threads=None, batch=None, sample=0, log=print) -> dict:
    import SimpleITK as sitk

    from vmambax.phantom import make_phantom
    from vmambax.infer.segmenter import Segmenter

    t = time.perf_counter()
    body = make_phantom(seed, size=size, n_slices=slices, whole_body=True)
    log(f"phantom: CT {'x'.join(map(str, body.ct.GetSize()))} "
        f"({body.ct.GetSize()[2] * body.ct.GetSpacing()[2]:.0f} mm), {len(body.lesions)} tumour(s), "
        f"{time.perf_counter() - t:.1f} s")
    if config:
        from vmambax.model import build_model

        net = build_model(config).eval()
        make = lambda all_slices: Segmenter(net, device=device, threads=threads, batch_size=batch,
                                            image_size=512, all_slices=all_slices)
        name = f"{config} (random weights)"
    else:
        make = lambda all_slices: Segmenter(model, device=device, threads=threads, batch_size=batch,
                                            all_slices=all_slices)
        name = str(model)
    out = {"model": name, "ct_size": list(body.ct.GetSize()), "seed": seed, "runs": {}}
    truth = body.label
    for label, all_slices in (("all slices", True), ("lung field", False)):
        seg = make(all_slices)
        if sample:
            out["runs"][label] = _sampled(seg, body, sample, log)
        else:
            t = time.perf_counter()
            res = seg.segment(body.ct, body.pet_suv)
            seconds = time.perf_counter() - t
            a = sitk.GetArrayViewFromImage(res.label).astype(bool)
            b = sitk.GetArrayViewFromImage(truth).astype(bool)
            dice = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
            out["runs"][label] = {"seconds": round(seconds, 2), "slices_run": res.n_slices_run,
                                  "timings": res.timings, "dice_vs_truth": round(dice, 4),
                                  "device": res.device, "scan_backend": res.scan_backend}
        r = out["runs"][label]
        log(f"{label:>11}: {r['slices_run']:>4} slices, {r['seconds']:8.1f} s"
            f"{' (estimated)' if sample else ''}"
            + (f", Dice vs truth {r['dice_vs_truth']:.3f}" if "dice_vs_truth" in r else ""))
    a, b = out["runs"]["all slices"], out["runs"]["lung field"]
    out["speedup"] = round(a["seconds"] / b["seconds"], 2) if b["seconds"] else None
    log(f"speed-up of the lung field: {out['speedup']}x")
    return out


def _sampled(seg, body, k, log) -> dict:
    """Preprocessing and slice selection for real, the network on ``k`` slices, scaled."""
    import numpy as np

    from vmambax.data.case import make_case
    from vmambax.data.preprocess import volume_to_slices

    t0 = time.perf_counter()
    pet = make_case(body.ct, body.pet_suv).pet_suv
    ct_u8, pet_u8, geometry = volume_to_slices(body.ct, pet, size=seg.image_size)
    run, selection = seg._select_slices(body.ct, geometry)
    fixed = time.perf_counter() - t0
    idx = np.flatnonzero(run) if run is not None else np.arange(ct_u8.shape[0])
    pick = idx[np.linspace(0, idx.size - 1, min(k, idx.size)).astype(int)]
    t = time.perf_counter()
    seg.predict_slices(ct_u8[pick], pet_u8[pick])
    per_slice = (time.perf_counter() - t) / pick.size
    return {"seconds": round(fixed + per_slice * idx.size, 2), "slices_run": int(idx.size),
            "estimated": True, "sampled_slices": int(pick.size),
            "network_s_per_slice": round(per_slice, 3), "preprocess_and_selection_s": round(fixed, 2),
            "device": seg.device_name, "scan_backend": seg.scan_backend}


def run(args: argparse.Namespace) -> int:
    from vmambax.bench import emit_json, set_threads

    set_threads(args.threads)
    result = benchmark(model=args.model, config=args.config, size=args.size, slices=args.slices,
                       seed=args.seed, device=args.device, threads=args.threads, batch=args.batch,
                       sample=args.sample)
    emit_json(result, args.json_out)
    return 0
