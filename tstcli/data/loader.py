"""Deterministic row loader: the rows of a step are a pure function of (seed, phase, step, rank, world size).

Within a phase, step k reads global positions [k·B, (k+1)·B) of an endless stream made of epochs; epoch e is a
seeded permutation of the phase's rows (a new order each epoch), so the rows of one batch come from across the
whole corpus. Rank r of W takes positions [r·B/W, (r+1)·B/W) of that batch. Resuming at any step reproduces the
rows exactly, with no loader state to save.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from tstcli.data.shards import TokenStore
from tstcli.recipe import Recipe


@lru_cache(maxsize=4)
def _permutation(seed: int, phase: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, phase, epoch]).permutation(n)


def batch_offsets(rows: np.ndarray, seed: int, phase: int, step_in_phase: int, batch_size: int,
                  rank: int = 0, world: int = 1) -> tuple[np.ndarray, int]:
    """Row offsets for this rank at 0-based `step_in_phase`, and the epoch the batch starts in."""
    n = len(rows)
    per_rank = batch_size // world
    positions = step_in_phase * batch_size + rank * per_rank + np.arange(per_rank, dtype=np.int64)
    epochs = positions // n
    out = np.empty(per_rank, dtype=np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = rows[_permutation(seed, phase, int(e), n)[positions[sel] % n]]
    return out, int(epochs[0])


class PhaseLoader:
    """Token rows for one phase, read from memory-mapped shards at the packed offsets."""

    def __init__(self, store: TokenStore, rows: np.ndarray, width: int, seed: int, phase: int, batch_size: int):
        self.store, self.rows, self.width = store, rows, width
        self.seed, self.phase, self.batch_size = seed, phase, batch_size

    def batch(self, step_in_phase: int, rank: int = 0, world: int = 1) -> tuple[np.ndarray, int]:
        offsets, epoch = batch_offsets(self.rows, self.seed, self.phase, step_in_phase, self.batch_size, rank, world)
        return self.store.rows(offsets, self.width), epoch


def val_rows(store: TokenStore, width: int, count: int) -> np.ndarray:
    """The fixed held-out rows: consecutive rows of `width` tokens from the start of the validation split."""
    starts = []
    for sid, length in enumerate(store.lengths):
        k = int(length) // width
        starts.append(store.starts[sid] + width * np.arange(k, dtype=np.int64))
    offsets = np.concatenate(starts)[:count] if starts else np.zeros(0, np.int64)
    return store.rows(offsets, width)


def heldout_rows(val: TokenStore, r: Recipe) -> np.ndarray:
    """The rows every held-out evaluation of a run scores, in training and in `tst eval` alike."""
    return val_rows(val, r.train.seq_len + 1, r.heldout_rows)
