"""Reading and writing volumes: NIfTI, NRRD, MHA/MHD and DICOM series folders.

Every reader validates what it returns (``validate_volume``): a 3-D, single-component volume
with at least one voxel, no NaN/inf and not constant. Geometry (origin, spacing, direction) is
kept exactly as stored. Every writer writes to a temporary name and renames, so a failure never
leaves a half-written file.

PET units: a DICOM PET is converted to SUVbw from its tags (``vmambax.data.suv``). A
NIfTI/NRRD/MHA PET carries no units, so it is taken as SUV unless the caller says
``units="bqml"``; then the weight and injected activity must be given, and the image is taken as
decay-corrected to the injection time (or to the scan start ``uptake_minutes`` after injection,
when that is given). Values that cannot be SUVs (Bq/mL mistaken for SUV) are refused.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from vmambax.data import dicom as _dicom
from vmambax.data.suv import SuvFactor, check_suv_plausible, suv_factor_from_tags, suv_factor_manual
from vmambax.errors import InputError
from vmambax.utils import atomic_path, output_error

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
PET_UNITS = ("auto", "suv", "bqml")
CT_AIR_HU = -500.0  # a CT's 1st percentile (air, lung) lies far below this; a PET's never does


def _sitk():
    return _dicom._sitk()


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(VOLUME_SUFFIXES + (".dcm",), key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


# ----------------------------------------------------------------------------------- validation
def describe(image) -> str:
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:.3g}" for s in image.GetSpacing())
    return f"{size} voxels of {spacing} mm"


def validate_volume(image, what: str = "The image", *, allow_constant: bool = False) -> None:
    """Raise ``InputError`` unless ``image`` is a usable 3-D scalar volume."""
    dim = image.GetDimension()
    size = "x".join(str(s) for s in image.GetSize())
    if dim == 2:
        raise InputError(f"{what} is a 2-D image ({size}); VMambaX needs a 3-D volume. Load the "
                         "whole series (the DICOM folder) or a 3-D NIfTI/NRRD file.")
    if dim > 3:
        raise InputError(f"{what} has {dim} dimensions ({size}): a dynamic, gated or multi-frame "
                         "series. Extract one 3-D frame first (e.g. the static or summed frame).")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} has {image.GetNumberOfComponentsPerPixel()} values per voxel "
                         "(colour or vector image); VMambaX needs a scalar PET or CT volume.")
    if 0 in image.GetSize():
        raise InputError(f"{what} is empty ({size} voxels).")
    array = _sitk().GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(_nan_message(what, bad))
    if not allow_constant:
        lo, hi = array.min(), array.max()
        if lo == hi:
            raise InputError(f"{what} is empty: all {array.size} voxels equal {lo:g}. Load the "
                             "actual image volume.")


def check_same_grid(image, reference, what: str = "The label", ref_what: str = "the CT") -> None:
    """Raise ``InputError`` unless ``image`` has ``reference``'s size, spacing, origin, direction."""
    if image.GetSize() != reference.GetSize():
        raise InputError(f"{what} size {'x'.join(map(str, image.GetSize()))} does not match "
                         f"{ref_what} size {'x'.join(map(str, reference.GetSize()))}; it must be "
                         f"drawn on {ref_what}'s grid (resample it onto {ref_what} first).")
    spacing_i, spacing_r = np.array(image.GetSpacing()), np.array(reference.GetSpacing())
    tol_mm = 1e-2 * float(spacing_r.min())
    problems = []
    if np.any(np.abs(spacing_i - spacing_r) > 1e-4 * spacing_r):
        problems.append(f"spacing {spacing_i.round(4).tolist()} vs {spacing_r.round(4).tolist()}")
    if np.any(np.abs(np.array(image.GetOrigin()) - np.array(reference.GetOrigin())) > tol_mm):
        problems.append(f"origin {np.round(image.GetOrigin(), 3).tolist()} vs "
                        f"{np.round(reference.GetOrigin(), 3).tolist()}")
    if np.any(np.abs(np.array(image.GetDirection()) - np.array(reference.GetDirection())) > 1e-3):
        problems.append("direction differs")
    if problems:
        raise InputError(f"{what} is not on {ref_what}'s grid ({'; '.join(problems)}); resample "
                         f"it onto {ref_what} first.")


def _nan_message(what: str, count: int) -> str:
    return (f"{what} contains {count} NaN/infinite voxels; fix or re-export the volume (VMambaX "
            "does not guess values for them).")


