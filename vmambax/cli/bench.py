"""``vmambax bench <name>``: speed and memory benchmarks; their figures go into docs/benchmarks.md.

Each benchmark module (``vmambax.bench.<name>``, and ``vmambax.data.benchmark`` for ``data``) exposes ``register(subparsers)`` (the same
pattern as the top-level command), which adds its parser and sets ``func``.
"""

from __future__ import annotations

from vmambax.cli import register_modules

# Benchmark modules, in the order ``vmambax bench --help`` lists them.
BENCH_MODULES = ("vmambax.bench.scan", "vmambax.bench.forward", "vmambax.bench.floor", "vmambax.bench.train",
                 "vmambax.bench.infer", "vmambax.bench.wholebody", "vmambax.data.benchmark")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure speed and memory (selective scan, model forward, training, inference)",
        description="Speed and memory benchmarks. Record results in docs/benchmarks.md with the "
                    "command, machine and date.")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    register_modules(sub, BENCH_MODULES)

    def usage(args) -> int:
        parser.print_help()
        return 1

    parser.set_defaults(func=usage)
