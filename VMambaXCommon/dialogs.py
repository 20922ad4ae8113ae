"""Error dialogs shared by the VMambaX module widgets (needs Slicer's GUI; not used by the logic)."""

import logging
import traceback


def show_error(exc, title):
    """A user's mistake (``VMambaXError``) as a plain message, a cancel as a status-bar note,
    anything else as a bug report with the traceback."""
    import slicer

    from vmambax.errors import Cancelled, VMambaXError

    if isinstance(exc, Cancelled):
        slicer.util.showStatusMessage(str(exc), 5000)
    elif isinstance(exc, VMambaXError):
        slicer.util.errorDisplay(str(exc), windowTitle=title)
    else:  # not the user's fault: show where, so it can be reported
        logging.error(traceback.format_exc())
        slicer.util.errorDisplay(f"{title}: {exc}\n\nThis is a bug in VMambaX; please report "
                                 "it with the details below.", windowTitle=title,
                                 detailedText=traceback.format_exc())
