"""Exact conversion between MRML volume nodes and SimpleITK images (both directions).

MRML stores a volume's geometry as an IJK-to-RAS matrix; SimpleITK as origin, spacing and a
direction matrix in LPS. The two differ by a flip of the first two world axes:
``RAS = F @ LPS`` with ``F = diag(-1, -1, 1)``, so ``IJKToRAS[:3, :3] = F @ D @ diag(spacing)``
and ``IJKToRAS[:3, 3] = F @ origin``. Voxel arrays are shared as ``(z, y, x)`` numpy arrays
(VTK's x-fastest memory order equals numpy C order of ``(z, y, x)``).

``sitkUtils`` needs ``slicer.app``; this module only uses MRML and VTK, so it works in a full
Slicer and in ``slicer-core`` (tests) alike. It must run on the main thread (VTK objects).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from vmambax.errors import InputError

_FLIP = np.diag([-1.0, -1.0, 1.0])


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(node, world: bool = True) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix; with ``world`` its (linear) parent transforms applied.

    A volume under a non-linear transform has no voxel grid in world space: the user has to
    harden the transform first, so we say so instead of silently ignoring it.
    """
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk = _matrix_to_numpy(matrix)
    parent = node.GetParentTransformNode() if world else None
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError(
                f"volume {node.GetName()!r} is under the non-linear transform "
                f"{parent.GetName()!r}; harden the transform (Data module, right-click > Harden "
                f"transform) and try again")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        ijk = _matrix_to_numpy(to_world) @ ijk
    return ijk


