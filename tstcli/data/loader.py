"""Deterministic row loader: the rows of a step are a pure function of (seed, phase, step, rank, world size).

Within a phase, step k reads global positions [k·B, (k+1)·B) of an endless stream made of epochs; epoch e is a
seeded permutation of the phase's rows (a new order each epoch), so the rows of one batch come from across the
whole corpus. The permutation is evaluated at the batch's positions only (`order.Bijection`), so memory and time
per batch do not grow with the corpus. Rank r of W takes positions [r·B/W, (r+1)·B/W) of that batch. Resuming at
any step reproduces the rows exactly, with no loader state to save.
"""
from __future__ import annotations

import numpy as np

from tstcli.data.order import Bijection
from tstcli.data.packing import proportional_split
from tstcli.data.shards import TokenStore
from tstcli.phases import PhasePlan
from tstcli.recipe import MixEntry


def batch_offsets(rows, seed: int, phase: int, step_in_phase: int, batch_size: int,
                  rank: int = 0, world: int = 1) -> tuple[np.ndarray, int]:
    """Row offsets for this rank at 0-based `step_in_phase`, and the epoch the batch starts in (`rows`: a row set
    or an array of offsets)."""
    n = len(rows)
    per_rank = batch_size // world
    positions = step_in_phase * batch_size + rank * per_rank + np.arange(per_rank, dtype=np.int64)
    epochs = positions // n
    out = np.empty(per_rank, dtype=np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = rows[Bijection(n, (seed, phase, int(e)))(positions[sel] % n)]
    return out, int(epochs[0])


class PhaseLoader:
    """Token rows for one phase, read from memory-mapped shards at the packed offsets."""

    def __init__(self, store: TokenStore, rows, width: int, seed: int, phase: int, batch_size: int):
        self.store, self.rows, self.width = store, rows, width
        self.seed, self.phase, self.batch_size = seed, phase, batch_size

    def batch(self, step_in_phase: int, rank: int = 0, world: int = 1) -> tuple[np.ndarray, int]:
        offsets, epoch = batch_offsets(self.rows, self.seed, self.phase, step_in_phase, self.batch_size, rank, world)
        return self.store.rows(offsets, self.width), epoch

    def tokens_by_range(self, step_in_phase: int, starts: np.ndarray) -> np.ndarray:
        """Raw tokens the whole step (every rank) reads from each token range [starts[i], starts[i+1]) — a
        mixture's entries. A pure function of the step, like the rows themselves."""
        offsets, _ = batch_offsets(self.rows, self.seed, self.phase, step_in_phase, self.batch_size)
        which = np.searchsorted(starts, offsets, side="right") - 1
        return np.bincount(which, minlength=len(starts)) * self.width


def spread(offsets: np.ndarray, k: int) -> np.ndarray:
    """`k` of `offsets`, evenly spaced over all of them (the first included): every stretch of a split is scored
    in proportion — its first rows alone are a single source (on the default corpus, one book)."""
    if k >= len(offsets):
        return offsets
    return offsets[(np.arange(k, dtype=np.int64) * len(offsets)) // k]


def val_rows(store: TokenStore, width: int, count: int) -> np.ndarray:
    """The fixed held-out rows: `count` rows of `width` tokens drawn evenly across the validation split."""
    offsets = _entry_val_offsets(store, width, {"first": 0, "count": len(store.lengths)})
    return store.rows(spread(offsets, count), width)


def heldout_share(val: TokenStore, width: int, rows: int) -> float:
    """The share of the validation split's rows of `width` tokens that `rows` held-out rows are."""
    available = int(sum(int(n) // width for n in val.lengths))
    return min(rows, available) / available if available else 0.0


def select_heldout_rows(val: TokenStore, plan: PhasePlan, entries: list[MixEntry] = (),
                        layout: list[dict] | None = None) -> np.ndarray:
    """The plan's `heldout_count` held-out rows, which every held-out evaluation of a run scores, in training and
    in `tst eval` alike (both through `opener.PreparedData.heldout_batch`), drawn evenly across the split. With a mixture (`entries`: the recipe's data.mix; `layout`: the manifest's), each entry gives rows from
    across its own validation shards in proportion to its `weight`, so the held-out loss measures the mixture
    the run aims at."""
    width, count = plan.heldout.row_width, plan.heldout_count
    if not entries or not layout:
        return val_rows(val, width, count)
    by_name = {m["name"]: m["val"] for m in layout}
    pools = [_entry_val_offsets(val, width, by_name[e.name]) for e in entries]
    want = proportional_split(count, [e.weight for e in entries])
    take = [min(k, len(p)) for k, p in zip(want, pools)]
    for i, pool in enumerate(pools):  # an entry with too few held-out rows: the others make up the difference
        extra = min(count - sum(take), len(pool) - take[i])
        take[i] += max(extra, 0)
    parts = [spread(pool, k) for pool, k in zip(pools, take)]
    return val.rows(np.concatenate(parts), width) if parts else np.zeros((0, width), np.int64)


def _entry_val_offsets(val: TokenStore, width: int, m: dict) -> np.ndarray:
    """Start offsets of the consecutive rows of `width` tokens in shards m["first"] ... of the validation split."""
    starts = [val.starts[sid] + width * np.arange(int(val.lengths[sid]) // width, dtype=np.int64)
              for sid in range(m["first"], m["first"] + m["count"])]
    return np.concatenate(starts) if starts else np.zeros(0, np.int64)
