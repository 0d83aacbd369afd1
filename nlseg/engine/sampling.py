"""Which samples a training run consumes, and their augmentation seeds: reproducible by construction.

The k-th sample the run consumes (its *serial*) is ``permutation_e[k mod len]`` with the epoch permutation drawn
from ``(seed, epoch)``, and its augmentation is drawn from a generator seeded by ``(seed, serial)``: a run resumed
at iteration t sees exactly the batches the uninterrupted run saw from t on, whatever the number of workers.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from nlseg.config import TrainConfig
from nlseg.engine.distributed import DistInfo
from nlseg.errors import ConfigError

__all__ = ["IterationSampler", "SeededSamples", "mix_seeds"]

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio) to mix seeds
_MASK = (1 << 63) - 1


def mix_seeds(*values: int) -> int:
    """One 63-bit seed from several integers (a seed, a rank, an iteration, a purpose tag)."""
    h = 0
    for v in values:
        h = ((h ^ (v & _MASK)) * _MIX + 0x632BE59BD9B4E019) & _MASK
    return h


class SeededSamples(Dataset):
    """Gives sample ``(index, serial)`` with its random augmentation drawn from ``(seed, serial)``."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, serial = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seeds(self.seed, serial))
            return self.dataset[index]


class IterationSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of ``(index, serial)`` for this process, from ``start_iter`` to ``iters``.

    Each optimiser step consumes ``batch_size`` serials in all; process r takes its contiguous share,
    split into ``grad_accum`` micro-batches. Serial s maps to index ``perm_e[s mod len]`` with e = s // len.
    """

    def __init__(self, length: int, cfg: TrainConfig, *, start_iter: int, dist_info: DistInfo) -> None:
        if length == 0:
            raise ValueError("the training split is empty")
        per_process, rest = divmod(cfg.batch_size, dist_info.world_size * cfg.grad_accum)
        if rest or per_process == 0:
            raise ConfigError(
                f"train.batch_size={cfg.batch_size} must be a positive multiple of processes × grad_accum "
                f"= {dist_info.world_size} × {cfg.grad_accum}"
            )
        self.length, self.seed = length, cfg.seed
        self.batch_size, self.micro, self.accum = cfg.batch_size, per_process, cfg.grad_accum
        self.start_iter, self.iters, self.rank = start_iter, cfg.iters, dist_info.rank
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def _index(self, serial: int) -> int:
        epoch, position = divmod(serial, self.length)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(mix_seeds(self.seed, epoch, 1))
            self._epoch, self._perm = epoch, torch.randperm(self.length, generator=gen)
        return int(self._perm[position])

    def __len__(self) -> int:
        return (self.iters - self.start_iter) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start_iter, self.iters):
            first = it * self.batch_size + self.rank * self.micro * self.accum
            for a in range(self.accum):
                start = first + a * self.micro
                yield [(self._index(s), s) for s in range(start, start + self.micro)]
