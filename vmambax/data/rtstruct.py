"""DICOM RTSTRUCT contours -> a 0/1 label on an image's voxel grid.

Radiotherapy keeps tumour outlines as RTSTRUCT ROIs: per ROI, closed planar polygons in patient
coordinates (mm, LPS, the same space ITK images live in). Each polygon is put on the image slice
whose plane it lies in (nearest slice) and filled with the *even-odd* rule over all polygons of
that ROI on that slice: a polygon inside another is a hole, as DICOM (C.8.8.6) and treatment
planning systems use nested contours. A voxel is inside when its centre is. Because the contours
are in mm, the image's geometry is all that is needed: a NIfTI CT works as well as the DICOM CT.

Converter choice: rt-utils (the maintained RTSTRUCT library) needs the DICOM CT series itself (no
NIfTI geometry), brings opencv-python (~60 MB) for ``fillPoly`` and has had no release since
2023; pydicom (already a dependency) plus this scan-line fill is ~100 lines, exact (no pixel
rounding of the vertices), and handles holes. Checked against the expert masks of the real
STS_001 study (``Testing/Python/test_data_rtstruct.py``).

Refusals (``InputError``): a file that is not an RTSTRUCT, an ROI with no contours, contours in
another frame of reference than the image's DICOM series, contours not parallel to the image's
slices, contours that miss the image entirely.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmambax.errors import InputError

# Words that mark a tumour structure (ROI or segment names; also used by VMambaX Train).
TUMOUR_WORDS = ("tumour", "tumor", "lesion", "neoplasm", "gtv", "cancer", "nodule", "mass")
PLANE_TOLERANCE = 0.5  # slices: a contour's points must all lie within this of one plane
OFF_PLANE_NOTE = 0.25  # slices: contours further than this from a slice plane are reported


@dataclasses.dataclass(frozen=True)
class Structure:
    """One ROI of an RTSTRUCT (or one segment of a DICOM SEG)."""

    number: int
    name: str
    n_contours: int  # contours (RTSTRUCT) or non-empty frames (SEG)
    frame_of_reference_uid: str | None = None
    unit: str = "contour"

    def row(self) -> str:
        from vmambax.utils import plural

        return f"  {self.number:>4}  {self.name!r}  ({plural(self.n_contours, self.unit)})"


@dataclasses.dataclass
class ImportedLabel:
    """A label made from a DICOM annotation, with what it was made from."""

    label: Any  # sitk.Image uint8 0/1 on the reference grid
    structure: Structure
    kind: str  # "RTSTRUCT" or "SEG"
    source: str
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def voxels(self) -> int:
        import SimpleITK as sitk

        return int(sitk.GetArrayViewFromImage(self.label).sum())


def choose_structure(structures: Sequence[Structure], wanted: str | None, *, what: str,
                     kind: str = "ROI", option: str = "--roi NAME") -> Structure:
    """The structure named (or numbered) ``wanted``; by default the only one, or the only one
    named like a tumour (``TUMOUR_WORDS``). Otherwise InputError listing them all."""
    if not structures:
        raise InputError(f"{what} has no {kind}s.")
    table = "\n".join(s.row() for s in structures)
    unit = structures[0].unit
    if wanted is not None:
        text = str(wanted).strip()
        hits = [s for s in structures if s.name.strip().lower() == text.lower()]
        if not hits and text.isdigit():
            hits = [s for s in structures if s.number == int(text)]
        if len(hits) == 1:
            return hits[0]
        problem = f"no {kind} named {text!r}" if not hits else f"several {kind}s named {text!r}"
        raise InputError(f"{what} has {problem}; its {kind}s (number, name, {unit}s):\n{table}\n"
                         f"Choose one with {option} (a name or number from this list).")
    if len(structures) == 1:
        return structures[0]
    tumour = [s for s in structures if any(w in s.name.lower() for w in TUMOUR_WORDS)]
    if len(tumour) == 1:
        return tumour[0]
    reason = (f"several {kind}s named like a tumour" if tumour
              else f"{len(structures)} {kind}s and none named like a tumour")
    raise InputError(f"{what} has {reason}; choose one with {option}. Its {kind}s (number, "
                     f"name, {unit}s):\n{table}")


# ----------------------------------------------------------------------------------- reading
def dcmread(path, **kwargs):
    """``pydicom.dcmread`` without its value-length/VR warnings (planning systems write many;
    they do not matter for contours and would bury the warnings that do)."""
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pydicom.dcmread(str(path), **kwargs)


def cut_short_problem(path: Path) -> str | None:
    """The message for a DICOM file that is cut short (an interrupted copy, download or export),
    or None when it is whole."""
    from vmambax.utils import dicom_cut_short

    cut = dicom_cut_short(path)
    if cut is None:
        return None
    return (f"{path.name} is cut short (truncated: {cut}), as an interrupted copy, download or "
            "export leaves it. Copy it again from where it came from, or export it again from "
            "the planning system.")


def unreadable_problem(path: Path, exc: BaseException) -> str:
    """The message for a file pydicom cannot read (not DICOM, or damaged)."""
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return (f"{path.name} cannot be read as DICOM ({detail}): it is not a DICOM file, or it is "
            "damaged. Give the structure set file itself (Modality RTSTRUCT, usually RS*.dcm) or "
            "a DICOM SEG, copied or exported again if it came from an interrupted transfer.")


def read_rtstruct(path):
    """The RTSTRUCT dataset at ``path`` (pydicom), or InputError."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the RTSTRUCT file in it (usually RS*.dcm).")
    if not path.is_file():
        raise InputError(f"RTSTRUCT file {path} not found; check the path (the RS*.dcm file).")
    problem = cut_short_problem(path)
    if problem:
        raise InputError(problem)
    try:
        ds = dcmread(path)
    except Exception as exc:  # not DICOM, damaged ...
        raise InputError(unreadable_problem(path, exc)) from None
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT":
        raise InputError(f"{path.name} is a DICOM {ds.get('Modality', '?')} file, not an RTSTRUCT; "
                         "give the structure set (Modality RTSTRUCT, usually RS*.dcm).")
    return ds


