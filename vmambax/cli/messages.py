"""What the command line says on stderr: ``warning: ...`` lines, and the chatter it keeps out.

``main`` runs every command inside ``user_facing_output()``. It

* prints Python warnings as ``warning: <message>`` (VMambaX's own) or ``warning: <Category>:
  <message> (<file>:<line>)`` (a library's real warnings still show);
* silences pydicom's "value length exceeds the maximum length allowed for VR" warnings: real
  scanners write over-long values that pydicom reads fine, and one per file buries real news;
* drops Lightning's "litlogger" advertisement and its GPU/TPU/HPU availability banner (with the
  CUDA_VISIBLE_DEVICES line on GPUs), its "Loading `train_dataloader` to estimate ..." and
  "`Trainer.fit` stopped: ..." lines, and ModelCheckpoint's "could not find the monitored key"
  after an epoch without validation: they say nothing about the run the user asked for, or
  less than our own lines do. (highdicom's person-name remark is silenced where the SEG is
  written, ``vmambax.data.dicom_seg``.)

Commands print their own findings (``PetCtCase.warnings``, ``report["warnings"]``) with
``print_warnings`` in the same format. Everything is undone when the command returns, so
``main`` called from Python (tests, notebooks) leaves no global filters behind.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterable

# pydicom 2/3: "The value length (18) exceeds the maximum length of 16 allowed for VR SH."
PYDICOM_VR_LENGTH = r"The value length \(\d+\) exceeds the maximum length of \d+ allowed for VR"
# Lightning's INFO lines that are not about this run, or that our own lines say better
# ("training done: N steps"): the stepping-batch estimate, the reason fit() returned.
LIGHTNING_CHATTER = re.compile(r"^(💡 Tip: .*litlogger|(GPU|TPU|HPU|IPU) available: |"
                               r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: |"
                               r"Loading `train_dataloader` to estimate number of stepping batches|"
                               r"`Trainer.fit` stopped: )", re.S)
# ModelCheckpoint(monitor="val_dice") at an epoch end without validation (--val-every, a stop):
# the best checkpoint simply waits for the next validation; last.ckpt is saved regardless.
LIGHTNING_NO_MONITOR = r".*ModelCheckpoint\(monitor='val_dice'\)` could not find the monitored key"
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                     "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "pytorch_lightning.accelerators.cuda", "lightning.pytorch.accelerators.cuda")


def print_warnings(messages: Iterable[str], file=None) -> None:
    """One ``warning: ...`` line per message, on stderr (the user's eyes, not only a report)."""
    for message in dict.fromkeys(messages):  # once each, in order
        print(f"warning: {message}", file=file or sys.stderr)


def _warning_printer():
    """A ``warnings.showwarning`` that prints each distinct message once per command."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if category.__module__.split(".")[0] == "vmambax":
            text = f"warning: {message}"
        else:
            text = f"warning: {category.__name__}: {message} ({filename}:{lineno})"
        if text in seen:
            return
        seen.add(text)
        try:
            print(text, file=file or sys.stderr)
        except OSError:  # stderr closed (a pipe): nothing sensible to do
            pass

    return show


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not LIGHTNING_CHATTER.match(str(record.getMessage()))


@contextlib.contextmanager
def user_facing_output():
    """The filters and warning format above, for the duration of one command."""
    chatter = _DropChatter()
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer()
        warnings.filterwarnings("ignore", message=PYDICOM_VR_LENGTH, category=UserWarning)
        warnings.filterwarnings("ignore", message=LIGHTNING_NO_MONITOR)
        for logger in loggers:
            logger.addFilter(chatter)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(chatter)
