"""PNG preview of a segmentation: coronal PET MIP with the contour, plus the largest lesions' slices.

Rendered with matplotlib's object API on the Agg canvas (no pyplot global state, so it is safe
inside 3D Slicer and headless servers). Images are reoriented to LPS first so that every preview
shows the same radiological convention (patient right on image left, anterior up, head up).
"""

from __future__ import annotations

import io

import numpy as np

CT_DISPLAY_WINDOW = (-1350.0, 150.0)  # lung window (W 1500, L -600): tumour and parenchyma visible
PET_MIN_DISPLAY_SUV = 1.0  # below this the fused PET overlay is transparent
MAX_AXIAL = 3
MIN_MIP_SLICES = 2  # a coronal MIP of one slice is a line: not drawn
MAX_PANEL_RATIO = 3.0  # width / height of a panel at most
# The segmentation's outline: red on the grey MIP, cyan on the axial slices (red would vanish
# in the fused PET's "hot" colours). The captions name these very colours.
MIP_OUTLINE = "red"
AXIAL_OUTLINE = "cyan"


def _lps_arrays(ct, pet, label):
    import SimpleITK as sitk

    images = [sitk.DICOMOrient(img, "LPS") for img in (ct, pet, label)]
    return images[0], [sitk.GetArrayFromImage(img) for img in images]


def _pet_vmax(pet: np.ndarray) -> float:
    body = pet[pet > 0.1]
    return float(np.clip(np.percentile(body, 99.9) if body.size else 5.0, 5.0, 15.0))


def _body_box(ct: np.ndarray, margin: int = 8) -> tuple[slice, slice]:
    """In-plane (y, x) bounding box of the body (CT above -300 HU on any slice), plus a margin,
    so that the panels show the patient rather than the air around them."""
    body = (ct > -300).any(axis=0)
    if not body.any():
        return slice(None), slice(None)
    ys, xs = np.nonzero(body)
    return (slice(max(ys.min() - margin, 0), ys.max() + margin + 1),
            slice(max(xs.min() - margin, 0), xs.max() + margin + 1))


def _outline(ax, mask: np.ndarray, color: str, *, origin: str, aspect: float) -> None:
    """The mask's outline; matplotlib's contour needs at least 2 x 2 values, so a strip (one
    slice or one row) is shaded instead."""
    if not mask.any():
        return
    if min(mask.shape) >= 2:
        ax.contour(mask, levels=[0.5], colors=color, linewidths=1.0)
        return
    from matplotlib.colors import ListedColormap

    ax.imshow(np.ma.masked_equal(mask, 0), cmap=ListedColormap([color]), alpha=0.5,
              origin=origin, aspect=aspect, interpolation="nearest")


def render_preview(ct, pet_suv, label, lesions: list[dict] | None = None,
                   title: str | None = None, dpi: int = 110) -> bytes:
    """Return PNG bytes. ``ct``/``pet_suv``/``label`` are SimpleITK images on one grid;
    ``lesions`` are the report's lesion dicts (``id``, ``centroid_mm``, ``suv_max``, ``mtv_ml``)."""
    fig = preview_figure(ct, pet_suv, label, lesions, title, dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    return buf.getvalue()


def preview_figure(ct, pet_suv, label, lesions: list[dict] | None = None,
                   title: str | None = None, dpi: int = 110):
    """The matplotlib Figure of ``render_preview`` (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ref, (ct_a, pet_a, lab_a) = _lps_arrays(ct, pet_suv, label)
    sx, sy, sz = ref.GetSpacing()
    by, bx = _body_box(ct_a)
    ct_a, pet_a, lab_a = ct_a[:, by, bx], pet_a[:, by, bx], lab_a[:, by, bx]
    vmax = _pet_vmax(pet_a)
    picks = []  # the largest lesions, one panel per distinct slice (through each centroid)
    for les in sorted(lesions or [], key=lambda l: -float(l.get("mtv_ml", 0.0))):
        idx = ref.TransformPhysicalPointToIndex([float(c) for c in les["centroid_mm"]])
        z = int(np.clip(idx[2], 0, ct_a.shape[0] - 1))
        if len(picks) == MAX_AXIAL:
            break
        if any(z == p[0] for p in picks):
            continue
        picks.append((z, str(les.get("id", "?")),
                      f"lesion {les.get('id', '?')}: SUVmax {float(les.get('suv_max', 0)):.1f}, "
                      f"MTV {float(les.get('mtv_ml', 0)):.1f} mL"))
    if not picks:
        z = int(np.unravel_index(np.argmax(pet_a), pet_a.shape)[0])
        picks = [(z, "", "no lesion segmented (slice at PET max)")]

    # Panel sizes follow the physical extents, so nothing is squashed; a very flat MIP (few
    # slices) is kept to a sensible panel width, and a single slice gets no MIP at all.
    show_mip = ct_a.shape[0] >= MIN_MIP_SLICES
    mip_w, mip_h = ct_a.shape[2] * sx, ct_a.shape[0] * sz
    ax_w, ax_h = ct_a.shape[2] * sx, ct_a.shape[1] * sy
    height = 4.2
    widths = ([height * min(mip_w / mip_h, MAX_PANEL_RATIO)] if show_mip else []) + \
        [height * min(ax_w / ax_h, MAX_PANEL_RATIO)] * len(picks)
    fig = Figure(figsize=(sum(widths) + 0.6, height + 1.0), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, len(widths), width_ratios=widths, wspace=0.05)

    if show_mip:
        # Coronal maximum-intensity projection (along y = anterior->posterior), inverted grey
        # as in nuclear-medicine reading; origin="lower" puts the head (larger z) at the top.
        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(pet_a.max(axis=1), cmap="gray_r", vmin=0, vmax=vmax, origin="lower",
                  aspect=sz / sx, interpolation="bilinear")
        _outline(ax, lab_a.max(axis=1), MIP_OUTLINE, origin="lower", aspect=sz / sx)
        for z, tag, _ in picks:
            if tag:
                ax.axhline(z, color="tab:blue", lw=0.6, ls="--")
                ax.text(ct_a.shape[2] - 1, z, f" {tag}", color="tab:blue", fontsize=7,
                        va="center")
        ax.set_title(f"PET MIP (SUV 0-{vmax:.0f}), segmentation in {MIP_OUTLINE}", fontsize=8)
        ax.set_axis_off()

    for k, (z, _tag, caption) in enumerate(picks):
        axk = fig.add_subplot(grid[0, int(show_mip) + k])
        axk.imshow(ct_a[z], cmap="gray", vmin=CT_DISPLAY_WINDOW[0], vmax=CT_DISPLAY_WINDOW[1],
                   aspect=sy / sx, interpolation="bilinear")
        # Fused PET: only clearly avid voxels are coloured, so the CT stays readable.
        overlay = np.ma.masked_less(pet_a[z], max(PET_MIN_DISPLAY_SUV, 0.3 * vmax))
        axk.imshow(overlay, cmap="hot", vmin=0, vmax=vmax, alpha=0.6, aspect=sy / sx,
                   interpolation="bilinear")
        _outline(axk, lab_a[z], AXIAL_OUTLINE, origin="upper", aspect=sy / sx)
        axk.set_title(f"axial slice {z}: {caption}, segmentation in {AXIAL_OUTLINE}", fontsize=8)
        axk.set_axis_off()

    fig.suptitle(title or "VMambaX segmentation", fontsize=10)
    fig.text(0.5, 0.01, "Research software - not for clinical use. Patient right on image left.",
             ha="center", fontsize=7, color="gray")
    return fig
