"""Building blocks shared by the dense and the mixture-of-experts decoder: RMSNorm, the SwiGLU feed-forward, and
`AuxOutput`, what a model reports beside its hidden states (auxiliary losses and metrics)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and scale in the input dtype, like transformers' LlamaRMSNorm.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


@dataclass
class AuxOutput:
    """What a forward pass reports beside the hidden states, so that a training loop names no model internals.

    `loss`: the auxiliary term to add to the training objective (already weighted; None when there is none).
    `metrics`: detached named statistics to log; a scalar is logged under its name, a vector `v` as `v_min` and
    `v_max` (after averaging over micro-batches and ranks)."""
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
