"""Translation for the Qt-free glue: Slicer's ``translate`` when present, else the text itself.

The module widgets use ``slicer.i18n.tr`` (``_``) directly, since ``tr`` takes its translation
context from the calling file; this wrapper is for strings made here (device labels, messages),
which use the fixed context "VMambaX". Slicer before 5.4 and slicer-core have no ``slicer.i18n``.
"""

from __future__ import annotations


def translate(context: str, text: str) -> str:
    try:
        from slicer.i18n import translate as slicer_translate
    except ImportError:
        return text
    try:
        return slicer_translate(context, text)
    except Exception:  # noqa: BLE001 - no application (scripts): untranslated is fine
        return text
