"""GUI pieces shared by the VMambaX module widgets: the error dialog (needs Slicer's GUI; it is
imported lazily, so this module imports under slicer-core, and the logic never uses it)."""

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
        # A bug in the segmentation process carries that process's traceback.
        details = getattr(exc, "details", "") or traceback.format_exc()
        logging.error(details)
        from VMambaXCommon.i18n import translate

        slicer.util.errorDisplay(
            translate("VMambaX", "{title}: {error}\n\nThis is a bug in VMambaX; please report it "
                      "with the details below.").format(title=title, error=exc),
            windowTitle=title, detailedText=details)
