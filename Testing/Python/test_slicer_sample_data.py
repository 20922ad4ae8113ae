"""The "VMambaX PET/CT phantom" Sample Data entry: what its loader puts into a real MRML scene
(slicer-core), that VMambaX Segment takes those nodes as they are, and that the module
registers the entry with Slicer's Sample Data module after start-up.

The button itself (``loadPhantomSample`` in VMambaXSegment.py, which needs slicer.util and the
Sample Data module's Qt panel) only runs inside Slicer.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # slicer-core
from PIL import Image

from vmambax.phantom import make_phantom
from vmambax.data.suv import check_suv_plausible
from VMambaXCommon import sample_data
from VMambaXCommon.mrml_sitk import volume_node_to_image
from VMambaXSegmentLib.logic import VMambaXSegmentLogic

ROOT = Path(__file__).resolve().parents[2]
SIZE, N_SLICES = 128, 12


@pytest.fixture(scope="module")
def sample_scene():
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colours = slicer.vtkSlicerColorLogic()  # the colour tables a running Slicer has
    colours.SetMRMLApplicationLogic(app_logic)
    colours.SetMRMLScene(scene)
    ct, pet = sample_data.add_phantom_sample(scene, size=SIZE, n_slices=N_SLICES)
    yield scene, ct, pet, make_phantom(seed=sample_data.SEED, size=SIZE, n_slices=N_SLICES)
    del colours, app_logic


def _same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_sample_adds_a_ct_in_hu_and_a_pet_in_suv_on_their_own_grids(sample_scene):
    scene, ct, pet, phantom = sample_scene
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    ct_image, pet_image = volume_node_to_image(ct), volume_node_to_image(pet)
    _same_grid(ct_image, phantom.ct)
    _same_grid(pet_image, phantom.pet_suv)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct_image),
                                  sitk.GetArrayFromImage(phantom.ct))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(pet_image),
                                  sitk.GetArrayFromImage(phantom.pet_suv))
    hu = sitk.GetArrayViewFromImage(ct_image)
    assert hu.min() <= -950 and hu.max() >= 300  # air and bone: Hounsfield units
    check_suv_plausible(sitk.GetArrayViewFromImage(pet_image), what="the sample PET")
    # A thorax, not a toy: a CT reconstruction field of view of 35-55 cm, 15-30 cm long, and
    # the PET covering the CT's axial range.
    fov = np.array(ct_image.GetSize()) * np.array(ct_image.GetSpacing())
    assert 350 <= fov[0] <= 550 and 150 <= fov[2] <= 300
    bounds_ct, bounds_pet = [0.0] * 6, [0.0] * 6
    ct.GetRASBounds(bounds_ct)
    pet.GetRASBounds(bounds_pet)
    assert bounds_pet[4] <= bounds_ct[4] + 1 and bounds_pet[5] >= bounds_ct[5] - 1


def test_pet_is_labelled_suv_as_petdicomextension_labels_it(sample_scene):
    _, _, pet, _ = sample_scene
    units, quantity = pet.GetVoxelValueUnits(), pet.GetVoxelValueQuantity()
    assert (units.GetCodeValue(), units.GetCodingSchemeDesignator()) == ("{SUVbw}g/ml", "UCUM")
    assert (quantity.GetCodeValue(), quantity.GetCodingSchemeDesignator()) == ("126400", "DCM")


def test_names_modalities_and_display_let_a_new_user_press_segment(sample_scene):
    scene, ct, pet, _ = sample_scene
    # The panel's auto-selection: modality first, then whole-word names.
    assert re.search(r"\bCT\b", ct.GetName()) and not re.search(r"\bPET\b", ct.GetName())
    assert re.search(r"\bPET\b", pet.GetName()) and not re.search(r"\bCT\b", pet.GetName())
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    modality = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    ct_item, pet_item = sh.GetItemByDataNode(ct), sh.GetItemByDataNode(pet)
    assert sh.GetItemAttribute(ct_item, modality) == "CT"
    assert sh.GetItemAttribute(pet_item, modality) == "PT"
    study = sh.GetItemParent(ct_item)
    assert study == sh.GetItemParent(pet_item) and sh.GetItemLevel(study) == "Study"
    assert "synthetic" in sh.GetItemName(sh.GetItemParent(study))
    assert (ct.GetDisplayNode().GetWindow(), ct.GetDisplayNode().GetLevel()) == (400.0, 40.0)
    assert pet.GetDisplayNode().GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat"


def test_segment_logic_takes_the_sample_as_it_is(sample_scene):
    """What Segment Tumor reads first: the PET is used as SUV unchanged, the CT as the grid."""
    _, ct, pet, phantom = sample_scene
    inputs = VMambaXSegmentLogic().prepare(ct, pet)  # petUnits="auto", as the panel starts
    np.testing.assert_array_equal(sitk.GetArrayFromImage(inputs.pet_suv),
                                  sitk.GetArrayFromImage(phantom.pet_suv))
    _same_grid(inputs.ct, phantom.ct)
    assert "SUV" in inputs.pet_conversion


def test_source_arguments_fit_sampledata_and_ship_a_thumbnail():
    def downloader(source):
        return source

    icon = ROOT / "VMambaXSegment" / "Resources" / "Icons" / f"{sample_data.SAMPLE_ID}.png"
    args = sample_data.sample_source_arguments(downloader, str(icon))
    assert args["customDownloader"] is downloader and args["category"] == "VMambaX"
    # SampleDataSource requires equally long uris / fileNames / nodeNames.
    assert len(args["uris"]) == len(args["fileNames"]) == len(args["nodeNames"]) == 2
    assert args["nodeNames"] == [sample_data.CT_NAME, sample_data.PET_NAME]
    assert not any(u.startswith(("http:", "https:", "file:")) for u in args["uris"])
    with Image.open(args["thumbnailFileName"]) as image:
        assert image.size == (128, 128)
    cmake = (ROOT / "VMambaXSegment" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f"Resources/Icons/{sample_data.SAMPLE_ID}.png" in cmake


def test_the_sample_data_button_reads_as_words():
    """SampleData writes sampleName under the button (its sampleDescription defaults to it):
    words a user reads, not the identifier "VMambaXPETCTPhantom" (issue 17.4)."""
    args = sample_data.sample_source_arguments(lambda source: source)
    name = args["sampleName"]
    assert name == "VMambaX PET/CT phantom" and " " in name
    assert "VMambaXPETCTPhantom" not in name
    # File names keep an identifier without spaces or slashes.
    assert all("/" not in f and " " not in f for f in args["fileNames"])


def _function(tree, name):
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def _calls(node) -> list[str]:
    return [ast.unparse(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)]


def test_module_registers_the_sample_after_startup():
    tree = ast.parse((ROOT / "VMambaXSegment" / "VMambaXSegment.py").read_text(encoding="utf-8"))
    module_class = next(n for n in tree.body
                        if isinstance(n, ast.ClassDef) and n.name == "VMambaXSegment")
    init = _function(module_class, "__init__")
    connects = [c for c in ast.walk(init) if isinstance(c, ast.Call)
                and ast.unparse(c.func) == "slicer.app.connect"]
    assert [ast.unparse(a) for c in connects for a in c.args] == ["'startupCompleted()'",
                                                                  "registerSampleData"]
    register = _function(tree, "registerSampleData")
    assert "SampleData.SampleDataLogic.registerCustomSampleDataSource" in _calls(register)
    assert "sample_source_arguments" in _calls(register)
    assert "loadPhantomSample" in ast.unparse(register)
    loader = _function(tree, "loadPhantomSample")
    assert "add_phantom_sample" in _calls(loader) and "slicer.mrmlScene" in ast.unparse(loader)
    # Shown as a finished run shows PET over CT (one helper: colours, opacity).
    assert "show_pet_over_ct" in _calls(loader)
    assert "foregroundOpacity" not in ast.unparse(loader)


def test_sample_pet_gets_pet_heat_colours_in_a_bare_scene_too():
    scene = slicer.vtkMRMLScene()  # no Colors module
    _ct, pet = sample_data.add_phantom_sample(scene, size=64, n_slices=4)
    colours = scene.GetNodeByID(pet.GetDisplayNode().GetColorNodeID())
    assert colours is not None and colours.GetName() == "PET-Heat"


def test_sample_needs_none_of_the_packages_installed_on_first_use():
    """The button works in a fresh Slicer (numpy, scipy, SimpleITK ship with it): it imports
    neither torch nor the other packages that VMambaX installs on first Segment Tumor."""
    code = ("import sys; from VMambaXCommon.sample_data import add_phantom_sample; import slicer; "
            "add_phantom_sample(slicer.vtkMRMLScene(), size=64, n_slices=4); "
            "print(sorted(m for m in ('torch', 'pydicom', 'highdicom', 'PIL', 'matplotlib', "
            "'pytorch_lightning', 'requests', 'tqdm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