def list_rois(ds) -> list[Structure]:
    """The ROIs of an RTSTRUCT dataset with their contour counts and frames of reference."""
    counts = {}
    for item in ds.get("ROIContourSequence", []):
        counts[int(item.ReferencedROINumber)] = len(item.get("ContourSequence", []) or [])
    default_for = None
    refs = ds.get("ReferencedFrameOfReferenceSequence", [])
    if refs:
        default_for = str(refs[0].get("FrameOfReferenceUID", "")) or None
    out = []
    for roi in ds.get("StructureSetROISequence", []):
        number = int(roi.ROINumber)
        uid = str(roi.get("ReferencedFrameOfReferenceUID", "")) or default_for
        out.append(Structure(number, str(roi.get("ROIName", f"ROI {number}")), counts.get(number, 0), uid))
    return out


def _contours(ds, number: int) -> tuple[list[np.ndarray], int]:
    """(closed planar contours as (n, 3) mm arrays, count of skipped non-closed ones)."""
    polygons, skipped = [], 0
    for item in ds.get("ROIContourSequence", []):
        if int(item.ReferencedROINumber) != number:
            continue
        for contour in item.get("ContourSequence", []) or []:
            data = np.asarray(contour.get("ContourData", []), dtype=float).reshape(-1, 3)
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            if kind != "CLOSED_PLANAR" or len(data) < 3:
                skipped += 1  # POINT / OPEN_PLANAR / degenerate: no area to fill
                continue
            polygons.append(data)
    return polygons, skipped


