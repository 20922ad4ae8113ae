"""VMambaX Train's self-test checks, Qt-free: run by the module's ScriptedLoadableModuleTest in
Slicer (Reload and Test, and the extension factory) and by the slicer-core tests.

Exporting scene cases needs no PyTorch and runs everywhere; the brief training run needs
PyTorch, PyTorch Lightning and psutil (the trainer's process control) and returns a skip message
where one is missing (the extension factory), which the caller logs. Checks return None (passed) or a skip message; a failure
raises ``AssertionError``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable


def _check(condition, message: str) -> None:
    if not condition:  # not ``assert``: must also fail under ``python -O``
        raise AssertionError(message)


def _phantom_cases(scene, size: int):
    from VMambaXCommon.testing import add_phantom_case
    from VMambaXTrainLib.logic import TrainingCase

    cases = []
    for seed in (1, 2):
        ct, pet, _phantom, seg = add_phantom_case(scene, seed=seed, size=size, n_slices=8,
                                                  segmentation=True, prefix=f"Case {seed} ")
        cases.append(TrainingCase(ct, pet, seg))
    return cases


def phantom_cases_are_exported(scene, work: str) -> None:
    """Two phantom cases exported as case folders (no PyTorch needed)."""
    from VMambaXTrainLib.logic import VMambaXTrainLogic

    folder = VMambaXTrainLogic().exportCases(_phantom_cases(scene, 64), os.path.join(work, "cases"))
    cases = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    _check(len(cases) == 2, f"expected 2 case folders, found {len(cases)}")
    for case in cases:
        for name in ("ct.nii.gz", "pet.nii.gz", "label.nii.gz", "case.json"):
            _check((case / name).is_file(), f"{case.name}/{name} was not written")
        info = json.loads((case / "case.json").read_text(encoding="utf-8"))
        _check(info.get("segment") == "tumour", f"{case.name}: segment {info.get('segment')!r}")


def nano_trains_on_phantoms(scene, work: str, pump: Callable[[], None] = lambda: None,
                            timeout_s: float = 900.0):
    """Export two phantom cases and train the nano network briefly (PyTorch, Lightning, psutil)."""
    from VMambaXCommon.testing import model_unavailable

    reason = model_unavailable(("pytorch_lightning", "psutil"))
    if reason:
        return reason
    from VMambaXTrainLib.logic import VMambaXTrainLogic

    logic = VMambaXTrainLogic()
    data = logic.exportCases(_phantom_cases(scene, 128), os.path.join(work, "cases"))
    run = logic.startTraining(data, os.path.join(work, "run"), config="vmambax-nano", epochs=1,
                              extraArgs=["--batch-size", "2", "--limit-train-batches", "2",
                                         "--limit-val-batches", "1", "--crop-size", "128",
                                         "--val-fraction", "0.5", "--num-workers", "0"])
    deadline = time.time() + timeout_s
    while run.isRunning() and time.time() < deadline:
        run.poll()
        pump()
        time.sleep(0.5)
    if run.isRunning():
        run.kill()
    run.poll()
    _check((run.finalEvent or {}).get("event") == "done", run.failureMessage())
    _check(run.modelFile.is_file(), "no model file was written")
    return None
