"""A deterministic, rank-sharded, resumable sampler.

Why not Lightning's DistributedSampler: (1) validation must not pad the last shard with repeated
images, or the reduced metrics would count some images twice; (2) a run stopped mid-epoch must be
able to continue with the *remaining* samples of that epoch in the same order, which needs a
sampler whose order is a pure function of (seed, epoch) and which can skip what was consumed.

Each item is ``(index, epoch)`` so the dataset can seed a sample's augmentation from
(seed, epoch, index) independently of workers and ranks.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ShardedSampler(Sampler):
    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0, even: bool = True):
        """``even``: trim so every rank gets the same count (training; DDP needs equal step
        counts). ``even=False`` (validation): shards differ by at most one, nothing is repeated."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.rank, self.world_size = n, rank, world_size
        self.shuffle, self.seed, self.even = shuffle, seed, even
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, samples already consumed)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = int(epoch)

    def skip_consumed(self, epoch: int, n_samples: int) -> None:
        """On resume: in ``epoch`` only, start after the first ``n_samples`` of this rank's shard."""
        self._skip = (int(epoch), int(n_samples))

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.even:
            order = order[: self.n - self.n % self.world_size]
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        if self.even:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        indices = self._indices()
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1]:]
        return iter([(i, self.epoch) for i in indices])
