"""The README's panel pictures are rendered from the current .ui files (issue 17.4): each PNG
carries the SHA-256 of the .ui file it was made from (docs/images/render_panels.py)."""

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PICTURES = {"VMambaXSegment": "segment-panel.png", "VMambaXTrain": "train-panel.png"}


@pytest.mark.parametrize("module", sorted(PICTURES))
def test_the_readme_panel_pictures_match_the_current_ui_files(module):
    ui = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    picture = ROOT / "docs" / "images" / PICTURES[module]
    with Image.open(picture) as image:
        recorded = image.info.get("ui-sha256")
        made_by = image.info.get("made-by", "")
    assert recorded, f"{picture.name} was not made by docs/images/render_panels.py"
    assert "render_panels.py" in made_by and f"{module}.ui" in made_by
    assert recorded == hashlib.sha256(ui.read_bytes()).hexdigest(), (
        f"{ui.name} changed after {picture.name} was rendered: run "
        f"python docs/images/render_panels.py (needs PySide6-Essentials)")
    assert f"docs/images/{PICTURES[module]}" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.skipif(importlib.util.find_spec("PySide6") is None,
                    reason="PySide6 is not installed (pip install PySide6-Essentials)")
def test_the_renderer_loads_both_ui_files(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "images" / "render_panels.py"),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for module, name in PICTURES.items():
        with Image.open(tmp_path / name) as image:
            assert image.width > 400 and image.height > 600
            assert image.info["ui-sha256"] == hashlib.sha256(
                (ROOT / module / "Resources" / "UI" / f"{module}.ui").read_bytes()).hexdigest()
