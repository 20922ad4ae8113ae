"""The screenshot pipeline (docs/images/render_screenshots.py) renders real Slicer views here.

A small Sample Data phantom and its true tumour label are shown in an axial slice view built
from Slicer's slice logic and displayable managers (slicer-core, VTK offscreen). The tumour
outline must come from the Segmentations displayable manager, at the tumour, and the CT and
PET must be blended by the slice logic. Skips, saying why, where VTK cannot render offscreen.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]

_PROBE = ("import vtk; w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); w.SetSize(8, 8); "
          "w.AddRenderer(vtk.vtkRenderer()); w.Render()")


@pytest.fixture(scope="module")
def render_script():
    probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, timeout=120)
    if probe.returncode != 0:  # in a child: a VTK without any OpenGL can abort the process
        pytest.skip("VTK cannot render offscreen on this machine (no EGL/OSMesa/X display): "
                    + probe.stderr.decode(errors="replace")[-300:])
    spec = importlib.util.spec_from_file_location(
        "render_screenshots", ROOT / "docs" / "images" / "render_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered_scene(render_script):
    import slicer

    from vmambax.phantom import make_phantom
    from VMambaXCommon import sample_data
    from VMambaXCommon.mrml_sitk import ijk_to_ras, oriented_image_from_array

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colours = slicer.vtkSlicerColorLogic()
    colours.SetMRMLApplicationLogic(app_logic)
    colours.SetMRMLScene(scene)
    ct, pet = sample_data.add_phantom_sample(scene, size=128, n_slices=12)
    phantom = make_phantom(seed=sample_data.SEED, size=128, n_slices=12)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "truth")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    label = sitk.GetArrayFromImage(phantom.label).astype(np.uint8)
    segmentation.AddSegmentFromBinaryLabelmapRepresentation(
        oriented_image_from_array(label, ijk_to_ras(ct, world=False)), "tumour", [1.0, 0.0, 0.0])
    segmentation.CreateDefaultDisplayNodes()
    segmentation.GetDisplayNode().SetVisibility2DFill(False)
    segmentation.GetDisplayNode().SetSliceIntersectionThickness(3)
    # Through the largest tumour slice of the label.
    z = int(np.argmax(label.reshape(label.shape[0], -1).sum(axis=1)))
    ys, xs = np.nonzero(label[z])
    centre_lps = phantom.label.TransformContinuousIndexToPhysicalPoint(
        (float(xs.mean()), float(ys.mean()), float(z)))
    centre_ras = (-centre_lps[0], -centre_lps[1], centre_lps[2])
    view = render_script.SliceView(app_logic, scene, "Red", 320, 320)
    view.show(ct, pet, opacity=0.45, centre_ras=centre_ras)
    yield view, segmentation, centre_ras, (app_logic, colours)


def _pixels(view):
    return np.asarray(view.capture()).astype(int)


def test_slice_view_blends_ct_and_pet(rendered_scene):
    view, segmentation, _, _ = rendered_scene
    segmentation.GetDisplayNode().SetVisibility(False)
    image = _pixels(view)
    segmentation.GetDisplayNode().SetVisibility(True)
    grey = (np.abs(image[..., 0] - image[..., 2]) < 60) & (image.sum(axis=2) > 150)
    assert grey.mean() > 0.05, "no CT body in the slice view"
    assert (image[..., 0] > image[..., 2] + 40).mean() > 0.01, "no PET colours over the CT"


def test_tumour_outline_is_drawn_by_the_segmentations_manager_at_the_tumour(rendered_scene):
    view, segmentation, centre_ras, _ = rendered_scene
    with_outline = _pixels(view)
    segmentation.GetDisplayNode().SetVisibility(False)
    without = _pixels(view)
    segmentation.GetDisplayNode().SetVisibility(True)
    changed = np.abs(with_outline - without).sum(axis=2) > 60
    assert changed.sum() > 30, "the segmentation outline is not in the rendered view"
    red = with_outline[changed]
    assert np.mean((red[:, 0] > 150) & (red[:, 1] < 100) & (red[:, 2] < 100)) > 0.8
    # Where the outline is: around the tumour centre, mapped with the view's own XY-to-RAS.
    xy_to_ras = np.array([[view.node.GetXYToRAS().GetElement(r, c) for c in range(4)]
                          for r in range(4)])
    x, y = np.linalg.solve(xy_to_ras[:2, :2], np.asarray(centre_ras[:2]) - xy_to_ras[:2, 3])
    rows, cols = np.nonzero(changed)
    height = changed.shape[0]
    assert abs(cols.mean() - x) < 25 and abs((height - 1 - rows.mean()) - y) < 25