def _nifti_layout(header: bytes):
    """(endian, data offset, expected data bytes, float dtype or None) of a NIfTI-1/2 header."""
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
        elif sizeof_hdr == 540 and len(header) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
        else:
            continue
        if not 1 <= dims[0] <= 7:
            return None
        n_bytes = int(np.prod([max(d, 0) for d in dims[1:dims[0] + 1]])) * bitpix // 8
        dtype = {16: "f4", 64: "f8"}.get(datatype)
        return endian, offset, n_bytes, (np.dtype(endian + dtype) if dtype else None)
    return None


def _gzip_size(path: Path) -> int | None:
    """The uncompressed size (mod 2**32) that a complete gzip file records in its trailer."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:
            return None
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def _check_nifti(path: Path, what: str) -> None:
    """Length and NaN check of a NIfTI file.

    ITK's NIfTI reader silently fills a truncated file's missing data and silently turns NaN
    into 0, so both are checked here, on the raw data, in one pass (integer .nii.gz data is
    only decompressed when its gzip trailer does not already show the full length).
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    bad = 0
    try:
        with opener(path, "rb") as f:
            header = f.read(540)
            if len(header) < 348:
                raise EOFError("file too short")
            layout = _nifti_layout(header)
            if layout is None:
                return  # not a header we know; let ITK decide
            _, offset, expected, dtype = layout
            if dtype is None and opener is gzip.open and _gzip_size(path) == \
                    (offset + expected) % 2**32:
                return  # integer data, and the gzip trailer says the file is complete
            have = len(header) - offset
            carry = header[offset:] if have > 0 else b""
            if have < 0:
                f.read(-have)  # skip extensions up to the data
                have = 0
            while True:
                if dtype is not None and len(carry) >= dtype.itemsize:
                    usable = len(carry) // dtype.itemsize * dtype.itemsize
                    values = np.frombuffer(carry[:usable], dtype)
                    bad += int(np.count_nonzero(~np.isfinite(values)))
                    carry = carry[usable:]
                if have >= expected:
                    break
                chunk = f.read(min(1 << 24, expected - have))
                if not chunk:
                    break
                have += len(chunk)
                carry = carry + chunk if dtype is not None else b""
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path} is truncated or corrupt ({exc or 'file too short'}); "
                         "re-export or re-copy it.") from None
    if have < expected:
        raise InputError(f"{path} is truncated ({have} of {expected} data bytes); re-export or "
                         "re-copy it.")
    if bad:
        raise InputError(_nan_message(f"{what} {path.name}", bad))


# -------------------------------------------------------------------------------------- reading
def _read(path, *, series_uid=None, modality=None, float_pixels=False, what="The image"):
    """(image, SeriesInfo or None, per-file tags or None); no content validation."""
    sitk = _sitk()
    if path is None or str(path) == "":
        raise InputError(f"{what}: no path given.")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist; check the path.")
    if path.is_dir():
        series = _dicom.pick_series(path, series_uid, modality)
        image, tags = _dicom.read_series(series, float_pixels=float_pixels)
        return image, series, tags
    suffix = _suffix(path)
    if suffix == ".dcm" or (suffix == "" and _looks_dicom(path)):
        uid = str(_dicom.read_tags([str(path)])[0].get("SeriesInstanceUID", "")) or None
        series = _dicom.pick_series(path.parent, series_uid or uid, modality)
        image, tags = _dicom.read_series(series, float_pixels=float_pixels)
        return image, series, tags
    if suffix not in VOLUME_SUFFIXES:
        raise InputError(f"{what} {path.name}: unsupported file type; VMambaX reads NIfTI "
                         "(.nii/.nii.gz), NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd) or a DICOM "
                         "series folder.")
    if suffix in (".nii", ".nii.gz"):
        _check_nifti(path, what)
    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32 if float_pixels else
                               sitk.sitkUnknown)
    except RuntimeError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else "unreadable"
        raise InputError(f"Cannot read {what.lower()} {path}: the file is corrupt, truncated or "
                         f"not a {suffix} image ({detail[:200]}).") from None
    return image, None, None


def _looks_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_image(path, *, series_uid: str | None = None, modality: str | None = None,
               what: str = "The image"):
    """Read and validate a 3-D volume: a NIfTI/NRRD/MHA file, a DICOM folder or a .dcm file.

    For DICOM, ``series_uid`` or ``modality`` (``"CT"``, ``"PT"``) picks the series
    (``dicom.pick_series``: several candidates are an error that lists them).
    """
    return read_image_source(path, series_uid=series_uid, modality=modality, what=what)[0]


