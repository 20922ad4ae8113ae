"""Training data: find/prepare the PCLT-layout data, the splits, datasets and loaders.

``--data`` is either a PCLT20K-layout folder (``train.txt`` present) or a folder of volume cases
(``<case>/ct.nii.gz``, ``pet.nii.gz``, ``label.nii.gz``), which is exported once into
``RUN_DIR/data`` with the data layer's exporter. Validation comes from ``val.txt`` or a
patient-level split carved from the training list by the data layer; ``test.txt`` is never read
here (the reference validated and picked checkpoints on the test list, spec §12.4).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vmambax.errors import InputError
from vmambax.train.augment import Augmentation, augment, get_augmentation, random_crop, sample_generator
from vmambax.train.sampler import ShardedSampler

# ---------------------------------------------------------------------------- data discovery
def is_pclt_root(path: Path) -> bool:
    return (path / "train.txt").is_file()


def check_data_path(data: str | Path) -> Path:
    data = Path(data)
    if not data.exists():
        raise InputError(f"training data folder {str(data)!r} does not exist; pass --data with a "
                         "PCLT20K-layout folder (train.txt, <patient>/<ID>_CT.png ...) or a folder "
                         "of volume cases (<case>/ct.nii.gz, pet.nii.gz, label.nii.gz).")
    if not data.is_dir():
        raise InputError(f"--data {str(data)!r} is a file; it must be a folder.")
    return data


def source_key(data: Path, folders, settings: dict) -> str:
    """A key of the volume cases an export was made from: every file's path, size and mtime, and
    the export settings. A changed case (re-annotated label, added case) changes the key."""
    import hashlib
    import json

    entries = []
    for case_id, paths in folders:
        for kind in sorted(paths):
            p = Path(paths[kind])
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                st = f.stat()
                entries.append([case_id, kind, str(f.relative_to(data)), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"source": str(data.resolve()), "files": entries, "settings": settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def export_info(root: Path) -> dict:
    """The exporter's export.json of a PCLT root ({} when there is none or it is unreadable)."""
    import json

    try:
        return json.loads((Path(root) / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def prepare_data_root(data: str | Path, run_dir: str | Path, *, spec=None, export: bool = True,
                      wait_s: float = 3600.0, image_size: int | None = None,
                      data_dir: str | Path | None = None, resumed: bool = False,
                      notes: list[str] | None = None, progress=None) -> tuple[Path, str]:
    """Return (root to train on, kind) where kind is "pclt" (a PCLT20K-layout folder, used as
    it is) or "volumes" (a volume export, ``vmambax.data.volume_export``).

    Volume case folders are exported to ``data_dir`` (default ``run_dir/data``; atomically,
    every file verified) with the model's input windows and slice size (``spec``; default the
    papers' at ``image_size``), keyed to their source (``source_key``: the case files' paths,
    sizes and mtimes and the export settings, recorded in export.json). A new run re-exports
    when the key differs, so an export left by a run refused for bad data is never reused once
    the cases are fixed; a resumed run keeps its export so its splits cannot change under it
    (with a note in ``notes`` when the source changed since). Processes with ``export=False``
    (ranks > 0 of a torchrun/SLURM job) wait for rank 0's export of this key instead.
    """
    data = check_data_path(data)
    if is_pclt_root(data):
        return data, "pclt"
    from vmambax.data import pclt_export
    from vmambax.data.input_spec import InputSpec
    from vmambax.data.volume_export import export_volume_cases, is_volume_export

    try:
        folders = pclt_export.find_case_folders(data)
    except InputError as exc:
        raise InputError(
            f"{str(data)!r} is not a PCLT20K-layout folder (no train.txt), and as a folder of volume "
            f"cases: {exc} Make synthetic cases with `vmambax phantom --out DIR`.") from None
    spec = spec or InputSpec(image_size=image_size or 512)
    exported = Path(data_dir) if data_dir else Path(run_dir) / "data"
    key = source_key(data, folders, {"format": "volumes-1", "image_size": spec.image_size,
                                     "ct_windows": [list(w) for w in spec.ct_windows],
                                     "suv_windows": [list(w) for w in spec.suv_windows]})
    if is_volume_export(exported):
        if export_info(exported).get("source_key") == key:
            return exported, "volumes"
        if resumed:
            if notes is not None:
                notes.append(f"the cases in {data} changed since they were exported to {exported}; "
                             "the resumed run keeps training on that export (start a new run to use "
                             "the new cases).")
            return exported, "volumes"
    if not export:
        deadline = time.monotonic() + wait_s
        while not (is_volume_export(exported) and export_info(exported).get("source_key") == key):
            if time.monotonic() > deadline:
                raise InputError(f"timed out waiting for rank 0 to export the cases into {exported}.")
            time.sleep(2.0)
        return exported, "volumes"
    export_volume_cases(data, exported, spec, progress=progress,
                        extra_info={"source": str(data.resolve()), "source_key": key})
    return exported, "volumes"


def load_volume_splits(root: Path, spec, *, train_cases=None, val_cases=None,
                       val_fraction: float = 0.1, seed: int = 42,
                       negatives_per_positive: float = 1.0):
    """(train, validation) ``VolumeSlices`` of a volume export: the given case lists, or a
    seeded patient-level carve-out of ``val_fraction`` of the cases (one case = one patient).
    Validation takes every slice of its cases (3-D Dice per case)."""
    from vmambax.data.pclt import split_patients
    from vmambax.data.volume_export import VolumeSlices, read_export_info

    cases = sorted((read_export_info(root).get("cases") or {}))
    if train_cases is None:
        kept, carved = split_patients(cases, val_fraction, seed, group=lambda c: c)
        train_cases = kept
        val_cases = carved if val_cases is None else val_cases
    elif val_cases is None:
        val_cases = []
    overlap = sorted(set(train_cases) & set(val_cases))
    if overlap:
        raise InputError(f"case(s) {', '.join(overlap)} are both training and validation cases.")
    if not train_cases:
        raise InputError(f"no training cases in {root}; add annotated cases.")
    if not val_cases:
        raise InputError(f"no validation case in {root}: {len(cases)} case(s) are too few to hold one "
                         "out; add cases (at least two), or raise --val-fraction.")
    train = VolumeSlices(root, train_cases, spec, select="train",
                         negatives_per_positive=negatives_per_positive, seed=seed)
    val = VolumeSlices(root, val_cases, spec, select="all")
    return train, val


def load_splits(root: Path, *, val_fraction: float = 0.1, seed: int = 42) -> tuple[Any, Any]:
    """(train dataset, validation dataset) of the data layer's PCLT reader. Never the test list."""
    from vmambax.data import pclt

    train = pclt.PcltDataset(root, split="train", val_fraction=val_fraction, seed=seed)
    val = pclt.PcltDataset(root, split="val", val_fraction=val_fraction, seed=seed)
    if len(train) == 0:
        raise InputError(f"the training split of {str(root)!r} is empty; list slice IDs in train.txt.")
    if len(val) == 0:
        raise InputError(f"the validation split of {str(root)!r} is empty; add val.txt or more "
                         "patients to train.txt so a patient-level validation split can be carved.")
    return train, val


#: Default least number of training slices with tumour (``--min-positive-slices``): one batch of
#: the paper recipe (8). Below that nearly every batch is tumour-free, the Dice term has nothing
#: to fit and the network learns to answer "no tumour" everywhere; an all-empty set is refused
#: whatever the minimum, since it cannot teach a segmentation at all.
MIN_POSITIVE_SLICES = 8


def _has_tumour(ds, index: int) -> bool:
    if hasattr(ds, "has_tumour"):  # a volume export: its memory-mapped mask
        return bool(ds.has_tumour(index))
    root, ids = getattr(ds, "root", None), getattr(ds, "ids", None)
    if root is not None and ids is not None:  # a PCLT reader: the mask PNG alone (~2 ms at 512)
        from vmambax.data.pclt import read_png, sample_path

        return bool((read_png(sample_path(root, ids[index], "mask")) >= 128).any())
    return bool(np.asarray(ds[index]["mask"]).any())


def check_positive_slices(ds, minimum: int = MIN_POSITIVE_SLICES, where: str = "") -> int:
    """Refuse a training split without enough slices with tumour; returns the count found.

    Masks are read until ``minimum`` positives are found (PCLT20K: the first few), all of them
    only when the split is refused, so the message can give the counts."""
    found = 0
    for i in range(len(ds)):
        found += _has_tumour(ds, i)
        if found >= minimum:
            return found
    ids = [str(i) for i in getattr(ds, "ids", [])]
    patients = len({i.split("_", 1)[0] for i in ids}) if ids else None
    of = f"of {len(ds)} training slices" + (f" from {patients} patient(s)" if patients else "")
    place = f" in {where}" if where else ""
    if found == 0:
        raise InputError(
            f"every training label{place} is empty: 0 {of} show tumour, so there is nothing to "
            "learn. Check that the labels hold the tumour (label.nii.gz voxels 1, *_mask.png "
            "pixels 255) and belong to these images.")
    raise InputError(
        f"too few training slices with tumour{place}: {found} {of}; at least {minimum} are needed "
        "to learn from. Add annotated cases, export more slices per case, or lower "
        "--min-positive-slices (e.g. for a smoke test).")


def slice_size(ds) -> int:
    """Side of the (square) training slices; the model needs a multiple of 128."""
    h, w = np.asarray(ds[0]["ct"]).shape[-2:]
    if h != w or h % 128:
        raise InputError(f"the training slices are {h}x{w}; the network needs square slices whose "
                         "side is a multiple of 128 (PCLT20K uses 512x512). Re-export the data.")
    return int(h)


def split_summary(ds) -> dict[str, int]:
    ids = [str(i) for i in getattr(ds, "ids", [])]
    return {"slices": len(ds), "patients": len({i.split("_", 1)[0] for i in ids}) if ids else -1}


# ---------------------------------------------------------------------------- dataset
def _normalize(x: torch.Tensor) -> torch.Tensor:
    from vmambax.data.preprocess import normalize_uint8  # the one shared implementation

    return normalize_uint8(x)


class SliceDataset(Dataset):
    """Tensors for the model from a PCLT-style source whose items are dicts with uint8 ``ct``,
    ``pet`` (H, W) or (C, H, W) (several windows / neighbouring slices: ``VolumeSlices``) and a
    0/1 (or 0/255) ``mask``.

    Items are requested as ``(index, epoch)`` (see ShardedSampler) so that a sample's random crop
    and augmentation are seeded by (seed, epoch, index): the same on any worker count or rank and
    after a resume. Returns ``{"ct", "pet", "mask"}`` of shape (C, S, S), images normalised
    (plus ``case`` when the source gives a ``case_index``: validation's 3-D Dice per case).
    ``augment``: True (spec §8's augmentation), False, or an ``Augmentation`` / preset name.
    """

    def __init__(self, source: Sequence, *, train: bool, crop_size: int | None = None,
                 augment: bool | str | Augmentation = True, seed: int = 42):
        self.source, self.train = source, train
        self.crop_size = crop_size if train else None
        if isinstance(augment, str):
            augment = get_augmentation(augment) if augment != "none" else False
        self.recipe = augment if isinstance(augment, Augmentation) else None
        self.augment = bool(augment) and train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        item = self.source[index]
        ct, pet = (_channels(item[k]) for k in ("ct", "pet"))
        mask = (torch.as_tensor(np.asarray(item["mask"])) > 0).float()[None]
        if ct.shape[1:] != pet.shape[1:] or ct.shape[1:] != mask.shape[1:]:
            raise InputError(f"slice {item.get('id', index)}: CT {tuple(ct.shape[1:])}, PET "
                             f"{tuple(pet.shape[1:])} and mask {tuple(mask.shape[1:])} differ in size.")
        n_ct = ct.shape[0]
        image = torch.cat([ct, pet], 0)
        if self.train and (self.crop_size or self.augment):
            gen = sample_generator(self.seed, epoch, index)
            if self.crop_size:
                image, mask = random_crop(image, mask, self.crop_size, gen)
            if self.augment:
                image, mask = augment(image, mask, gen, recipe=self.recipe,
                                      pet_channels=pet.shape[0])
        image = _normalize(image)
        out = {"ct": image[:n_ct].contiguous(), "pet": image[n_ct:].contiguous(),
               "mask": mask.contiguous()}
        if "case_index" in item:
            out["case"] = int(item["case_index"])
        return out


def _channels(array) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(array), dtype=torch.float32)
    return t[None] if t.dim() == 2 else t


# ---------------------------------------------------------------------------- datamodule
class SliceDataModule(pl.LightningDataModule):
    """Loaders with rank-sharded deterministic samplers (the Trainer runs with
    ``use_distributed_sampler=False``)."""

    def __init__(self, train_source, val_source, *, batch_size: int, val_batch_size: int,
                 crop_size: int | None, augment, seed: int, num_workers: int):
        super().__init__()
        self.train_source, self.val_source = train_source, val_source
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.crop_size, self.augment, self.seed = crop_size, augment, seed
        self.num_workers = num_workers
        self.train_sampler: ShardedSampler | None = None
        self.limit_batches: int | None = None  # --limit-train-batches N / a time budget's rounds

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, ds, sampler, batch_size, drop_last):
        # Each new iterator draws its workers' base seed from ``generator``; without one it
        # draws from the global torch RNG, which the model's drop-path also uses. A resumed run
        # creates one iterator more than an uninterrupted one (for the cut epoch), so that draw
        # shifted every later drop-path mask: resume was not bit-exact (max |dw| ~2e-4). Samples
        # are seeded per (seed, epoch, index) anyway, so the workers' base seed matters nowhere.
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self):
        rank, world = self._rank_world()
        ds = SliceDataset(self.train_source, train=True, crop_size=self.crop_size,
                          augment=self.augment, seed=self.seed)
        sampler = ShardedSampler(len(ds), rank=rank, world_size=world, shuffle=True,
                                 seed=self.seed, even=True)
        if len(sampler) < self.batch_size:
            raise InputError(
                f"the training split has {len(ds)} slices: {len(sampler)} per process, fewer than "
                f"one batch of {self.batch_size}; lower --batch-size or add training cases.")
        # Continue a run stopped mid-epoch with that epoch's remaining samples, in order. The
        # position is set here because Lightning creates the first iterator before set_epoch().
        pos = getattr(self.trainer.lightning_module, "resume_position", None) if self.trainer else None
        if pos is not None:
            steps = len(sampler) // self.batch_size
            if self.limit_batches:  # an epoch of the run is its first limit_batches batches
                steps = min(steps, self.limit_batches)
            if pos["batches_done"] >= steps:
                sampler.set_epoch(pos["epoch"] + 1)
            else:
                sampler.set_epoch(pos["epoch"])
                sampler.skip_consumed(pos["epoch"], pos["batches_done"] * self.batch_size)
        self.train_sampler = sampler
        return self._loader(ds, sampler, self.batch_size, drop_last=True)

    def val_dataloader(self):
        rank, world = self._rank_world()
        ds = SliceDataset(self.val_source, train=False)
        sampler = ShardedSampler(len(ds), rank=rank, world_size=world, shuffle=False, even=False)
        return self._loader(ds, sampler, self.val_batch_size, drop_last=False)
