"""Training data: find/prepare the PCLT-layout data, the splits, datasets and loaders.

``--data`` is either a PCLT20K-layout folder (``train.txt`` present) or a folder of volume cases
(``<case>/ct.nii.gz``, ``pet.nii.gz``, ``label.nii.gz``), which is exported once into
``RUN_DIR/data`` with the data layer's exporter. Validation comes from ``val.txt`` or a
patient-level split carved from the training list by the data layer; ``test.txt`` is never read
here (the reference validated and picked checkpoints on the test list, spec §12.4).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vmambax.errors import InputError
from vmambax.train.augment import augment, random_crop, sample_generator
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


def prepare_data_root(data: str | Path, run_dir: str | Path, *, val_fraction: float = 0.1,
                      seed: int = 42, export: bool = True, wait_s: float = 3600.0,
                      image_size: int | None = None,
                      negatives_per_positive: float = 1.0) -> tuple[Path, str]:
    """Return (PCLT root to train on, kind) where kind is "pclt" or "volumes".

    Volume case folders are exported to ``run_dir/data`` (atomically, by the exporter) the first
    time; a resumed run reuses that export so its splits cannot change under it. Processes with
    ``export=False`` (ranks > 0 of a torchrun/SLURM job) wait for rank 0's export instead.
    """
    data = check_data_path(data)
    if is_pclt_root(data):
        return data, "pclt"
    from vmambax.data import pclt_export

    try:
        pclt_export.find_case_folders(data)
    except InputError as exc:
        raise InputError(
            f"{str(data)!r} is not a PCLT20K-layout folder (no train.txt), and as a folder of volume "
            f"cases: {exc} Make synthetic cases with `vmambax phantom --out DIR`.") from None
    exported = Path(run_dir) / "data"
    if is_pclt_root(exported):
        return exported, "volumes"
    if not export:
        deadline = time.monotonic() + wait_s
        while not is_pclt_root(exported):
            if time.monotonic() > deadline:
                raise InputError(f"timed out waiting for rank 0 to export the cases into {exported}.")
            time.sleep(2.0)
        return exported, "volumes"
    from vmambax.data.preprocess import IMAGE_SIZE

    summary = pclt_export.export_case_folders(data, exported, val_fraction=val_fraction, seed=seed,
                                              size=image_size or IMAGE_SIZE,
                                              negatives_per_positive=negatives_per_positive)
    for warning in summary.warnings:  # e.g. how a label.dcm was read; also kept in export.json
        print(f"warning: {warning}", file=sys.stderr)
    return exported, "volumes"


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


def slice_size(ds) -> int:
    """Side of the (square) training slices; the model needs a multiple of 128."""
    h, w = np.asarray(ds[0]["ct"]).shape
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
    ``pet`` (H, W) and a 0/1 (or 0/255) ``mask``.

    Items are requested as ``(index, epoch)`` (see ShardedSampler) so that a sample's random crop
    and augmentation are seeded by (seed, epoch, index): the same on any worker count or rank and
    after a resume. Returns ``{"ct", "pet", "mask"}`` of shape (1, S, S), images normalised.
    """

    def __init__(self, source: Sequence, *, train: bool, crop_size: int | None = None,
                 augment: bool = True, seed: int = 42):
        self.source, self.train = source, train
        self.crop_size = crop_size if train else None
        self.augment = augment and train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        item = self.source[index]
        ct = torch.as_tensor(np.asarray(item["ct"]), dtype=torch.float32)[None]
        pet = torch.as_tensor(np.asarray(item["pet"]), dtype=torch.float32)[None]
        mask = (torch.as_tensor(np.asarray(item["mask"])) > 0).float()[None]
        if ct.shape != pet.shape or ct.shape != mask.shape:
            raise InputError(f"slice {item.get('id', index)}: CT {tuple(ct.shape[1:])}, PET "
                             f"{tuple(pet.shape[1:])} and mask {tuple(mask.shape[1:])} differ in size.")
        image = torch.cat([ct, pet], 0)
        if self.train and (self.crop_size or self.augment):
            gen = sample_generator(self.seed, epoch, index)
            if self.crop_size:
                image, mask = random_crop(image, mask, self.crop_size, gen)
            if self.augment:
                image, mask = augment(image, mask, gen)
        image = _normalize(image)
        return {"ct": image[:1].contiguous(), "pet": image[1:].contiguous(), "mask": mask.contiguous()}


# ---------------------------------------------------------------------------- datamodule
class SliceDataModule(pl.LightningDataModule):
    """Loaders with rank-sharded deterministic samplers (the Trainer runs with
    ``use_distributed_sampler=False``)."""

    def __init__(self, train_source, val_source, *, batch_size: int, val_batch_size: int,
                 crop_size: int | None, augment: bool, seed: int, num_workers: int):
        super().__init__()
        self.train_source, self.val_source = train_source, val_source
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.crop_size, self.augment, self.seed = crop_size, augment, seed
        self.num_workers = num_workers
        self.train_sampler: ShardedSampler | None = None

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, ds, sampler, batch_size, drop_last):
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False)

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
