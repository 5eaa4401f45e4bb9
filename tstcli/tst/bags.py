"""Turn a batch of token rows into (input bags, target bags) — the index conventions of docs/design.md ("The
method"). How wide a phase's rows are is the phase plan's (`tstcli/phases.py`); the data layer asks it.

Every phase is expressed the same way: inputs (B, L, k) whose k ids are averaged into one latent position, and
targets (B, L, m) scored with a multi-hot CE. Next-token training is k = m = 1.

- full   (rows of s·(L+1)): input bag i = x[i·s : (i+1)·s], target bag i = x[(i+1)·s : (i+2)·s]
- input  (rows of s·(L+1)): input bag i = x[i·s : (i+1)·s], target = the single token x[(i+1)·s]
- output (rows of ≥ L+s):   input = x[i],                   target bag i = x[i+1 : i+s+1]
- ntp    (rows of L+1):     input = x[i],                   target = x[i+1]
"""
from __future__ import annotations

import torch

from tstcli.phases import PhaseSpec


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
