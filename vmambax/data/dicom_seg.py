"""DICOM SEG output (highdicom) for labels on a DICOM CT.

One binary segment, coded the way PACS and viewers expect for a tumour: property category
"Morphologically abnormal structure" (SCT 49755003), type "Neoplasm" (SCT 108369006), anatomic
region "Lung" (SCT 39607008), algorithm type AUTOMATIC with the vMambaX algorithm
identification. The SEG references every CT instance, so it opens on top of the CT. A label
without tumour still gives a valid SEG (all frames empty), because "nothing found" is a result.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from vmambax.data import dicom as _dicom
from vmambax.errors import DependencyError, InputError
from vmambax.utils import atomic_path

SEGMENT_LABEL = "Lung tumour"
PERSON_NAME_WARNING = r".*is unlikely to represent the intended person name"


def write_dicom_seg(label, ct_series, path, *, series_uid: str | None = None,
                    algorithm_version: str | None = None,
                    series_description: str = "vMambaX tumour segmentation"):
    """Write ``label`` (uint8 0/1 on the CT's grid) as a DICOM SEG referencing ``ct_series``.

    ``ct_series``: the CT's DICOM folder or a ``SeriesInfo``. Returns the written path.
    """
    try:
        import highdicom as hd
        import pydicom
        from pydicom.sr.codedict import codes
    except ImportError as exc:  # pragma: no cover - highdicom is a base dependency
        raise DependencyError("Writing DICOM SEG needs highdicom: pip install highdicom") from exc
    import SimpleITK as sitk

    from vmambax import __version__

    series = (ct_series if isinstance(ct_series, _dicom.SeriesInfo)
              else _dicom.pick_series(ct_series, series_uid, "CT"))
    datasets = []
    for f in series.files:
        try:
            datasets.append(pydicom.dcmread(f, stop_before_pixels=True))  # headers suffice
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"Cannot read the CT DICOM file {f}: {exc}") from None
    first = datasets[0]
    size = label.GetSize()
    if (int(first.Columns), int(first.Rows)) != tuple(size[:2]) or len(datasets) != size[2]:
        raise InputError(
            f"The label ({'x'.join(map(str, size))}) does not match the CT series "
            f"({first.Columns}x{first.Rows}x{len(datasets)}) it should be written on; segment the "
            "CT that was loaded from this DICOM folder.")
    # Map each CT file to its slice of the label through its position, so the frame order
    # cannot be wrong whatever order the files were listed in.
    tags = [{"ImagePositionPatient": ds.ImagePositionPatient} for ds in datasets]
    indices = _dicom.slice_index_of_files(label, tags)
    array = sitk.GetArrayViewFromImage(label)
    frames = np.stack([array[k] for k in indices]).astype(bool)

    algorithm = hd.AlgorithmIdentificationSequence(
        name="vMambaX", family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version or __version__)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Lung])
    try:
        with warnings.catch_warnings():
            # highdicom checks the CT's PatientName and warns about a single-component name
            # ("STS_001"): common in anonymised data, the SEG copies it as it is, and the
            # warning (twice, even with -q) says nothing the user can act on.
            warnings.filterwarnings("ignore", message=PERSON_NAME_WARNING, category=UserWarning)
            seg = hd.seg.Segmentation(
                source_images=datasets, pixel_array=frames,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[description], series_instance_uid=hd.UID(),
                series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="VMambaX",
                manufacturer_model_name="vMambaX", software_versions=__version__,
                device_serial_number="none", series_description=series_description,
                content_label="TUMOUR", content_description="Automatic lung tumour segmentation",
                omit_empty_frames=bool(frames.any()))
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"Cannot build a DICOM SEG on the CT {series}: {exc}. The CT DICOM "
                         "lacks attributes a SEG needs; write the label as .nii.gz instead.") from None
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path
