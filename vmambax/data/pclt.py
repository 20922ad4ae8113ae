"""The PCLT20K slice layout: reading samples and splits.

Layout (spec section 9): ``<root>/<folder>/<ID>_CT.png``, ``<ID>_PET.png``, ``<ID>_mask.png``
where ``<folder>`` is the part of ``<ID>`` before the first underscore (the patient), plus
``train.txt`` and ``test.txt`` (one ID a line) and optionally ``val.txt``.

Differences from the reference loader, on purpose:

* The reference drops each line's last character (assuming a newline), so a last line without
  newline loses a character. Here lines are stripped of whitespace; blank lines and ``#``
  comments are skipped, duplicates dropped. ``write_split`` ends every line with a newline so
  the reference code reads our files correctly too.
* The reference validates on the test set. Here validation is ``val.txt`` when present, else a
  *patient-level* split carved from train (``make_splits``); the test set is never touched.
* PNGs are read as 8-bit greyscale (colour PNGs converted with the same luma weights as
  OpenCV's grayscale read); masks are ``value >= 128`` (the reference's ``/255 >= 0.5``).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from vmambax.errors import InputError

SPLITS = ("train", "val", "test")
KINDS = ("CT", "PET", "mask")
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SEED = 42


class PatientOverlapWarning(UserWarning):
    """The same patient appears in two splits (information leaks between them)."""


def patient_of(sample_id: str) -> str:
    """The patient/folder part of a PCLT ID: everything before the first underscore."""
    return sample_id.split("_", 1)[0]


def sample_path(root, sample_id: str, kind: str) -> Path:
    """``<root>/<folder>/<ID>_<kind>.png`` for kind in ``KINDS``."""
    return Path(root) / patient_of(sample_id) / f"{sample_id}_{kind}.png"


def _check_root(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"PCLT20K folder {root} does not exist or is not a folder.")
    return root


def read_split(root, name: str) -> list[str]:
    """IDs listed in ``<root>/<name>.txt`` (see the module docstring for the parsing rules)."""
    path = _check_root(root) / f"{name}.txt"
    if not path.is_file():
        raise InputError(f"{path} is missing; a PCLT20K folder needs train.txt and test.txt "
                         "(one sample ID a line).")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"Cannot read {path}: {exc}; it must be a UTF-8 text file with one "
                         "sample ID a line.") from None
    ids: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        sample_id = line.strip()
        if not sample_id or sample_id.startswith("#"):
            continue
        if any(c in sample_id for c in "/\\") or sample_id.startswith("."):
            raise InputError(f"{path} line {n}: {sample_id!r} is not a sample ID (IDs look like "
                             "<patient>_<slice>, without folders).")
        if sample_id not in seen:
            seen.add(sample_id)
            ids.append(sample_id)
    return ids


def write_split(path, ids: Iterable[str]) -> None:
    """Write one ID a line, every line newline-terminated (the reference drops the last char)."""
    Path(path).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def check_files(root, ids: Sequence[str], what: str = "samples") -> None:
    """Raise ``InputError`` listing how many PNGs are missing, and the first few."""
    missing = [str(sample_path(root, i, k)) for i in ids for k in KINDS
               if not sample_path(root, i, k).is_file()]
    if missing:
        first = ", ".join(missing[:5])
        raise InputError(f"{len(missing)} PNG file(s) of the {what} listed in {root} are missing "
                         f"(first: {first}). Check the split files against the folders.")


def split_patients(ids: Sequence[str], fraction: float, seed: int = DEFAULT_SEED,
                   group=patient_of) -> tuple[list[str], list[str]]:
    """Split ``ids`` by patient: ``(kept, carved)``, ``carved`` holding ~``fraction`` of patients.

    At least one patient is carved when ``fraction > 0`` and at least one is kept; the choice
    depends only on the set of patients and the seed.
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"Validation fraction {fraction} must be in [0, 1).")
    patients = sorted({group(i) for i in ids})
    n = round(fraction * len(patients))
    if fraction > 0 and len(patients) >= 2:
        n = min(max(n, 1), len(patients) - 1)
    else:
        n = 0
    shuffled = patients[:]
    random.Random(seed).shuffle(shuffled)
    carved_patients = set(shuffled[:n])
    kept = [i for i in ids if group(i) not in carved_patients]
    carved = [i for i in ids if group(i) in carved_patients]
    return kept, carved


