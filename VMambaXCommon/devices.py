"""The device choices both panels offer (one list, so Segment and Train never disagree).

Keys are what ``vmambax.infer.devices.resolve_device`` and ``vmambax train --accelerator``
understand; labels are the words a user reads in the combo box. ``refill_choices`` refills a
combo box without losing the user's choice (the device used to fall back to "auto" when the list
was rebuilt after the first dependency install); ``select_data`` selects a key in any of the
panels' combo boxes.
"""

from __future__ import annotations

from VMambaXCommon.i18n import translate

DEVICE_LABELS = {
    "auto": "Automatic (GPU if available)",
    "cpu": "CPU",
    "cuda": "NVIDIA GPU (CUDA)",
    "mps": "Apple GPU (MPS)",
}


def available_devices(cuda: bool | None = None, mps: bool | None = None) -> list[str]:
    """``auto`` and ``cpu``, plus ``cuda`` / ``mps`` only where PyTorch sees that GPU."""
    from vmambax.deps import cuda_available, mps_available

    cuda = cuda_available() if cuda is None else cuda
    mps = mps_available() if mps is None else mps
    return ["auto", "cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])


def device_label(key: str) -> str:
    """The words shown for a device key (translated inside Slicer); unknown keys as they are."""
    label = DEVICE_LABELS.get(key)
    return translate("VMambaX", label) if label else key


def device_choices(cuda: bool | None = None, mps: bool | None = None) -> list[tuple[str, str]]:
    """``(key, label)`` pairs for the device combo boxes of both panels."""
    return [(key, device_label(key)) for key in available_devices(cuda, mps)]


def choose(saved: str | None, keys, fallback: str = "auto") -> str:
    """The saved choice when it is still offered, else ``fallback`` (a scene saved on a GPU
    machine, opened on a CPU one, runs on "auto")."""
    keys = list(keys)
    if saved in keys:
        return saved
    return fallback if fallback in keys or not keys else keys[0]


def refill_choices(combo, choices, selected: str | None, fallback: str = "auto") -> str:
    """Replace a combo box's items with ``(key, label)`` choices and select ``selected`` (or
    the fallback); returns the key that is selected.

    The combo's signals are blocked meanwhile: ``clear()`` and ``addItem`` emit
    ``currentIndexChanged``, which the panels save to the parameter node, so an unblocked refill
    overwrote the user's device with the first item. Works on any object with QComboBox's
    ``blockSignals/clear/addItem/findData/setCurrentIndex`` (a real one in Slicer, a fake in tests).
    """
    choices = list(choices)
    key = choose(selected, [k for k, _ in choices], fallback)
    was_blocked = combo.blockSignals(True)
    try:
        combo.clear()
        for choice_key, label in choices:
            combo.addItem(label, choice_key)
        index = combo.findData(key)
        combo.setCurrentIndex(index if index >= 0 else 0)
    finally:
        combo.blockSignals(was_blocked)
    return key


def select_data(combo, data) -> bool:
    """Select the item whose data is ``data`` (no signal when it already is); False when the
    combo box has no such item (the selection is then left as it is)."""
    index = combo.findData(data)
    if index >= 0 and index != combo.currentIndex:
        combo.setCurrentIndex(index)
    return index >= 0
