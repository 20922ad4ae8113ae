"""Training augmentation, on torch tensors (no torchvision/OpenCV).

Presets by name (``PRESETS``, ``--augmentation``): ``paper`` is spec §8's (shift/scale/aspect
warp, horizontal flip, random 0.7-0.9 crop resized back; no intensity change, as the
reference); ``strong`` adds rotations, a wider scale range, up-down flips and a PET gain (the
SUV scale varies between scanners, reconstructions and uptake times); ``flip`` is flips only;
``none`` is nothing. The same geometry is applied to the PET/CT channels and to the mask. Images
are in uint8 scale (0..255, float) so the warp's zero border is the reference's border 0
(= -1.6 once normalised).

Randomness comes from an explicit ``torch.Generator`` the dataset seeds per (seed, epoch, sample),
so a sample's augmentation does not depend on worker count, rank or whether the run was resumed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from vmambax.errors import ConfigError


def sample_generator(*key: int) -> torch.Generator:
    """A generator seeded from a tuple of ints (e.g. seed, epoch, index) with good mixing."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def affine_warp(x: torch.Tensor, shift: tuple[float, float], scale: tuple[float, float],
                angle_deg: float = 0.0) -> torch.Tensor:
    """Scale about the centre by (sx, sy), rotate by ``angle_deg``, then shift by (tx, ty)
    fractions of the size; border 0.

    ``x`` is (C, H, W). The reference builds this as a perspective warp with rotation 0 and no
    perspective terms, i.e. exactly this affine map, sampled bilinearly.
    """
    (tx, ty), (sx, sy) = shift, scale
    # affine_grid maps *output* to *input* coordinates in [-1, 1] (a shift of f*size is 2f there).
    if angle_deg:
        a = math.radians(angle_deg)
        c, s_ = math.cos(a), math.sin(a)
        # inverse of (shift o rotate o scale): scale^-1 rotate^-1 (p - t)
        m = [[c / sx, s_ / sx], [-s_ / sy, c / sy]]
        t = (-2 * tx, -2 * ty)
        theta = torch.tensor([[m[0][0], m[0][1], m[0][0] * t[0] + m[0][1] * t[1]],
                              [m[1][0], m[1][1], m[1][0] * t[0] + m[1][1] * t[1]]],
                             dtype=x.dtype).unsqueeze(0)
    else:
        theta = torch.tensor([[1 / sx, 0.0, -2 * tx / sx], [0.0, 1 / sy, -2 * ty / sy]],
                             dtype=x.dtype).unsqueeze(0)
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    return F.grid_sample(x.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]


def crop_resize(x: torch.Tensor, top: int, left: int, side: int) -> torch.Tensor:
    """Cut a ``side``-square at (top, left) and resize it back to the input size, bicubic."""
    size = x.shape[-2:]
    patch = x[:, top:top + side, left:left + side].unsqueeze(0)
    return F.interpolate(patch, size=size, mode="bicubic", align_corners=False)[0]


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """One augmentation recipe; ``PRESETS`` names them. Probabilities are per sample."""

    p_affine: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    aspect: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.1  # fraction of the slice side
    rotate_deg: float = 0.0
    p_flip: float = 0.5  # left-right
    p_vflip: float = 0.0  # up-down
    p_crop: float = 0.5  # random 0.7-0.9 crop resized back
    pet_gain: tuple[float, float] | None = None  # PET channels x uniform(lo, hi)
    p_pet_gain: float = 0.0


PRESETS = {
    "paper": Augmentation(),
    "strong": Augmentation(p_affine=0.7, scale=(0.8, 1.2), rotate_deg=20.0, p_vflip=0.5,
                           p_crop=0.3, pet_gain=(0.8, 1.2), p_pet_gain=0.5),
    "flip": Augmentation(p_affine=0.0, p_vflip=0.5, p_crop=0.0),
    "none": Augmentation(p_affine=0.0, p_flip=0.0, p_crop=0.0),
}


def get_augmentation(name: str) -> Augmentation:
    if name not in PRESETS:
        raise ConfigError(f"unknown augmentation {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def augment(image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator,
            p_affine: float | None = None, p_flip: float | None = None,
            p_crop: float | None = None, recipe: Augmentation | None = None,
            pet_channels: int = 0):
    """Augment one sample (spec §8's by default; ``recipe`` picks another, the ``p_*`` arguments
    override its probabilities).

    ``image`` (C, H, W) float in 0..255, ``mask`` (1, H, W) 0/1 float; the last
    ``pet_channels`` channels of ``image`` are PET (for the PET gain). Returns new tensors:
    image clamped to 0..255 (bicubic overshoots) and the mask re-binarised at 0.5. The paper
    recipe draws exactly the random numbers it always drew, so its samples are unchanged.
    """
    r = recipe or PRESETS["paper"]
    p_affine = r.p_affine if p_affine is None else p_affine
    p_flip = r.p_flip if p_flip is None else p_flip
    p_crop = r.p_crop if p_crop is None else p_crop
    h, w = image.shape[-2:]
    c = image.shape[0]
    x = torch.cat([image.float(), mask.float()], 0)
    if float(torch.rand((), generator=gen)) < p_affine:
        s, a = _uniform(gen, *r.scale), _uniform(gen, *r.aspect)
        shift = (_uniform(gen, -r.shift, r.shift), _uniform(gen, -r.shift, r.shift))
        angle = _uniform(gen, -r.rotate_deg, r.rotate_deg) if r.rotate_deg else 0.0
        x = affine_warp(x, shift, (s * a ** 0.5, s / a ** 0.5), angle)
    if float(torch.rand((), generator=gen)) < p_flip:
        x = x.flip(-1)
    if r.p_vflip and float(torch.rand((), generator=gen)) < r.p_vflip:
        x = x.flip(-2)
    if float(torch.rand((), generator=gen)) < p_crop:
        side = int(min(h, w) * _uniform(gen, 0.7, 0.9))
        x = crop_resize(x, _randint(gen, 0, h - side), _randint(gen, 0, w - side), side)
    if r.pet_gain and pet_channels and float(torch.rand((), generator=gen)) < r.p_pet_gain:
        x[c - pet_channels:c] *= _uniform(gen, *r.pet_gain)
    return x[:c].clamp_(0, 255), (x[c:] >= 0.5).float()


def random_crop(image: torch.Tensor, mask: torch.Tensor, size: int, gen: torch.Generator,
                p_focus: float = 0.5):
    """Cut a ``size``-square (pixel scale kept) from a larger slice.

    With probability ``p_focus`` the window is placed to contain a random tumour pixel when the
    slice has any: uniform windows of a small crop from a 512 slice would mostly miss small lesions.
    """
    h, w = image.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop size {size} is larger than the slice ({h}x{w})")
    if size == h == w:
        return image, mask
    top, left = _randint(gen, 0, h - size), _randint(gen, 0, w - size)
    if float(torch.rand((), generator=gen)) < p_focus:
        fg = mask[0].nonzero()
        if len(fg):
            y, x = fg[_randint(gen, 0, len(fg) - 1)].tolist()
            top = _randint(gen, max(0, y - size + 1), min(y, h - size))
            left = _randint(gen, max(0, x - size + 1), min(x, w - size))
    return image[:, top:top + size, left:left + size], mask[:, top:top + size, left:left + size]
