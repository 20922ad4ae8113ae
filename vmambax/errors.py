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
