"""The cross-validation table of a finished ``vmambax train --folds K`` run, for the Train panel.

``RUN_DIR/crossval.json`` (written by ``vmambax.crossval.runner`` with ``vmambax.crossval.table``)
holds the per-case out-of-fold 3-D Dice of the model and of the two SUV thresholds and their
summary; the ``crossval`` progress event carries the same ``rows`` and ``summary``. This turns
either into what a table widget shows (headers, rows of text, one mean (SE) row) and the summary
sentences a physician reads first. Qt-free; texts are translatable literals.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from vmambax.errors import InputError
from VMambaXCommon.i18n import translate

TABLE_FILE = "crossval.json"
NEEDED = ("case", "fold", "dice_model", "dice_suv25", "dice_pct41")


@dataclasses.dataclass(frozen=True)
class CrossvalTable:
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]  # one per case, then the mean (SE) row
    summary: list[str]  # sentences: the model's mean Dice, then each threshold's paired difference
    cases: int
    source: str  # the file (or "the crossval event") it was read from


def _f(value, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _signed(value) -> str:
    text = _f(value)
    return text if text == "n/a" or text.startswith("-") else "+" + text


def headers() -> tuple[str, ...]:
    return (translate("VMambaX", "Case"), translate("VMambaX", "Fold"),
            translate("VMambaX", "vMambaX Dice"), translate("VMambaX", "SUV >= 2.5 Dice"),
            translate("VMambaX", "41 % SUVmax Dice"), translate("VMambaX", "Tumour (mL)"))


def summarySentences(summary: dict) -> list[str]:
    """The summary as sentences (the numbers of ``vmambax.crossval.table.summary_lines``)."""
    model = summary["dice_model"]
    out = [translate("VMambaX", "Out-of-fold 3-D Dice over {cases} cases: vMambaX {mean} (SE {se})."
                     ).format(cases=summary["cases"], mean=_f(model["mean"]), se=_f(model["se"]))]
    for key, text in (("model_minus_suv25", translate(
            "VMambaX", "Against SUV >= 2.5: {diff} (paired SE {se}); the model is better on "
                       "{wins} of {cases} cases.")),
                      ("model_minus_pct41", translate(
            "VMambaX", "Against 41 % SUVmax: {diff} (paired SE {se}); the model is better on "
                       "{wins} of {cases} cases."))):
        d = summary[key]
        out.append(text.format(diff=_signed(d["mean"]), se=_f(d["se"]), wins=d["wins"],
                               cases=d["cases"]))
    return out


def crossvalTable(result: dict, source: str = "the crossval event") -> CrossvalTable:
    """The table of ``result`` ({"rows": [...], "summary": {...}}: crossval.json or the
    ``crossval`` event). The summary is recomputed from the rows when it is missing."""
    rows = result.get("rows") if isinstance(result, dict) else None
    if not isinstance(rows, list) or not rows or not all(
            isinstance(r, dict) and all(k in r for k in NEEDED) for r in rows):
        raise InputError(f"{source} is not a cross-validation table: it needs 'rows', each with "
                         f"{', '.join(NEEDED)}; run the cross-validation again (or Resume it)")
    summary = result.get("summary")
    try:
        if not isinstance(summary, dict) or "dice_model" not in summary:
            from vmambax.crossval.table import summarise

            summary = summarise(rows)
        sentences = summarySentences(summary)
        model = summary["dice_model"]
        mean_row = (translate("VMambaX", "mean (SE)"), "",
                    f"{_f(model['mean'])} ({_f(model['se'])})",
                    *(f"{_f(summary[k]['mean'])} ({_f(summary[k]['se'])})"
                      for k in ("dice_suv25", "dice_pct41")), "")
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source} has a damaged summary ({type(exc).__name__}: {exc}); run "
                         f"the cross-validation again (or Resume it)") from None
    table = [(str(r["case"]), str(r["fold"]), _f(r["dice_model"]), _f(r["dice_suv25"]),
              _f(r["dice_pct41"]), _f(r.get("gt_ml"), 1)) for r in rows]
    return CrossvalTable(headers(), table + [mean_row], sentences, len(rows), source)


def readCrossvalTable(runDir) -> CrossvalTable:
    """The table of ``RUN_DIR/crossval.json``; InputError saying why when it is missing or
    cannot be read."""
    path = Path(runDir) / TABLE_FILE
    if not path.is_file():
        raise InputError(f"{path} does not exist: the cross-validation in {Path(runDir)} has not "
                         f"finished (press Resume to continue it)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} cannot be read as a cross-validation table ({exc}); run the "
                         f"cross-validation again (or Resume it)") from None
    return crossvalTable(result, str(path))
