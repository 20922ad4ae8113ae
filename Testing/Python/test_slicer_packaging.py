"""What the Slicer Extensions Index and a user see of the package: the catalog entry against
Slicer's schema, the licence, the contributors, the screenshots and the supported versions.

The catalog schema is read from ../shared/reference/slicer/ (Slicer's own file, not copied here);
the test skips, naming that folder, where it is absent.
"""

import ast
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
from PIL import Image

from vmambax import deps
from vmambax.errors import DependencyError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT.parent / "shared" / "reference" / "slicer"
CATALOG_SCHEMA = SCHEMA_DIR / "slicer-extension-catalog-entry-schema-v1.0.2.json"


def _cmake_var(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text("utf-8"))
    assert match, f"CMakeLists.txt does not set {name}"
    return match.group(1)


def _pyproject(key: str) -> str:
    """A top-level string of [project] in pyproject.toml (no tomllib: it is Python 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8").split("\n[", 2)[1]
    match = re.search(rf'^{re.escape(key)} = "([^"]*)"$', text, re.M)
    assert match, f"pyproject.toml [project] has no {key}"
    return match.group(1)


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


# --- 13: catalog entry ----------------------------------------------------------------------

def test_catalog_entry_validates_against_slicer_schema():
    if not CATALOG_SCHEMA.is_file():
        pytest.skip(f"Slicer's catalog schema is not in {SCHEMA_DIR} (shared reference folder)")
    schema = json.loads(CATALOG_SCHEMA.read_text(encoding="utf-8"))
    entry = json.loads((ROOT / "VMambaX.json").read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(entry), key=lambda e: list(e.path))
    assert not errors, "VMambaX.json breaks Slicer's catalog schema:\n" + "\n".join(
        f"- {'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors)
    # The entry names the very schema version it is checked against.
    assert entry["$schema"] == schema["$id"]


def test_catalog_entry_has_no_dicom_support_rule():
    """dicom_support_rule is for extensions that load DICOM data; VMambaX does not."""
    entry = json.loads((ROOT / "VMambaX.json").read_text(encoding="utf-8"))
    assert "dicom_support_rule" not in entry
    assert "dicom_support_rule" not in _readme() and "DICOM support rule" not in _readme()


# --- 14: licence ----------------------------------------------------------------------------

def test_license_file_is_the_full_apache_2_text_and_named_in_readme():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert _pyproject("license") == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    # All nine sections and the end marker: the whole licence, not a summary.
    for section in ("1. Definitions.", "2. Grant of Copyright License.",
                    "3. Grant of Patent License.", "4. Redistribution.",
                    "5. Submission of Contributions.", "6. Trademarks.",
                    "7. Disclaimer of Warranty.", "8. Limitation of Liability.",
                    "9. Accepting Warranty or Additional Liability.",
                    "END OF TERMS AND CONDITIONS"):
        assert section in text, section
    assert len(text.split()) > 1500
    assert "[LICENSE](LICENSE)" in _readme() and "Apache-2.0" in _readme()


# --- 15: contributors and screenshots -------------------------------------------------------

CONTRIBUTOR = re.compile(r"^[^(),]+ \([^(),]+\)$")


def test_contributors_in_name_organization_form_everywhere():
    contributors = [c.strip() for c in _cmake_var("EXTENSION_CONTRIBUTORS").split(",")]
    assert contributors and all(CONTRIBUTOR.match(c) for c in contributors), contributors
    for module in ("VMambaXSegment", "VMambaXTrain"):
        source = (ROOT / module / f"{module}.py").read_text(encoding="utf-8")
        match = re.search(r"self\.parent\.contributors = (\[[^\]]*\])", source)
        assert match and eval(match.group(1)) == contributors, module  # noqa: S307 - a literal


def test_screenshot_urls_are_renderings_not_drawings():
    urls = _cmake_var("EXTENSION_SCREENSHOTURLS").split()
    assert len(urls) >= 2
    render_script = (ROOT / "docs" / "images" / "render_screenshots.py").read_text("utf-8")
    for url in urls:
        path = re.fullmatch(
            r"https://raw\.githubusercontent\.com/vmambax/SlicerVMambaX/main/(.+\.png)", url)
        assert path, url
        name = Path(path.group(1)).name
        # Drawings of the .ui files are never screenshots.
        assert "panel" not in name, f"{name} is a drawing of a .ui file, not a screenshot"
        assert name in render_script, f"{name} is not made by docs/images/render_screenshots.py"
        with Image.open(ROOT / path.group(1)) as image:
            assert min(image.size) >= 400
            # A rendered slice view has many grey levels and colours, not a flat drawing.
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is None or len(colours) > 2000, f"{name} looks like a drawing"


# --- 16: supported Slicer and Python versions -----------------------------------------------

def test_supported_versions_agree_everywhere():
    py = ".".join(map(str, deps.MINIMUM_PYTHON))
    slicer = deps.MINIMUM_SLICER
    assert _pyproject("requires-python") == f">={py}"
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert _cmake_var("VMAMBAX_MINIMUM_SLICER_VERSION") == slicer
    assert "find_package(Slicer ${VMAMBAX_MINIMUM_SLICER_VERSION} REQUIRED)" in cmake
    readme = _readme()
    # Stated once, in the Installing section, and no other Slicer version claimed.
    assert readme.count(f"Slicer {slicer} or later") == 1
    assert f"Python {py} or later" in readme
    claimed = set(re.findall(r"Slicer \(?(\d+\.\d+) or later", readme))
    assert claimed == {slicer}, claimed
    # The first Slicer release named ships a Python that satisfies requires-python.
    assert deps.SLICER_PYTHON[slicer] >= deps.MINIMUM_PYTHON
    assert all(python < deps.MINIMUM_PYTHON for version, python in deps.SLICER_PYTHON.items()
               if tuple(map(int, version.split("."))) < tuple(map(int, slicer.split("."))))


def test_code_parses_with_the_oldest_supported_python_grammar():
    """No syntax newer than MINIMUM_PYTHON (checked with that grammar; stdlib use is not)."""
    files = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts]
    assert len(files) > 50
    for path in files:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path),
                  feature_version=deps.MINIMUM_PYTHON)


def test_dependency_check_refuses_an_old_python_and_names_the_slicer_version(monkeypatch):
    deps.require_supported_python(sys.version_info)  # this interpreter is supported
    with pytest.raises(DependencyError) as err:
        deps.require_supported_python((3, 9, 10))
    message = str(err.value)
    assert "3.9.10" in message and f"Slicer {deps.MINIMUM_SLICER} or later" in message
    # What the modules' first-use check runs, as in Slicer 5.8 (Python 3.9).
    monkeypatch.setattr(deps, "sys", SimpleNamespace(version_info=(3, 9, 10),
                                                     executable=sys.executable))
    with pytest.raises(DependencyError, match=f"Slicer {deps.MINIMUM_SLICER} or later"):
        deps.check("segment", cuda=False)