def read_image_source(path, *, series_uid: str | None = None, modality: str | None = None,
                      what: str = "The image"):
    """``read_image`` that also returns the DICOM ``SeriesInfo`` read (None for files)."""
    image, series, _ = _read(path, series_uid=series_uid, modality=modality, what=what)
    validate_volume(image, f"{what} {Path(path).name}")
    return image, series


def read_label(path, reference=None, *, what: str = "The label"):
    """Read a label volume as uint8 0/1 (any positive value is tumour).

    With ``reference`` (an image), the label must lie on its grid.
    """
    image, _, _ = _read(path, what=what)
    validate_volume(image, f"{what} {Path(path).name}", allow_constant=True)
    return as_binary_label(image, reference, what)


def as_binary_label(image, reference=None, what: str = "The label"):
    """A label image as uint8 0/1 (positive = tumour), checked against ``reference``'s grid."""
    sitk = _sitk()
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
        raise InputError(f"{what} has non-integer values (a probability or intensity image?); "
                         "give a label map with 0 = background and 1 = tumour.")
    if array.min() < 0:
        raise InputError(f"{what} has negative values; give a label map with 0 = background "
                         "and 1 = tumour.")
    if reference is not None:
        check_same_grid(image, reference, what)
    out = sitk.GetImageFromArray((array > 0).astype(np.uint8))
    out.CopyInformation(image)
    return out


@dataclasses.dataclass
class PetRead:
    """A PET in SUV plus where the SUV came from."""

    image: Any  # sitk.Image, float32 SUVbw, on the PET's own grid
    suv: SuvFactor | None  # None when the input was already in SUV
    source_units: str  # "SUV" (file), "GML", "BQML", "CNTS"
    series: _dicom.SeriesInfo | None = None
    notes: tuple[str, ...] = ()
    tags: dict | None = None  # series-level DICOM tags (identity checks); None for files

    @property
    def is_dicom(self) -> bool:
        return self.series is not None


def read_pet(path, units: str = "auto", weight_kg: float | None = None,
             dose_mbq: float | None = None, *, uptake_minutes: float | None = None,
             series_uid: str | None = None):
    """Read a PET volume and return it in SUVbw (float32). See the module docstring."""
    return read_pet_info(path, units, weight_kg, dose_mbq, uptake_minutes=uptake_minutes,
                         series_uid=series_uid).image


def read_pet_info(path, units: str = "auto", weight_kg: float | None = None,
                  dose_mbq: float | None = None, *, uptake_minutes: float | None = None,
                  series_uid: str | None = None) -> PetRead:
    """``read_pet`` with the SUV provenance (``PetRead``)."""
    sitk = _sitk()
    units = (units or "auto").lower()
    if units not in PET_UNITS:
        raise InputError(f"Unknown PET units {units!r}; use one of {', '.join(PET_UNITS)}.")
    image, series, tags = _read(path, series_uid=series_uid, modality="PT", float_pixels=True,
                                what="The PET")
    name = f"The PET {Path(path).name}"
    validate_volume(image, name)
    image = sitk.Cast(image, sitk.sitkFloat32)
    suv: SuvFactor | None = None
    notes: list[str] = []
    header = _dicom.series_tags(tags) if series is not None else None
    if series is not None and units != "suv":
        series_level = dict(header)
        if units == "bqml" and not series_level.get("Units"):
            series_level["Units"] = "BQML"
        suv = suv_factor_from_tags(series_level, weight_kg=weight_kg, dose_mbq=dose_mbq,
                                   uptake_minutes=uptake_minutes)
        source_units = suv.units
        if suv.decay_correction == "NONE" and uptake_minutes is None:
            image = _per_slice_suv(image, tags, weight_kg, dose_mbq)
        else:
            image = image * suv.factor
        hint = ("Check the PET's PatientWeight (kg) and RadionuclideTotalDose (Bq) tags, or pass "
                "--weight-kg and --dose-mbq by hand.")
    elif series is None and units == "bqml":
        if weight_kg is None or dose_mbq is None:
            raise InputError("A PET in Bq/mL from a NIfTI/NRRD/MHA file needs the patient weight "
                             "and injected activity: pass --weight-kg and --dose-mbq (Python: "
                             "weight_kg=, dose_mbq=), and --uptake-minutes if the image is "
                             "decay-corrected to the scan start rather than to the injection.")
        suv = suv_factor_manual(weight_kg, dose_mbq, uptake_minutes)
        source_units = "BQML"
        image = image * suv.factor
        hint = "Check the weight (kg) and injected activity (MBq) you entered."
    else:
        source_units = "SUV"
        if series is None and units == "auto":
            notes.append("NIfTI/NRRD/MHA PET taken as SUV (say --pet-units bqml otherwise)")
        hint = None
    check_pet_values(sitk.GetArrayViewFromImage(image), name, hint)
    if suv is not None:
        notes += list(suv.notes)
    return PetRead(image, suv, source_units, series, tuple(notes), header)


