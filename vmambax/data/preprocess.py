"""The papers' preprocessing: the ONE implementation used by training export and by inference.

Volumes (HU and SUV on the CT grid) become stacks of 512x512 uint8 axial slices exactly as the
PCLT20K PNGs were made, and network outputs go back to the CT grid:

1. Window: CT clipped to ``CT_WINDOW_HU`` = [-1200, -200] HU (the papers' window) and PET
   clipped to ``SUV_WINDOW`` = [0, 15] SUV, both scaled linearly to [0, 255] (float).
   The papers only say "converted to SUV, then scaled to [0, 255]"; PCLT20K's PET window is not
   published. 15 covers the SUVmax of most lung tumours (a 2.5 threshold is the classic
   malignancy cut-off and typical primaries reach 5-15), values above saturate, and one grey
   level is 15/255 = 0.06 SUV, so the clinically decisive 1-5 SUV range spans ~70 grey levels.
2. Orientation: the volume is brought to axial ``(z, y, x)`` slices in radiological display
   order (``orientation.AxisMap``; exact permutation/flips, no resampling).
3. Geometry: each non-square slice is padded to a square, centred (value 0 after windowing, i.e.
   air for CT and no uptake for PET), then resized to ``IMAGE_SIZE`` with bilinear
   interpolation (``align_corners=False``, antialiased when shrinking) by ``resize_slices``.
4. Rounding: values are rounded to the nearest integer and stored as uint8 once, at the end
   (the PNGs hold the same numbers).
5. Network input: ``normalize_uint8(v) = v / 255 * 3.2 - 1.6`` (range [-1.6, 1.6]), as the
   reference dataset loader does.

Inverse for predictions (``slices_to_volume``): probability maps are resized back to the padded
square with the same bilinear resize, cropped, re-oriented, then thresholded by the caller (or
``slices_to_label``), so a label lands on the CT's own voxels.
Masks for training (``mask_to_slices``) take the same path forwards and are thresholded at 0.5.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vmambax.data.orientation import AxisMap, image_axis_map
from vmambax.errors import InputError

CT_WINDOW_HU = (-1200.0, -200.0)
SUV_WINDOW = (0.0, 15.0)
IMAGE_SIZE = 512
NORM_SCALE, NORM_SHIFT = 3.2, 1.6
_CHUNK = 16  # slices resized at a time, to bound memory on whole-body volumes


def preprocessing_info(size: int = IMAGE_SIZE) -> dict:
    """The settings above as a plain dict (stored in model files and export manifests)."""
    return {"version": 1, "ct_window_hu": list(CT_WINDOW_HU), "suv_window": list(SUV_WINDOW),
            "image_size": int(size), "pad": "centred square, 0 after windowing",
            "resize": "bilinear, align_corners=False, antialias", "uint8": "round half to even",
            "normalize": f"v/255*{NORM_SCALE}-{NORM_SHIFT}", "orientation": "axial, LPS display"}


def _window(values, lo: float, hi: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)  # a copy: the caller's array is never modified
    np.clip(v, lo, hi, out=v)
    v -= np.float32(lo)
    v *= np.float32(255.0 / (hi - lo))
    return v


def ct_to_unit255(hu) -> np.ndarray:
    """CT in HU -> float32 in [0, 255] (window ``CT_WINDOW_HU``)."""
    return _window(hu, *CT_WINDOW_HU)


def suv_to_unit255(suv) -> np.ndarray:
    """PET in SUV -> float32 in [0, 255] (window ``SUV_WINDOW``)."""
    return _window(suv, *SUV_WINDOW)


def _round_inplace(v: np.ndarray) -> np.ndarray:
    np.rint(v, out=v)
    np.clip(v, 0, 255, out=v)
    return v.astype(np.uint8)


def to_uint8(values) -> np.ndarray:
    """Round to nearest (half to even) and clip to uint8: the one rounding rule everywhere."""
    return _round_inplace(np.array(values, dtype=np.float32))


def ct_to_uint8(hu) -> np.ndarray:
    return to_uint8(ct_to_unit255(hu))


def suv_to_uint8(suv) -> np.ndarray:
    return to_uint8(suv_to_unit255(suv))


def normalize_uint8(x):
    """``x / 255 * 3.2 - 1.6`` for a numpy array (-> float32) or a torch tensor (-> float)."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np.asarray(x, dtype=np.float32) / np.float32(255.0) * np.float32(NORM_SCALE) \
            - np.float32(NORM_SHIFT)
    return x.float() / 255.0 * NORM_SCALE - NORM_SHIFT


