"""DICOM annotations as labels: an RTSTRUCT ROI or a DICOM SEG segment -> 0/1 on a CT's grid.

``read_dicom_label`` looks at the file's Modality and hands RTSTRUCTs to ``rtstruct``; SEGs are
read here with pydicom: each frame's pixels are placed by its ImagePositionPatient and the
shared orientation/spacing, so a SEG made on the CT series (any frame order, sparse frames,
BINARY, FRACTIONAL or LABELMAP) lands voxel for voxel. A SEG whose frames are not on the CT grid
is refused rather than resampled (a SEG on another grid belongs to another series).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vmambax.data.rtstruct import (ImportedLabel, Structure, check_frame_of_reference,
                                   choose_structure, dcmread, physical_to_index,
                                   rtstruct_to_label)
from vmambax.errors import InputError

GRID_TOLERANCE = 0.1  # voxels: how far a SEG pixel may sit from a CT voxel centre


def referenced_series_uids(path) -> list[str]:
    """The SeriesInstanceUIDs an RTSTRUCT (RT Referenced Series) or a SEG (Referenced Series)
    names as the images it was drawn on."""
    ds = dcmread(path, stop_before_pixels=True)
    uids = [str(series.get("SeriesInstanceUID", ""))
            for ref in ds.get("ReferencedFrameOfReferenceSequence", [])
            for study in ref.get("RTReferencedStudySequence", [])
            for series in study.get("RTReferencedSeriesSequence", [])]
    uids += [str(series.get("SeriesInstanceUID", "")) for series in ds.get("ReferencedSeriesSequence", [])]
    return [u for u in uids if u]


def ct_series_for(ct_folder, label_path, modality: str = "CT") -> str | None:
    """The series of ``modality`` in ``ct_folder`` that the annotation refers to, when the
    folder holds several and one of them is referenced; None otherwise (the usual pick applies)."""
    from vmambax.data import dicom as _dicom

    cts = [s for s in _dicom.find_series(ct_folder) if s.modality.upper() == modality]
    if len(cts) < 2:
        return None
    try:
        wanted = set(referenced_series_uids(label_path))
    except Exception:  # unreadable: read_dicom_label reports it properly
        return None
    return next((s.uid for s in cts if s.uid in wanted), None)


def frame_of_reference_of(path, series_uid: str | None = None, modality: str = "CT") -> str | None:
    """The FrameOfReferenceUID of an image (a CT; ``modality``) given as a DICOM folder or file;
    None for other files."""
    from vmambax.data import dicom as _dicom

    path = Path(path)
    try:
        if path.is_dir():
            series = _dicom.pick_series(path, series_uid, modality)
            first = series.files[0]
        elif path.suffix.lower() == ".dcm":
            first = str(path)
        else:
            return None
        return str(dcmread(first, stop_before_pixels=True).get("FrameOfReferenceUID", "")) or None
    except InputError:
        raise
    except Exception:  # not DICOM after all: nothing to check against
        return None


def find_label_file(path) -> Path:
    """``path`` itself when it is a file; for a folder, the one RTSTRUCT or DICOM SEG file in it
    (planning systems export the structure set into a folder of its own). Several or none:
    InputError naming what is there."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise InputError(f"DICOM label {path} not found; give the RTSTRUCT (RS*.dcm) or DICOM "
                             "SEG file, or the folder that holds it.")
        return path
    found = []
    for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            ds = dcmread(candidate, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:  # not DICOM (a README, a thumbnail ...): not a candidate
            continue
        if str(ds.get("Modality", "")).upper() in ("RTSTRUCT", "SEG"):
            found.append(candidate)
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(f"{path} is a folder with no RTSTRUCT or DICOM SEG file in it; give the "
                         "structure set file (Modality RTSTRUCT, usually RS*.dcm) or its folder.")
    listing = "\n".join(f"  {p}" for p in found[:10]) + (f"\n  ... and {len(found) - 10} more"
                                                          if len(found) > 10 else "")
    raise InputError(f"{path} holds {len(found)} RTSTRUCT/SEG files; give the one to import:\n{listing}")


def read_dicom_label(path, reference, *, structure: str | None = None,
                     frame_of_reference_uid: str | None = None, option: str = "--roi NAME",
                     image_what: str = "the CT") -> ImportedLabel:
    """The RTSTRUCT ROI or SEG segment ``structure`` (name or number; default: the only one or
    the one named like a tumour) at ``path`` (a file, or a folder holding one) as a label on
    ``reference``'s grid. ``image_what`` names the reference in messages ("the CT", "the PET")."""
    from vmambax.data.rtstruct import cut_short_problem, unreadable_problem

    path = find_label_file(path)
    problem = cut_short_problem(path)
    if problem:
        raise InputError(problem)
    try:
        modality = str(dcmread(path, stop_before_pixels=True).get("Modality", "")).upper()
    except Exception as exc:
        raise InputError(unreadable_problem(path, exc)) from None
    try:
        if modality == "RTSTRUCT":
            return rtstruct_to_label(path, reference, roi=structure, image_what=image_what,
                                     frame_of_reference_uid=frame_of_reference_uid, option=option)
        if modality == "SEG":
            return seg_to_label(path, reference, segment=structure, image_what=image_what,
                                frame_of_reference_uid=frame_of_reference_uid, option=option)
    except InputError:
        raise  # our own refusal (ROI choice, frame of reference, empty, oblique ...) as it is
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        # A required element missing (ROINumber, Rows, SegmentNumber ...) or malformed
        # (ContourData not x,y,z triplets): the file breaks the standard; say so, no traceback.
        raise InputError(f"{path.name} is a malformed DICOM {modality}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else 'missing element'}. "
                         "A required element is missing or wrong (or the file ends early at an "
                         "element boundary). Export the contours again from the planning system, "
                         "or convert them to a label file yourself.") from None
    raise InputError(f"{path.name} is a DICOM {modality or '(no modality)'} file; a DICOM label "
                     "must be an RTSTRUCT (contours) or a SEG (segmentation).")


def annotation_grid_modality(folder) -> str:
    """The modality of the image series an annotation goes onto in a DICOM ``folder``: "CT"
    when it holds a CT series, else "PT" for a folder with a PET only (contours drawn on the
    PET, e.g. a PET GTV); "CT" otherwise (the series picker then says what is there)."""
    from vmambax.data import dicom as _dicom

    modalities = {s.modality.upper() for s in _dicom.find_series(folder)}
    if "CT" not in modalities and "PT" in modalities:
        return "PT"
    return "CT"


def _segment_number_of_frames(ds, n_frames: int) -> list[int]:
    """The segment each frame belongs to (per-frame, or shared when all frames hold one)."""
    numbers = []
    for f in range(n_frames):
        try:
            numbers.append(int(_functional(ds, f, "SegmentIdentificationSequence",
                                           "ReferencedSegmentNumber")))
        except InputError:
            numbers.append(0)
    return numbers


def _functional(ds, frame: int, sequence: str, attribute: str):
    """An attribute from the frame's functional groups, else from the shared ones."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    for groups in ((per_frame[frame],) if frame < len(per_frame) else ()) + tuple(
            ds.get("SharedFunctionalGroupsSequence", [])):
        item = groups.get(sequence)
        if item and attribute in item[0]:
            return item[0].get(attribute)
    raise InputError(f"the SEG frame {frame + 1} has no {attribute} ({sequence}); it cannot be "
                     "placed on the CT.")


def seg_to_label(path, reference, *, segment: str | None = None,
                 frame_of_reference_uid: str | None = None, option: str = "--roi NAME",
                 image_what: str = "the CT") -> ImportedLabel:
    """One segment of the DICOM SEG at ``path`` as a 0/1 label on ``reference``'s grid."""
    import SimpleITK as sitk

    path = Path(path)
    ds = dcmread(path)
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise InputError(f"cannot decode the frames of SEG {path.name}: {str(exc)[:200]}.") from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = pixels.reshape(n_frames, int(ds.Rows), int(ds.Columns))
    numbers = _segment_number_of_frames(ds, n_frames)
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    if seg_type == "LABELMAP":
        present = {int(v) for v in np.unique(pixels)}
        counts = {s: int(sum((pixels[f] == s).any() for f in range(n_frames))) for s in present}
    else:
        counts = {}
        for f, s in enumerate(numbers):
            counts[s] = counts.get(s, 0) + int(pixels[f].any())
    structures = [Structure(int(s.SegmentNumber), str(s.get("SegmentLabel", f"segment {s.SegmentNumber}")),
                            counts.get(int(s.SegmentNumber), 0), str(ds.get("FrameOfReferenceUID", "")) or None,
                            unit="frame")
                  for s in ds.get("SegmentSequence", [])]
    chosen = choose_structure(structures, segment, what=f"DICOM SEG {path.name}", kind="segment",
                              option=option)
    what = f"segment {chosen.name!r} of {path.name}"
    notes = check_frame_of_reference(chosen.frame_of_reference_uid, frame_of_reference_uid, what=what,
                                     image_what=image_what)
    if chosen.n_contours == 0:
        raise InputError(f"{what} is empty (no frame holds it). Choose another segment with "
                         f"{option}, or segment the tumour first.")
    threshold = 0
    if seg_type == "FRACTIONAL":
        threshold = int(ds.get("MaximumFractionalValue", 255)) / 2
    to_index = physical_to_index(reference)
    nx, ny, nz = reference.GetSize()
    mask = np.zeros((nz, ny, nx), dtype=np.uint8)
    outside = 0
    for f in range(n_frames):
        if seg_type == "LABELMAP":
            on = pixels[f] == chosen.number
        elif numbers[f] == chosen.number:
            on = pixels[f] > threshold
        else:
            continue
        if not on.any():
            continue
        position = np.asarray(_functional(ds, f, "PlanePositionSequence", "ImagePositionPatient"), float)
        orientation = np.asarray(_functional(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient"), float)
        row_mm, col_mm = (float(v) for v in _functional(ds, f, "PixelMeasuresSequence", "PixelSpacing"))
        # DICOM: the first direction cosine runs along a row (increasing column), the second down
        # a column (increasing row); PixelSpacing is (between rows, between columns).
        rows, cols = np.nonzero(on)
        points = (position + cols[:, None] * col_mm * orientation[:3]
                  + rows[:, None] * row_mm * orientation[3:])
        ijk = to_index(points)
        nearest = np.floor(ijk + 0.5)
        if np.abs(ijk - nearest).max() > GRID_TOLERANCE:
            raise InputError(f"{what} is not on the CT's voxel grid (its pixels sit up to "
                             f"{np.abs(ijk - nearest).max():.2f} voxels from the CT's): it was made "
                             "on another series. Export the segmentation on this CT, or give the "
                             "CT it was made on.")
        nearest = nearest.astype(np.int64)
        inside = ((nearest >= 0) & (nearest < (nx, ny, nz))).all(axis=1)
        outside += int((~inside).sum())
        i, j, k = nearest[inside].T
        mask[k, j, i] = 1
    if not mask.any():
        raise InputError(f"{what} lies entirely outside the CT; give the CT it was made on.")
    if outside:
        notes.append(f"{outside} voxel(s) of {what} lie outside the CT and were left out.")
    label = sitk.GetImageFromArray(mask)
    label.CopyInformation(reference)
    return ImportedLabel(label, chosen, "SEG", str(path), notes)
