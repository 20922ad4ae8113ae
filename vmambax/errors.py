"""One exception family for every user-facing failure.

Each message names the problem *and* the fix. The command line prints ``error: <message>`` and
exits with status 2 for these instead of showing a traceback; the Slicer modules show the message
in a dialog. Anything that is not a ``VMambaXError`` is a bug in VMambaX.
"""

import sys as _sys


def _check_not_shadowed() -> None:
    """Explain the one import failure users cannot read: a folder named ``vmambax`` without an
    ``__init__.py`` (a checkout folder, an output folder) in the script's directory or on
    ``sys.path`` becomes a *namespace package* that shadows the installed vmambax (with an
    editable install's import hook it wins); vmambax then has no ``__file__`` or
    ``__version__``, and code deep inside fails with ``TypeError ... NoneType``."""
    package = _sys.modules.get(__name__.rpartition(".")[0])
    if package is None or getattr(package, "__file__", None) is not None:
        return
    import os

    real = os.path.dirname(os.path.abspath(__file__))
    folders = [p for p in getattr(package, "__path__", []) if os.path.abspath(p) != real]
    shown = ", ".join(folders) or "a folder named vmambax"
    raise ImportError(f"Python imported the folder {shown} as the package 'vmambax' instead of "
                      f"the installed VMambaX ({real}): a folder named 'vmambax' in the current "
                      "directory (or on sys.path) that is not the package shadows it. Rename "
                      "that folder, or run the script from another directory.", name="vmambax")


_check_not_shadowed()


class VMambaXError(Exception):
    """Base class: a problem the user can fix (bad input, bad option, missing dependency)."""


class InputError(VMambaXError, ValueError):
    """An input image, file or folder is missing, unreadable or inconsistent."""


class ConfigError(VMambaXError, ValueError):
    """An unknown configuration name or an invalid option value."""


class ModelFileError(VMambaXError):
    """A model/checkpoint file is missing, corrupted, of the wrong architecture or fails its checksum."""


class DependencyError(VMambaXError, ImportError):
    """An optional package needed for this action is not installed."""


class OutputError(VMambaXError, OSError):
    """An output could not be written, or did not read back complete (disk full, no permission,
    read-only file system); the existing file, if any, was left as it was."""


class Cancelled(VMambaXError):
    """The user asked to stop; nothing was written."""


class Terminated(Cancelled):
    """A termination signal (SIGTERM) arrived; nothing was written. The command line exits with
    128 + the signal number, as a shell reports a process the signal ended."""

    def __init__(self, message: str, signum: int = 15):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
