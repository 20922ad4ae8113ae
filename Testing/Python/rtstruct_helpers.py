"""RTSTRUCT files for tests, written with pydicom (no vmambax code involved), and contours traced
from a label with contourpy (marching squares at 0.5, what a planning system's outline of a
voxel mask looks like)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def write_rtstruct(path, rois, frame_of_reference_uid: str, *, patient_id: str = "TEST",
                   series_uid: str | None = None) -> Path:
    """Write an RTSTRUCT. ``rois``: ``[(name, [contour (n, 3) mm array or (array, type)], ...)]``
    (ROI numbers 1, 2, ...); ``series_uid``: the image series it refers to (RT Referenced Series)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "test"
    ref = Dataset()
    ref.FrameOfReferenceUID = frame_of_reference_uid
    if series_uid:
        series, study = Dataset(), Dataset()
        series.SeriesInstanceUID = series_uid
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
        study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
        study.RTReferencedSeriesSequence = Sequence([series])
        ref.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for number, (name, contours) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_of_reference_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [255, 0, 0]
        item.ContourSequence = Sequence()
        for contour in contours:
            points, kind = contour if isinstance(contour, tuple) else (contour, "CLOSED_PLANAR")
            c = Dataset()
            c.ContourGeometricType = kind
            c.NumberOfContourPoints = len(points)
            c.ContourData = [f"{v:.6g}" for v in np.asarray(points, float).ravel()]
            item.ContourSequence.append(c)
        if not contours:
            del item.ContourSequence  # an empty structure has no contour sequence at all
        ds.ROIContourSequence.append(item)
    ds.save_as(str(path), enforce_file_format=True)
    return Path(path)


def index_to_physical(image, ijk) -> np.ndarray:
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    return np.asarray(ijk, float) @ (direction @ np.diag(image.GetSpacing())).T + np.array(image.GetOrigin())


def label_contours(label_array: np.ndarray, image) -> list[np.ndarray]:
    """Closed contours (mm) around the 1-voxels of a ``(z, y, x)`` label, per slice, holes as
    inner contours: marching squares at 0.5 on each slice (zero-padded so every line closes)."""
    import contourpy

    contours = []
    for k in range(label_array.shape[0]):
        plane = np.pad(label_array[k].astype(float), 1)
        if not plane.any():
            continue
        gen = contourpy.contour_generator(z=plane, line_type="Separate")
        for line in gen.lines(0.5):
            ij = line - 1.0  # undo the padding; contourpy gives (x = column, y = row)
            ijk = np.column_stack([ij, np.full(len(ij), float(k))])
            contours.append(index_to_physical(image, ijk))
    return contours
