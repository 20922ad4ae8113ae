"""Reload the VMambaX Python packages for a module's "Reload" button (developer workflow).

Slicer's ``onReload`` re-reads only the module file; the Lib packages and VMambaXCommon it
imports would stay at their old code. All of their modules are dropped from ``sys.modules`` and
imported again in their original order: a module imported afresh pulls in fresh copies of what
it imports, so no dependency order has to be worked out.
"""

from __future__ import annotations

import importlib
import sys


def _matches(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# State both panels share for the whole session: reloading one panel must not give it a guard of
# its own (the other panel would no longer see its jobs).
KEEP = ("VMambaXCommon.busy",)


def reload_packages(*packages: str, keep=KEEP) -> list[str]:
    """Re-import every loaded module of ``packages`` except ``keep``; returns their names."""
    names = [name for name in list(sys.modules)
             if _matches(name, packages) and not _matches(name, keep)]
    for name in names:
        del sys.modules[name]
    for name in names:
        if name not in sys.modules:
            importlib.import_module(name)
    return names
