"""Whole-body extension of the thorax phantom: head, neck, abdomen with bowel gas, pelvis, thighs.

A whole-body FDG PET/CT runs from the skull to mid-thigh (250-400 axial slices), of which the
thorax is about a third. These layers are painted after the thorax anatomy
(``vmambax.phantom.anatomy``), in the same anatomy coordinates (z = 0 at the right diaphragm dome), and
only when ``make_phantom(whole_body=True)``: thorax phantoms stay exactly as they were.

What matters for VMambaX: the FDG-avid structures outside the chest a lung-tumour model must
not be run on (brain SUV 6-10, bladder urine 8-25), air outside the lungs inside the body
(stomach and bowel gas) that a lung-field detector must not take for lung, and a realistic slice
count and outline (narrow neck and head, two thighs) for timing.
"""

from __future__ import annotations

import numpy as np

from vmambax.phantom.anatomy import (ABDOMEN, BONE, BOWEL_AIR, FAT, KIDNEY, MUSCLE, TABLE,
                                          Patient)
from vmambax.phantom.shapes import Layer, ellipse2d, ellipsoid

BRAIN, BLADDER, OUTSIDE = 24, 25, 0


def landmarks(p: Patient, rng: np.random.Generator) -> dict:
    """Heights (mm, anatomy z) of the whole-body landmarks for this patient."""
    frame = p.height_m / 1.72
    return dict(
        neck=p.z_apex + float(rng.uniform(20.0, 35.0)),
        skull_base=p.z_apex + float(rng.uniform(80.0, 95.0)) * frame,
        head_c=p.z_apex + float(rng.uniform(150.0, 165.0)) * frame,
        head_axes=(float(rng.uniform(68, 76)) * frame, float(rng.uniform(84, 94)) * frame,
                   float(rng.uniform(88, 98)) * frame),
        crotch=-float(rng.uniform(420.0, 460.0)) * frame,
        bladder_rise=float(rng.uniform(45.0, 65.0)),
        bladder_axes=(float(rng.uniform(35, 50)), float(rng.uniform(28, 38)), float(rng.uniform(28, 40))),
        thigh_x=float(rng.uniform(80.0, 92.0)),
        thigh_axes=(float(rng.uniform(70, 85)), float(rng.uniform(68, 80))),
        brain_suv=float(rng.uniform(6.0, 10.0)),
        gas=[((float(rng.uniform(-90, 90)), float(rng.uniform(-60, 20)), float(rng.uniform(-420, -200))),
              (float(rng.uniform(12, 28)), float(rng.uniform(10, 22)), float(rng.uniform(12, 30))))
             for _ in range(int(rng.integers(3, 7)))],
    )


def pelvic_floor(marks: dict) -> float:
    """Where the abdominal cavity's soft tissue ends (thorax phantoms stop it at z = -400)."""
    return marks["crotch"] + 25.0


def extent(p: Patient, marks: dict) -> tuple[float, float]:
    """(bottom, top) z of a whole-body CT: mid-thigh to the top of the head."""
    top = marks["head_c"] + marks["head_axes"][2] + 10.0
    bottom = marks["crotch"] - 150.0  # mid-thigh
    return bottom, top


def whole_body_layers(p: Patient, marks: dict, z_range: tuple[float, float]) -> list[Layer]:
    """Layers painted last: bowel gas, bladder, pelvis and femur bones, then the air outside the
    neck/head and between the thighs (carving the thorax's body cylinder), then the head."""
    s = p.suv
    zlo, zhi = z_range
    every_tissue = frozenset(range(1, 256)) - {TABLE}
    layers: list[Layer] = []
    for c, ax in marks["gas"]:
        layers.append(Layer("bowel gas", ellipsoid(c, ax), _box(c, ax), -990.0, 0.0, BOWEL_AIR,
                            frozenset({ABDOMEN})))
    bc, bax = (0.0, -20.0, marks["crotch"] + marks["bladder_rise"]), marks["bladder_axes"]
    layers.append(Layer("bladder", ellipsoid(bc, bax), _box(bc, bax), 8.0,
                        float(np.clip(s["urine"] * 1.2, 8.0, 25.0)), BLADDER, None))
    for lat in (-1.0, 1.0):  # iliac wings: flattened shells of bone lateral to the bladder
        ic, iax = (lat * 95.0, 20.0, bc[2] + 70.0), (22.0, 55.0, 60.0)
        layers.append(Layer("iliac bone", ellipsoid(ic, iax), _box(ic, iax), _bone(), s["marrow"], BONE,
                            frozenset({ABDOMEN, FAT, MUSCLE})))
    tx, (ta, tb) = marks["thigh_x"], marks["thigh_axes"]
    crotch = marks["crotch"]

    def femur(x, y, z):
        d = np.minimum(np.hypot(x - tx, y - 5.0), np.hypot(x + tx, y - 5.0)) - 14.0
        return np.maximum(d, z - (crotch + 60.0))
    layers.append(Layer("femur", femur, (-tx - 20, tx + 20, -15, 25, zlo, crotch + 60.0), _bone(),
                        s["marrow"], BONE, None))

    def allowed(x, y, z):
        """Signed distance to the body outline outside the trunk: neck + head above, thighs below."""
        neck = ellipse2d(x, y, 0.0, 0.0, 58.0, 48.0, 52.0)
        head = ellipsoid((0.0, -5.0, marks["head_c"]), marks["head_axes"])(x, y, z)
        thighs = np.minimum(ellipse2d(x, y, tx, 0.0, ta, tb, tb), ellipse2d(x, y, -tx, 0.0, ta, tb, tb))
        top = np.where(z > marks["skull_base"], head, np.minimum(neck, head))
        return np.where(z > marks["neck"], top, np.where(z < crotch, thighs, -1e3))

    # Air wherever the outline has no body (the thorax layers painted a cylinder there).
    layers.append(Layer("outside air", lambda x, y, z: -allowed(x, y, z), None, -1000.0, 0.0,
                        OUTSIDE, every_tissue))
    hc, hax = (0.0, -5.0, marks["head_c"]), marks["head_axes"]
    layers.append(Layer("skull", ellipsoid(hc, hax), _box(hc, hax), _bone(), s["bone"], BONE, None))
    inner = tuple(a - 7.0 for a in hax)
    layers.append(Layer("brain", ellipsoid(hc, inner), _box(hc, inner), 35.0, marks["brain_suv"], BRAIN,
                        frozenset({BONE})))
    return layers


def _box(c, ax, pad: float = 3.0) -> tuple[float, ...]:
    return (c[0] - ax[0] - pad, c[0] + ax[0] + pad, c[1] - ax[1] - pad, c[1] + ax[1] + pad,
            c[2] - ax[2] - pad, c[2] + ax[2] + pad)


def _bone():
    return lambda x, y, z, d: np.where(d > -3.0, 900.0, 250.0)  # cortex over cancellous bone


__all__ = ["BLADDER", "BRAIN", "KIDNEY", "extent", "landmarks", "pelvic_floor", "whole_body_layers"]
