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
        # Normalise in fp32 and scale in the input dtype, like transformers' LlamaRMSNorm. torch's fused kernel
        # computes the same numbers as that reference's five kernels, values and gradients (tests/test_layers.py).
        if x.dtype == self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x), self.w3(x)
        if torch.is_grad_enabled():
            return self.w2(F.silu(gate) * up)
        # inference: in place, no new (positions x hidden) tensors (on a CPU a third of the feed-forward's time)
        return self.w2(F.silu(gate, inplace=True).mul_(up))


@dataclass
class AuxOutput:
    """What a forward pass reports beside the hidden states, so that a training loop names no model internals.

    `loss`: the auxiliary term to add to the training objective (already weighted; None when there is none).
    `metrics`: detached named statistics to log; a scalar is logged under its name, a vector `v` as `v_min` and
    `v_max` (after averaging over micro-batches and ranks)."""
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