def geometry_from_ijk_to_ras(matrix: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """``(origin, spacing, direction)`` in SimpleITK's LPS convention from an IJK-to-RAS matrix."""
    linear = _FLIP @ matrix[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise InputError("the volume has a zero voxel spacing; fix its geometry (Volumes module)")
    direction = linear / spacing
    origin = _FLIP @ matrix[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The IJK-to-RAS matrix of a SimpleITK image's voxel grid."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _FLIP @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = _FLIP @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def array_from_volume_node(node) -> np.ndarray:
    """A copy of the node's voxels as a ``(z, y, x)`` array (scalar volumes only)."""
    image_data = node.GetImageData() if node is not None else None
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        name = node.GetName() if node is not None else "(none)"
        raise InputError(f"volume {name!r} has no voxel data; load the image again")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume {node.GetName()!r} has {image_data.GetNumberOfScalarComponents()} "
                         f"components per voxel; VMambaX needs a scalar (grey-value) CT and PET")
    dims = image_data.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    return np.array(scalars.reshape(dims[2], dims[1], dims[0]), copy=True)


def volume_node_to_image(node, world: bool = True) -> sitk.Image:
    """The volume node as a SimpleITK image with identical voxels and physical geometry."""
    array = array_from_volume_node(node)
    origin, spacing, direction = geometry_from_ijk_to_ras(ijk_to_ras(node, world=world))
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _vtk_image_from_array(array: np.ndarray, image_data=None):
    array = np.ascontiguousarray(array)
    if array.ndim != 3:
        raise InputError(f"expected a 3D (z, y, x) array, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:  # VTK "long long" volumes do not render in Slicer
        array = array.astype(np.int32)
    image_data = image_data if image_data is not None else vtk.vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image_data.SetOrigin(0, 0, 0)
    image_data.SetSpacing(1, 1, 1)
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                           array_type=numpy_support.get_vtk_array_type(array.dtype))
    image_data.GetPointData().SetScalars(vtk_array)
    return image_data


def update_volume_node_from_image(node, image: sitk.Image) -> None:
    """Set the node's voxels and geometry from a SimpleITK image (the node's own frame)."""
    image_data = _vtk_image_from_array(sitk.GetArrayFromImage(image))
    node.SetIJKToRASMatrix(_numpy_to_matrix(ijk_to_ras_from_image(image)))
    node.SetAndObserveImageData(image_data)


def add_volume_node_from_image(scene, image: sitk.Image, name: str,
                               class_name: str = "vtkMRMLScalarVolumeNode"):
    """Create a volume node (with display nodes) in ``scene`` from a SimpleITK image."""
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def oriented_image_from_array(array: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """A ``vtkOrientedImageData`` (what segments are made of) from a ``(z, y, x)`` array."""
    import slicer

    oriented = slicer.vtkOrientedImageData()
    _vtk_image_from_array(array, oriented)
    oriented.SetImageToWorldMatrix(_numpy_to_matrix(ijk_to_ras_matrix))
    return oriented


def _segment_labelmap(segmentation_node, segment_id: str, reference):
    """(labelmap, label value) of one segment; converted onto ``reference``'s grid when the
    segmentation has no binary labelmap yet.

    Segmentations made from contours (SlicerRT's RTSTRUCT import, models, STL) hold only a
    planar-contour or closed-surface representation until something converts them. We convert a
    copy of the one segment, with the CT as the conversion's reference geometry (the finest grid
    the label is needed on), so the user's segmentation node is not changed.
    """
    import slicer

    converter = slicer.vtkSegmentationConverter
    binary = converter.GetBinaryLabelmapRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise InputError(f"{segmentation_node.GetName()!r} has no segment {segment_id!r}; pick "
                         f"the tumour segment again")
    labelmap = slicer.vtkOrientedImageData()
    if segmentation.ContainsRepresentation(binary):
        if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
                segmentation_node, segment_id, labelmap, False):
            raise InputError(f"segment {segment.GetName()!r} of {segmentation_node.GetName()!r} "
                             f"has no binary labelmap; open it in Segment Editor once to create one")
        return labelmap, segment.GetLabelValue()
    source = segmentation.GetSourceRepresentationName()
    copy = slicer.vtkSegmentation()
    copy.SetSourceRepresentationName(source)
    if not copy.CopySegmentFromSegmentation(segmentation, segment_id):
        raise InputError(f"segment {segment.GetName()!r} of {segmentation_node.GetName()!r} "
                         f"could not be read (source representation {source!r})")
    copy.SetConversionParameter(converter.GetReferenceImageGeometryParameterName(),
                                converter.SerializeImageGeometry(reference))
    if not copy.CreateRepresentation(binary) or not copy.GetSegment(segment_id).GetRepresentation(binary):
        raise InputError(f"segment {segment.GetName()!r} of {segmentation_node.GetName()!r} is "
                         f"stored as {source!r} and cannot be converted to a labelmap here; in "
                         f"the Segmentations module, create its 'Binary labelmap' representation "
                         f"(planar contours from an RTSTRUCT need the SlicerRT extension)")
    converted = copy.GetSegment(segment_id)
    labelmap.DeepCopy(converted.GetRepresentation(binary))
    return labelmap, converted.GetLabelValue()


def segment_to_array(segmentation_node, segment_id: str, reference_node) -> np.ndarray:
    """A segment's binary labelmap resampled onto ``reference_node``'s voxel grid, ``(z, y, x)``.

    The segment keeps its own geometry in the segmentation (it may be cropped to its extent or
    on another grid); nearest-neighbour resampling to the reference grid gives a mask that lines
    up voxel for voxel with the reference volume. A segment stored only as contours or a closed
    surface (an RTSTRUCT imported with SlicerRT) is converted onto the reference grid first.
    """
    import slicer

    reference = oriented_image_from_array(
        np.zeros(array_from_volume_node(reference_node).shape, np.uint8),
        ijk_to_ras(reference_node, world=False))
    labelmap, label_value = _segment_labelmap(segmentation_node, segment_id, reference)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, False):
        raise InputError(f"segment {segment_id!r} does not overlap {reference_node.GetName()!r}; "
                         f"check that the segmentation belongs to this CT")
    dims = resampled.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars())
    # Shared (multi-segment) labelmaps store several segments as different label values.
    return (scalars.reshape(dims[2], dims[1], dims[0]) == label_value).astype(np.uint8)
