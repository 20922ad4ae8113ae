"""Minimal CT and PET DICOM series for tests, written with pydicom (no vmambax code involved)."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"


# A small CT (lung-like, with a soft-tissue block) and a Bq/mL PET on their own grids.
Z, Y, X = 6, 24, 20
CT_SPACING, PET_SPACING = (0.9, 0.9, 2.0), (2.0, 2.0, 3.0)


def ct_volume():
    rng = np.random.default_rng(0)
    hu = np.full((Z, Y, X), -850.0) + rng.normal(0, 20, (Z, Y, X))
    hu[:, :, :4] = -1000
    hu[:, 8:16, 6:14] = 40.0
    return np.round(hu)


def pet_volume():
    bq = np.full((4, 12, 10), 4000.0)
    bq[1:3, 4:8, 3:7] = 30000.0
    return bq


def pet_tags(weight=72.5, dose_bq=3.7e8, half_life=6586.2, injection="093000.00",
             series_time="103000.00", acquisition_time=None, date="20240315",
             decay="START", units="BQML", corrected="ATTN\\DECY", manufacturer="ACME"):
    """Top-level PET tag values (None drops a tag)."""
    radio = {"RadionuclideTotalDose": dose_bq, "RadionuclideHalfLife": half_life,
             "RadiopharmaceuticalStartTime": injection}
    top = {"Units": units, "DecayCorrection": decay, "CorrectedImage": corrected,
           "PatientWeight": weight, "SeriesDate": date, "SeriesTime": series_time,
           "AcquisitionDate": date, "AcquisitionTime": acquisition_time or series_time,
           "Manufacturer": manufacturer}
    return top, radio


def pet_dataset(top: dict, radio: dict) -> Dataset:
    """A header-only pydicom Dataset with the given PET tags (for SUV tests)."""
    ds = Dataset()
    ds.Modality = "PT"
    ds.RescaleSlope = 1.0
    ds.RescaleIntercept = 0.0
    _set_pet_tags(ds, top, radio)
    return ds


def _set_pet_tags(ds: Dataset, top: dict, radio: dict) -> None:
    """Set the PET tags ``top`` on ``ds`` and ``radio`` in its radiopharmaceutical item (None: left out)."""
    for k, v in top.items():
        if v is not None:
            setattr(ds, k, v.split("\\") if k == "CorrectedImage" else v)
    item = Dataset()
    for k, v in radio.items():
        if v is not None:
            setattr(item, k, v)
    ds.RadiopharmaceuticalInformationSequence = [item]


def write_series(folder, array, *, modality: str, spacing=(1.0, 1.0, 2.0),
                 origin=(0.0, 0.0, 0.0), study_uid=None, frame_uid=None, series_uid=None,
                 pet_top: dict | None = None, pet_radio: dict | None = None,
                 per_slice_acq_times=None, shuffle_names=True, seed=0, patient_id="TEST001",
                 description="", extra_tags: dict | None = None) -> dict:
    """Write ``array`` (z, y, x) as a DICOM series (axial, identity orientation).

    CT: int16 with RescaleIntercept -1024 (values HU). PET: uint16 with a per-slice
    RescaleSlope (values are Bq/mL, or whatever ``pet_top['Units']`` says).
    ``patient_id``/``description``/``extra_tags`` alter the identity tags (wrong-patient tests).
    Returns the UIDs used.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    z, rows, cols = array.shape
    names = list(range(z))
    if shuffle_names:
        random.Random(seed).shuffle(names)  # file names must not encode the slice order
    for k in range(z):
        meta = FileMetaDataset()
        sop_class = CT_STORAGE if modality == "CT" else PET_STORAGE
        sop_uid = generate_uid()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{names[k]:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.Modality = modality
        ds.PatientName, ds.PatientID = "Test^Patient", patient_id
        if description:
            ds.SeriesDescription = description
        ds.PatientBirthDate, ds.PatientSex = "19600101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
        ds.StudyDate, ds.StudyTime = "20240315", "090000"
        ds.SeriesNumber = 1 if modality == "CT" else 2
        ds.InstanceNumber = k + 1
        ds.Manufacturer = "ACME"
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        values = np.asarray(array[k], dtype=np.float64)
        if modality == "CT":
            ds.PixelRepresentation = 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.PixelData = np.round(values + 1024).astype(np.int16).tobytes()
        else:
            ds.PixelRepresentation = 0
            slope = max(values.max(), 1e-6) / 65000.0
            ds.RescaleIntercept, ds.RescaleSlope = 0, float(f"{slope:.10g}")
            ds.PixelData = np.round(values / float(ds.RescaleSlope)).astype(np.uint16).tobytes()
            top = dict(pet_top or {})
            radio = dict(pet_radio or {})
            if per_slice_acq_times is not None:
                top["AcquisitionTime"] = per_slice_acq_times[k]
            _set_pet_tags(ds, top, radio)
        for keyword, value in (extra_tags or {}).items():
            setattr(ds, keyword, value)
        ds.save_as(str(path), enforce_file_format=True)
    return {"study": study_uid, "frame": frame_uid, "series": series_uid}


def seconds_between(t0: str, t1: str) -> float:
    f = "%H%M%S.%f"
    return (dt.datetime.strptime(t1, f) - dt.datetime.strptime(t0, f)).total_seconds()


__all__ = ["pet_tags", "pet_dataset", "write_series", "seconds_between", "pydicom"]