def make_splits(root, val_fraction: float = DEFAULT_VAL_FRACTION,
                seed: int = DEFAULT_SEED) -> dict[str, list[str]]:
    """``{"train", "val", "test"}`` ID lists: ``val.txt`` if present, else carved from train.

    Warns (``PatientOverlapWarning``) when a patient appears in more than one split.
    """
    root = _check_root(root)
    train, test = read_split(root, "train"), read_split(root, "test")
    if (root / "val.txt").is_file():
        val = read_split(root, "val")
        val_set = set(val)
        train = [i for i in train if i not in val_set]
    else:
        train, val = split_patients(train, val_fraction, seed)
    splits = {"train": train, "val": val, "test": test}
    patients = {k: {patient_of(i) for i in v} for k, v in splits.items()}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        shared = patients[a] & patients[b]
        if shared:
            warnings.warn(f"{len(shared)} patient(s) appear in both {a} and {b} of {root} (e.g. "
                          f"{sorted(shared)[0]}); slices of one patient in two splits inflate "
                          "the scores.", PatientOverlapWarning, stacklevel=2)
    return splits


def read_png(path) -> np.ndarray:
    """An 8-bit greyscale PNG as a uint8 ``(H, W)`` array; clear errors for bad files."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise InputError(f"{path} is a {img.mode} (16-bit/float) image; PCLT20K PNGs are "
                                 "8-bit greyscale. Re-export it with `vmambax export`.")
            if img.mode != "L":
                img = img.convert("L")
            return np.asarray(img, dtype=np.uint8).copy()
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path} is missing.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path} is not a readable PNG (corrupt or truncated: {exc}); re-export "
                         "or re-copy it.") from None


def write_png(path, array: np.ndarray) -> None:
    """Write a uint8 ``(H, W)`` array as an 8-bit greyscale PNG."""
    from PIL import Image

    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"write_png needs a 2-D uint8 array, got {array.dtype} {array.shape}")
    Image.fromarray(array).save(path, format="PNG")  # uint8 2-D -> mode L


class PcltDataset:
    """PCLT20K samples of one split as ``{"id", "patient", "ct", "pet", "mask"}`` dicts.

    ``ct``/``pet`` are uint8 ``(H, W)``, ``mask`` is uint8 0/1. ``ids`` overrides the split.
    Wrap it for augmentation; ``to_tensors`` gives the normalised network tensors.
    """

    def __init__(self, root, split: str = "train", ids: Sequence[str] | None = None, *,
                 val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SEED,
                 check: bool = True):
        self.root = _check_root(root)
        if ids is None:
            if split not in SPLITS:
                raise InputError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
            ids = make_splits(self.root, val_fraction, seed)[split]
        self.split = split
        self.ids = list(ids)
        if check:
            check_files(self.root, self.ids, f"{split} samples")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def patients(self) -> list[str]:
        return sorted({patient_of(i) for i in self.ids})

    def __getitem__(self, index: int) -> dict:
        sample_id = self.ids[index]
        ct, pet, mask = (read_png(sample_path(self.root, sample_id, k)) for k in KINDS)
        if not ct.shape == pet.shape == mask.shape:
            raise InputError(f"Sample {sample_id}: CT {ct.shape}, PET {pet.shape} and mask "
                             f"{mask.shape} PNGs differ in size; they must be the same slice.")
        return {"id": sample_id, "patient": patient_of(sample_id), "ct": ct, "pet": pet,
                "mask": (mask >= 128).astype(np.uint8)}


def to_tensors(sample: dict):
    """``(ct, pet, mask)`` float tensors ``(1, H, W)``: images normalised, mask 0/1."""
    import torch

    from vmambax.data.preprocess import normalize_uint8

    ct = normalize_uint8(torch.from_numpy(sample["ct"]))[None]
    pet = normalize_uint8(torch.from_numpy(sample["pet"]))[None]
    mask = torch.from_numpy(sample["mask"]).float()[None]
    return ct, pet, mask


def __getattr__(name: str):
    # The exporter lives in its own module; keep ``pclt.export_cases`` working (ARCHITECTURE).
    if name in ("export_cases", "export_case_folders", "VolumeCase", "ExportSummary"):
        from vmambax.data import pclt_export

        return getattr(pclt_export, name)
    raise AttributeError(name)
