"""Segmentations made from contours (SlicerRT's RTSTRUCT import: closed surface only, no binary
labelmap) are accepted as training labels (issue 12.1), against real MRML (slicer-core)."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from VMambaXCommon import mrml_sitk
from VMambaXCommon.testing import add_phantom_case
from VMambaXTrainLib.logic import TrainingCase, VMambaXTrainLogic

BINARY = "Binary labelmap"


# -- contours as SlicerRT makes them (only these tests need them) ---------------------------------
def register_segmentation_converters() -> None:
    """Register the closed surface <-> binary labelmap conversion rules.

    A running 3D Slicer registers them at start-up (Segmentations module; SlicerRT adds planar
    contours); bare slicer-core (the tests) has none, so contour-based segmentations could not
    be converted there. Registering twice is avoided.
    """
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    have = {type(rule).__name__ for rule in factory.GetConverterRules()}
    for name in ("vtkBinaryLabelmapToClosedSurfaceConversionRule",
                 "vtkClosedSurfaceToBinaryLabelmapConversionRule"):
        if name not in have:
            factory.RegisterConverterRule(getattr(slicer, name)())


def add_closed_surface_segmentation(scene, polydata, name: str = "GTV (contours)",
                                    segment_name: str = "GTV"):
    """A segmentation whose only representation is a closed surface, as SlicerRT makes from an
    RTSTRUCT (no binary labelmap, no reference geometry)."""
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.SetSourceRepresentationToClosedSurface()
    segment_id = seg.AddSegmentFromClosedSurfaceRepresentation(polydata, segment_name, [1.0, 0.0, 0.0])
    return seg, segment_id


def label_surface(label_array, ijk_to_ras_matrix):
    """The closed surface (vtkPolyData, RAS) of a 0/1 ``(z, y, x)`` label, made by Slicer's own
    labelmap-to-surface conversion (what contours of a drawn tumour look like)."""
    import slicer

    register_segmentation_converters()
    temp = slicer.vtkSegmentation()
    temp.SetSourceRepresentationName(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    segment_id = temp.AddEmptySegment("tumour")
    temp.GetSegment(segment_id).AddRepresentation(
        slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
        mrml_sitk.oriented_image_from_array(np.asarray(label_array, np.uint8), ijk_to_ras_matrix))
    temp.SetConversionParameter("Smoothing factor", "0")
    if not temp.CreateRepresentation(slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()):
        raise RuntimeError("labelmap to closed surface conversion failed")
    import vtk

    surface = vtk.vtkPolyData()
    surface.DeepCopy(temp.GetSegment(segment_id).GetRepresentation(
        slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()))
    return surface

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module", autouse=True)
def _converters():
    register_segmentation_converters()  # a running Slicer has them; bare slicer-core does not


def _dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_closed_surface_sphere_becomes_a_label_on_the_ct_grid_without_changing_the_node():
    scene = slicer.vtkMRMLScene()
    ct, _pet, _phantom, _ = add_phantom_case(scene, seed=3, size=64, n_slices=12)
    ijk_to_ras = mrml_sitk.ijk_to_ras(ct)
    centre_ijk = np.array([30.0, 34.0, 6.0])
    centre = (ijk_to_ras @ np.r_[centre_ijk, 1.0])[:3]
    radius = 25.0  # mm
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*centre)
    sphere.SetRadius(radius)
    sphere.SetThetaResolution(64)
    sphere.SetPhiResolution(64)
    sphere.Update()
    seg, segment_id = add_closed_surface_segmentation(scene, sphere.GetOutput())
    assert not seg.GetSegmentation().ContainsRepresentation(BINARY)

    mask = mrml_sitk.segment_to_array(seg, segment_id, ct)

    assert mask.shape == mrml_sitk.array_from_volume_node(ct).shape
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    volume = mask.sum() * np.prod(spacing)
    assert volume == pytest.approx(4 / 3 * np.pi * radius ** 3, rel=0.15)
    zyx = np.argwhere(mask).mean(axis=0)
    np.testing.assert_allclose(zyx[::-1], centre_ijk, atol=0.6)
    # The user's segmentation is left as it was: still contours/surface only.
    assert not seg.GetSegmentation().ContainsRepresentation(BINARY)


def test_contour_segmentations_export_as_training_labels(tmp_path):
    scene = slicer.vtkMRMLScene()
    cases, truths = [], []
    for seed in (21, 22):
        ct, pet, phantom, _ = add_phantom_case(scene, seed=seed, size=64, n_slices=8,
                                               prefix=f"P{seed} ")
        truth = sitk.GetArrayFromImage(phantom.label)
        surface = label_surface(truth, mrml_sitk.ijk_to_ras(ct, world=False))
        seg, _ = add_closed_surface_segmentation(scene, surface, name=f"P{seed} RTSTRUCT")
        cases.append(TrainingCase(ct, pet, seg))
        truths.append(truth)

    out = VMambaXTrainLogic().exportCases(cases, tmp_path / "cases")

    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2
    for folder, truth in zip(folders, truths):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "label.nii.gz")))
        assert label.shape == truth.shape
        # A surface through the voxel boundaries gives back (nearly) the voxels it was made of.
        assert _dice(label, truth) > 0.9


def test_contours_are_converted_on_the_ct_grid_not_the_segmentations_reference_grid():
    # SlicerRT sets the segmentation's reference geometry to the series the RTSTRUCT refers to
    # (often a coarser PET). Converting there and resampling to the CT loses the outline; the
    # label must be made on the CT grid itself (this failed before: Dice 0.73).
    scene = slicer.vtkMRMLScene()
    ct, _pet, phantom, _ = add_phantom_case(scene, seed=21, size=128, n_slices=8)
    truth = sitk.GetArrayFromImage(phantom.label)
    size, spacing = phantom.ct.GetSize(), phantom.ct.GetSpacing()
    coarse = sitk.Resample(phantom.ct, [size[0] // 3, size[1] // 3, size[2]], sitk.Transform(),
                           sitk.sitkLinear, phantom.ct.GetOrigin(),
                           [spacing[0] * 3, spacing[1] * 3, spacing[2]], phantom.ct.GetDirection())
    coarse_node = mrml_sitk.add_volume_node_from_image(scene, coarse, "coarse PET-like grid")
    surface = label_surface(truth, mrml_sitk.ijk_to_ras(ct, world=False))
    seg, segment_id = add_closed_surface_segmentation(scene, surface)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(coarse_node)

    mask = mrml_sitk.segment_to_array(seg, segment_id, ct)

    assert _dice(mask, truth) > 0.95
