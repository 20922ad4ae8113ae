"""Benchmarks behind ``vmambax bench <name>``; results go into docs/benchmarks.md by hand."""


def set_threads(threads: int | None) -> None:
    """Apply a ``--threads`` option: torch intra-op threads (None keeps torch's default)."""
    if not threads:
        return
    import torch

    from vmambax.errors import ConfigError

    if threads < 1:
        raise ConfigError("--threads must be at least 1.")
    torch.set_num_threads(threads)


def emit_json(result: dict, path: str | None) -> None:
    """A benchmark's results: to ``path`` (written atomically) when given, else to stdout."""
    import json
    import sys

    if path:
        from vmambax.utils import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    else:
        json.dump(result, sys.stdout, indent=2)
        print()
