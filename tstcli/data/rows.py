"""Row sets: the rows a phase reads, as functions from row index to token offset (no per-row arrays).

A set has a length and maps an integer array of row indices to the rows' start offsets in the training split, so
the loader's memory and a pack's build time depend on the batch and the number of shards, not on the corpus: at
2T tokens a phase holds ~10^9 rows, 8 GB as an array of offsets.
"""
from __future__ import annotations

import numpy as np

from tstcli.data.order import Bijection


class Chunks:
    """The chunks of consecutive shards: chunk c is the c-th whole run of `size` tokens, shard by shard (the tail of
    a shard shorter than `size` is no chunk), counted from global offset `start`."""

    def __init__(self, shard_tokens: list[int], size: int, start: int = 0):
        tokens = np.asarray(shard_tokens, dtype=np.int64).reshape(-1)
        self.size = size
        self.shard_starts = start + np.concatenate([[0], np.cumsum(tokens)[:-1]]).astype(np.int64)
        self.first = np.concatenate([[0], np.cumsum(tokens // size)]).astype(np.int64)  # first chunk of each shard

    @property
    def count(self) -> int:
        return int(self.first[-1])

    def offset(self, c: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.first, c, side="right") - 1
        return self.shard_starts[shard] + (c - self.first[shard]) * self.size


class PhaseRows:
    """A phase's share of a corpus: chunks `order(first)`, ..., `order(first + chunks - 1)` of a seeded order over
    all chunks (so two phases taking disjoint index ranges read disjoint tokens), each chunk giving `per_chunk` rows
    of `width` tokens."""

    def __init__(self, chunks: Chunks, order: Bijection, first: int, count: int, per_chunk: int, width: int):
        self.chunks, self.order, self.first, self.count = chunks, order, first, count
        self.per_chunk, self.width = per_chunk, width

    def __len__(self) -> int:
        return self.count * self.per_chunk

    def __getitem__(self, j: np.ndarray) -> np.ndarray:
        j = np.asarray(j, dtype=np.int64)
        chunk = self.order(self.first + j // self.per_chunk)
        return self.chunks.offset(chunk) + (j % self.per_chunk) * self.width


class Drawn:
    """Exactly `k` rows of `rows`: whole copies of it, then a seeded subset (a subset alone when k < len(rows))."""

    def __init__(self, rows, k: int, key: tuple):
        self.rows, self.k = rows, k
        self.pick = Bijection(len(rows), key)

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, j: np.ndarray) -> np.ndarray:
        j = np.asarray(j, dtype=np.int64)
        n = len(self.rows)
        copies = (self.k // n) * n
        return self.rows[np.where(j < copies, j % n, self.pick(np.maximum(j - copies, 0)))]


class Concat:
    """Row sets one after another (a mixture's entries within a phase)."""

    def __init__(self, parts: list):
        self.parts = parts
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, j: np.ndarray) -> np.ndarray:
        j = np.asarray(j, dtype=np.int64)
        part = np.searchsorted(self.starts, j, side="right") - 1
        out = np.empty(j.shape, dtype=np.int64)
        for p in np.unique(part):
            sel = part == p
            out[sel] = self.parts[p][j[sel] - self.starts[p]]
        return out


def materialise(rows) -> np.ndarray:
    """Every offset of a row set (for tests and small corpora only)."""
    return rows[np.arange(len(rows), dtype=np.int64)]
