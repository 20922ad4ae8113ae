"""Static checks of the Slicer extension: .ui files vs the widget code, packaging, metadata.

These catch what otherwise only shows up when a user opens the module in Slicer: a renamed
widget (AttributeError in setup), a Lib file missing from CMakeLists (ImportError after install),
a parameter-node binding to a field that does not exist.
"""

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("VMambaXSegment", "VMambaXTrain")
QT_BUILTIN = {"QWidget", "QLabel", "QComboBox", "QPushButton", "QProgressBar", "QFormLayout",
              "QVBoxLayout", "QHBoxLayout", "QRadioButton", "QListWidget", "QSpinBox",
              "QDoubleSpinBox", "QLineEdit", "QCheckBox", "QTableView", "QGroupBox", "QPlainTextEdit",
              "QTableWidget"}


def _ui_tree(module):
    return ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()


def _widgets(module) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in _ui_tree(module).iter("widget")}


def _source(module) -> str:
    return (ROOT / module / f"{module}.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_attribute_used_in_code_exists_in_ui_file(module):
    used = set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", _source(module)))
    assert used, "the widget code should use its .ui widgets"
    missing = sorted(used - set(_widgets(module)))
    assert not missing, f"{module}.py uses widgets that {module}.ui does not define: {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_ui_widget_names_unique_and_custom_classes_declared(module):
    tree = _ui_tree(module)
    names = [w.get("name") for w in tree.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names in the .ui file"
    declared = {c.findtext("class") for c in tree.iter("customwidget")}
    used = set(_widgets(module).values())
    undeclared = sorted(c for c in used - declared - QT_BUILTIN)
    assert not undeclared, f"custom widget classes not declared in <customwidgets>: {undeclared}"
    # Slots wired in the .ui file must target existing widgets.
    for connection in tree.iter("connection"):
        assert connection.findtext("receiver") in names
        assert connection.findtext("sender") in names


def _parameter_fields(module) -> set[str]:
    tree = ast.parse(_source(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class")


@pytest.mark.parametrize("module", MODULES)
def test_parameter_node_bindings_name_existing_fields(module):
    fields = _parameter_fields(module)
    bound = [p.findtext("string") for p in _ui_tree(module).iter("property")
             if p.get("name") == "SlicerParameterName"]
    assert set(bound) <= fields, f"SlicerParameterName without a parameter-node field: {set(bound) - fields}"
    # Fields the code reads through the parameter node must be declared.
    read = set(re.findall(r"\bp\.([a-z]\w*)\b", _source(module)))
    methods = {"GetID", "GetName"}
    assert read - methods <= fields, f"parameter node fields used but not declared: {read - fields}"


def test_segment_parameter_node_holds_what_the_issue_requires():
    fields = _parameter_fields("VMambaXSegment")
    assert {"ctVolume", "petVolume", "model", "device", "outputSegmentation", "petUnits",
            "weightKg", "doseMBq"} <= fields


@pytest.mark.parametrize("module", MODULES)
def test_module_cmakelists_lists_every_script_and_resource(module):
    cmake = (ROOT / module / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in cmake and "WITH_GENERIC_TESTS" in cmake
    lib = ROOT / module / f"{module}Lib"
    for script in sorted(lib.glob("*.py")):
        assert f"{module}Lib/{script.name}" in cmake, f"{script.name} is not installed by CMake"
    for resource in re.findall(r"Resources/\S+", cmake):
        path = ROOT / module / resource.replace("${MODULE_NAME}", module)
        assert path.is_file(), f"CMake lists a missing resource {path}"


def test_top_level_cmake_has_metadata_modules_and_core_package():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', cmake), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in cmake
    for module in MODULES:
        assert f"add_subdirectory({module})" in cmake
    # The vmambax package and the model registry are installed next to the modules.
    assert "vmambax/*.py" in cmake and "Resources/Models" in cmake
    assert "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in cmake
    # Screenshot and icon URLs point at files that exist in this repository.
    for url in re.findall(r"https://raw\.githubusercontent\.com/\S+?/main/(\S+?\.png)", cmake):
        assert (ROOT / url).is_file(), url


def test_extension_catalog_entry():
    entry = json.loads((ROOT / "VMambaX.json").read_text(encoding="utf-8"))
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["category"] == "Segmentation" and entry["scm_url"].startswith("https://")
    assert entry["build_dependencies"] == ["PyTorch"]
    # VMambaX does not load DICOM data, so it carries no DICOM support rule (issue 11.13).
    assert "dicom_support_rule" not in entry


@pytest.mark.parametrize("path", ["Resources/Icons/VMambaX.png",
                                  "VMambaXSegment/Resources/Icons/VMambaXSegment.png",
                                  "VMambaXTrain/Resources/Icons/VMambaXTrain.png"])
def test_icons_are_128px(path):
    with Image.open(ROOT / path) as image:
        assert image.size == (128, 128)


@pytest.mark.parametrize("module", MODULES)
def test_module_file_follows_slicer_conventions(module):
    tree = ast.parse(_source(module))
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    # Slicer finds the module, widget, logic and test classes by these names.
    assert {module, f"{module}Widget", f"{module}Logic", f"{module}Test"} <= classes
    # The logic must not need Qt: the Lib (imported by tests under slicer-core) never imports qt.
    for lib_file in (ROOT / module / f"{module}Lib").glob("*.py"):
        text = lib_file.read_text(encoding="utf-8")
        assert not re.search(r"^\s*import (qt|ctk)\b", text, re.M), lib_file.name
        assert "slicer.mrmlScene" not in text, f"{lib_file.name} must take the scene from nodes"


def _imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_the_other_modules_lib(module):
    """Shared Slicer glue lives in VMambaXCommon; a module never reaches into the other's Lib."""
    other = next(m for m in MODULES if m != module)
    files = [ROOT / module / f"{module}.py", *sorted((ROOT / module / f"{module}Lib").glob("*.py"))]
    for path in files:
        assert f"{other}Lib" not in _imported_modules(path), f"{path.name} imports {other}Lib"


def test_shared_glue_is_qt_free_and_installed():
    common = ROOT / "VMambaXCommon"
    for name in ("mrml_sitk", "pet", "devices", "install", "dialogs", "testing"):
        path = common / f"{name}.py"
        assert path.is_file(), f"VMambaXCommon/{name}.py is missing"
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^import (qt|ctk)\b", text, re.M), path.name  # only lazily inside Slicer
        assert "slicer.mrmlScene" not in text or name == "dialogs", path.name
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "VMambaXCommon/*.py" in cmake


def _within_ranges(module) -> dict[str, tuple[float, float]]:
    """``parameter -> (minimum, maximum)`` of the parameter node's ``WithinRange`` fields."""
    ranges = {}
    for node in ast.walk(ast.parse(_source(module))):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            for call in ast.walk(node.annotation):
                if isinstance(call, ast.Call) and ast.unparse(call.func) == "WithinRange":
                    ranges[node.target.id] = tuple(float(ast.literal_eval(a)) for a in call.args)
    return ranges


@pytest.mark.parametrize("module", MODULES)
def test_spin_box_ranges_agree_with_the_parameter_nodes_within_range(module):
    ranges = _within_ranges(module)
    checked = 0
    for widget in _ui_tree(module).iter("widget"):
        props = {p.get("name"): p.find("*").text for p in widget.findall("property")
                 if p.find("*") is not None}
        name = props.get("SlicerParameterName")
        if name not in ranges:
            continue
        default_max = 99 if widget.get("class") == "QSpinBox" else 99.99  # Qt's defaults
        shown = (float(props.get("minimum", 0)), float(props.get("maximum", default_max)))
        assert shown == ranges[name], f"{widget.get('name')} allows {shown}, {name} {ranges[name]}"
        checked += 1
    assert checked == len(ranges), "a WithinRange parameter without its spin box"