def _per_slice_suv(image, tags, weight_kg, dose_mbq):
    """DecayCorrection NONE: each slice is decayed to its own acquisition time."""
    sitk = _sitk()
    array = sitk.GetArrayFromImage(image)
    indices = _dicom.slice_index_of_files(image, tags)
    for k, t in zip(indices, tags):
        array[k] *= suv_factor_from_tags(t, weight_kg=weight_kg, dose_mbq=dose_mbq).factor
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def check_pet_not_ct(values: np.ndarray, what: str = "The PET") -> None:
    """Refuse a 'PET' that is really a CT (HU); holds for Bq/mL and SUV alike."""
    sample = values.ravel()[:: max(1, values.size // 2_000_000)]
    p1 = float(np.percentile(sample, 1))
    if p1 < CT_AIR_HU:  # air at -1000: a CT
        raise InputError(f"{what} has many values far below 0 (1st percentile {p1:.4g}, like "
                         "air at -1000): it looks like a CT in Hounsfield units, not a PET. Are "
                         "the CT and PET inputs swapped?")
    if p1 < -1.0:
        negative = float(np.mean(sample < 0))
        raise InputError(f"{what} has many negative values ({negative:.0%} of the voxels below "
                         f"0, 1st percentile {p1:.4g}), which activity or SUV cannot be: a wrong "
                         "rescale intercept, a difference/subtracted image, or a reconstruction "
                         "that keeps negative noise. Load the scanner's attenuation-corrected "
                         "PET series (activity >= 0).")


def check_pet_values(suv: np.ndarray, what: str = "The PET", hint: str | None = None) -> None:
    """Refuse a 'PET' that is really a CT (HU) or activity in Bq/mL."""
    check_pet_not_ct(suv, what)
    check_suv_plausible(suv, what=what, hint=hint)


# -------------------------------------------------------------------------------------- writing
def write_image(image, path) -> Path:
    """Write a volume (NIfTI/NRRD/MHA by extension), atomically."""
    sitk = _sitk()
    path = Path(path)
    if _suffix(path) not in VOLUME_SUFFIXES or _suffix(path) in (".nhdr", ".mhd"):
        raise InputError(f"Cannot write {path.name}: use a .nii.gz, .nii, .nrrd or .mha name.")
    # SimpleITK may return without error on a full disk; atomic_path reads the file back.
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), True)
        except RuntimeError as exc:
            raise output_error(path, str(exc).strip().splitlines()[-1]) from None
    return path


def write_label(label, path, reference=None, *, series_uid: str | None = None,
                algorithm_version: str | None = None) -> Path:
    """Write a 0/1 label volume, atomically.

    ``path`` ending in ``.nii.gz``/``.nii``/``.nrrd``/``.mha`` writes that format; ending in
    ``.dcm`` writes a DICOM SEG, which needs ``reference`` = the CT's DICOM series folder (and
    ``series_uid`` if it holds several CT series). A ``reference`` image is checked against the
    label's grid.
    """
    path = Path(path)
    validate_volume(label, "The label", allow_constant=True)
    ref_image = reference if reference is not None and not isinstance(
        reference, (str, os.PathLike, _dicom.SeriesInfo)) else None
    label = as_binary_label(label, ref_image, "The label")
    suffix = _suffix(path)
    if suffix == ".dcm":
        if ref_image is not None or reference is None:
            raise InputError(f"Writing the DICOM SEG {path.name} needs the CT's DICOM series "
                             "folder as reference; choose a .nii.gz or .nrrd name otherwise.")
        from vmambax.data.dicom_seg import write_dicom_seg

        return write_dicom_seg(label, reference, path, series_uid=series_uid,
                               algorithm_version=algorithm_version)
    if suffix not in LABEL_SUFFIXES:
        raise InputError(f"Cannot write the label as {path.name}: use .nii.gz, .nii, .nrrd, "
                         ".mha, or .dcm (DICOM SEG, when the CT is DICOM).")
    if reference is not None and ref_image is None:
        series = (reference if isinstance(reference, _dicom.SeriesInfo) else
                  _dicom.pick_series(reference, series_uid, "CT"))
        ct, _ = _dicom.read_series(series)
        check_same_grid(label, ct, "The label", "the CT series")
    return write_image(label, path)
