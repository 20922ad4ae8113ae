"""The modules' self-tests pass on the extension factory, which has no PyTorch.

1. Nothing imports torch (or Lightning, mamba-ssm) when the modules, their Libs and the shared
   glue are imported: checked on the source (module-level statements only; imports inside
   functions are lazy and fine).
2. The self-test checks (VMambaXSegmentLib.selftest, VMambaXTrainLib.selftest; the modules'
   ScriptedLoadableModuleTest classes only call them) run in a fresh interpreter where torch
   cannot be imported: the logic checks pass, the network checks return their skip message.
"""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILES = [ROOT / "VMambaXSegment" / "VMambaXSegment.py",
                ROOT / "VMambaXTrain" / "VMambaXTrain.py"]
LIB_FILES = sorted([*(ROOT / "VMambaXSegment" / "VMambaXSegmentLib").glob("*.py"),
                    *(ROOT / "VMambaXTrain" / "VMambaXTrainLib").glob("*.py"),
                    *(ROOT / "VMambaXCommon").glob("*.py")])
HEAVY = ("torch", "pytorch_lightning", "lightning", "mamba_ssm", "causal_conv1d")


def _module_level_imports(tree):
    """Imported module names of statements run at import time (not in functions/classes'
    methods; class bodies do run at import time, so they are included)."""
    names, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            todo += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
            for field in ("handlers", "orelse", "finalbody"):
                for child in getattr(node, field, []) or []:
                    todo += child.body if isinstance(child, ast.ExceptHandler) else []
    return names


def _project_modules_imported_by(files):
    found = set()
    for path in files:
        for name in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if name.split(".")[0].startswith(("VMambaX", "vmambax")):
                found.add(name)
    return sorted(found)


@pytest.mark.parametrize("path", MODULE_FILES + LIB_FILES,
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_heavy_import_at_module_level(path):
    imports = _module_level_imports(ast.parse(path.read_text(encoding="utf-8")))
    heavy = [name for name in imports if name.split(".")[0] in HEAVY]
    assert not heavy, f"{path.name} imports {heavy} at import time; import it where it is used"


def test_the_import_walker_sees_conditional_imports():
    """The check above would catch a torch import hidden in a module-level try or if."""
    tree = ast.parse(textwrap.dedent("""
        import os
        try:
            import torch
        except ImportError:
            from lightning import x
        if True:
            import mamba_ssm
        class T:
            import causal_conv1d
            def f(self):
                import numpy
        def g():
            import scipy
    """))
    assert sorted(_module_level_imports(tree)) == sorted(
        ["os", "torch", "lightning", "mamba_ssm", "causal_conv1d"])


_NO_TORCH_SCRIPT = r"""
import json, sys, tempfile
for name in HEAVY:
    sys.modules[name] = None  # "import torch" now raises ImportError, as without torch
sys.path[:0] = PATHS
import importlib
for name in MODULES:
    importlib.import_module(name)
import slicer
from VMambaXSegmentLib import selftest as segment_checks
from VMambaXTrainLib import selftest as train_checks
outcome = {}
for check in segment_checks.CHECKS:
    outcome[check.__name__] = check(slicer.vtkMRMLScene())
for check in (train_checks.phantom_cases_are_exported, train_checks.nano_trains_on_phantoms):
    outcome[check.__name__] = check(slicer.vtkMRMLScene(), tempfile.mkdtemp())
outcome["imported"] = sorted(m for m in sys.modules
                             if m.split(".")[0] in HEAVY and sys.modules[m] is not None)
print("RESULT " + json.dumps(outcome))
"""


def test_self_test_checks_pass_without_torch(tmp_path):
    modules = sorted(set(_project_modules_imported_by(MODULE_FILES))
                     | {f"{p.parent.name}.{p.stem}" for p in LIB_FILES if p.stem != "__init__"})
    script = (f"HEAVY = {HEAVY!r}\nMODULES = {modules!r}\n"
              f"PATHS = {[str(ROOT), str(ROOT / 'VMambaXSegment'), str(ROOT / 'VMambaXTrain')]!r}\n"
              + _NO_TORCH_SCRIPT)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")][-1]
    outcome = json.loads(line[len("RESULT "):])
    assert outcome.pop("imported") == []
    skipped = {name: message for name, message in outcome.items() if message}
    assert set(skipped) == {"phantom_is_segmented_by_the_model", "nano_trains_on_phantoms"}
    for message in skipped.values():
        assert "torch" in message and "extension factory" in message
    assert {"missing_pet_changes_nothing", "swapped_inputs_are_named",
            "output_is_written_without_the_network", "phantom_cases_are_exported"} <= set(outcome)


def test_training_self_test_is_skipped_without_psutil(monkeypatch, tmp_path):
    import slicer
    from VMambaXTrainLib import selftest as train_checks

    monkeypatch.setitem(sys.modules, "psutil", None)  # "import psutil" raises ImportError
    message = train_checks.nano_trains_on_phantoms(slicer.vtkMRMLScene(), str(tmp_path))
    assert message and message.startswith("psutil not importable")
    assert not any(tmp_path.iterdir())  # skipped before exporting anything