def resize_slices(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of each slice of a ``(z, h, w)`` stack to ``size`` = (H, W) (float32).

    torch's ``interpolate`` (``align_corners=False``; antialias only matters when shrinking).
    """
    return _resize(stack, size).copy() if np.shape(stack)[1:] == tuple(size) else \
        _resize(stack, size)


def _resize(stack, size: tuple[int, int]) -> np.ndarray:
    """``resize_slices`` that may return its (float32) input when no resize is needed."""
    stack = np.asarray(stack, dtype=np.float32)
    z, h, w = stack.shape
    if (h, w) == tuple(size):
        return stack
    import torch
    import torch.nn.functional as F

    out = np.empty((z, *size), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, z, _CHUNK):
            t = torch.from_numpy(np.ascontiguousarray(stack[start:start + _CHUNK]))[:, None]
            r = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False,
                              antialias=True)
            out[start:start + _CHUNK] = r[:, 0].numpy()
    return out


@dataclasses.dataclass(frozen=True)
class SliceGeometry:
    """How a volume's array maps to network slices and back.

    ``shape`` is the axial ``(z, h, w)`` shape; the padded square has side ``side`` with
    ``pad_top``/``pad_left`` rows/columns before the image; ``size`` is the network size;
    ``axes`` maps the original array to axial (identity for arrays given already axial).
    """

    shape: tuple[int, int, int]
    size: int = IMAGE_SIZE
    axes: AxisMap = AxisMap()
    spacing: tuple[float, float, float] | None = None  # axial (z, y, x) mm, when known

    @property
    def side(self) -> int:
        return max(self.shape[1], self.shape[2])

    @property
    def pad_top(self) -> int:
        return (self.side - self.shape[1]) // 2

    @property
    def pad_left(self) -> int:
        return (self.side - self.shape[2]) // 2

    @property
    def network_pixel_mm(self) -> tuple[float, float] | None:
        """(row, column) pixel size in mm of the network slices, when the spacing is known."""
        if self.spacing is None:
            return None
        scale = self.side / self.size
        return self.spacing[1] * scale, self.spacing[2] * scale

    @classmethod
    def for_volume(cls, volume, size: int = IMAGE_SIZE) -> "SliceGeometry":
        """Geometry of a SimpleITK image (re-oriented to axial) or an axial ``(z, y, x)`` array."""
        if int(size) != size or size <= 0:
            raise InputError(f"Slice size {size} must be a positive integer.")
        if hasattr(volume, "GetDirection"):
            axes = image_axis_map(volume)
            array_shape = volume.GetSize()[::-1]
            shape = tuple(int(array_shape[p]) for p in axes.perm)
            return cls(shape, int(size), axes, axes.axial_spacing(volume.GetSpacing()))
        shape = np.shape(volume)
        if len(shape) != 3:
            raise InputError(f"Expected a (z, y, x) volume, got an array of shape {shape}.")
        return cls(tuple(int(s) for s in shape), int(size))

    def _axial(self, volume) -> np.ndarray:
        array = self.axes.to_axial(_array(volume))
        if array.shape != self.shape:
            raise InputError(f"Volume of shape {array.shape} does not match the geometry "
                             f"{self.shape}; PET, CT and label must share the CT grid.")
        return array

    def _map(self, volume, transform, finish, dtype, pad_value: float = 0.0) -> np.ndarray:
        """Orient, then per chunk of slices: transform -> pad to square -> resize -> finish.

        Chunks keep the float temporaries small on whole-body volumes."""
        axial = self._axial(volume)
        z, h, w = self.shape
        out = np.empty((z, self.size, self.size), dtype)
        for start in range(0, z, _CHUNK):
            block = transform(axial[start:start + _CHUNK])
            if (h, w) != (self.side, self.side):
                padded = np.full((len(block), self.side, self.side), pad_value, np.float32)
                padded[:, self.pad_top:self.pad_top + h, self.pad_left:self.pad_left + w] = block
                block = padded
            out[start:start + _CHUNK] = finish(_resize(block, (self.size, self.size)))
        return out

    def to_network(self, volume, pad_value: float = 0.0) -> np.ndarray:
        """Axial float32 ``(z, size, size)`` stack: orient, pad to square, resize (no rounding).

        ``volume`` is the image this geometry was made for, or an array in that image's
        ``(k, j, i)`` layout (e.g. a windowed copy of it).
        """
        return self._map(volume, lambda b: np.asarray(b, np.float32), lambda b: b, np.float32,
                         pad_value)

    def from_network(self, stack) -> np.ndarray:
        """Inverse of ``to_network`` for float maps: resize back, crop, re-orient -> float32."""
        if hasattr(stack, "detach"):  # a torch tensor, possibly on the GPU
            stack = stack.detach().float().cpu().numpy()
        stack = np.asarray(stack)
        if stack.ndim == 4 and stack.shape[1] == 1:  # (z, 1, H, W) straight from the network
            stack = stack[:, 0]
        if stack.shape != (self.shape[0], self.size, self.size):
            raise InputError(f"Prediction stack of shape {stack.shape} does not match the "
                             f"geometry ({self.shape[0]}, {self.size}, {self.size}).")
        z, h, w = self.shape
        out = np.empty(self.shape, np.float32)
        for start in range(0, z, _CHUNK):
            full = _resize(stack[start:start + _CHUNK], (self.side, self.side))
            out[start:start + _CHUNK] = full[:, self.pad_top:self.pad_top + h,
                                             self.pad_left:self.pad_left + w]
        return np.ascontiguousarray(self.axes.from_axial(out))


def _array(volume) -> np.ndarray:
    if hasattr(volume, "GetDirection"):
        import SimpleITK as sitk

        return sitk.GetArrayViewFromImage(volume)
    return np.asarray(volume)


def volume_to_slices(ct_hu, pet_suv, size: int = IMAGE_SIZE):
    """CT (HU) and PET (SUV) on the same grid -> ``(ct_u8, pet_u8, geometry)``.

    Inputs are SimpleITK images (any axis-aligned orientation) or axial ``(z, y, x)`` arrays;
    outputs are uint8 ``(z, size, size)`` stacks. The geometry inverts the mapping.
    """
    ct_u8, pet_u8, geometry = volume_to_channels(ct_hu, pet_suv, (CT_WINDOW_HU,), (SUV_WINDOW,),
                                                 size)
    return ct_u8[:, 0], pet_u8[:, 0], geometry


def volume_to_channels(ct_hu, pet_suv, ct_windows, suv_windows, size: int = IMAGE_SIZE):
    """``volume_to_slices`` with one channel per intensity window -> ``(ct_u8, pet_u8,
    geometry)``, uint8 stacks ``(z, len(ct_windows), size, size)`` and ``(z, len(suv_windows),
    size, size)``.

    Each channel goes the papers' way: window, pad, resize, round (with the papers' single
    windows this is exactly ``volume_to_slices``). A model's ``InputSpec`` names its windows.
    """
    if hasattr(ct_hu, "GetDirection") and hasattr(pet_suv, "GetDirection"):
        from vmambax.data.io import check_same_grid

        check_same_grid(pet_suv, ct_hu, "The PET", "the CT (resample the PET onto it first)")
    geometry = SliceGeometry.for_volume(ct_hu, size)

    def stack(volume, windows):
        z = geometry.shape[0]
        out = np.empty((z, len(windows), geometry.size, geometry.size), np.uint8)
        for c, (lo, hi) in enumerate(windows):
            out[:, c] = geometry._map(volume, lambda b, lo=lo, hi=hi: _window(b, lo, hi),
                                      _round_inplace, np.uint8)
        return out

    return stack(ct_hu, ct_windows), stack(pet_suv, suv_windows), geometry


def mask_to_slices(label, geometry: SliceGeometry) -> np.ndarray:
    """Label (0/1, CT grid) -> uint8 0/1 ``(z, size, size)``: same resize, then >= 0.5."""
    return geometry._map(label, lambda b: (np.asarray(b) > 0).astype(np.float32),
                         lambda b: b >= 0.5, np.uint8)


def slices_to_volume(prob_or_mask, geometry: SliceGeometry) -> np.ndarray:
    """Network-size maps ``(z, size, size)`` (or ``(z, 1, size, size)``) -> float32 array in the
    original volume's ``(k, j, i)`` layout, i.e. ``sitk.GetArrayFromImage(ct)``'s shape."""
    return geometry.from_network(prob_or_mask)


def slices_to_label(prob, geometry: SliceGeometry, threshold: float = 0.5) -> np.ndarray:
    """Probabilities -> uint8 0/1 label array on the CT grid (``prob > threshold``, as pred.py)."""
    return (slices_to_volume(prob, geometry) > threshold).astype(np.uint8)
