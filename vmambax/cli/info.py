"""``vmambax info``: parameters per component, GFLOPs (with and without scans), scan backend."""

from __future__ import annotations

import argparse
import json
import sys

_LABELS = (
    ("encoder", "shared VMamba encoder (incl. out-norms)"),
    ("cgm", "CGM x4"),
    ("crm", "CRM x4"),
    ("dcim_tokenizer", "DCIM conv tokeniser x4"),
    ("dcim_blocks", "DCIM region+local SS2D x4"),
    ("decoder", "MambaDecoder"),
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="model size, FLOPs and the active selective-scan backend",
        description="Build a model configuration with random weights and report its parameters per "
                    "component and its GFLOPs for one CT+PET pair (fvcore, 1 multiply-add = 1 FLOP), "
                    "with and without the selective scans.")
    parser.add_argument("--config", default="vmambax", help="configuration name (default vmambax; "
                        "see the list printed by an unknown name)")
    parser.add_argument("--size", type=int, default=512, help="slice size for the FLOP count (default 512)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (it runs one forward)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def collect(config: str, size: int = 512, flops: bool = True, say=None) -> dict:
    """The report; ``say(message)`` hears what it is doing (building and the FLOP count take
    half a minute for the full model on a CPU, which must not look like a hang)."""
    import torch

    from vmambax import ops
    from vmambax.model import build_model, count_parameters, get_config
    from vmambax.ops import native

    say = say or (lambda message: None)
    cfg = get_config(config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if flops:
        say(f"building {config} with random weights ...")
        model = build_model(config, pretrained_encoder=None)
    else:  # shapes only: no memory, no init time
        with torch.device("meta"):
            model = build_model(config, pretrained_encoder=None)
    result = {
        "config": config,
        "description": cfg.description,
        "fusion": cfg.fusion,
        "settings": {k: v for k, v in cfg.to_plain().items() if k != "description"},
        "parameters": count_parameters(model),
        "scan_device": device,
        "scan_backend": ops.active_backend(device),
        "scan_backends_available": list(ops.available_backends()),
        "scan_backends_unavailable": ops.unavailable_reasons(device),
        "scan_native": native.describe(),
    }
    if flops:
        from vmambax.model.flops import count_flops

        say(f"counting FLOPs: one forward pass of a {size}x{size} CT+PET pair on the CPU (up to "
            f"a minute for the full model; --no-flops skips it) ...")
        result["flops"] = count_flops(model, size=size)
    return result


def _print(info: dict) -> None:
    s = info["settings"]
    print(f"config      {info['config']}: {info['description']}")
    print(f"            fusion {info['fusion']}; dims {s['dims']}, depths {s['depths']}, decoder depths "
          f"{s['decoder_depths']}, d_state {s['d_state']} (decoder {s['dec_d_state']}), ssm_ratio "
          f"{s['ssm_ratio']}" + (f", CRM built for {s['img_size']}x{s['img_size']}" if s["use_crm"] else ""))
    p = info["parameters"]
    print(f"parameters  {p['total']:,} ({p['total'] / 1e6:.2f} M)")
    for key, label in _LABELS:
        if p[key]:
            print(f"  {label:<40} {p[key]:>12,}")
    f = info.get("flops")
    if f:
        print(f"GFLOPs      one CT+PET pair of {f['size']}x{f['size']} (fvcore, multiply-add = 1 FLOP)")
        print(f"  {'without selective scans':<40} {f['gflops_without_scans']:>12.2f}")
        print(f"  {'selective scans (9BLDN + BDL)':<40} {f['gflops_scans']:>12.2f}")
        print(f"  {'with selective scans':<40} {f['gflops_with_scans']:>12.2f}")
        for name, g in f["by_component"].items():
            print(f"    {name + ' (without scans)':<38} {g:>12.2f}")
    print(f"scan        backend {info['scan_backend']} on {info['scan_device']} (available: "
          f"{', '.join(info['scan_backends_available'])})")
    for name, reason in info["scan_backends_unavailable"].items():
        print(f"            {name} not available: {reason}")
    if "native" in info["scan_backends_available"]:
        print(f"            native: {info['scan_native']}")


def run(args: argparse.Namespace) -> int:
    from vmambax.errors import ConfigError

    if args.size <= 0 or args.size % 128:
        raise ConfigError(f"--size must be a positive multiple of 128 (got {args.size}).")
    def say(message: str) -> None:  # on stderr: stdout stays the report (or the JSON)
        print(message, file=sys.stderr, flush=True)

    info = collect(args.config, args.size, flops=not args.no_flops, say=say)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print(info)
    return 0
