"""Deterministic, resumable batching over a list of records, sharded across processes.

Epoch ``e`` visits the records in the order ``np.random.default_rng([seed, e]).permutation(N)`` (or
``0..N-1`` without shuffling), cut into global batches of ``batch_size``. Every process computes the same
global order and takes its own contiguous slice of each global batch, so the slices of the
``process_count`` processes are disjoint and their union (in process order) is the global batch.

The position is global (records consumed in the current epoch), so ``state_dict()`` saved in a
checkpoint resumes to exactly the same next batch, also with a different number of processes.

With ``lengths`` (one size per record) an epoch's order is length-grouped, as transformers' Trainer does
with ``group_by_length``: the shuffled order is cut into megabatches of ``MEGABATCH_BATCHES`` batches, each
megabatch sorted by length and its batches shuffled again, so a batch holds records of similar length
(little padding) while the batches still come in random order.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

log = logging.getLogger("grlhf.data")
MEGABATCH_BATCHES = 50  # transformers' LengthGroupedSampler uses 50 as well


def length_grouped_order(order: np.ndarray, lengths: Sequence[int], batch_size: int,
                         rng: np.random.Generator) -> np.ndarray:
    """``order`` regrouped so that each run of ``batch_size`` holds records of similar ``lengths``: megabatches
    of ``MEGABATCH_BATCHES * batch_size`` records, each sorted by length (stable), their batches shuffled
    by ``rng``; a megabatch's remainder (fewer than ``batch_size`` records) stays at its end."""
    sizes = np.asarray(lengths)
    span, out = MEGABATCH_BATCHES * batch_size, []
    for start in range(0, len(order), span):
        mega = order[start:start + span]
        mega = mega[np.argsort(sizes[mega], kind="stable")]
        full = len(mega) // batch_size * batch_size
        batches = mega[:full].reshape(-1, batch_size)[rng.permutation(full // batch_size)]
        out += [batches.reshape(-1), mega[full:]]
    return np.concatenate(out) if out else order


class LazyItems(Sequence):
    """``make(index)`` for ``index`` in ``range(start, start + count)``, built on access (the synthetic task)."""

    def __init__(self, make: Callable[[int], Any], count: int, start: int = 0):
        self.make, self.count, self.start = make, count, start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if not -self.count <= i < self.count:
            raise IndexError(i)
        return self.make(self.start + (i % self.count))


class EpochIterator:
    """An endless (or ``max_epochs``-long) iterator of batches of records.

    ``records`` is a sequence (batches are lists of its items) or an int N (batches are lists of
    indices). ``batch_size`` is the *global* batch size and must be divisible by ``process_count``; each
    process gets ``batch_size // process_count`` items. With ``drop_last=False`` the last batch of an
    epoch is smaller and is split as evenly as possible (``np.array_split``), so processes may get
    different counts then.
    """

    def __init__(
        self,
        records: Union[Sequence[Any], int],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        max_epochs: Optional[int] = None,
        lengths: Optional[Sequence[int]] = None,
    ):
        self.records = None if isinstance(records, (int, np.integer)) else records
        self.num_records = int(records) if self.records is None else len(records)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if batch_size % process_count:
            raise ValueError(f"global batch_size {batch_size} is not divisible by process_count {process_count}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if lengths is not None and len(lengths) != self.num_records:
            raise ValueError(f"{len(lengths)} lengths for {self.num_records} records")
        self.lengths = lengths
        self.batch_size, self.seed, self.shuffle, self.drop_last = int(batch_size), int(seed), shuffle, drop_last
        self.process_index, self.process_count, self.max_epochs = process_index, process_count, max_epochs
        if self.batches_per_epoch == 0:
            raise ValueError(f"{self.num_records} records make no batch of {batch_size}"
                             + (" (drop_last=True)" if drop_last and self.num_records else ""))
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = None, None

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    @property
    def batches_per_epoch(self) -> int:
        n, b = self.num_records, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def _epoch_end(self) -> int:
        return self.batches_per_epoch * self.batch_size if self.drop_last else self.num_records

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of record indices in ``epoch``."""
        if not self.shuffle:
            return np.arange(self.num_records)
        order = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_records)
        if self.lengths is None:
            return order
        return length_grouped_order(order, self.lengths, self.batch_size,
                                    np.random.default_rng([self.seed, int(epoch), 1]))

    def next_global_indices(self) -> np.ndarray:
        """Advance by one global batch and return all its record indices (every process's slice)."""
        if self.position >= self._epoch_end:
            self.epoch, self.position = self.epoch + 1, 0
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            raise StopIteration
        if self._order_epoch != self.epoch:
            self._order_epoch, self._order = self.epoch, self.epoch_order(self.epoch)
        idx = self._order[self.position:self.position + self.batch_size]
        self.position += len(idx)
        return idx

    def next_indices(self) -> np.ndarray:
        """Advance by one global batch and return this process's slice of it."""
        idx = self.next_global_indices()
        if len(idx) == self.batch_size:
            k = self.local_batch_size
            return idx[self.process_index * k:(self.process_index + 1) * k]
        return np.array_split(idx, self.process_count)[self.process_index]

    def __iter__(self):
        return self

    def __next__(self) -> list:
        idx = self.next_indices()
        if self.records is None:
            return [int(i) for i in idx]
        return [self.records[int(i)] for i in idx]

    def state_dict(self) -> dict:
        """The position to save in a checkpoint (plain ints: JSON / orbax friendly)."""
        return {"epoch": int(self.epoch), "position": int(self.position), "seed": int(self.seed),
                "num_records": int(self.num_records)}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next batch is the one an uninterrupted run would have produced next. The saved
        seed wins over the constructor's; a different record count is an error (the order would differ)."""
        n = state.get("num_records", self.num_records)
        if int(n) != self.num_records:
            raise ValueError(f"iterator state is for {n} records, this dataset has {self.num_records}")
        seed = int(state.get("seed", self.seed))
        if seed != self.seed:
            log.warning("iterator: resuming with the checkpoint's seed %d (configured %d)", seed, self.seed)
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.num_records:
            raise ValueError(f"bad iterator state epoch={epoch} position={position}")
        if seed != self.seed:
            self._order_epoch, self._order = None, None  # the cached order was the old seed's
        self.seed, self.epoch, self.position = seed, epoch, position


__all__ = ["EpochIterator", "LazyItems", "MEGABATCH_BATCHES", "length_grouped_order"]
