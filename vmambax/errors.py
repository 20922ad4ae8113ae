"""One exception family for every user-facing failure.

Each message names the problem *and* the fix. The command line prints ``error: <message>`` and
exits with status 2 for these instead of showing a traceback; the Slicer modules show the message
in a dialog. Anything that is not a ``VMambaXError`` is a bug in VMambaX.
"""


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


class Cancelled(VMambaXError):
    """The user asked to stop; nothing was written."""
