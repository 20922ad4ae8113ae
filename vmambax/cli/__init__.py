"""The ``vmambax`` command line.

Each sub-command lives in its own module in this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed arguments, returns an exit code).
Modules import heavy dependencies (torch, SimpleITK) inside ``func`` so ``vmambax --help`` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from vmambax import __version__
from vmambax.allocator import tune_allocator
from vmambax.cli.messages import user_facing_output
from vmambax.errors import VMambaXError
from vmambax.utils import prefer_passive_wait

# Sub-command modules, in the order ``vmambax --help`` lists them.
COMMAND_MODULES = (
    "demo",
    "segment",
    "train",
    "evaluate",
    "baseline",
    "phantom",
    "export",
    "import_",
    "models",
    "info",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmambax",
        description="vMambaX PET/CT lung tumour segmentation (research software, not for clinical use).",
    )
    parser.add_argument("--version", action="version", version=f"vmambax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_modules(sub, [f"vmambax.cli.{name}" for name in COMMAND_MODULES])
    return parser


def register_modules(subparsers, module_names) -> None:
    """Import each module and let it add its sub-command (``module.register(subparsers)``)."""
    for name in module_names:
        importlib.import_module(name).register(subparsers)


@contextlib.contextmanager
def terminate_cleanly(enabled: bool = True):
    """Turn SIGTERM (``kill``, a scheduler's time limit) into an exception while a command runs,
    so its staged outputs are removed on the way out (the default action kills the process and
    leaves the staging files behind) and the user reads why nothing was written."""
    import signal
    import threading

    from vmambax.errors import Terminated

    def handler(signum, frame):
        raise Terminated(f"stopped by {signal.Signals(signum).name} before finishing; nothing was "
                         "written (unfinished files were removed, existing outputs are unchanged). "
                         "Run the command again.", signum)

    if not enabled or threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    prefer_passive_wait()  # before any command imports torch: no spin-waiting on shared cores
    tune_allocator()  # reuse freed layer buffers instead of page-faulting fresh ones
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        # `vmambax train` has its own SIGTERM handling (finish the step, checkpoint, exit 0).
        with user_facing_output(), terminate_cleanly(enabled=args.command != "train"):
            return int(args.func(args) or 0)
    except VMambaXError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
