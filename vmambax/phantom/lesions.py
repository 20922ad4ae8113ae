"""Lung tumours and PET confounders (inflamed nodes, brown fat) for the synthetic phantom.

Tumours: 5-60 mm (log-uniform, so many are small), lobulated shapes (a sphere with low-order
radial perturbations plus satellite lobes), placed in the lung, some against the chest wall or
the mediastinum; heterogeneous FDG uptake (SUVmax 3-20), necrotic cores in large ones, and some
faint (SUVmax 1.5-3, half of them part-solid ground glass on CT). Confounders are what a PET
threshold alone would also segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vmambax.phantom.anatomy import BROWN_FAT, FAT, LUNG, MED_FAT, MUSCLE, NODE, TUMOUR_BASE, VESSEL, Patient
from vmambax.phantom.shapes import Layer, Waves, ellipsoid, smin, smoothstep

# A tumour may fill lung (and its vessels), mediastinal fat and earlier tumours, never bone or organs.
TUMOUR_SPACE = frozenset({LUNG, VESSEL, MED_FAT})


@dataclass
class Tumour:
    index: int
    centre: tuple[float, float, float]
    radius: float
    suvmax: float
    faint: bool
    necrotic: bool
    ground_glass: bool
    touches_pleura: bool
    touches_mediastinum: bool
    placement: str
    _shape: dict = field(repr=False, default_factory=dict)

    def sdf(self, x, y, z):
        sh = self._shape
        cx, cy, cz = self.centre
        dx, dy, dz = x - cx, y - cy, z - cz
        r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6
        pert = 1.0
        for (nx, ny, nz), f, a, ph in zip(sh["dirs"], sh["freq"], sh["amp"], sh["phase"]):
            pert = pert + a * np.cos(f * (dx * nx + dy * ny + dz * nz) / r + ph)
        d = r - self.radius * pert
        for (ox, oy, oz), rl in sh["lobes"]:
            dl = np.sqrt((dx - ox) ** 2 + (dy - oy) ** 2 + (dz - oz) ** 2) - rl
            d = smin(d, dl, 0.3 * self.radius)
        return d

    def rho(self, x, y, z):
        """Normalised distance from the centre (0 centre, ~1 at the surface)."""
        cx, cy, cz = self.centre
        return np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / self.radius

    @property
    def bbox(self):
        e = self.radius * 1.9 + 3.0
        cx, cy, cz = self.centre
        return (cx - e, cx + e, cy - e, cy + e, cz - e, cz + e)

    def ct(self, x, y, z, d):
        tex = self._shape["tex"](x, y, z)
        rho = self.rho(x, y, z)
        hu = 36.0 + 9.0 * tex
        if self.necrotic:
            hu = hu - 22.0 * smoothstep(self._shape["core"] + 0.1, self._shape["core"] - 0.1, rho)
        if self.ground_glass:  # part-solid: ground glass rim around a small solid core
            hu = np.where(rho > 0.45, -560.0 + 70.0 * tex, hu)
        return hu

    def pet(self, x, y, z, d):
        tex = self._shape["tex"](x, y, z)
        v = self.suvmax * (0.8 + 0.2 * tex)
        if self.necrotic:
            core = self._shape["core"]
            v = v * (1.0 - (1.0 - self._shape["core_level"]) * smoothstep(core + 0.12, core - 0.12, self.rho(x, y, z)))
        return v

    def layer(self) -> Layer:
        return Layer(f"tumour {self.index}", self.sdf, self.bbox, self.ct, self.pet,
                     TUMOUR_BASE + self.index, TUMOUR_SPACE)

    def info(self) -> dict:
        return dict(index=self.index, centre_mm=[round(v, 2) for v in self.centre],
                    diameter_mm=round(2 * self.radius, 2), suvmax_nominal=round(self.suvmax, 3),
                    faint=self.faint, necrotic=self.necrotic, ground_glass=self.ground_glass,
                    touches_pleura=self.touches_pleura, touches_mediastinum=self.touches_mediastinum,
                    placement=self.placement)


def _random_shape(rng: np.random.Generator, radius: float) -> dict:
    n = 2 if radius < 5 else 4
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    amp = rng.uniform(0.03, 0.09 if radius < 5 else 0.12, size=n)
    lobes = []
    for _ in range(int(rng.integers(0, 3 if radius >= 6 else 1))):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        lobes.append((tuple(u * radius * rng.uniform(0.55, 0.8)), radius * rng.uniform(0.3, 0.55)))
    return dict(dirs=dirs, freq=rng.uniform(1.5, 4.0, size=n), amp=amp, phase=rng.uniform(0, 2 * np.pi, size=n),
                lobes=lobes, tex=Waves(rng, 4, (max(6.0, radius), max(12.0, 3 * radius))),
                core=float(rng.uniform(0.35, 0.6)), core_level=float(rng.uniform(0.1, 0.35)))


def place_tumours(p: Patient, helpers: dict, rng: np.random.Generator, n: int,
                  z_range: tuple[float, float]) -> list[Tumour]:
    """Sample ``n`` tumours inside the lungs within ``z_range`` (the CT's axial extent)."""
    lung, cav, env = helpers["lung"], helpers["cavity"], helpers["envelope"]
    m = 40000
    pts = np.stack([rng.uniform(-p.cav_a, p.cav_a, m), rng.uniform(-p.cav_b_ant, p.cav_b_post, m),
                    rng.uniform(z_range[0], z_range[1], m)]).astype(np.float32)
    d_lung = lung(*pts)
    keep = d_lung < -1.0
    pts, d_lung = pts[:, keep], d_lung[keep]
    d_cav, d_env = cav(*pts), env(*pts)
    tumours: list[Tumour] = []
    for i in range(n):
        diameter = float(np.exp(rng.uniform(np.log(5.0), np.log(60.0))))
        kind = rng.choice(["parenchyma", "pleura", "mediastinum"], p=[0.5, 0.3, 0.2])
        for _ in range(8):
            R = diameter / 2
            zmargin = min(R, 10.0)
            ok = (pts[2] > z_range[0] + zmargin) & (pts[2] < z_range[1] - zmargin)
            if kind == "pleura":
                ok &= (-d_cav > 0.35 * R) & (-d_cav < 0.75 * R) & (d_env > R + 4)
            elif kind == "mediastinum":
                ok &= (d_env > 0.3 * R) & (d_env < 0.7 * R) & (-d_cav > R + 4)
            else:
                ok &= (d_lung < -min(R + 2.0, 0.8 * R + 4.0))
            for t in tumours:
                dist = np.sqrt(((pts - np.array(t.centre, dtype=np.float32)[:, None]) ** 2).sum(0))
                ok &= dist > R + t.radius + 8.0
            idx = np.flatnonzero(ok)
            if idx.size:
                break
            diameter *= 0.8  # too big for the space available: shrink and retry
        else:
            continue
        j = int(rng.choice(idx))
        c = tuple(float(v) for v in pts[:, j])
        faint = bool(rng.random() < 0.2)
        suvmax = float(rng.uniform(1.5, 3.0) if faint else np.exp(rng.uniform(np.log(3.0), np.log(20.0))))
        tumours.append(Tumour(
            index=len(tumours), centre=c, radius=R, suvmax=suvmax, faint=faint,
            necrotic=bool(R > 13 and not faint and rng.random() < 0.7),
            ground_glass=bool(faint and rng.random() < 0.5),
            touches_pleura=bool(-d_cav[j] < 1.05 * R), touches_mediastinum=bool(d_env[j] < 1.05 * R),
            placement=str(kind), _shape=_random_shape(rng, R)))
    return tumours


@dataclass
class Confounder:
    kind: str
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    suv: float
    hu: float
    owner: int
    within: frozenset

    def layer(self) -> Layer:
        e = max(self.axes) + 3
        c = self.centre
        return Layer(self.kind, ellipsoid(c, self.axes), (c[0] - e, c[0] + e, c[1] - e, c[1] + e, c[2] - e, c[2] + e),
                     self.hu, self.suv, self.owner, self.within)

    def info(self) -> dict:
        return dict(type=self.kind, centre_mm=[round(v, 2) for v in self.centre],
                    diameter_mm=round(2 * float(np.mean(self.axes)), 1), suv=round(self.suv, 2))


def place_confounders(p: Patient, helpers: dict, tumours: list[Tumour], rng: np.random.Generator) -> list[Confounder]:
    """Mediastinal/hilar lymph nodes (often inflamed) and, in some patients, active brown fat."""
    m = helpers["mediastinum"]
    zc, yt = p.z_carina, p.y_trachea
    stations = [(-15.0, yt - 4.0, zc + 22.0), (3.0, yt + 16.0, zc - 24.0), (18.0, -4.0, p.z_arch - 18.0),
                tuple(np.add(m.hila["R"], (-4.0, 10.0, -14.0))), tuple(np.add(m.hila["L"], (4.0, 10.0, -10.0))),
                (-12.0, -p.cav_b_ant * 0.55, p.z_arch - 5.0)]
    out: list[Confounder] = []
    for k in rng.permutation(len(stations))[: int(rng.integers(1, 4))]:
        c = stations[int(k)]
        r = float(rng.uniform(4.0, 8.0))
        if any(math.dist(c, t.centre) < r + 2 * t.radius + 6 for t in tumours):
            continue
        inflamed = bool(rng.random() < 0.65)
        suv = float(rng.uniform(3.0, 6.0) if inflamed else rng.uniform(1.0, 2.0))
        out.append(Confounder("inflamed lymph node" if inflamed else "lymph node", c,
                              (r, r * rng.uniform(0.7, 1.0), r * rng.uniform(0.9, 1.4)), suv, 38.0, NODE,
                              frozenset({MED_FAT, LUNG, VESSEL})))
    if rng.random() < 0.35:  # active brown fat: supraclavicular and paravertebral
        suv = float(rng.uniform(3.0, 8.0))
        for lat in (-1.0, 1.0):
            out.append(Confounder("brown fat", (lat * (p.cav_a * 0.75), -25.0, p.z_apex - 5.0),
                                  (float(rng.uniform(14, 22)), 10.0, float(rng.uniform(12, 20))),
                                  suv, -75.0, BROWN_FAT, frozenset({FAT, MUSCLE})))
            out.append(Confounder("brown fat", (lat * 38.0, p.y_vb + 4.0, p.z_carina + rng.uniform(-30, 20)),
                                  (6.0, 6.0, float(rng.uniform(15, 30))), suv * 0.8, -75.0, BROWN_FAT,
                                  frozenset({FAT, MUSCLE, MED_FAT})))
    return out
