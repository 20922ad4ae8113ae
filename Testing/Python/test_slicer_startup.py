"""Slicer start-up and opening the panels import no torch (issue 17, point 2), measured in a
fresh Python where ``import torch`` is made to fail (``panel_open.py``: the benchmark of
docs/benchmarks.md), and a segmentation through the worker leaves torch out of Slicer's
process and no process behind."""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _panel_open(tmp_path, *args):
    done = subprocess.run([sys.executable, str(HERE / "panel_open.py"), "--forbid-torch", *args],
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "VMAMBAX_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_opening_both_panels_imports_no_torch_and_lists_the_models(tmp_path):
    out = _panel_open(tmp_path)
    assert out["torch_import_attempts"] == [] and not out["torch_imported"]
    # Slicer imports every module file at start-up: nothing heavy there (issue: SimpleITK and
    # vmambax.data were).
    assert out["startup_imports"] == []
    assert not {"torch", "vmambax.model", "vmambax.infer.segmenter"} & set(out["panel_imports"])
    # The shipped model is listed from the registry's JSON, before torch is there at all.
    assert out["models_listed"][:2] == ["default", "vmambax-nano-phantom"]
    assert out["devices_listed"][:2] == ["auto", "cpu"]


def test_a_worker_segmentation_leaves_torch_out_of_slicers_process(tmp_path, nano_file):
    out = _panel_open(tmp_path, "--segment", str(nano_file))
    assert out["torch_import_attempts"] == [] and not out["torch_imported_after_segment"]
    assert out["processes_left"] == []
    assert out["label_voxels"] >= 0
