"""Training augmentation of spec §8, on torch tensors (no torchvision/OpenCV).

The same geometry is applied to the PET/CT channels and to the mask. Images are in uint8 scale
(0..255, float) so the warp's zero border is the reference's border 0 (= -1.6 once normalised).
There is no intensity augmentation, as in the reference.

Randomness comes from an explicit ``torch.Generator`` the dataset seeds per (seed, epoch, sample),
so a sample's augmentation does not depend on worker count, rank or whether the run was resumed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sample_generator(*key: int) -> torch.Generator:
    """A generator seeded from a tuple of ints (e.g. seed, epoch, index) with good mixing."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def affine_warp(x: torch.Tensor, shift: tuple[float, float], scale: tuple[float, float]) -> torch.Tensor:
    """Scale about the centre by (sx, sy), then shift by (tx, ty) fractions of the size; border 0.

    ``x`` is (C, H, W). The reference builds this as a perspective warp with rotation 0 and no
    perspective terms, i.e. exactly this affine map, sampled bilinearly.
    """
    (tx, ty), (sx, sy) = shift, scale
    # affine_grid maps *output* to *input* coordinates in [-1, 1] (a shift of f*size is 2f there).
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


def augment(image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator,
            p_affine: float = 0.5, p_flip: float = 0.5, p_crop: float = 0.5):
    """Spec §8 augmentation of one sample.

    ``image`` (C, H, W) float in 0..255, ``mask`` (1, H, W) 0/1 float. Returns new tensors:
    image clamped to 0..255 (bicubic overshoots) and the mask re-binarised at 0.5.
    """
    h, w = image.shape[-2:]
    c = image.shape[0]
    x = torch.cat([image.float(), mask.float()], 0)
    if float(torch.rand((), generator=gen)) < p_affine:
        s, a = _uniform(gen, 0.9, 1.1), _uniform(gen, 0.9, 1.1)
        shift = (_uniform(gen, -0.1, 0.1), _uniform(gen, -0.1, 0.1))
        x = affine_warp(x, shift, (s * a ** 0.5, s / a ** 0.5))
    if float(torch.rand((), generator=gen)) < p_flip:
        x = x.flip(-1)
    if float(torch.rand((), generator=gen)) < p_crop:
        side = int(min(h, w) * _uniform(gen, 0.7, 0.9))
        x = crop_resize(x, _randint(gen, 0, h - side), _randint(gen, 0, w - side), side)
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
