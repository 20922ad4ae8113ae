"""DICOM series discovery, reading and tag extraction.

A DICOM *input* is a folder. Every series under it (sub-folders included, as DICOM exports
nest them) is listed with GDCM; one is picked by SeriesInstanceUID, else by modality (CT or PT,
so one study folder can serve as both inputs); several candidates are an error listing them.
Slices are ordered by GDCM along the slice normal; a series with missing slices (uneven
spacing) is refused because its geometry would be wrong.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmambax.errors import InputError

# Tags read per file: the SUV tags plus what geometry checks and DICOM SEG need.
_SEQUENCE_KEYWORD = "RadiopharmaceuticalInformationSequence"
_PRIVATE = {"SUVScaleFactor": (0x7053, 0x1000), "ActivityConcentrationScaleFactor": (0x7053, 0x1009),
            "GEPrivateScanDateTime": (0x0009, 0x100D)}


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found on disk (files sorted along the slice normal)."""

    folder: Path
    uid: str
    files: tuple[str, ...]
    modality: str = ""
    description: str = ""

    def __str__(self) -> str:
        return (f"{self.modality or '?'} series {self.uid} ({len(self.files)} files"
                + (f", '{self.description}'" if self.description else "") + f") in {self.folder}")


def _sitk():
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warnings are noise; we check ourselves
    return sitk


def _header(path: str):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True, force=False)


def find_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """All DICOM series in ``folder`` and its sub-folders."""
    sitk = _sitk()
    folder = Path(folder)
    found: list[SeriesInfo] = []
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames.sort()
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath) or ():
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, uid))
            if not files:
                continue
            modality = description = ""
            try:
                ds = _header(files[0])
                modality = str(getattr(ds, "Modality", "") or "")
                description = str(getattr(ds, "SeriesDescription", "") or "")
            except Exception:  # noqa: BLE001 - an unreadable header is reported when read
                pass
            found.append(SeriesInfo(Path(dirpath), uid, files, modality, description))
    return found


def is_dicom_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and bool(find_series(path))


_SERIES_OPTION = {"CT": "--ct-series UID (Python: ct_series_uid=)",
                  "PT": "--pet-series UID (Python: pet_series_uid=)"}


def describe_series(series: Sequence[SeriesInfo], limit: int = 10) -> str:
    """One line per series: modality, description, slice count, SeriesInstanceUID, folder."""
    lines = [f"  {s.modality or '?'} '{s.description or 'no description'}', {len(s.files)} "
             f"slices, UID {s.uid} (in {s.folder})" for s in series[:limit]]
    if len(series) > limit:
        lines.append(f"  ... and {len(series) - limit} more")
    return "\n".join(lines)


def pick_series(folder: str | os.PathLike, series_uid: str | None = None,
                modality: str | None = None) -> SeriesInfo:
    """The series to read from ``folder``: the one with ``series_uid``, else the only one of
    ``modality`` (``"CT"``/``"PT"``), else the only one. Several candidates are never resolved
    silently (a second CT reconstruction or a non-attenuation-corrected PET looks just as
    valid): the error lists them and asks for the UID. This is the one series picker."""
    series = find_series(folder)
    if not series:
        raise InputError(f"No DICOM series found in {folder}; point to the folder that holds the "
                         "image's .dcm files, or to a NIfTI/NRRD/MHA file.")
    if series_uid:
        chosen = [s for s in series if s.uid == str(series_uid).strip()]
        if not chosen:
            raise InputError(f"Series {series_uid} is not in {folder}; it holds:\n"
                             f"{describe_series(series)}")
        return chosen[0]
    if modality:
        same = [s for s in series if s.modality.upper() == modality.upper()]
        if same:
            series = same
        elif all(s.modality for s in series):
            listing = ", ".join(sorted({s.modality for s in series}))
            raise InputError(f"{folder} holds no {modality} series (only {listing}); did you "
                             "swap the CT and PET inputs?")
    if len(series) > 1:
        option = _SERIES_OPTION.get((modality or "").upper(), "series_uid=UID")
        kind = f"{modality.upper()} " if modality else ""
        raise InputError(f"{folder} holds {len(series)} {kind}series, and VMambaX does not guess "
                         f"which one you mean; choose one with {option}:\n"
                         f"{describe_series(series)}")
    return series[0]


