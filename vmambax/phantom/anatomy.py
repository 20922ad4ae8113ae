"""Synthetic thorax anatomy for the PET/CT phantom: patient parameters and the painted layers.

Anatomy coordinates are LPS millimetres with the body axis on x = y = 0 and z = 0 at the top of
the right hemidiaphragm dome. Every structure carries a CT value (HU) and a PET value (SUV at
acquisition) so the same description renders both modalities. Values follow typical adult
non-contrast CT and 60-min FDG PET: lung ~ -850 HU / SUV 0.5, fat -100 / 0.3, muscle +45 / 0.7,
blood pool 1.6-2.0, liver 2-2.5, marrow 1.5-2, myocardium 1.5-12 (fasting varies), kidneys 3-6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vmambax.phantom.shapes import (
    FAR, Layer, Union, Waves, capsule_dist, ellipse2d, ellipsoid, polyline_bbox, smoothstep, tube)

# Layer owner ids (the CT painter's owner map uses them; tumours are TUMOUR_BASE + index).
TABLE, FAT, MUSCLE, MED_FAT, ABDOMEN, LUNG, VESSEL = 1, 2, 3, 4, 5, 6, 7
HEART, MYOCARDIUM, GREAT_VESSEL, AIRWAY_WALL, AIRWAY, ESOPHAGUS = 8, 9, 10, 11, 12, 13
LIVER, SPLEEN, STOMACH, BOWEL_AIR, KIDNEY, BONE, DISC, CORD = 14, 15, 16, 17, 18, 19, 20, 21
NODE, BROWN_FAT = 22, 23
TUMOUR_BASE = 100


@dataclass
class Patient:
    """Random patient: body habitus, landmark heights and tissue uptakes."""

    weight_kg: float
    height_m: float
    sex: str
    fat: float  # subcutaneous fat thickness, mm
    cav_a: float  # thoracic cavity (inner rib surface) semi-axes at mid-thorax, mm
    cav_b_ant: float
    cav_b_post: float
    z_apex: float  # lung apex height
    dome_l: float  # left hemidiaphragm dome (right dome is z = 0)
    z_carina: float
    z_arch: float
    heart_c: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    heart_rot: float
    r_vb: float
    r_aorta: float
    rib_drop: float
    rib_top: float
    suv: dict
    hu_lung: float

    @property
    def y_vb(self) -> float:  # vertebral-body centre, protruding into the cavity
        return self.cav_b_post - 0.55 * self.r_vb

    @property
    def y_esophagus(self) -> float:
        return self.y_vb - self.r_vb - 7.0

    @property
    def y_trachea(self) -> float:
        return self.y_esophagus - 17.0

    @property
    def body_a(self) -> float:
        return self.cav_a + 17.0 + self.fat

    @property
    def body_b_ant(self) -> float:
        return self.cav_b_ant + 14.0 + self.fat

    @property
    def body_b_post(self) -> float:
        return self.cav_b_post + 50.0 + 0.5 * self.fat


def sample_patient(rng: np.random.Generator) -> Patient:
    # rounded as DICOM stores them, so SUV from the written tags equals the phantom's own factor
    weight = round(float(rng.uniform(50.0, 110.0)), 1)
    sex = "F" if rng.random() < 0.45 else "M"
    height = round(float(rng.uniform(1.52, 1.75) if sex == "F" else rng.uniform(1.62, 1.92)), 2)
    frame = (height / 1.72) ** 0.7 * (1.0 if sex == "M" else 0.94)
    fat = float(np.clip(4.0 + 26.0 * (weight - 50.0) / 60.0 + rng.normal(0, 3), 4.0, 34.0))
    cav_a = float(rng.uniform(125, 145) * frame)
    cav_b_ant = float(rng.uniform(85, 100) * frame)
    cav_b_post = float(rng.uniform(58, 66) * frame)
    dome_l = float(rng.uniform(-20, -8))
    z_apex = float(rng.uniform(165, 190) * frame)
    z_carina = float(rng.uniform(0.58, 0.64) * z_apex)
    z_arch = float(z_carina + rng.uniform(22, 32))
    heart_axes = (float(rng.uniform(56, 64)), float(rng.uniform(38, 45)), float(rng.uniform(46, 54)))
    heart_bottom = dome_l - 12.0
    heart_c = (float(rng.uniform(22, 32)), float(-0.22 * cav_b_ant + rng.uniform(-5, 5)),
               heart_bottom + heart_axes[2] * 0.85)
    # Myocardial FDG uptake after fasting is anything from blood-pool level to intense.
    myo = float(np.exp(rng.uniform(np.log(1.5), np.log(12.0))))
    suv = dict(
        fat=float(rng.uniform(0.25, 0.4)), muscle=float(rng.uniform(0.55, 0.85)),
        lung=float(rng.uniform(0.4, 0.6)), blood=float(rng.uniform(1.5, 2.0)),
        liver=float(rng.uniform(2.0, 2.6)), spleen=float(rng.uniform(1.6, 2.1)),
        marrow=float(rng.uniform(1.4, 2.0)), myocardium=myo, kidney=float(rng.uniform(3.0, 6.0)),
        urine=float(rng.uniform(8.0, 20.0)), stomach=float(rng.uniform(1.2, 2.5)),
        esophagus=float(rng.uniform(1.0, 2.2)), bone=0.5, cord=0.7, soft=1.0,
    )
    return Patient(
        weight_kg=weight, height_m=height, sex=sex, fat=fat, cav_a=cav_a, cav_b_ant=cav_b_ant,
        cav_b_post=cav_b_post, z_apex=z_apex, dome_l=dome_l, z_carina=z_carina, z_arch=z_arch,
        heart_c=heart_c, heart_axes=heart_axes, heart_rot=float(np.radians(rng.uniform(25, 40))),
        r_vb=float(rng.uniform(15, 19)), r_aorta=float(rng.uniform(11, 15)),
        rib_drop=float(rng.uniform(90, 120)), rib_top=z_apex + float(rng.uniform(0, 10)),
        suv=suv, hu_lung=float(rng.uniform(-880, -830)),
    )


# --- shared surfaces --------------------------------------------------------------------------

def cavity_axes(p: Patient, z):
    """Thoracic-cavity semi-axes (a, b_ant, b_post) at height z: it narrows towards the apex."""
    u = np.clip((z - 0.6 * p.z_apex) / (0.45 * p.z_apex), 0.0, 1.0) ** 1.6
    return p.cav_a * (1 - 0.38 * u), p.cav_b_ant * (1 - 0.42 * u), p.cav_b_post + 0 * u


def cavity_sdf(p: Patient):
    def sdf(x, y, z):
        a, bf, bb = cavity_axes(p, z)
        return ellipse2d(x, y, 0.0, 0.0, a, bf, bb)
    return sdf


def diaphragm_z(p: Patient, x, y):
    """Height of the diaphragm: two domes, falling into the costophrenic recesses."""
    right = 0.0 - 55.0 * (((x + 55.0) / 85.0) ** 2 + ((y + 15.0) / 90.0) ** 2)
    left = p.dome_l - 55.0 * (((x - 60.0) / 85.0) ** 2 + ((y + 15.0) / 90.0) ** 2)
    return np.maximum(right, left)


def _rot(theta: float, cx: float, cy: float, x, y):
    c, s = math.cos(theta), math.sin(theta)
    return c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)


def rotated_ellipsoid(c, axes, theta):
    base = ellipsoid((0.0, 0.0, c[2]), axes)

    def sdf(x, y, z):
        xr, yr = _rot(theta, c[0], c[1], x, y)
        return base(xr, yr, z)
    return sdf


def box(c, half):
    return (c[0] - half[0], c[0] + half[0], c[1] - half[1], c[1] + half[1], c[2] - half[2], c[2] + half[2])


def _cap_to_thorax(p: Patient, sdf, margin=2.0):
    """Cut a structure at the diaphragm (keeps the heart and lungs out of the abdomen)."""
    def f(x, y, z):
        return np.maximum(sdf(x, y, z), diaphragm_z(p, x, y) + margin - z)
    return f


def _bone_hu(cancellous: float, cortex: float, thick: float):
    """Bone with a bright cortical rim ``thick`` mm wide inside the surface."""
    def f(x, y, z, d):
        return cancellous + (cortex - cancellous) * smoothstep(-thick, 0.0, d)
    return f


# --- mediastinum ------------------------------------------------------------------------------

@dataclass
class Mediastinum:
    heart: object
    lv_outer: object
    lv_inner: object
    aorta_pts: list
    pa_pts: list
    vessels: list  # (points, radius) of aorta, pulmonary arteries, SVC, arch branches
    trachea_pts: list
    bronchi: list
    esophagus_pts: list
    hila: dict  # 'R'/'L' -> (x, y, z)


def mediastinum(p: Patient) -> Mediastinum:
    hx, hy, hz = p.heart_c
    th = p.heart_rot
    heart = _cap_to_thorax(p, rotated_ellipsoid(p.heart_c, p.heart_axes, th))
    c, s = math.cos(th), math.sin(th)
    lv_c = (hx + c * 14.0 - s * 10.0, hy + s * 14.0 + c * 10.0, hz - 6.0)
    lv_outer = _cap_to_thorax(p, rotated_ellipsoid(lv_c, (38.0, 27.0, 38.0), th))
    lv_inner = rotated_ellipsoid(lv_c, (26.0, 15.0, 27.0), th)
    top = p.z_apex + 80.0
    ra, yv = p.r_aorta, p.y_vb
    x_desc, y_desc = p.r_vb + 0.8 * ra, yv - 0.6 * p.r_vb
    aorta = [(2.0, hy + 8.0, hz + 18.0), (-10.0, hy - 2.0, p.z_arch - 18.0),
             (-6.0, -12.0, p.z_arch - 2.0), (8.0, 8.0, p.z_arch + 2.0),
             (x_desc, y_desc, p.z_arch - 12.0), (x_desc - 4.0, y_desc - 4.0, -260.0)]
    bif = (6.0, hy + 18.0, p.z_carina - 16.0)
    pa = [(hx - 2.0, hy - 22.0, hz + 30.0), bif]
    hila = {"R": (-(p.r_vb + 40.0), p.y_trachea + 12.0, p.z_carina - 20.0),
            "L": (p.r_vb + 42.0, p.y_trachea + 16.0, p.z_carina - 14.0)}
    vessels = [(aorta, ra), (pa, 13.0), ([bif, hila["R"]], 10.0), ([bif, hila["L"]], 10.0),
               ([(-30.0, hy - 8.0, top), (-28.0, hy - 4.0, hz + 35.0)], 10.0),  # SVC
               ([(-6.0, -12.0, p.z_arch), (-16.0, -20.0, top)], 6.0),  # brachiocephalic a.
               ([(2.0, -6.0, p.z_arch), (8.0, -14.0, top)], 4.5),  # left carotid
               ([(10.0, 4.0, p.z_arch), (26.0, 0.0, top)], 5.0),  # left subclavian
               ([(-28.0, hy - 4.0, p.z_arch + 20.0), (30.0, -30.0, p.z_arch + 45.0)], 6.0)]  # l. brachioceph. v.
    yt = p.y_trachea
    trachea = [(0.0, yt, top), (0.0, yt, p.z_carina)]
    bronchi = [[(0.0, yt, p.z_carina), (hila["R"][0] + 10.0, yt + 6.0, p.z_carina - 18.0)],
               [(0.0, yt, p.z_carina), (hila["L"][0] - 10.0, yt + 10.0, p.z_carina - 28.0)]]
    ye = p.y_esophagus
    esophagus = [(3.0, ye, top), (8.0, ye, p.dome_l - 5.0), (45.0, -10.0, p.dome_l - 35.0)]
    return Mediastinum(heart, lv_outer, lv_inner, aorta, pa, vessels, trachea, bronchi, esophagus, hila)


def envelope(p: Patient, m: Mediastinum) -> Union:
    """The region the lungs may not enter: mediastinal organs dilated by a few mm of fat, the
    spine, and a central strip from sternum to spine, smoothly merged."""
    k = 10.0
    parts = []

    def add(sdf, margin, bbox):
        parts.append((lambda x, y, z, f=sdf: f(x, y, z) - margin, bbox))

    hx, hy, hz = p.heart_c
    r = max(p.heart_axes) + 25.0
    add(m.heart, 7.0, box(p.heart_c, (r, r, r)))
    for pts, rad in m.vessels:
        add(tube(pts, rad), 5.0, polyline_bbox(pts, rad + 5 + k + 5))
    for pts, rad in [(m.trachea_pts, 9.0)] + [(b, 6.5) for b in m.bronchi] + [(m.esophagus_pts, 7.0)]:
        add(tube(pts, rad), 4.0, polyline_bbox(pts, rad + 4 + k + 5))
    vb = lambda x, y, z: ellipse2d(x, y, 0.0, p.y_vb, p.r_vb, p.r_vb * 0.9, p.r_vb * 0.9)
    add(vb, 5.0, (-p.r_vb - 30, p.r_vb + 30, p.y_vb - p.r_vb - 30, p.y_vb + p.r_vb + 30, -FAR, FAR))

    def strip(x, y, z):
        _, bf, _ = cavity_axes(p, z)
        y0, y1 = -bf, p.y_vb
        w = 9.0 + 17.0 * smoothstep(hz + 25.0, p.z_arch, z)
        w = w * (0.35 + 0.65 * smoothstep(y0, 0.5 * (y0 + y1), y))  # thin anterior junction behind the sternum
        return ellipse2d(x, y, 4.0, 0.5 * (y0 + y1), w, 0.5 * (y1 - y0) + 5.0, 0.5 * (y1 - y0) + 5.0)
    parts.append((strip, (-60, 60, -p.cav_b_ant - 30, p.y_vb + 30, -FAR, FAR)))
    return Union(parts, k=k)


# --- lungs and their vessels --------------------------------------------------------------------

def lung_sdf(p: Patient, env: Union):
    cav = cavity_sdf(p)

    def apex_z(x, y):
        return p.z_apex - 45.0 * (((np.abs(x) - 50.0) / 100.0) ** 2 + ((y - 10.0) / 110.0) ** 2)

    def sdf(x, y, z):
        d = np.maximum(cav(x, y, z), -env(x, y, z))
        d = np.maximum(d, diaphragm_z(p, x, y) - z)
        return np.maximum(d, z - apex_z(x, y))
    return sdf


def _deflect(d: np.ndarray, angles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate unit vectors ``d`` (n, 3) by ``angles`` about random perpendicular axes."""
    axis = np.cross(d, rng.normal(size=d.shape))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True) + 1e-9
    out = d * np.cos(angles)[:, None] + np.cross(axis, d) * np.sin(angles)[:, None]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def vessel_tree(p: Patient, m: Mediastinum, lung, rng: np.random.Generator, min_radius: float = 0.5,
                max_segments: int = 6000) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Pulmonary vessels: branching trees from each hilum, tapering towards the pleura.

    Grown generation by generation (all branch tips tested against the lung in one vectorised call):
    each segment is ~7 radii long; a tip that would leave the lung tries deflected directions and
    dies if none fits; each segment forks into a major and a minor child."""
    starts, dirs, radii = [], [], []
    for side, lat in (("R", -1.0), ("L", 1.0)):
        for d0 in ((0.4, -0.1, 1.0), (0.3, 0.4, 1.0), (0.5, 0.6, -1.0), (0.6, -0.7, -0.5), (1.0, 0.15, 0.05),
                   (0.6, 0.3, 0.6), (0.7, 0.8, -0.3), (0.8, -0.5, 0.4)):
            d = np.array([d0[0] * lat, d0[1], d0[2]]) + rng.normal(0, 0.1, 3)
            starts.append(np.array(m.hila[side], dtype=float))
            dirs.append(d / np.linalg.norm(d))
            radii.append(float(rng.uniform(3.5, 5.5)))
    S, D, R = np.array(starts), np.array(dirs), np.array(radii)
    segs: list[tuple[np.ndarray, np.ndarray, float]] = []
    while len(R) and len(segs) < max_segments:
        n = len(R)
        length = np.clip(R * 7.0, 4.0, 30.0) * rng.uniform(0.8, 1.2, n)
        cands = np.stack([D] + [_deflect(D, np.radians(rng.uniform(20, 55, n)), rng) for _ in range(3)])
        ends = S[None] + cands * length[None, :, None]
        flat = ends.reshape(-1, 3).astype(np.float32)
        ok = (lung(flat[:, 0], flat[:, 1], flat[:, 2]) < -1.0).reshape(4, n)
        first = np.argmax(ok, axis=0)
        alive = ok.any(axis=0)
        E = ends[first, np.arange(n)]
        Dn = cands[first, np.arange(n)]
        for i in np.flatnonzero(alive):
            segs.append((S[i], E[i], float(R[i])))
        S, D, R = E[alive], Dn[alive], R[alive]
        n = len(R)
        third = rng.random(n) < 0.35  # some segments trifurcate
        S = np.concatenate([S, S, S[third]])
        D = np.concatenate([_deflect(D, np.radians(rng.uniform(8, 25, n)), rng),
                            _deflect(D, np.radians(rng.uniform(30, 60, n)), rng),
                            _deflect(D[third], np.radians(rng.uniform(35, 70, int(third.sum()))), rng)])
        R = np.concatenate([R * rng.uniform(0.78, 0.9, n), R * rng.uniform(0.5, 0.72, n),
                            R[third] * rng.uniform(0.4, 0.6, int(third.sum()))])
        keep = R >= min_radius
        S, D, R = S[keep], D[keep], R[keep]
    return segs


def vessel_sdf(segs, min_radius: float = 0.0) -> Union:
    parts = []
    for a, b, r in segs:
        if r < min_radius:
            continue
        a_, b_ = tuple(a), tuple(b)
        parts.append((lambda x, y, z, a_=a_, b_=b_, r=r: capsule_dist(x, y, z, a_, b_) - r,
                      polyline_bbox([a, b], r + 3.0)))
    return Union(parts)


# --- the layer list -------------------------------------------------------------------------------

def anatomy_layers(p: Patient, rng: np.random.Generator, z_range: tuple[float, float] = (-400.0, 500.0),
                   abdomen_floor: float = -400.0) -> tuple[list[Layer], list[Layer], dict]:
    """Return (layers before the tumours, layers after them, helpers) in painting order.

    ``z_range``: axial reach of the body layers (the whole-body phantom extends it to the thighs);
    ``abdomen_floor``: where the abdominal cavity's soft tissue ends (its pelvic floor).

    Tumours are painted between the lungs and the mediastinal organs so that they fill lung and
    mediastinal fat but never cover the heart, vessels or bones."""
    s = p.suv
    cav = cavity_sdf(p)
    m = mediastinum(p)
    env = envelope(p, m)
    lung = lung_sdf(p, env)
    lung_tex = Waves(rng, 6, (15.0, 40.0))
    organ_tex = Waves(rng, 5, (25.0, 60.0))
    xa, ba, bp = p.body_a, p.body_b_ant, p.body_b_post
    zlo, zhi = z_range
    body_bbox = (-xa - 40, xa + 40, -ba - 5, bp + 5, zlo, zhi)
    cav_bbox = (-p.cav_a - 5, p.cav_a + 5, -p.cav_b_ant - 5, p.cav_b_post + 5, zlo, zhi)

    def body(x, y, z):
        shoulders = 22.0 * smoothstep(0.55 * p.z_apex, p.z_apex + 20.0, z)
        return ellipse2d(x, y, 0.0, 0.0, xa + shoulders, ba, bp)

    def muscle(x, y, z):
        shoulders = 22.0 * smoothstep(0.55 * p.z_apex, p.z_apex + 20.0, z)
        pect = 14.0 * smoothstep(0.35 * p.z_apex, 0.75 * p.z_apex, z)  # pectoral muscles
        d = ellipse2d(x, y, 0.0, 0.0, xa + shoulders - p.fat, ba - p.fat, bp - 0.5 * p.fat)
        return d - pect * smoothstep(0.0, 60.0, np.abs(x)) * smoothstep(0.0, -0.5 * ba, y)

    def table_sdf(x, y, z):
        top = bp + 6.0 - 0.0011 * x * x
        return np.maximum(np.abs(y - top - 7.0) - 7.0, np.abs(x) - 235.0)

    def table_hu(x, y, z, d):
        return np.where(d < -2.0, -940.0, 260.0)  # carbon-fibre shells around a foam core

    def abdomen(x, y, z):
        return np.maximum(cav(x, y, z), z - diaphragm_z(p, x, y))

    def lung_hu(x, y, z, d):
        dep = smoothstep(-p.cav_b_ant, p.cav_b_post, y)  # gravity-dependent density, supine
        return p.hu_lung + 55.0 * dep + 18.0 * lung_tex(x, y, z)

    def lung_suv(x, y, z, d):
        return s["lung"] * (0.85 + 0.35 * smoothstep(-p.cav_b_ant, p.cav_b_post, y))

    layers: list[Layer] = [
        Layer("table", table_sdf, (-240, 240, bp, bp + 60, zlo, zhi), table_hu, None, TABLE),
        Layer("fat", body, body_bbox, -105.0, s["fat"], FAT),
        Layer("muscle", muscle, body_bbox, lambda x, y, z, d: 45.0 + 5.0 * organ_tex(x, y, z),
              s["muscle"], MUSCLE, frozenset({FAT})),
        Layer("mediastinal fat", cav, cav_bbox, -95.0, s["fat"] + 0.1, MED_FAT),
        Layer("abdomen", abdomen, cav_bbox[:4] + (max(zlo, abdomen_floor), 40.0), 25.0, s["soft"], ABDOMEN),
        Layer("lung", lung, cav_bbox[:4] + (-120.0, p.z_apex + 5), lung_hu, lung_suv, LUNG),
    ]
    after: list[Layer] = []
    A = after.append
    # heart: blood pool, then the left-ventricular wall (the myocardium confounder), then its cavity
    hb = box(p.heart_c, (max(p.heart_axes) + 5,) * 3)
    A(Layer("heart", m.heart, hb, 40.0, s["blood"], HEART))

    def myo_suv(x, y, z, d):  # regional variation of myocardial uptake (e.g. lateral wall hotter)
        return s["myocardium"] * (1.0 + 0.25 * np.cos((x - p.heart_c[0]) / 25.0))
    A(Layer("myocardium", m.lv_outer, hb, 46.0, myo_suv, MYOCARDIUM, frozenset({HEART})))
    A(Layer("left ventricle", m.lv_inner, hb, 38.0, s["blood"], HEART, frozenset({MYOCARDIUM})))
    for pts, rad in m.vessels:
        A(Layer("great vessel", tube(pts, rad), polyline_bbox(pts, rad + 3), 40.0, s["blood"], GREAT_VESSEL))
    airway = [(m.trachea_pts, 9.5)] + [(b, 6.5) for b in m.bronchi]
    for pts, rad in airway:
        A(Layer("airway wall", tube(pts, rad), polyline_bbox(pts, rad + 3), 30.0, 0.8, AIRWAY_WALL))
    for pts, rad in airway:
        A(Layer("airway", tube(pts, rad - 2.0), polyline_bbox(pts, rad + 3), -990.0, 0.0, AIRWAY))
    A(Layer("esophagus", tube(m.esophagus_pts, 7.0), polyline_bbox(m.esophagus_pts, 10), 35.0,
            s["esophagus"], ESOPHAGUS))
    # upper abdomen: liver (right), stomach with an air cap, spleen, kidneys with urine in the pelvis
    in_abd = frozenset({ABDOMEN, GREAT_VESSEL, ESOPHAGUS})
    liver_parts = Union([(ellipsoid((-50.0, 0.0, -85.0), (88.0, 95.0, 115.0)), (-150, 50, -110, 110, -210, 40)),
                         (ellipsoid((0.0, -50.0, -45.0), (55.0, 35.0, 40.0)), (-60, 60, -90, -10, -90, 0))], k=15)
    liver = lambda x, y, z: np.maximum(liver_parts(x, y, z), z - (diaphragm_z(p, x, y) - 4.0))
    A(Layer("liver", liver, (-150, 90, -110, 110, -210, 10),
            lambda x, y, z, d: 58.0 + 6.0 * organ_tex(x, y, z),
            lambda x, y, z, d: s["liver"] * (1.0 + 0.08 * organ_tex(x, y, z)), LIVER, in_abd))
    st_c, st_ax = (62.0, -25.0, p.dome_l - 48.0), (42.0, 38.0, 45.0)
    A(Layer("stomach", ellipsoid(st_c, st_ax), box(st_c, st_ax), 20.0, s["stomach"], STOMACH, in_abd))
    gas = lambda x, y, z: np.maximum(ellipsoid(st_c, st_ax)(x, y, z) + 4.0, y - (st_c[1] - 0.35 * st_ax[1]))
    A(Layer("stomach gas", gas, box(st_c, st_ax), -990.0, 0.0, BOWEL_AIR, frozenset({STOMACH})))
    sp_c, sp_ax = (88.0, 52.0, p.dome_l - 58.0), (30.0, 45.0, 50.0)
    A(Layer("spleen", ellipsoid(sp_c, sp_ax), box(sp_c, sp_ax), 48.0, s["spleen"], SPLEEN, in_abd))
    for kc in kidney_centres(p):
        kax, lat = (26.0, 30.0, 55.0), np.sign(kc[0])
        A(Layer("kidney", ellipsoid(kc, kax), box(kc, kax), 32.0, s["kidney"], KIDNEY, in_abd))
        pc, pax = (lat * 58.0, kc[1] - 5.0, kc[2] + 5.0), (9.0, 9.0, 25.0)
        A(Layer("renal pelvis", ellipsoid(pc, pax), box(pc, pax), 10.0, s["urine"], KIDNEY))
    after.extend(skeleton_layers(p, cav))
    helpers = dict(cavity=cav, lung=lung, envelope=env, mediastinum=m, lung_texture=lung_tex)
    return layers, after, helpers


def kidney_centres(p: Patient) -> list[tuple[float, float, float]]:
    return [(lat * 70.0, p.cav_b_post - 8.0, -135.0) for lat in (-1.0, 1.0)]


def skeleton_layers(p: Patient, cav) -> list[Layer]:
    s = p.suv
    yv, rv = p.y_vb, p.r_vb
    spine_box = (-60, 60, yv - rv - 5, p.body_b_post, -400, 500)
    disc_period, disc_phase = 24.0, 7.0

    def vb(x, y, z):
        return ellipse2d(x, y, 0.0, yv, rv, rv * 0.9, rv * 0.9)

    def disc(x, y, z):
        dz = np.abs(((z - disc_phase) % disc_period) - disc_period / 2) - (disc_period / 2 - 2.5)
        return np.maximum(vb(x, y, z) + 1.0, -dz)

    yc = yv + 0.9 * rv + 7.0  # spinal canal centre, just behind the vertebral body

    def arch(x, y, z):
        ring = np.sqrt(x * x + (y - yc) ** 2) - 12.0  # pedicles and laminae around the canal
        phase = ((z - disc_phase) % disc_period) / disc_period  # processes at some levels only
        spinous = capsule_dist(x, y, z, (0.0, yc + 8.0, 0.0), (0.0, yc + 28.0, 0.0)) - 4.5
        spinous = np.where((phase > 0.15) & (phase < 0.7), spinous, FAR)
        transverse = np.minimum(capsule_dist(x, y, z, (0.0, yc - 2.0, 0.0), (30.0, yc - 4.0, 0.0)),
                                capsule_dist(x, y, z, (0.0, yc - 2.0, 0.0), (-30.0, yc - 4.0, 0.0))) - 5.0
        transverse = np.where((phase > 0.3) & (phase < 0.8), transverse, FAR)
        d = np.minimum(np.minimum(ring, spinous), transverse)
        return np.maximum(d, yv - y)  # only behind the vertebral body's centre

    def rib_phi(x, y, z):
        a, bf, bb = cavity_axes(p, z)
        return np.arctan2(np.abs(x) / a, y / np.where(y < 0, bf, bb))  # 0 posterior, pi anterior

    def ribs(x, y, z):
        """12 ribs, sloping down anteriorly, so an axial slice cuts several at different angles;
        the anterior ends are costal cartilage (see rib_hu)."""
        phi = rib_phi(x, y, z)
        dr = cav(x, y, z) - 7.0
        u = (p.rib_top - p.rib_drop * (1 - np.cos(phi)) / 2 - z) / 25.0
        k = np.round(u)
        dz = (u - k) * 25.0
        h = 5.0 + 2.0 * phi / np.pi
        d = (np.sqrt((dr / 4.5) ** 2 + (dz / h) ** 2) - 1.0) * 4.5
        d = np.where((k >= 0) & (k <= 11), d, FAR)
        return np.maximum(d, np.maximum(0.1 * np.pi - phi, phi - 0.95 * np.pi) * 60.0)

    rib_bone = _bone_hu(280.0, 850.0, 1.8)

    def rib_hu(x, y, z, d):
        return np.where(rib_phi(x, y, z) > 0.84 * np.pi, 120.0, rib_bone(x, y, z, d))

    def sternum(x, y, z):
        _, bf, _ = cavity_axes(p, z)
        w = 13.0 + 10.0 * smoothstep(p.z_arch, p.z_arch + 30.0, z)
        d = ellipse2d(x, y, 0.0, -bf - 7.0, w, 6.0, 6.0)
        return np.maximum(d, np.maximum(5.0 - z, z - (p.z_apex - 5.0)))

    def scapula(x, y, z):
        a, bf, bb = cavity_axes(p, z)
        phi = np.arctan2(np.abs(x) / a, y / bb)
        d = np.abs(cav(x, y, z) - 20.0) - 2.5
        d = np.maximum(d, np.maximum(0.22 * np.pi - phi, phi - 0.42 * np.pi) * 80.0)
        return np.maximum(d, np.maximum((p.z_apex - 120.0) - z, z - (p.z_apex + 5.0)))

    def clavicles(x, y, z):
        zc = p.z_apex - 5.0
        bf = p.cav_b_ant
        return np.minimum(capsule_dist(x, y, z, (18.0, -bf - 12, zc), (115.0, -bf + 10, zc + 25.0)),
                          capsule_dist(x, y, z, (-18.0, -bf - 12, zc), (-115.0, -bf + 10, zc + 25.0))) - 7.0

    bone = _bone_hu(260.0, 900.0, 2.0)
    chest = (-p.body_a - 40, p.body_a + 40, -p.body_b_ant, p.body_b_post, -400, 500)
    marrow = lambda x, y, z, d: np.where(d < -2.0, s["marrow"], s["bone"])
    return [
        Layer("vertebral body", vb, spine_box, bone, s["marrow"], BONE),
        Layer("disc", disc, spine_box, 90.0, 0.6, DISC, frozenset({BONE})),
        Layer("vertebral arch", arch, spine_box, _bone_hu(350.0, 850.0, 2.0), marrow, BONE),
        Layer("spinal canal", lambda x, y, z: np.sqrt(x * x + (y - yc) ** 2) - 7.0, spine_box, 20.0,
              s["cord"], CORD),
        Layer("ribs", ribs, chest, rib_hu, marrow, BONE),
        Layer("sternum", sternum, (-40, 40, -p.cav_b_ant - 30, -p.cav_b_ant + 10, -10, p.z_apex + 10),
              bone, marrow, BONE),
        Layer("scapula", scapula, chest[:4] + (p.z_apex - 125.0, p.z_apex + 10.0), _bone_hu(300.0, 750.0, 1.5),
              s["bone"], BONE),
        Layer("clavicle", clavicles, chest[:4] + (p.z_apex - 20.0, p.z_apex + 40.0), bone, marrow, BONE),
    ]
