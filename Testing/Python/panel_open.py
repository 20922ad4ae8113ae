"""What Slicer start-up and opening the VMambaX panels cost: imports and seconds (issue 17.2).

Run in a fresh Python (the test does, and it is the benchmark of docs/benchmarks.md)::

    python Testing/Python/panel_open.py [--forbid-torch] [--segment MODEL_FILE]

Under slicer-core with the stand-in Qt of ``slicer_fakes``: "start-up" is what Slicer does for
every installed module when it starts (import the module file, make the module object);
"panel open" is what the first click on the module does (the widget's ``setup`` and
``enter``, with a scene holding a PET/CT pair). ``--forbid-torch`` installs an import hook that
makes ``import torch`` fail, as on a Slicer before the first install, and records who asked.
``--segment MODEL_FILE`` then segments the scene's PET/CT with the Segment logic (through the
worker process) and reports whether torch came into this process, the processes left, and the
resident memory before and after. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HEAVY = ("torch", "SimpleITK", "scipy", "skimage", "pydicom", "vmambax.data", "vmambax.model",
         "vmambax.infer.segmenter", "pytorch_lightning", "matplotlib")


class ForbidTorch(importlib.abc.MetaPathFinder):
    """``import torch`` fails (ImportError, as when it is not installed); the callers are kept."""

    def __init__(self):
        self.attempts: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            stack = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]
                     if "importlib" not in f.filename and "<frozen" not in f.filename]
            self.attempts.append(" <- ".join(reversed(stack[-4:])))
            raise ImportError(f"No module named {name!r} (forbidden by panel_open.py)")
        return None


def heavy_loaded() -> set[str]:
    return {h for h in HEAVY if h in sys.modules}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forbid-torch", action="store_true")
    parser.add_argument("--segment", metavar="MODEL_FILE")
    args = parser.parse_args(argv)
    hook = ForbidTorch() if args.forbid_torch else None
    if hook is not None:
        sys.meta_path.insert(0, hook)
    for folder in (ROOT, ROOT / "VMambaXSegment", ROOT / "VMambaXTrain", HERE):
        sys.path.insert(0, str(folder))

    import pytest

    t = time.perf_counter()
    import slicer  # noqa: F401 - what Slicer has loaded before any extension
    import slicer_fakes
    import vtk  # noqa: F401 - Slicer's own
    out = {"slicer_import_s": time.perf_counter() - t}
    monkeypatch = pytest.MonkeyPatch()
    env = slicer_fakes.install(monkeypatch)
    base = heavy_loaded()

    t = time.perf_counter()
    segment = slicer_fakes.import_module_file(monkeypatch, "VMambaXSegment")
    train = slicer_fakes.import_module_file(monkeypatch, "VMambaXTrain")
    for module, name in ((segment, "VMambaXSegment"), (train, "VMambaXTrain")):
        getattr(module, name)(slicer_fakes.Anything())
    out["startup_s"] = time.perf_counter() - t
    out["startup_imports"] = sorted(heavy_loaded() - base)

    # A PET/CT pair in the scene, as a user has it before opening the panel (not timed).
    from VMambaXCommon.testing import add_phantom_case

    add_phantom_case(env.scene, seed=2, size=64, n_slices=4)
    before = heavy_loaded()
    widgets = {}
    for module, name in ((segment, "VMambaXSegmentWidget"), (train, "VMambaXTrainWidget")):
        t = time.perf_counter()
        widget = getattr(module, name)()
        widget.setup()
        widget.enter()
        out[f"{name}_open_s"] = time.perf_counter() - t
        widgets[name] = widget
    out["panel_imports"] = sorted(heavy_loaded() - before)
    out["torch_imported"] = "torch" in sys.modules
    out["torch_import_attempts"] = hook.attempts if hook is not None else []
    segment_widget = widgets["VMambaXSegmentWidget"]
    out["models_listed"] = segment_widget.ui.modelComboBox.data()
    out["devices_listed"] = segment_widget.ui.deviceComboBox.data()
    if args.segment:
        out.update(_segment(segment_widget, args.segment))
    for widget in widgets.values():
        widget.cleanup()
    monkeypatch.undo()
    return out


def _workers_alive(me) -> list[int]:
    """Segmentation workers still running under this process (exited ones hold no memory)."""
    import psutil

    alive = []
    for child in me.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "--watch-stdin" in child.cmdline():
                alive.append(child.pid)
        except psutil.Error:
            pass
    return alive


def _segment(widget, model_file) -> dict:
    import psutil

    me = psutil.Process()
    p = widget._parameterNode
    rss = me.memory_info().rss
    t = time.perf_counter()
    result = widget.logic.segment(p.ctVolume, p.petVolume, model=model_file, device="cpu",
                                  petUnits="suv").result
    return {"segment_s": time.perf_counter() - t, "lesions": len(result.lesions),
            "label_voxels": int(result.totals.get("voxels", -1)),
            "torch_imported_after_segment": "torch" in sys.modules,
            "processes_left": _workers_alive(me),
            "rss_growth_mb": (me.memory_info().rss - rss) / 2**20}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
