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
