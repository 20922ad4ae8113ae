"""Synthetic thorax PET/CT phantoms with lung tumours, deterministic by seed.

``make_phantom(seed)`` builds one patient: a thorax CT (HU, ~0.98 mm pixels, 2.5-3.3 mm slices),
an FDG PET on its own coarser grid (~4 mm, different origin and field of view) in Bq/mL and SUV,
and the tumour label on the CT grid. ``write_case`` writes the volume case folder of
docs/ARCHITECTURE.md (NIfTI + CT/PET DICOM series + case.json) atomically.

The anatomy (vmambax.phantom.anatomy) and lesions (vmambax.phantom.lesions) are analytic, in mm, so
CT, PET and label are renderings of the same patient: the label is exactly the set of CT voxels
the tumours were painted into, and the PET activity comes from the same tumour shapes.
PET forward model: activity on a half-voxel working grid -> 6 mm FWHM Gaussian PSF -> voxel
integration (2x2x2 block mean) -> noise with variance proportional to the signal.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vmambax.errors import ConfigError, InputError

F18_HALF_LIFE_S = 6586.2
PSF_FWHM_MM = 6.0
CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


@dataclass
class Phantom:
    """One synthetic patient. Images are SimpleITK images in LPS patient coordinates."""

    seed: int
    ct: object  # sitk.Image int16, HU
    pet_bqml: object  # sitk.Image float32, Bq/mL decay-corrected to the scan start
    pet_suv: object  # sitk.Image float32, body-weight SUV, same grid as pet_bqml
    label: object  # sitk.Image uint8 0/1 on the CT grid
    weight_kg: float
    height_m: float
    sex: str
    dose_bq: float
    injection_time: _dt.datetime
    acquisition_time: _dt.datetime
    suv_factor: float  # SUV = Bq/mL * suv_factor
    lesions: list = field(default_factory=list)
    confounders: list = field(default_factory=list)
    patient: object = None  # vmambax.phantom.anatomy.Patient

    @property
    def uptake_s(self) -> float:
        return (self.acquisition_time - self.injection_time).total_seconds()

    def case_info(self) -> dict:
        return dict(
            format="vmambax-phantom", format_version=1, seed=self.seed, sex=self.sex,
            weight_kg=round(self.weight_kg, 2), height_m=round(self.height_m, 3),
            dose_mbq=round(self.dose_bq / 1e6, 3), radionuclide="F-18", half_life_s=F18_HALF_LIFE_S,
            injection_time=self.injection_time.isoformat(), acquisition_time=self.acquisition_time.isoformat(),
            uptake_min=round(self.uptake_s / 60.0, 2), suv_factor=self.suv_factor,
            suv_definition="SUVbw = Bq/mL * weight_g / (dose_bq * 2^(-uptake_s / half_life_s))",
            ct=_geometry(self.ct), pet=_geometry(self.pet_suv),
            lesions=self.lesions, confounders=self.confounders,
            coordinates="LPS mm (DICOM patient coordinates)",
        )


def _geometry(img) -> dict:
    return dict(size=list(img.GetSize()), spacing=[round(v, 4) for v in img.GetSpacing()],
                origin=[round(v, 3) for v in img.GetOrigin()])


def make_phantom(seed: int, size: int = 512, n_slices: int | None = None, extent_mm: float | None = None,
                 n_tumours: int | Sequence[int] = (1, 4), whole_body: bool = False) -> Phantom:
    """Build one synthetic PET/CT patient, deterministic for a given ``seed``.

    ``size``: CT in-plane matrix (512 default; smaller sizes get proportionally larger pixels so the
    anatomy keeps its size in mm). ``n_slices`` / ``extent_mm``: CT axial slice count and extent
    (default 200-250 mm at 2.5-3.3 mm slices; giving ``n_slices`` keeps the extent and thickens the
    slices). ``n_tumours``: an int or an inclusive (min, max) range. The anatomy and tumours depend
    only on ``seed``, not on ``size``/``n_slices``. ``whole_body``: a head-to-thigh study
    (``vmambax.phantom.body``: ~1 m, 300+ slices at the default thickness) with the same thorax inside;
    ``extent_mm`` then defaults to the whole body.
    """
    import SimpleITK as sitk

    from vmambax.phantom import anatomy as anat
    from vmambax.phantom.lesions import place_confounders, place_tumours
    from vmambax.phantom.shapes import Grid, paint

    seed, size, n_slices, extent_mm, t_range = _validate(seed, size, n_slices, extent_mm, n_tumours,
                                                          whole_body)
    # A 9th stream for the whole-body anatomy: spawn keys are per index, so the first 8 streams
    # (and every thorax phantom) are the same as before it existed.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(9)]
    r_patient, r_anat, r_grid, r_lesion, r_ct_noise, r_pet_noise, r_acq, r_count, r_body = streams

    p = anat.sample_patient(r_patient)
    # --- grids (anatomy coordinates; the image origin adds the table position in z) ---
    spacing = float(r_grid.uniform(0.9, 1.05))
    thickness = float(r_grid.uniform(2.5, 3.3))
    extent = float(extent_mm if extent_mm is not None else r_grid.uniform(200.0, 250.0))
    below = float(r_grid.uniform(35.0, 55.0))  # CT starts this far below the right dome
    # The thorax phantom's CT range (default slices): a whole-body study places its tumours in
    # it, so that it holds the same thorax, tumours included, as the thorax case of its seed.
    thorax_zr = (-below, -below + max(int(round(extent / thickness)), 2) * thickness)
    marks = None
    if whole_body:
        from vmambax.phantom import body as phantom_body

        marks = phantom_body.landmarks(p, r_body)
        bottom, top = phantom_body.extent(p, marks)
        extent = float(extent_mm) if extent_mm is not None else top - bottom
        below = -bottom
    nz = n_slices if n_slices is not None else max(int(round(extent / thickness)), 2)
    dz = extent / nz if n_slices is not None else thickness
    sp = spacing * 512.0 / size
    fov = sp * size
    ct_grid = Grid(origin=(-0.5 * fov + sp / 2 + float(r_grid.uniform(-10, 10)),
                           -0.5 * fov + sp / 2 + float(r_grid.uniform(-10, 10)), -below + dz / 2),
                   spacing=(sp, sp, dz), size=(size, size, nz))
    z_offset = float(r_grid.uniform(-700.0, -400.0))  # table position of the anatomy origin
    ps = float(r_grid.choice([4.07, 4.0, 3.9]))
    pn = int(r_grid.choice([128, 144]))
    pz = float(r_grid.choice([3.27, 4.0, 3.0]))
    z_lo = ct_grid.origin[2] - dz / 2 - float(r_grid.uniform(15.0, 40.0))
    z_hi = ct_grid.origin[2] + (nz - 0.5) * dz + float(r_grid.uniform(10.0, 30.0))
    pnz = int(np.ceil((z_hi - z_lo) / pz))
    pet_grid = Grid(origin=(-0.5 * ps * (pn - 1) + float(r_grid.uniform(-12, 12)),
                            -0.5 * ps * (pn - 1) + float(r_grid.uniform(-12, 12)), z_lo + pz / 2),
                    spacing=(ps, ps, pz), size=(pn, pn, pnz))

    # --- anatomy, tumours, confounders ---
    if whole_body:
        body_z = (min(-400.0, -below - 60.0), max(500.0, extent - below + 60.0))
        before, after, helpers = anat.anatomy_layers(p, r_anat, body_z,
                                                     phantom_body.pelvic_floor(marks))
        outside_thorax = phantom_body.whole_body_layers(p, marks, body_z)  # painted last
    else:
        before, after, helpers = anat.anatomy_layers(p, r_anat)
        outside_thorax = []
    segs = anat.vessel_tree(p, helpers["mediastinum"], helpers["lung"], r_anat)
    ct_zr = (ct_grid.origin[2] - dz / 2, ct_grid.origin[2] + (nz - 0.5) * dz)
    n_t = int(r_count.integers(t_range[0], t_range[1] + 1))
    tumours = place_tumours(p, helpers, r_lesion, n_t, thorax_zr if whole_body else ct_zr)
    confounders = place_confounders(p, helpers, tumours, r_lesion)

    def layers(min_vessel_radius: float):
        vessels = anat.vessel_sdf(segs, min_vessel_radius)
        vessel_layer = anat.Layer("lung vessels", vessels, vessels.bbox, 38.0, p.suv["blood"], anat.VESSEL,
                                  frozenset({anat.LUNG}))
        return (before + [vessel_layer] + [t.layer() for t in tumours] + after
                + [c.layer() for c in confounders] + outside_thorax)

    # --- CT ---
    ct, owner = paint(ct_grid, layers(0.0), "ct", -1000.0)
    # CT noise: ~12 HU, slightly correlated in-plane like a filtered back-projection texture
    w = r_ct_noise.standard_normal(ct.shape, dtype=np.float32)
    ct += 9.0 * (w + 0.5 * np.roll(w, 1, axis=2) + 0.5 * np.roll(w, 1, axis=1))
    ct_hu = np.clip(np.rint(ct), -1024, 3071).astype(np.int16)
    label = (owner >= anat.TUMOUR_BASE).astype(np.uint8)

    # --- PET ---
    suv = _render_pet(pet_grid, layers(0.8), p, r_pet_noise)

    # --- acquisition: weight, dose, timing -> SUV factor ---
    dose_mbq = float(np.clip(p.weight_kg * r_acq.uniform(2.8, 4.0), 180.0, 400.0))
    dose_bq = float(round(dose_mbq * 100) * 1e4)  # 0.01 MBq steps: the DICOM tag holds it exactly
    day = _dt.datetime(2024, 1, 8) + _dt.timedelta(days=int(r_acq.integers(0, 700)))
    injection = day + _dt.timedelta(seconds=int(r_acq.integers(7 * 3600, 14 * 3600)))
    acquisition = injection + _dt.timedelta(seconds=int(r_acq.uniform(55 * 60, 75 * 60)))
    uptake = (acquisition - injection).total_seconds()
    suv_factor = p.weight_kg * 1000.0 / (dose_bq * 2.0 ** (-uptake / F18_HALF_LIFE_S))
    bqml = (suv / suv_factor).astype(np.float32)

    def image(arr, grid):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(float(v) for v in grid.spacing))
        img.SetOrigin((float(grid.origin[0]), float(grid.origin[1]), float(grid.origin[2]) + z_offset))
        return img

    ct_img, label_img = image(ct_hu, ct_grid), image(label, ct_grid)
    suv_img, bq_img = image(suv.astype(np.float32), pet_grid), image(bqml, pet_grid)
    lesions = _lesion_info(tumours, owner, ct_grid, suv, pet_grid, z_offset)
    conf = [dict(c.info(), centre_mm=_to_patient(c.centre, z_offset)) for c in confounders]
    conf.append(dict(type="myocardium", centre_mm=_to_patient(p.heart_c, z_offset),
                     suv=round(p.suv["myocardium"], 2)))
    pet_z0 = pet_grid.origin[2]
    for k in anat.kidney_centres(p):  # upper poles often lie in the PET's longer field of view
        if k[2] + 55.0 > pet_z0:
            conf.append(dict(type="kidney (urine in the renal pelvis)", centre_mm=_to_patient(k, z_offset),
                             suv=round(p.suv["urine"], 2)))
    return Phantom(seed=seed, ct=ct_img, pet_bqml=bq_img, pet_suv=suv_img, label=label_img,
                   weight_kg=p.weight_kg, height_m=p.height_m, sex=p.sex, dose_bq=dose_bq,
                   injection_time=injection, acquisition_time=acquisition, suv_factor=float(suv_factor),
                   lesions=lesions, confounders=conf, patient=p)


def _validate(seed, size, n_slices, extent_mm, n_tumours, whole_body=False):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed!r}.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 32 <= size <= 1024:
        raise ConfigError(f"phantom size must be an integer between 32 and 1024 pixels, got {size!r} "
                          "(use 512 for real-size CT, 128 or 256 for quick tests).")
    if n_slices is not None and (not isinstance(n_slices, (int, np.integer)) or not 2 <= n_slices <= 1000):
        raise ConfigError(f"number of slices must be an integer between 2 and 1000, got {n_slices!r}.")
    max_extent = 1400.0 if whole_body else 400.0
    if extent_mm is not None and not 40.0 <= float(extent_mm) <= max_extent:
        raise ConfigError(f"axial extent must be between 40 and {max_extent:.0f} mm"
                          f"{' for a whole-body phantom' if whole_body else ' (--whole-body allows more)'}, "
                          f"got {extent_mm!r}.")
    t = (n_tumours, n_tumours) if isinstance(n_tumours, (int, np.integer)) else tuple(n_tumours)
    if len(t) != 2 or not all(isinstance(v, (int, np.integer)) for v in t) or not 0 <= t[0] <= t[1] <= 8:
        raise ConfigError(f"number of tumours must be an int or a (min, max) range within 0..8, got {n_tumours!r}.")
    return int(seed), int(size), n_slices if n_slices is None else int(n_slices), extent_mm, (int(t[0]), int(t[1]))


def _render_pet(pet_grid, layers, p, rng) -> np.ndarray:
    """Activity (SUV) on a half-voxel working grid over the body, PSF blur, voxel integration, noise."""
    from scipy import ndimage

    from vmambax.phantom.shapes import Grid, paint, smooth_noise

    ps, pz = pet_grid.spacing[0], pet_grid.spacing[2]
    # PET voxels covering the body (with room for the PSF tails); outside it the activity is 0
    reach = (p.body_a + 40.0, p.body_b_ant + 25.0, p.body_b_post + 25.0)
    i0 = max(int(np.floor((-reach[0] - pet_grid.origin[0]) / ps)), 0)
    i1 = min(int(np.ceil((reach[0] - pet_grid.origin[0]) / ps)) + 1, pet_grid.size[0])
    j0 = max(int(np.floor((-reach[1] - pet_grid.origin[1]) / ps)), 0)
    j1 = min(int(np.ceil((reach[2] - pet_grid.origin[1]) / ps)) + 1, pet_grid.size[1])
    nz = pet_grid.size[2]
    work = Grid(origin=(pet_grid.origin[0] + (i0 - 0.25) * ps, pet_grid.origin[1] + (j0 - 0.25) * ps,
                        pet_grid.origin[2] - 0.25 * pz),
                spacing=(ps / 2, ps / 2, pz / 2), size=(2 * (i1 - i0), 2 * (j1 - j0), 2 * nz))
    act, _ = paint(work, layers, "pet", 0.0)
    sigma_mm = PSF_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    act = ndimage.gaussian_filter(act, [sigma_mm / s for s in (pz / 2, ps / 2, ps / 2)], mode="constant")
    blocks = act.reshape(nz, 2, j1 - j0, 2, i1 - i0, 2).mean(axis=(1, 3, 5))
    suv = np.zeros(pet_grid.shape, dtype=np.float32)
    suv[:, j0:j1, i0:i1] = blocks
    # Noise: OSEM images have variance ~ proportional to activity, spatially correlated over ~1 voxel;
    # the level gives a liver coefficient of variation of ~10-12 %.
    n = smooth_noise(suv.shape, (0.8, 0.8, 0.8), rng) * 0.6 + rng.standard_normal(suv.shape, dtype=np.float32) * 0.8
    suv = suv + n * np.sqrt(0.028 * np.maximum(suv, 0.0))
    return np.maximum(suv, 0.0).astype(np.float32)


def _to_patient(c, z_offset) -> list[float]:
    return [round(float(c[0]), 2), round(float(c[1]), 2), round(float(c[2]) + z_offset, 2)]


def _lesion_info(tumours, owner, ct_grid, suv, pet_grid, z_offset) -> list[dict]:
    from vmambax.phantom.anatomy import TUMOUR_BASE

    vox_ml = float(np.prod(ct_grid.spacing)) / 1000.0
    out = []
    for t in tumours:
        d = dict(t.info())
        d["centre_mm"] = _to_patient(t.centre, z_offset)
        n = int(np.count_nonzero(owner == TUMOUR_BASE + t.index))
        d["label_volume_ml"] = round(n * vox_ml, 4)
        d["in_label"] = n > 0
        # SUVmax as imaged (after PSF and noise): PET voxels whose centre lies in the tumour (or the
        # voxel nearest its centre for tumours smaller than a PET voxel)
        sl = pet_grid.slices(t.bbox)
        best = 0.0
        if sl is not None:
            x, y, z = pet_grid.coords(sl)
            inside = np.broadcast_to(t.sdf(x, y, z), suv[sl].shape) <= 0.0
            if inside.any():
                best = float(suv[sl][inside].max())
        if best == 0.0:
            idx = [int(np.clip(round((t.centre[i] - pet_grid.origin[i]) / pet_grid.spacing[i]), 0,
                               pet_grid.size[i] - 1)) for i in range(3)]
            best = float(suv[idx[2], idx[1], idx[0]])
        d["suvmax_pet"] = round(best, 3)
        out.append(d)
    return out


def _study_info(ph: Phantom, case_id: str):
    from vmambax.data.dicom_write import StudyInfo

    return StudyInfo(patient_id=case_id, patient_name=f"Phantom^{case_id}", sex=ph.sex, weight_kg=ph.weight_kg,
                     height_m=ph.height_m, study_datetime=ph.injection_time - _dt.timedelta(minutes=10),
                     uid_seed=f"vmambax-phantom-{ph.seed}-{case_id}", accession=f"PH{ph.seed:06d}",
                     birth_date=f"{ph.injection_time.year - 45 - ph.seed % 30}0101")


def check_case_id(case_id: str) -> str:
    if not isinstance(case_id, str) or not CASE_ID_RE.match(case_id):
        raise ConfigError(f"case id {case_id!r} is not valid: use letters, digits, '-' and '.' only "
                          "(no '_', which PCLT20K-style slice IDs use as separator, and no path separators).")
    return case_id


def write_case(phantom: Phantom, out_dir: str | Path, case_id: str | None = None, dicom: bool = True,
               overwrite: bool = False) -> Path:
    """Write ``<out_dir>/<case_id>/`` (ct.nii.gz, pet.nii.gz in SUV on the PET grid, label.nii.gz,
    dicom/ct, dicom/pet in Bq/mL with SUV tags, case.json) atomically: everything is written to a
    temporary folder that is renamed into place only when complete. An existing non-empty case
    folder is an error unless ``overwrite``."""
    case_id = check_case_id(case_id if case_id is not None else default_case_id(phantom.seed))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} exists and is not a folder: choose a folder for --out.")
    target = out_dir / case_id
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise InputError(f"case folder {target} already exists and is not empty: choose another --out, "
                         "delete it, or pass --overwrite.")
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} exists and is not a folder: choose another --out or case id.")
    # Staged, every file verified (a full disk is an OutputError naming the path and the free
    # space), then swapped in; an old case folder (--overwrite) is removed only after that.
    _write_staging(phantom, target, case_id, dicom)
    return target


def _write_staging(phantom: Phantom, target: Path, case_id: str, dicom: bool) -> None:
    import os

    import SimpleITK as sitk

    from vmambax.data.dicom_write import PetDose, write_ct_series, write_pet_series
    from vmambax.utils import atomic_dir

    with atomic_dir(target, replace=True) as tmp:
        sitk.WriteImage(phantom.ct, str(tmp / "ct.nii.gz"), True)
        sitk.WriteImage(phantom.pet_suv, str(tmp / "pet.nii.gz"), True)
        sitk.WriteImage(phantom.label, str(tmp / "label.nii.gz"), True)
        info = phantom.case_info()
        info["case_id"] = case_id
        if dicom:
            study = _study_info(phantom, case_id)
            ct_time = phantom.acquisition_time - _dt.timedelta(minutes=2)  # the CT precedes the PET
            write_ct_series(phantom.ct, tmp / "dicom" / "ct", study, ct_time)
            write_pet_series(phantom.pet_bqml, tmp / "dicom" / "pet", study,
                             PetDose(phantom.injection_time, phantom.dose_bq), phantom.acquisition_time)
            info["dicom"] = dict(ct="dicom/ct", pet="dicom/pet", pet_units="BQML",
                                 study_instance_uid=study.study_uid,
                                 frame_of_reference_uid=study.frame_of_reference_uid)
        (tmp / "case.json").write_text(json.dumps(info, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a case folder is a normal folder


def default_case_id(seed: int) -> str:
    return f"phantom-{seed:04d}"


def preview_slice(phantom: Phantom) -> int:
    """The CT slice with the largest tumour cross-section (the middle slice if there is none)."""
    import SimpleITK as sitk

    area = sitk.GetArrayViewFromImage(phantom.label).sum(axis=(1, 2))
    return int(np.argmax(area)) if area.max() > 0 else phantom.ct.GetSize()[2] // 2


def save_preview(phantom: Phantom, path: str | Path, z: int | None = None, suv_max: float = 8.0) -> Path:
    """Three-panel PNG of one axial slice: CT (lung window), PET SUV (inverted grey, 0-``suv_max``)
    resampled onto the CT slice, and the tumour label contour on the CT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from vmambax.utils import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"preview must be a .png file, got {path.name!r}.")
    nz = phantom.ct.GetSize()[2]
    z = preview_slice(phantom) if z is None else int(z)
    if not 0 <= z < nz:
        raise ConfigError(f"preview slice {z} is outside the CT (0..{nz - 1}).")
    ct_slice = phantom.ct[:, :, z:z + 1]
    pet = sitk.Resample(phantom.pet_suv, ct_slice, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ct = sitk.GetArrayFromImage(ct_slice)[0].astype(np.float32)
    suv = sitk.GetArrayFromImage(pet)[0]
    lab = sitk.GetArrayFromImage(phantom.label[:, :, z:z + 1])[0]
    # crop to the patient (plus the table) so the anatomy fills the panels
    rows, cols = np.nonzero(ct > -500)
    r0, r1 = max(rows.min() - 8, 0), min(rows.max() + 8, ct.shape[0])
    c0, c1 = max(cols.min() - 8, 0), min(cols.max() + 8, ct.shape[1])
    ct, suv, lab = ct[r0:r1, c0:c1], suv[r0:r1, c0:c1], lab[r0:r1, c0:c1]
    sx, sy = phantom.ct.GetSpacing()[:2]
    extent = (0, ct.shape[1] * sx, ct.shape[0] * sy, 0)
    zmm = phantom.ct.GetOrigin()[2] + z * phantom.ct.GetSpacing()[2]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.5), dpi=100)
    lung = dict(cmap="gray", vmin=-1350, vmax=150, extent=extent, interpolation="bilinear")
    axes[0].imshow(ct, **lung)
    axes[0].set_title("CT, lung window (W1500 L-600)")
    im = axes[1].imshow(suv, cmap="gray_r", vmin=0, vmax=suv_max, extent=extent, interpolation="bilinear")
    axes[1].set_title(f"PET SUV 0-{suv_max:g} (own grid, resampled)")
    fig.colorbar(im, ax=axes[1], fraction=0.035, pad=0.02)
    axes[2].imshow(ct, **lung)
    if lab.any():
        axes[2].contour((np.arange(lab.shape[1]) + 0.5) * sx, (np.arange(lab.shape[0]) + 0.5) * sy, lab,
                        levels=[0.5], colors="#ff3030", linewidths=1.2)
    axes[2].set_title("CT + tumour label")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.02, 0.02, "R", color="yellow", transform=ax.transAxes, fontsize=10, fontweight="bold")
    fig.suptitle(f"Synthetic PET/CT phantom, seed {phantom.seed}: axial slice {z} (z = {zmm:.1f} mm), "
                 f"{phantom.weight_kg:.0f} kg, {phantom.dose_bq / 1e6:.0f} MBq FDG, "
                 f"{phantom.uptake_s / 60:.0f} min uptake", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
