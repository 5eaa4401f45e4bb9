"""Turn a batch of token rows into (input bags, target bags) — the index conventions of docs/design.md ("The
method"). `PhaseSpec` is also the one place that knows how wide a phase's rows are; the data layer asks it.

Every phase is expressed the same way: inputs (B, L, k) whose k ids are averaged into one latent position, and
targets (B, L, m) scored with a multi-hot CE. Next-token training is k = m = 1.

- full   (rows of s·(L+1)): input bag i = x[i·s : (i+1)·s], target bag i = x[(i+1)·s : (i+2)·s]
- input  (rows of s·(L+1)): input bag i = x[i·s : (i+1)·s], target = the single token x[(i+1)·s]
- output (rows of ≥ L+s):   input = x[i],                   target bag i = x[i+1 : i+s+1]
- ntp    (rows of L+1):     input = x[i],                   target = x[i+1]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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


def make_bags(rows: torch.Tensor, spec: PhaseSpec) -> tuple[torch.Tensor, torch.Tensor]:
    B, (s, L) = rows.shape[0], (spec.bag_size, spec.seq_len)
    if spec.mode == "full":
        return rows[:, : s * L].reshape(B, L, s), rows[:, s: s * (L + 1)].reshape(B, L, s)
    if spec.mode == "input":
        return rows[:, : s * L].reshape(B, L, s), rows[:, s: s * (L + 1): s].reshape(B, L, 1)
    if spec.mode == "output":
        return rows[:, :L].reshape(B, L, 1), rows[:, 1: L + s].unfold(1, s, 1)
    if spec.mode == "ntp":
        return rows[:, :L].reshape(B, L, 1), rows[:, 1: L + 1].reshape(B, L, 1)
    raise ValueError(f"unknown mode {spec.mode}")