# ------------------------------------------------------------------------------ rasterising
def physical_to_index(image):
    """A function mapping (n, 3) physical points (mm, LPS) to continuous (i, j, k) indices."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    inverse = np.linalg.inv(direction @ np.diag(image.GetSpacing()))
    origin = np.array(image.GetOrigin(), dtype=float)
    return lambda points: (np.asarray(points, dtype=float) - origin) @ inverse.T


def fill_even_odd(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``(rows, cols)`` mask of the pixel centres inside ``polygons`` (each ``(n, 2)``
    continuous (col, row) vertices) by the even-odd rule over all of them together: nested
    polygons are holes, i.e. the XOR of the polygons' fills.

    Scan-line fill: each row of pixel centres y = r crosses the edges with y0 <= r < y1 (half
    open, so a vertex on the row counts once); consecutive crossings sorted by x pair up, and
    the centres c with x_start <= c < x_end are inside.
    """
    rows, cols = shape
    xs, rs = [], []
    for poly in polygons:
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        first = np.clip(np.ceil(np.minimum(y0, y1)), 0, rows).astype(np.int64)
        stop = np.clip(np.ceil(np.maximum(y0, y1)), 0, rows).astype(np.int64)
        counts = np.maximum(stop - first, 0)
        if not counts.any():
            continue
        edge = np.repeat(np.arange(len(x0)), counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        r = first[edge] + offset
        # counts > 0 implies y1 != y0 for these edges (horizontal edges cross no row)
        x = x0[edge] + (r - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        xs.append(x)
        rs.append(r)
    mask = np.zeros(shape, dtype=bool)
    if not xs:
        return mask
    x, r = np.concatenate(xs), np.concatenate(rs)
    order = np.lexsort((x, r))
    x, r = x[order], r[order]
    # Every closed polygon crosses each row an even number of times, so after sorting the
    # crossings of a row alternate start, end, start, end ...
    start = np.clip(np.ceil(x[0::2]), 0, cols).astype(np.int64)
    end = np.clip(np.ceil(x[1::2]), 0, cols).astype(np.int64)
    row = r[0::2]
    keep = end > start
    diff = np.zeros((rows, cols + 1), dtype=np.int32)
    np.add.at(diff, (row[keep], start[keep]), 1)
    np.add.at(diff, (row[keep], end[keep]), -1)
    return np.cumsum(diff, axis=1)[:, :cols] > 0


def contours_to_mask(polygons: Sequence[np.ndarray], image, *, what: str = "The contours"):
    """``(mask (z, y, x) uint8, notes)``: closed planar contours (mm) filled on ``image``'s grid."""
    to_index = physical_to_index(image)
    nx, ny, nz = image.GetSize()
    per_slice: dict[int, list[np.ndarray]] = defaultdict(list)
    outside, worst_offset = 0, 0.0
    for points in polygons:
        ijk = to_index(points)
        if np.ptp(ijk[:, 2]) > PLANE_TOLERANCE:
            raise InputError(f"{what} are not parallel to the image's slices (a contour spans "
                             f"{np.ptp(ijk[:, 2]):.1f} slices): the image is oblique or another "
                             "scan. Give the image the contours were drawn on (axial, as planned).")
        k_exact = float(np.mean(ijk[:, 2]))
        k = int(np.floor(k_exact + 0.5))
        in_plane = (ijk[:, 0].max() >= -0.5 and ijk[:, 0].min() <= nx - 0.5
                    and ijk[:, 1].max() >= -0.5 and ijk[:, 1].min() <= ny - 0.5)
        if not (0 <= k < nz and in_plane):
            outside += 1
            continue
        worst_offset = max(worst_offset, abs(k_exact - k))
        per_slice[k].append(ijk[:, :2])
    if polygons and outside == len(polygons):
        raise InputError(f"{what} lie entirely outside the image ({len(polygons)} contour(s)); "
                         "is this the scan they were drawn on? Give that CT (same patient, study "
                         "and frame of reference).")
    mask = np.zeros((nz, ny, nx), dtype=np.uint8)
    for k, polys in per_slice.items():
        mask[k] = fill_even_odd(polys, (ny, nx))
    notes = []
    if outside:
        notes.append(f"{outside} of {len(polygons)} contour(s) lie outside the image and were left out.")
    if worst_offset > OFF_PLANE_NOTE:
        notes.append(f"the contours lie up to {worst_offset:.2f} slices from the image's slice "
                     "planes; each was put on its nearest slice.")
    if per_slice:
        ks = sorted(per_slice)
        gaps = sorted(set(range(ks[0], ks[-1] + 1)) - set(ks))
        if gaps:
            notes.append(f"{len(gaps)} slice(s) between the first and last contour have none "
                         "(contours drawn on fewer slices than the image has?); they stay empty.")
    return mask, notes


# ----------------------------------------------------------------------------------- import
def check_frame_of_reference(found: str | None, expected: str | None, *, what: str,
                             image_what: str = "the CT") -> list[str]:
    """InputError when both UIDs are known and differ; a note when the image's is unknown."""
    if expected is None:
        return [f"{image_what} is not DICOM, so the frame of reference of {what} could not be "
                "checked; it was placed by its patient coordinates (mm)."]
    if found and found != expected:
        raise InputError(f"{what} is in frame of reference {found}, {image_what} in {expected}: "
                         "the annotation belongs to another scan (or another registration). Give "
                         "the CT it was drawn on, or register the two and export the annotation again.")
    return []


def rtstruct_to_label(path, reference, *, roi: str | None = None,
                      frame_of_reference_uid: str | None = None,
                      option: str = "--roi NAME", image_what: str = "the CT") -> ImportedLabel:
    """One ROI of the RTSTRUCT at ``path`` as a 0/1 label on ``reference``'s grid (a sitk image).

    ``roi``: name or number (default: see ``choose_structure``). ``frame_of_reference_uid``:
    the reference image's DICOM FrameOfReferenceUID (None when it is not DICOM: not checked).
    """
    import SimpleITK as sitk

    path = Path(path)
    ds = read_rtstruct(path)
    what = f"RTSTRUCT {path.name}"
    structure = choose_structure(list_rois(ds), roi, what=what, option=option)
    label_what = f"ROI {structure.name!r} of {path.name}"
    notes = check_frame_of_reference(structure.frame_of_reference_uid, frame_of_reference_uid,
                                     what=label_what, image_what=image_what)
    polygons, skipped = _contours(ds, structure.number)
    if not polygons:
        extra = f" ({skipped} point/open contour(s) only)" if skipped else ""
        raise InputError(f"{label_what} has no closed contours{extra}: it is an empty structure. "
                         f"Choose another ROI with {option}, or contour the tumour first.")
    mask, more = contours_to_mask(polygons, reference, what=f"The contours of {label_what}")
    notes += more
    if skipped:
        notes.append(f"{skipped} point or open contour(s) of {label_what} were ignored (no area).")
    if not mask.any():
        notes.append(f"{label_what} covers no voxel centre of the image (contours smaller than a voxel?).")
    label = sitk.GetImageFromArray(mask)
    label.CopyInformation(reference)
    return ImportedLabel(label, structure, "RTSTRUCT", str(path), notes)
