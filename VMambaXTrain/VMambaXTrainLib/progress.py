"""What the Train panel's status line and progress bar say for one ``progress.jsonl`` event.

Qt-free and pure (tested under slicer-core). A plain run's events give "Training: epoch 3, step
120/400, ...". A cross-validation (``vmambax train --folds K``) writes ``crossval_start`` (K),
then each fold's ordinary training events tagged ``"fold": k``, a ``crossval_case`` per held-out
case scored, a ``fold`` when fold k is finished, and ``crossval`` before its ``done``; the status
then names the fold ("Fold 2 of 5: epoch 1, step 30/90, ...") and the bar covers all folds.

Texts go through ``VMambaXCommon.i18n.translate`` (context "VMambaX") as literals, so Slicer's
translation tools find them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from VMambaXCommon.i18n import translate

TRAINING_EVENTS = ("step", "epoch", "start", "checkpoint")


class ProgressUpdate(NamedTuple):
    status: str | None  # the status line; None: keep the current one
    percent: int | None  # the progress bar, 0-100; None: keep it
    folds: int | None  # folds of the run as known after this event (None: not cross-validation)


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _dice(value) -> str:
    value = _number(value)
    return "n/a" if value is None else f"{value:.3f}"


def _percent(fraction: float) -> int:
    return int(round(100 * min(max(fraction, 0.0), 1.0)))


def _training_parts(event: dict, inFold: bool) -> list[str]:
    step, total = event.get("step"), event.get("total_steps")
    parts = []
    if event.get("epoch") is not None:
        parts.append(translate("VMambaX", "epoch {epoch}").format(epoch=event["epoch"] + 1))
    if step is not None and total:
        parts.append(translate("VMambaX", "step {step}/{total}").format(step=step, total=total))
    if _number(event.get("loss")) is not None:
        parts.append(translate("VMambaX", "loss {loss:.4f}").format(loss=float(event["loss"])))
    if _number(event.get("val_dice")) is not None:
        parts.append(translate("VMambaX", "validation Dice {dice:.3f}").format(
            dice=float(event["val_dice"])))
    if _number(event.get("eta_s")):
        minutes = float(event["eta_s"]) / 60
        parts.append(translate("VMambaX", "about {minutes:.0f} min left in this fold").format(
            minutes=minutes) if inFold else translate("VMambaX", "about {minutes:.0f} min left"
                                                      ).format(minutes=minutes))
    return parts


def foldLabel(fold, folds) -> str:
    """"Fold k of K" (or "Fold k" while K is not known): the status line's and the chart's."""
    if folds:
        return translate("VMambaX", "Fold {fold} of {folds}").format(fold=fold, folds=folds)
    return translate("VMambaX", "Fold {fold}").format(fold=fold)


def describeEvent(event: dict, folds: int | None = None) -> ProgressUpdate:
    """The status line and progress bar after ``event``; ``folds``: the run's number of folds
    as known so far (from its ``crossval_start``), carried from one call to the next."""
    kind = event.get("event")
    if kind == "crossval_start":
        folds = int(event.get("folds") or 0) or None
        text = translate("VMambaX", "Cross-validation: {folds} folds over {cases} cases").format(
            folds=folds, cases=event.get("cases", "?"))
        if _number(event.get("time_budget")):
            text += translate("VMambaX", ", {minutes:g} min in all").format(
                minutes=float(event["time_budget"]))
        return ProgressUpdate(text + "…", 0, folds)
    if kind == "warning":
        message = str(event.get("message") or "").strip()
        status = translate("VMambaX", "Warning: {message}").format(message=message) if message else None
        return ProgressUpdate(status, None, folds)
    fold = event.get("fold")
    if kind == "crossval":
        summary = event.get("summary") or {}
        model = summary.get("dice_model") or {}
        text = translate("VMambaX", "Cross-validation done: out-of-fold Dice {dice} over {cases} "
                                    "cases.").format(dice=_dice(model.get("mean")),
                                                     cases=summary.get("cases", "?"))
        return ProgressUpdate(text, 100, folds)
    if fold is None:
        if kind not in TRAINING_EVENTS and not (event.get("step") is not None
                                                and event.get("total_steps")):
            return ProgressUpdate(None, None, folds)  # done / stopped / error: the panel's end
        step, total = event.get("step"), event.get("total_steps")
        percent = _percent(step / total) if step is not None and total else None
        status = None
        if kind in TRAINING_EVENTS:
            status = translate("VMambaX", "Training: {progress}").format(
                progress=", ".join(_training_parts(event, False)))
        return ProgressUpdate(status, percent, folds)
    # A cross-validation event of fold ``fold`` (1-based).
    try:
        done_before = min(max(int(fold) - 1, 0), (folds or int(fold)) - 1)
    except (TypeError, ValueError):
        return ProgressUpdate(None, None, folds)
    share = 1.0 / (folds or int(fold))  # unknown K: the bar covers this fold as if it were last
    label = foldLabel(fold, folds)
    if kind in TRAINING_EVENTS:
        step, total = event.get("step"), event.get("total_steps")
        within = min(step / total, 1.0) if step is not None and total else None
        percent = _percent((done_before + within) * share) if within is not None else None
        parts = _training_parts(event, True)
        status = f"{label}: " + (", ".join(parts) if parts else translate("VMambaX", "training"))
        return ProgressUpdate(status, percent, folds)
    if kind == "done":
        return ProgressUpdate(f"{label}: " + translate(
            "VMambaX", "trained; scoring its held-out cases…"), _percent((done_before + 1) * share),
            folds)
    if kind == "crossval_case":
        text = translate("VMambaX", "case {case}: Dice {dice} (SUV >= 2.5: {suv}, 41 % SUVmax: "
                                    "{pct})").format(case=event.get("case", "?"),
                                                     dice=_dice(event.get("dice_model")),
                                                     suv=_dice(event.get("dice_suv25")),
                                                     pct=_dice(event.get("dice_pct41")))
        return ProgressUpdate(f"{label}: {text}", None, folds)
    if kind == "fold":
        text = translate("VMambaX", "done, mean out-of-fold Dice {dice}").format(
            dice=_dice(event.get("mean_dice")))
        return ProgressUpdate(f"{label}: {text}", _percent((done_before + 1) * share), folds)
    return ProgressUpdate(None, None, folds)  # a fold's stopped / error: the command's follows
