"""Synthetic PET/CT scenes for the modules' self-tests (in Slicer) and the slicer-core tests."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from VMambaXCommon.mrml_sitk import add_volume_node_from_image, ijk_to_ras, oriented_image_from_array


def add_phantom_case(scene, seed: int = 1, size: int = 128, n_slices: int | None = 24,
                     pet_units: str = "suv", segmentation: bool = False, prefix: str = ""):
    """Add a phantom patient (``vmambax.phantom``) to ``scene``.

    Returns ``(ct_node, pet_node, phantom, segmentation_node or None)``; the PET is in SUV or,
    with ``pet_units="bqml"``, in Bq/mL (then its SUV factor is ``phantom.suv_factor``). With
    ``segmentation`` the true tumour label is added as a segmentation with a "tumour" segment.
    """
    from vmambax.phantom import make_phantom

    phantom = make_phantom(seed=seed, size=size, n_slices=n_slices)
    ct = add_volume_node_from_image(scene, phantom.ct, f"{prefix}CT")
    pet_image = phantom.pet_suv if pet_units == "suv" else phantom.pet_bqml
    pet = add_volume_node_from_image(scene, pet_image, f"{prefix}PET")
    seg = None
    if segmentation:
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{prefix}tumour segmentation")
        seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
        label = sitk.GetArrayFromImage(phantom.label).astype(np.uint8)
        seg.AddSegmentFromBinaryLabelmapRepresentation(
            oriented_image_from_array(label, ijk_to_ras(ct, world=False)), "tumour", [1.0, 0.0, 0.0])
    return ct, pet, phantom, seg


def model_unavailable(extra: tuple[str, ...] = ()) -> str | None:
    """Why the self-test parts that run the network cannot run here (None: they can).

    The Slicer extension factory runs the modules' self-tests without PyTorch (it is installed
    on first use); those parts are then skipped with this message and the logic parts run.
    ``extra``: further modules they need (e.g. ``lightning`` for training).
    """
    import importlib

    missing = []
    for name in ("torch",) + tuple(extra):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - absent, blocked or broken: in each case, skip
            missing.append(name)
    if not missing:
        return None
    return (f"{' and '.join(missing)} not importable (as on the Slicer extension factory): "
            "skipping the self-test parts that run the network; the logic parts still run")
def phantom_pet_tags(phantom) -> dict:
    """The DICOM SUV tags a scanner would write for a phantom's Bq/mL PET (what Slicer's DICOM
    database returns for it), as a plain dict."""
    return {"Units": "BQML", "DecayCorrection": "START", "CorrectedImage": ["ATTN", "DECY"],
            "PatientWeight": phantom.weight_kg, "RadionuclideTotalDose": phantom.dose_bq,
            "RadionuclideHalfLife": 6586.2,
            "RadiopharmaceuticalStartDateTime": phantom.injection_time.strftime("%Y%m%d%H%M%S.%f"),
            "SeriesDate": phantom.acquisition_time.strftime("%Y%m%d"),
            "SeriesTime": phantom.acquisition_time.strftime("%H%M%S.%f"),
            "AcquisitionDate": phantom.acquisition_time.strftime("%Y%m%d"),
            "AcquisitionTime": phantom.acquisition_time.strftime("%H%M%S.%f")}
