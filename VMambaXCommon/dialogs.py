"""GUI pieces shared by the VMambaX module widgets: the error dialog, the three-button GPU-extras
question and the QSettings-backed settings store (need Slicer's GUI; Qt is imported lazily, so
this module imports under slicer-core, and the logic never uses it)."""

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
        slicer.util.errorDisplay(f"{title}: {exc}\n\nThis is a bug in VMambaX; please report "
                                 "it with the details below.", windowTitle=title,
                                 detailedText=details)


class QtSettingsStore:
    """The ``get/set`` settings store of ``VMambaXCommon.install`` on Slicer's QSettings (kept
    across sessions, per user)."""

    def __init__(self):
        import qt

        self._settings = qt.QSettings()

    def get(self, key, default=None):
        value = self._settings.value(key)
        return default if value is None else value

    def set(self, key, value):
        self._settings.setValue(key, value)


def ask_install_later_never(question, title="VMambaX: optional GPU packages"):
    """A three-button question: returns "install", "later" or "never" ("Don't ask again")."""
    import qt
    import slicer

    box = qt.QMessageBox(slicer.util.mainWindow())
    box.setWindowTitle(title)
    box.setText(question)
    box.setIcon(qt.QMessageBox.Question)
    install = box.addButton(_tr("Install"), qt.QMessageBox.AcceptRole)
    later = box.addButton(_tr("Not now"), qt.QMessageBox.RejectRole)
    never = box.addButton(_tr("Don't ask again"), qt.QMessageBox.DestructiveRole)
    box.setDefaultButton(later)
    box.exec_()
    clicked = box.clickedButton()
    return "install" if clicked == install else "never" if clicked == never else "later"


def _tr(text):
    from VMambaXCommon.i18n import translate

    return translate("VMambaX", text)
