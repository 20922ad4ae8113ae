"""``vmambax models``: list, add, remove, verify, download and convert models."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list and manage segmentation models (shipped, downloaded, your own)",
        description="Models come from Resources/Models/models.json (shipped or downloadable) and "
                    "from your own registry (~/.vmambax/models.json, or $VMAMBAX_HOME).")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    sub.add_parser("list", help="list registered models (default: this)")
    add = sub.add_parser("add", help="register a model file under a name")
    add.add_argument("name", help="name to use with --model (letters, digits, . _ -)")
    add.add_argument("path", help="model file (.pt) written by `vmambax train` or `vmambax export`")
    add.add_argument("--description", default="", help="one line shown by `vmambax models list`")
    add.add_argument("--overwrite", action="store_true", help="replace an existing entry of that name")
    rm = sub.add_parser("remove", help="forget a model you added (the file is kept)")
    rm.add_argument("name")
    ver = sub.add_parser("verify", help="check models' files against their SHA-256")
    ver.add_argument("name", nargs="?", help="one model (default: all with a local file)")
    dl = sub.add_parser("download", help="download a remote model into the cache now")
    dl.add_argument("name")
    cv = sub.add_parser(
        "convert", help="convert an authors' vMambaX/CIPA checkpoint into a VMambaX model file",
        description="Read a checkpoint of the authors' code (plain state dict, Lightning .ckpt, or "
                    "{'model', 'args'} .pth; vMambaX or CIPA) and write a VMambaX model file that "
                    "records its configuration. The reference saves CGM and DCIM weights even for "
                    "models trained without them: name the ablation with --config "
                    "(e.g. dual-vmamba-baseline) and its unused weights are dropped.")
    cv.add_argument("checkpoint", help="the authors' checkpoint (.ckpt, .pth)")
    cv.add_argument("output", help="VMambaX model file to write (.pt)")
    cv.add_argument("--config", help="configuration it was trained as (default: recognised from "
                    "the weights, with a warning where they cannot tell; see `vmambax info`)")
    cv.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=run)


def _status(entry) -> str:
    path = entry.local_path()
    if entry.file:
        return "ok" if path.is_file() else "MISSING"
    return "cached" if path.is_file() else "remote"


def run(args: argparse.Namespace) -> int:
    from vmambax.infer import registry

    action = args.models_command or "list"
    if action == "list":
        entries = registry.list_models()
        if not entries:
            print(f"no models registered (looked in {registry.models_dir() / 'models.json'} and "
                  f"{registry.user_registry_path()})")
            return 0
        default = registry.default_model().name
        rows = [("", "NAME", "CONFIG", "SOURCE", "STATUS", "DESCRIPTION")]
        rows += [("*" if e.name == default else "", e.name, e.config or "?", e.source, _status(e),
                  e.description) for e in entries]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
        print("(* = default; use --model NAME or --model PATH)")
        return 0
    if action == "add":
        entry = registry.add_user_model(args.name, args.path, description=args.description,
                                        overwrite=args.overwrite)
        print(f"registered {entry.name!r} ({entry.config}) -> {entry.file}")
        return 0
    if action == "remove":
        registry.remove_user_model(args.name)
        print(f"removed {args.name!r} from {registry.user_registry_path()}")
        return 0
    if action == "download":
        path, _entry = registry.resolve_model(args.name, progress=_print_progress())
        print(f"\n{args.name}: {path}")
        return 0
    if action == "convert":
        return _convert(args)
    if action == "verify":
        from vmambax.errors import ModelFileError, VMambaXError

        entries = [registry.get_model(args.name)] if args.name else registry.list_models()
        failed = []
        for entry in entries:
            if entry.url and not entry.local_path().is_file():
                print(f"{entry.name}: remote, not downloaded yet "
                      f"(`vmambax models download {entry.name}`)")
                continue
            try:
                path, _ = registry.resolve_model(entry.name)  # checks the SHA-256
            except VMambaXError as exc:
                print(f"{entry.name}: FAILED: {exc}")
                failed.append(entry.name)
            else:
                print(f"{entry.name}: OK ({path})")
        if failed:
            raise ModelFileError(f"{len(failed)} model(s) failed verification: {', '.join(failed)}")
        return 0
    raise AssertionError(action)


def _convert(args) -> int:
    import sys
    from pathlib import Path

    from vmambax.errors import InputError, ModelFileError
    from vmambax.model.checkpoint import load_model_file, save_model_file

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists; choose another output name or pass --overwrite.")
    model, info = load_model_file(args.checkpoint, config=args.config, warn=False)
    if info["format"] != "reference":
        raise ModelFileError(f"{args.checkpoint} is already a VMambaX model file "
                             f"(config '{info['config']}'); use it with --model as it is.")
    for message in info["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    for note in info["notes"]:
        print(note)
    metadata = {"converted_from": Path(args.checkpoint).name, "reference_layout": info.get("layout"),
                "dropped_unused_tensors": len(info["dropped"]), "warnings": info["warnings"]}
    save_model_file(out, model, config_name=info["config"], preprocessing={}, metadata=metadata)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.checkpoint} ({info.get('layout')} layout) -> {out}: configuration "
          f"'{info['config']}', {n:,} parameters"
          + (f", {len(info['dropped'])} unused tensors dropped" if info["dropped"] else ""))
    return 0


def _print_progress():
    import sys

    def show(fraction: float, message: str) -> None:
        print(f"\r{message} ({fraction:.0%})", end="", file=sys.stderr, flush=True)

    return show
