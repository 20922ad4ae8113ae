"""``vmambax bench <name>``: speed and memory benchmarks; their figures go into docs/benchmarks.md.

Each benchmark lives in ``vmambax.bench.<name>`` and exposes ``register(subparsers)`` (the same
pattern as the top-level command), which adds its parser and sets ``func``.
"""

from __future__ import annotations

import importlib

# Benchmarks, in the order ``vmambax bench --help`` lists them.
BENCH_MODULES = ("scan", "forward", "train", "infer")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure speed and memory (selective scan, model forward, training, inference)",
        description="Speed and memory benchmarks. Record results in docs/benchmarks.md with the "
                    "command, machine and date.")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(f"vmambax.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"vmambax.bench.{name}":
                continue  # benchmark not built yet in this checkout
            raise
        module.register(sub)

    def usage(args) -> int:
        parser.print_help()
        return 1

    parser.set_defaults(func=usage)
