"""Write CT and PET volumes as DICOM image series (one file per axial slice) with pydicom.

The series carry what downstream readers need: shared StudyInstanceUID and FrameOfReferenceUID,
ImagePositionPatient/ImageOrientationPatient/PixelSpacing/SliceThickness (so SimpleITK's
ImageSeriesReader rebuilds the same geometry), Rescale Slope/Intercept, and for PET the SUV tags:
Units BQML, DecayCorrection START, CorrectedImage (DECY, ATTN, ...), PatientWeight and the
RadiopharmaceuticalInformationSequence (total dose, half-life, injection date/time), with
SeriesTime/AcquisitionTime at the scan start. Each PET slice has its own RescaleSlope, as scanners
write them. UIDs are derived from a seed so the same phantom always gives the same files.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
F18_HALF_LIFE_S = 6586.2
F18_POSITRON_FRACTION = 0.9673
MANUFACTURER = "VMambaX synthetic phantom"


@dataclass
class StudyInfo:
    """Patient and study attributes shared by the CT and PET series of one case."""

    patient_id: str
    patient_name: str
    sex: str  # 'M' / 'F' / 'O'
    weight_kg: float
    height_m: float
    study_datetime: _dt.datetime
    uid_seed: str  # everything (UIDs) is derived from this, so output is reproducible
    birth_date: str = "19600101"
    accession: str = ""
    study_description: str = "PET/CT thorax (synthetic)"

    def uid(self, *parts: object) -> str:
        from pydicom.uid import generate_uid

        return generate_uid(entropy_srcs=[self.uid_seed, *map(str, parts)])

    @property
    def study_uid(self) -> str:
        return self.uid("study")

    @property
    def frame_of_reference_uid(self) -> str:
        return self.uid("frame-of-reference")


@dataclass
class PetDose:
    """Radiopharmaceutical administration: what SUV needs besides the patient weight."""

    injection_datetime: _dt.datetime
    total_dose_bq: float
    half_life_s: float = F18_HALF_LIFE_S
    radiopharmaceutical: str = "Fluorodeoxyglucose"


def _date(t: _dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def _time(t: _dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _ds(n: float) -> str:
    """A DICOM Decimal String (at most 16 characters)."""
    s = f"{n:.10g}"
    if len(s) > 16:
        s = f"{n:.8e}" if abs(n) < 1e-4 or abs(n) >= 1e12 else f"{n:.{max(16 - len(str(int(abs(n)))) - 2, 1)}f}"
    return s[:16]


def _base_dataset(study: StudyInfo, sop_class: str, sop_uid: str, modality: str, series_uid: str,
                  series_number: int, series_time: _dt.datetime, description: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
    ds.PatientBirthDate, ds.PatientSex = study.birth_date, study.sex
    ds.PatientWeight, ds.PatientSize = _ds(round(study.weight_kg, 1)), _ds(round(study.height_m, 2))
    ds.StudyInstanceUID, ds.StudyID = study.study_uid, "1"
    ds.StudyDate, ds.StudyTime = _date(study.study_datetime), _time(study.study_datetime)
    ds.AccessionNumber, ds.ReferringPhysicianName = study.accession, ""
    ds.StudyDescription = study.study_description
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = modality, series_uid, series_number
    ds.SeriesDate, ds.SeriesTime = _date(series_time), _time(series_time)
    ds.SeriesDescription = description
    ds.AcquisitionDate, ds.AcquisitionTime = _date(series_time), _time(series_time)
    ds.ContentDate, ds.ContentTime = _date(series_time), _time(series_time)
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, "vmambax.phantom"
    ds.PatientPosition = "HFS"  # head first supine; patient (LPS) coordinates do not depend on it
    ds.BodyPartExamined = "CHEST"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def _save(ds, path: Path) -> None:
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def _check_axial(image) -> None:
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.allclose(d, np.eye(3), atol=1e-6):
        raise ValueError("dicom_write only writes axial volumes with identity direction cosines")


def _slice_geometry(ds, image, k: int) -> None:
    sx, sy, sz = image.GetSpacing()
    ox, oy, oz = image.GetOrigin()
    z = oz + k * sz
    ds.ImagePositionPatient = [_ds(ox), _ds(oy), _ds(z)]
    ds.SliceLocation = _ds(z)
    ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (y), column spacing (x)
    ds.SliceThickness = _ds(sz)
    ds.SpacingBetweenSlices = _ds(sz)
    ds.Rows, ds.Columns = image.GetSize()[1], image.GetSize()[0]
    ds.InstanceNumber = k + 1


def write_ct_series(ct_hu, folder: str | Path, study: StudyInfo, acquisition: _dt.datetime,
                    series_number: int = 2) -> list[Path]:
    """Write an int HU CT volume (sitk.Image) as one CT Image Storage file per slice."""
    import SimpleITK as sitk

    _check_axial(ct_hu)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = sitk.GetArrayFromImage(ct_hu)
    stored = np.clip(np.rint(arr).astype(np.int32) + 1024, -32768, 32767).astype(np.int16)
    series_uid = study.uid("ct-series")
    paths = []
    for k in range(arr.shape[0]):
        ds = _base_dataset(study, CT_IMAGE_STORAGE, study.uid("ct", k), "CT", series_uid, series_number,
                           acquisition, "CT thorax (synthetic)")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP, ds.ConvolutionKernel = "120", "B30f"
        ds.AcquisitionNumber = 1
        _slice_geometry(ds, ct_hu, k)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / f"CT{k + 1:04d}.dcm"
        _save(ds, path)
        paths.append(path)
    return paths


def write_pet_series(pet_bqml, folder: str | Path, study: StudyInfo, dose: PetDose, acquisition: _dt.datetime,
                     frame_duration_s: float = 120.0, series_number: int = 3) -> list[Path]:
    """Write a PET volume in Bq/mL (decay-corrected to ``acquisition``, the series start) as PET Image
    Storage files with the tags SUV calculators use (QIBA/PERCIST body-weight SUV)."""
    import SimpleITK as sitk
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    _check_axial(pet_bqml)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = sitk.GetArrayFromImage(pet_bqml).astype(np.float64)
    if (arr < 0).any():
        arr = np.maximum(arr, 0.0)  # activity concentration cannot be negative
    series_uid = study.uid("pet-series")
    nz = arr.shape[0]

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
        return c

    rp = Dataset()
    rp.Radiopharmaceutical = dose.radiopharmaceutical
    rp.RadiopharmaceuticalStartTime = _time(dose.injection_datetime)
    rp.RadiopharmaceuticalStartDateTime = dose.injection_datetime.strftime("%Y%m%d%H%M%S.%f")[:21]
    rp.RadionuclideTotalDose = _ds(round(dose.total_dose_bq, 1))
    rp.RadionuclideHalfLife = _ds(dose.half_life_s)
    rp.RadionuclidePositronFraction = _ds(F18_POSITRON_FRACTION)
    rp.RadionuclideCodeSequence = Sequence([code("C-111A1", "SRT", "^18^Fluorine")])
    rp.RadiopharmaceuticalCodeSequence = Sequence([code("C-B1031", "SRT", "Fluorodeoxyglucose F^18^")])
    paths = []
    for k in range(nz):
        ds = _base_dataset(study, PET_IMAGE_STORAGE, study.uid("pet", k), "PT", series_uid, series_number,
                           acquisition, "PET AC (synthetic)")
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.Units, ds.CountsSource, ds.DecayCorrection = "BQML", "EMISSION", "START"
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
        ds.RandomsCorrectionMethod, ds.AttenuationCorrectionMethod = "DLYD", "CT-based"
        ds.ScatterCorrectionMethod = "Model-based"
        ds.ReconstructionMethod = "OSEM 3i21s PSF"
        ds.DecayFactor = "1"  # already decay-corrected to the series start (DecayCorrection START)
        ds.FrameReferenceTime = _ds(frame_duration_s * 500.0)
        ds.ActualFrameDuration = int(frame_duration_s * 1000)
        ds.NumberOfSlices, ds.ImageIndex = nz, k + 1
        ds.AcquisitionNumber = 1
        ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
        _slice_geometry(ds, pet_bqml, k)
        # per-slice slope so the slice maximum uses the full int16 range
        peak = float(arr[k].max())
        slope = peak / 32767.0 if peak > 0 else 1.0
        stored = np.clip(np.rint(arr[k] / slope), 0, 32767).astype(np.int16)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", _ds(slope), "BQML"
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        path = folder / f"PT{k + 1:04d}.dcm"
        _save(ds, path)
        paths.append(path)
    return paths
