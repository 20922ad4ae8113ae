"""The device choices both panels offer (one list, so Segment and Train never disagree).

Keys are what ``vmambax.infer.devices.resolve_device`` and ``vmambax train --accelerator``
understand; labels are the words a user reads in the combo box. ``refill_choices`` refills a
combo box without losing the user's choice (the device used to fall back to "auto" when the list
was rebuilt after the first dependency install); ``select_data`` selects a key in any of the
panels' combo boxes.

Which GPUs PyTorch sees is asked in a short child process (``PROBE``, one per Slicer session:
``python -m vmambax.infer.worker --devices``), never by importing torch into Slicer: opening a
panel stays instant (torch takes seconds to import, and before the first install it is not
there at all), and the network's process is the only one that loads torch. Until the probe
answers, the lists offer "Automatic" and "CPU" (the saved choice is kept meanwhile).
"""

from __future__ import annotations

import json
import logging

from VMambaXCommon.i18n import translate


def device_labels() -> dict[str, str]:
    """The words shown for each device key, translated inside Slicer (literals in translate()
    calls, so Slicer's translation tools find them)."""
    return {
        "auto": translate("VMambaX", "Automatic (GPU if available)"),
        "cpu": translate("VMambaX", "CPU"),
        "cuda": translate("VMambaX", "NVIDIA GPU (CUDA)"),
        "mps": translate("VMambaX", "Apple GPU (MPS)"),
    }


class DeviceProbe:
    """What PyTorch sees (CUDA, MPS, its version and build), asked in a child process.

    ``start()`` launches the probe once (``force=True``: again, e.g. after an install);
    ``poll()`` is non-blocking and True once, when a new answer has arrived; ``info`` is the
    answer (None before it; ``{"torch": None, ...}`` when torch is missing or broken).
    """

    TIMEOUT_S = 120.0  # a probe that hangs (a broken driver) gives up; the CPU stays offered

    def __init__(self, command=None):
        self._command = command
        self._job = None
        self.info: dict | None = None

    def command(self) -> list[str]:
        from VMambaXCommon.processes import python_executable

        return self._command or [python_executable(), "-m", "vmambax.infer.worker", "--devices"]

    @property
    def answered(self) -> bool:
        return self.info is not None

    @property
    def pending(self) -> bool:
        """A probe is running (a new answer will come; ``info`` may still be the last one)."""
        return self._job is not None

    def start(self, force: bool = False) -> "DeviceProbe":
        if self._job is not None or (self.info is not None and not force):
            return self
        from VMambaXCommon.processes import ProcessJob, vmambax_env

        try:
            self._job = ProcessJob(self.command(), env=vmambax_env(), time_limit=self.TIMEOUT_S)
        except OSError as exc:  # no Python to start: the CPU is still there
            logging.warning(f"VMambaX: cannot ask which GPUs PyTorch sees: {exc}")
            self.info = {"torch": None, "error": str(exc)}
        return self

    def poll(self) -> bool:
        job = self._job
        if job is None or (job.running() and not job.expired()):
            return False
        job.wait()
        self._job = None
        info = None
        while True:
            line = job.next_line(timeout=0)
            if line is None or line == "":
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "devices":
                info = event
        if info is None:
            tail = " | ".join(list(job.tail)[-3:])
            logging.info(f"VMambaX: device probe gave no answer (exit {job.returncode}): {tail}")
            info = {"torch": None, "error": tail}
        self.info = info
        return True

    def wait(self, timeout: float = TIMEOUT_S, pump=None) -> dict | None:
        """Wait for the answer of the probe that runs (or a new one); ``pump()`` is called
        meanwhile (Slicer: ``processEvents``, so the window keeps painting)."""
        import time

        self.start()
        deadline = time.monotonic() + timeout
        while not self.poll() and self.pending and time.monotonic() < deadline:
            if pump is not None:
                pump()
            time.sleep(0.05)
        return self.info


PROBE = DeviceProbe()  # one per Slicer session: both panels use it


def available_devices(cuda: bool | None = None, mps: bool | None = None,
                      probe: DeviceProbe | None = None) -> list[str]:
    """``auto`` and ``cpu``, plus ``cuda`` / ``mps`` only where PyTorch sees that GPU: given,
    else as the probe answered (not offered while it has not)."""
    info = (probe or PROBE).info or {}
    cuda = bool(info.get("cuda")) if cuda is None else cuda
    mps = bool(info.get("mps")) if mps is None else mps
    return ["auto", "cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])


def device_label(key: str) -> str:
    """The words shown for a device key (translated inside Slicer); unknown keys as they are."""
    return device_labels().get(key, key)


def device_choices(cuda: bool | None = None, mps: bool | None = None,
                   probe: DeviceProbe | None = None) -> list[tuple[str, str]]:
    """``(key, label)`` pairs for the device combo boxes of both panels."""
    return [(key, device_label(key)) for key in available_devices(cuda, mps, probe)]


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