def tags_from_dataset(ds) -> dict[str, Any]:
    """A flat ``{keyword: value}`` dict of a pydicom dataset.

    The first RadiopharmaceuticalInformationSequence item is flattened in, and the vendor
    private SUV tags get the keywords used by ``vmambax.data.suv``.
    """
    tags: dict[str, Any] = {}
    for element in ds:
        if element.keyword and element.VR != "SQ" and element.keyword != "PixelData":
            tags[element.keyword] = element.value
    seq = ds.get(_SEQUENCE_KEYWORD)
    if seq is not None and len(seq.value if hasattr(seq, "value") else seq):
        item = (seq.value if hasattr(seq, "value") else seq)[0]
        for element in item:
            if element.keyword and element.VR != "SQ":
                tags.setdefault(element.keyword, element.value)
    for keyword, tag in _PRIVATE.items():
        element = ds.get(tag)
        if element is not None and element.value not in (None, b"", ""):
            tags[keyword] = element.value
    return tags


def read_tags(files: Sequence[str]) -> list[dict[str, Any]]:
    """Per-file tag dicts (headers only)."""
    out = []
    for f in files:
        try:
            out.append(tags_from_dataset(_header(f)))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
            raise InputError(f"Cannot read the DICOM file {f}: {exc}. The file is damaged or "
                             "not DICOM; re-export the series.") from None
    return out


def identity_tags(series: SeriesInfo) -> dict[str, Any]:
    """The first file's tags: patient, study and frame of reference are the same in every file."""
    return read_tags(series.files[:1])[0]


def series_tags(per_file: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Series-level tags: the first file's, with the earliest acquisition date/time (QIBA)."""
    merged = dict(per_file[0])
    stamps = []
    for t in per_file:
        time = t.get("AcquisitionTime")
        if time not in (None, ""):
            date = str(t.get("AcquisitionDate") or "")
            stamps.append((date, str(time).replace(":", ""), t))
    if stamps:
        _, _, earliest = min(stamps, key=lambda s: (s[0], s[1].ljust(6, "0")))
        merged["AcquisitionTime"] = earliest.get("AcquisitionTime")
        if earliest.get("AcquisitionDate"):
            merged["AcquisitionDate"] = earliest.get("AcquisitionDate")
    return merged


def _check_spacing(series: SeriesInfo, tags: Sequence[Mapping[str, Any]]) -> None:
    """Refuse series with missing slices or duplicated positions."""
    if len(tags) < 3:
        return
    try:
        iop = np.array([float(v) for v in tags[0]["ImageOrientationPatient"]], dtype=float)
        positions = np.array([[float(v) for v in t["ImagePositionPatient"]] for t in tags])
    except (KeyError, TypeError, ValueError):
        return  # e.g. multi-frame files: geometry comes from ITK
    normal = np.cross(iop[:3], iop[3:])
    gaps = np.diff(np.sort(positions @ normal))
    if np.any(gaps < 1e-3):
        raise InputError(f"The DICOM {series} has several images at the same position (a "
                         "multi-phase or duplicated series); export a single 3-D series.")
    if gaps.max() > 1.5 * np.median(gaps):
        raise InputError(f"The DICOM {series} has uneven slice spacing ({gaps.min():.2f} to "
                         f"{gaps.max():.2f} mm): slices are missing. Re-export the complete "
                         "series.")


def read_series(series: SeriesInfo, *, float_pixels: bool = False):
    """Read a series as a SimpleITK image (rescale slope/intercept applied per slice).

    ``float_pixels`` forces float32 output; use it for PET, whose slices carry different rescale
    slopes (ITK otherwise picks an integer type from the first slice and truncates the others).
    Returns ``(image, per_file_tags)``.
    """
    sitk = _sitk()
    tags = read_tags(series.files)
    _check_spacing(series, tags)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    if float_pixels:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputError(f"Cannot read the DICOM {series}: {detail}. A file may be truncated or "
                         "damaged; re-export the series.") from None
    return image, tags


def slice_index_of_files(image, tags: Sequence[Mapping[str, Any]]) -> list[int]:
    """For each file, the z index of its slice in ``image`` (via its ImagePositionPatient)."""
    indices = []
    for t in tags:
        point = [float(v) for v in t["ImagePositionPatient"]]
        k = image.TransformPhysicalPointToContinuousIndex(point)[2]
        if abs(k - round(k)) > 0.1 or not 0 <= round(k) < image.GetSize()[2]:
            raise InputError("A DICOM file's slice position does not fall on the image grid; "
                             "the series is inconsistent. Re-export it.")
        indices.append(int(round(k)))
    return indices
