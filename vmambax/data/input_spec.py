"""What a model expects of its inputs and does with its outputs: part of the model, not of VMambaX.

An ``InputSpec`` is stored in every model file (its ``preprocessing`` dict) and used by
everything that feeds that model: the training export, ``vmambax segment``, the Slicer module,
cross-validation and evaluation. A model file without these fields means the papers'
preprocessing (one CT window of [-1200, -200] HU, PET [0, 15] SUV, 512-pixel slices, p > 0.5).

Fields:

- ``ct_windows`` / ``suv_windows``: one network input channel per window (HU / SUV ranges),
  each made the papers' way (``preprocess.volume_to_channels``: window, pad to a square, resize,
  round to uint8). E.g. lung, soft tissue and bone windows in the three CT channels.
- ``context``: neighbouring axial slices on each side given as extra channels (2.5-D), after
  the windows: channel order is window-major, slice offsets ``-context..+context`` within it.
  Slices beyond the volume's ends repeat the end slice.
- ``image_size``: the network's slice side (slices are padded to a square and resized to it).
- ``threshold``: the probability above which a voxel is tumour (on the CT's own voxels).
- ``tta``: test-time flips averaged with the plain prediction: ``none``, ``hflip``
  (left-right) or ``hvflip`` (left-right, up-down and both).
- ``postprocess``: ``none``, or ``largest`` (keep the largest 3-D connected component: a model
  trained on one-tumour-per-case data may choose it on its validation cases).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from vmambax.data.preprocess import (CT_WINDOW_HU, IMAGE_SIZE, SUV_WINDOW, preprocessing_info,
                                     volume_to_channels)
from vmambax.errors import ConfigError

TTA_MODES = ("none", "hflip", "hvflip")
POSTPROCESS_MODES = ("none", "largest")
#: Named CT windows (HU), for the command line (``--ct-windows soft,lung``).
CT_WINDOWS = {"lung-paper": CT_WINDOW_HU, "soft": (-160.0, 240.0), "lung": (-1000.0, 200.0),
              "bone": (-500.0, 1300.0), "mediastinum": (-125.0, 225.0)}
SPEC_VERSION = 2


def _pairs(value, what: str) -> tuple[tuple[float, float], ...]:
    try:
        pairs = tuple((float(lo), float(hi)) for lo, hi in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a list of [low, high] pairs, got {value!r}.") from None
    if not pairs:
        raise ConfigError(f"{what} needs at least one [low, high] window.")
    for lo, hi in pairs:
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ConfigError(f"{what}: window [{lo}, {hi}] must have high > low (finite numbers).")
    return pairs


@dataclass(frozen=True)
class InputSpec:
    ct_windows: tuple = (CT_WINDOW_HU,)
    suv_windows: tuple = (SUV_WINDOW,)
    image_size: int = IMAGE_SIZE
    context: int = 0
    threshold: float = 0.5
    tta: str = "none"
    postprocess: str = "none"

    def __post_init__(self):
        object.__setattr__(self, "ct_windows", _pairs(self.ct_windows, "ct_windows"))
        object.__setattr__(self, "suv_windows", _pairs(self.suv_windows, "suv_windows"))
        # (the network itself needs a multiple of 128; stand-in networks in tests do not)
        if int(self.image_size) != self.image_size or self.image_size <= 0:
            raise ConfigError(f"image_size must be a positive whole number, got {self.image_size}.")
        if int(self.context) != self.context or not 0 <= self.context <= 3:
            raise ConfigError(f"context must be 0..3 neighbouring slices a side, got {self.context}.")
        if not 0.0 < float(self.threshold) < 1.0:
            raise ConfigError(f"threshold must lie in (0, 1), got {self.threshold}.")
        if self.tta not in TTA_MODES:
            raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}.")
        if self.postprocess not in POSTPROCESS_MODES:
            raise ConfigError(f"postprocess must be one of {', '.join(POSTPROCESS_MODES)}, "
                              f"got {self.postprocess!r}.")
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "context", int(self.context))
        object.__setattr__(self, "threshold", float(self.threshold))
        in_chans_for(self.ct_channels, self.pet_channels)  # refuse counts the network cannot take

    # -- channels ----------------------------------------------------------------------------
    @property
    def ct_channels(self) -> int:
        return len(self.ct_windows) * (2 * self.context + 1)

    @property
    def pet_channels(self) -> int:
        return len(self.suv_windows) * (2 * self.context + 1)

    @property
    def in_chans(self) -> int:
        """The network's patch-embedding input channels for this spec (``ModelConfig.in_chans``)."""
        return in_chans_for(self.ct_channels, self.pet_channels)

    @property
    def is_paper(self) -> bool:
        """The papers' inputs (what a model file without a spec means)."""
        return (self.ct_windows == (CT_WINDOW_HU,) and self.suv_windows == (SUV_WINDOW,)
                and self.context == 0)

    def replace(self, **changes) -> "InputSpec":
        return dataclasses.replace(self, **changes)

    # -- model files -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The model file's ``preprocessing`` dict. The papers' single windows keep the version-1
        keys (``ct_window_hu``, ``suv_window``) so older readers check them."""
        d = preprocessing_info(self.image_size)
        d.update({"spec_version": SPEC_VERSION, "ct_windows_hu": [list(w) for w in self.ct_windows],
                  "suv_windows": [list(w) for w in self.suv_windows], "context": self.context,
                  "threshold": self.threshold, "tta": self.tta, "postprocess": self.postprocess,
                  "inputs": ["ct", "pet"]})
        if len(self.ct_windows) != 1 or len(self.suv_windows) != 1:
            d.pop("ct_window_hu")
            d.pop("suv_window")
        else:
            d["ct_window_hu"], d["suv_window"] = list(self.ct_windows[0]), list(self.suv_windows[0])
        return d

    @classmethod
    def from_dict(cls, pre: dict | None) -> "InputSpec":
        """The spec a model file's ``preprocessing`` dict describes; missing fields are the
        papers' (so version-1 files and the authors' checkpoints mean the papers' inputs)."""
        pre = dict(pre or {})
        ct = pre.get("ct_windows_hu") or ([pre["ct_window_hu"]] if pre.get("ct_window_hu") else None)
        suv = pre.get("suv_windows") or ([pre["suv_window"]] if pre.get("suv_window") else None)
        size = pre.get("image_size", pre.get("size", IMAGE_SIZE))
        return cls(ct_windows=ct or (CT_WINDOW_HU,), suv_windows=suv or (SUV_WINDOW,),
                   image_size=int(size), context=int(pre.get("context", 0)),
                   threshold=float(pre.get("threshold", 0.5)), tta=pre.get("tta", "none"),
                   postprocess=pre.get("postprocess", "none"))

    def describe(self) -> str:
        wins = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in self.ct_windows)
        pets = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in self.suv_windows)
        extra = f", {self.context} neighbouring slice(s) a side" if self.context else ""
        return (f"CT window(s) {wins} HU, PET {pets} SUV, {self.image_size}-pixel slices{extra}, "
                f"threshold {self.threshold:g}, test-time flips {self.tta}, post-processing "
                f"{self.postprocess}")

    # -- volumes -> network inputs -----------------------------------------------------------
    def volume_to_stacks(self, ct_hu, pet_suv):
        """CT (HU) + PET (SUV) on one grid -> ``(ct_u8, pet_u8, geometry)``: uint8 stacks
        ``(z, n_windows, S, S)`` (context channels are gathered per batch by ``gather``)."""
        return volume_to_channels(ct_hu, pet_suv, self.ct_windows, self.suv_windows,
                                  self.image_size)

    def gather(self, stack: np.ndarray, indices) -> np.ndarray:
        """uint8 network channels ``(b, C, S, S)`` of the slices ``indices`` of a
        ``volume_to_stacks`` stack, with this spec's neighbouring slices (ends repeated)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.context == 0:
            return stack[indices]
        z = stack.shape[0]
        offsets = np.arange(-self.context, self.context + 1)
        rows = np.clip(indices[:, None] + offsets[None, :], 0, z - 1)  # (b, 2c+1)
        picked = stack[rows]  # (b, 2c+1, windows, S, S)
        return np.ascontiguousarray(picked.transpose(0, 2, 1, 3, 4)).reshape(
            len(indices), -1, *stack.shape[2:])


def in_chans_for(ct_channels: int, pet_channels: int) -> int:
    """The patch embedding's channel count for these inputs: 3 (the papers', 1-channel inputs
    are repeated) when each input has 1 or 3 channels, else the larger count; the shared encoder
    takes each input with 1 channel or exactly ``in_chans``."""
    big = max(ct_channels, pet_channels)
    n = 3 if big in (1, 3) else big
    for what, c in (("CT", ct_channels), ("PET", pet_channels)):
        if c not in (1, n):
            raise ConfigError(f"the {what} input would have {c} channels and the other {big}: the "
                              "shared encoder takes both inputs with the same channel count (or 1); "
                              "give CT and PET the same number of windows x slices, or one of them 1.")
    return n


PAPER = InputSpec()


def parse_windows(text: str, what: str = "--ct-windows") -> tuple[tuple[float, float], ...]:
    """``"soft,lung"`` or ``"-160:240,-1000:200"`` (names from ``CT_WINDOWS`` or LOW:HIGH)."""
    out = []
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        if part in CT_WINDOWS:
            out.append(CT_WINDOWS[part])
            continue
        lo, sep, hi = part.rpartition(":")
        try:
            if not sep:
                raise ValueError
            out.append((float(lo), float(hi)))
        except ValueError:
            raise ConfigError(f"{what}: {part!r} is neither a window name ({', '.join(CT_WINDOWS)}) "
                              "nor LOW:HIGH (e.g. -160:240).") from None
    return _pairs(out, what)
