"""Global batches dealt across processes, in the order one process would see them.

The configured ``batch_size`` is the *global* batch: one optimizer step consumes
``batch_size`` samples whatever the number of processes. :class:`GlobalBatchSampler`
draws one permutation of the data per epoch (from a generator in the same state on
every process), cuts it into global batches exactly as a single process would, and
gives each rank a contiguous share of every global batch: with ``b`` samples and
``N`` processes, rank ``r`` gets ``b // N`` samples, plus one for the first ``b % N``
ranks. So every sample is used exactly once per epoch: nothing is dropped or
repeated, and every rank runs the same number of steps. A final global batch
smaller than ``N`` leaves the last ranks an *empty* local batch (zero rows); they
still take part in the step, contributing nothing to the gradient.

:class:`ShardedLoader` yields ``(x, y, window)`` where ``window = (offset, total)``
places the local rows inside their global batch; the trainer and the evaluators use
it to draw random attack starts for the whole global batch
(:func:`fairdefense.attacks.global_batch`), so that a sample gets the same start on
whatever rank holds it.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from fairdefense.attacks import global_batch

__all__ = ["GlobalBatchSampler", "ShardedLoader", "share"]


def share(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s rows in a global batch of ``total`` rows."""
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of each global batch of ``batch_size`` indices into ``size`` samples.

    ``shuffle=True`` draws one ``torch.randperm(size, generator=generator)`` per epoch
    (the generator must be in the same state on every rank); otherwise the order is
    ``0..size-1``. The last global batch may be smaller than ``batch_size`` (never dropped).
    """

    def __init__(
        self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size, self.batch_size = int(size), int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle, self.generator = shuffle, generator

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def windows(self) -> list[tuple[int, int]]:
        """``(offset, total)`` of this rank's rows in each global batch, in order."""
        out = []
        for start in range(0, self.size, self.batch_size):
            total = min(self.batch_size, self.size - start)
            out.append((share(total, self.rank, self.world_size)[0], total))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=self.generator) if self.shuffle else torch.arange(self.size)
        for start in range(0, self.size, self.batch_size):
            batch = order[start:start + self.batch_size]
            lo, hi = share(len(batch), self.rank, self.world_size)
            yield batch[lo:hi].tolist()


class _Collate:
    """``default_collate``, with zero-row tensors of the data's shape for an empty local batch."""

    def __init__(self, x: Tensor) -> None:
        self.shape, self.dtype = tuple(x.shape), x.dtype

    def __call__(self, items: Sequence[Any]) -> Any:
        if items:
            return default_collate(items)
        return torch.empty((0, *self.shape), dtype=self.dtype), torch.empty(0, dtype=torch.long)


class ShardedLoader:
    """A ``DataLoader`` over this rank's shares of the global batches, yielding ``(x, y, window)``.

    :meth:`pairs` yields ``(x, y)`` with the attack window
    (:func:`fairdefense.attacks.global_batch`) set while each pair is processed, so that
    code which does not know about windows (:func:`fairdefense.evaluate`) draws global
    random starts too.
    """

    def __init__(
        self, data: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = False,
        generator: torch.Generator | None = None, workers: int = 0, pin_memory: bool = False,
    ) -> None:
        self.sampler = GlobalBatchSampler(
            len(data), batch_size, rank=rank, world_size=world_size,  # type: ignore[arg-type]
            shuffle=shuffle, generator=generator,
        )
        example = torch.as_tensor(data[0][0])
        self.loader = DataLoader(
            data, batch_sampler=self.sampler, num_workers=workers, collate_fn=_Collate(example),
            generator=generator, pin_memory=pin_memory,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, tuple[int, int]]]:
        for (x, y), window in zip(self.loader, self.sampler.windows()):
            yield x, y, window

    def pairs(self) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` only, for :func:`fairdefense.evaluate` (the window is set while each is used)."""
        for x, y, window in self:
            with global_batch(*window):
                yield x, y
