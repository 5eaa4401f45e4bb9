"""Scoring work dealt to the ranks of a job and the scores gathered back: `tst eval` under torchrun and the in-loop
benchmarks. Whole batches are dealt, exactly as one process cuts them, so that each item is computed in a batch of
the same shape as in one process and its score is bitwise the same (a float result may depend on the batch shape)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist

from tstcli.parallel.world import World


def deal(costs: list[int], ranks: int) -> list[list[int]]:
    """Item indices per rank: each item in turn to the rank with the least cost so far (ties: the lowest rank).
    Items in decreasing cost (batches sorted by length) make this the LPT rule: loads differ by at most one item.
    A pure function of its arguments: every rank computes the same dealing without talking to the others."""
    loads, dealt = [0] * ranks, [[] for _ in range(ranks)]
    for i, cost in enumerate(costs):
        r = min(range(ranks), key=lambda k: (loads[k], k))
        dealt[r].append(i)
        loads[r] += cost
    return dealt


@dataclass
class Share:
    """This rank's share of a scoring job. `lockstep`: a forward pass is itself a collective (a model sharded by
    FSDP2 gathers its blocks), so every rank must run as many of them; ranks with fewer items run padding passes.
    `scored` counts the items each rank has scored, as the gathers received them."""
    world: World
    group: object = None  # the process group of the gathers (None: the default group)
    lockstep: bool = False
    scored: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.scored = [0] * self.world.size

    def take(self, costs: list[int]) -> tuple[list[int], int]:
        """(the indices of the items this rank scores, in order; the padding passes it runs after them)."""
        dealt = deal(costs, self.world.size)
        mine = dealt[self.world.rank]
        return mine, (max(map(len, dealt)) - len(mine) if self.lockstep else 0)

    def gather(self, part: dict) -> dict:
        """Every rank's `{item: score}` merged, on every rank (Python floats travel pickled: bit for bit)."""
        parts: list = [None] * self.world.size
        dist.all_gather_object(parts, part, group=self.group)
        merged: dict = {}
        for r, p in enumerate(parts):
            merged.update(p)
            self.scored[r] += len(p)
        return merged
