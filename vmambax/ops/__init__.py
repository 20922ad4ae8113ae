"""Selective-scan operator with interchangeable backends (see ``selective_scan``)."""

from vmambax.ops.selective_scan import (  # noqa: F401
    BACKENDS,
    ENV_VAR,
    active_backend,
    available_backends,
    fallback_note,
    selective_scan,
    unavailable_reasons,
)
