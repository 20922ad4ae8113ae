"""PET/CT data layer: volume I/O, SUV, PET->CT resampling, the papers' preprocessing, PCLT20K.

Modules (see docs/ARCHITECTURE.md, "Data"):

* ``io``          read/validate volumes (NIfTI, NRRD, MHA, DICOM folders), PET in SUV, labels out
* ``dicom``       DICOM series discovery, reading and tags; ``dicom_seg``: DICOM SEG output
* ``suv``         body-weight SUV factor from DICOM tags (files, datasets or plain dicts) or by hand
* ``resample``    image onto a reference grid in physical space, overlap checks
* ``orientation`` exact re-orientation to axial slices and back
* ``case``        ``load_pet_ct`` / ``make_case``: CT + PET(SUV) on the CT grid, with checks
* ``patient``     same patient / study / frame of reference from the DICOM identity tags
* ``preprocess``  the ONE preprocessing used by training export and inference
* ``pclt``        PCLT20K reader and splits; ``pclt_export``: volumes -> PCLT20K layout
Synthetic PET/CT cases are a package of their own, ``vmambax.phantom``, built on this layer.
"""

from vmambax.data.case import PetCtCase, load_pet_ct, make_case
from vmambax.data.io import read_image, read_label, read_pet, read_pet_info, write_image, write_label
from vmambax.data.pclt import PcltDataset, make_splits, read_split, to_tensors
from vmambax.data.preprocess import (CT_WINDOW_HU, IMAGE_SIZE, SUV_WINDOW, SliceGeometry,
                                     normalize_uint8, slices_to_volume, volume_to_slices)
from vmambax.data.resample import resample_to
from vmambax.data.suv import SuvFactor, suv_factor_from_tags, suv_factor_manual

__all__ = [
    "CT_WINDOW_HU", "IMAGE_SIZE", "SUV_WINDOW", "PcltDataset", "PetCtCase", "SliceGeometry",
    "SuvFactor", "load_pet_ct", "make_case", "make_splits", "normalize_uint8", "read_image",
    "read_label", "read_pet", "read_pet_info", "read_split", "resample_to", "slices_to_volume",
    "suv_factor_from_tags", "suv_factor_manual", "to_tensors", "volume_to_slices", "write_image",
    "write_label",
]


def __getattr__(name: str):
    if name in ("export_cases", "export_case_folders", "VolumeCase"):
        from vmambax.data import pclt_export

        return getattr(pclt_export, name)
    raise AttributeError(f"module 'vmambax.data' has no attribute {name!r}")
