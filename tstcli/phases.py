"""The phases' row geometry: how many tokens one row of a phase spans, for its mode and bag size (the index
conventions of docs/design.md, "The method"). Free of torch: the data layer (packing, `tst prepare`) reads it, and
`tst prepare` never imports torch. The bags themselves are made in `tst/bags.py`."""
from __future__ import annotations

import math
from dataclasses import dataclass

from tstcli.recipe import Recipe


@dataclass(frozen=True)
class PhaseSpec:
    mode: str  # "full" | "input" | "output" | "ntp"
    bag_size: int
    seq_len: int

    @classmethod
    def next_token(cls, seq_len: int) -> "PhaseSpec":
        return cls("ntp", 1, seq_len)

    @property
    def target_width(self) -> int:
        return 1 if self.mode in ("input", "ntp") else self.bag_size

    @property
    def units(self) -> int:
        """Consecutive units of L+1 tokens one row of this phase spans: s for full and input, the fewest covering
        L+s tokens for output, 1 for next-token rows."""
        s, L = self.bag_size, self.seq_len
        if self.mode in ("full", "input"):
            return s
        return math.ceil((L + s) / (L + 1)) if self.mode == "output" else 1

    @property
    def row_width(self) -> int:
        """Tokens in one row of this phase."""
        return self.units * (self.seq_len + 1)


def phase_specs(r: Recipe) -> dict[int, PhaseSpec]:
    """The recipe's two phases: superposition (its mode and bag size), then next-token recovery."""
    return {1: PhaseSpec(r.tst.mode, r.tst.bag_size, r.train.seq_len), 2: PhaseSpec.next_token(r.train.seq_len)}
