"""Superposed input embeddings: the mean of each bag's token embeddings, accumulated in fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def superposed_embeddings(weight: torch.Tensor, bags: torch.Tensor) -> torch.Tensor:
    """(B, L, k) ids -> (B, L, d): e_i = (1/k) Σ_j E[bag_ij], summed in fp32 and cast back to the weight's dtype.
    With k = 1 this is exactly an embedding lookup."""
    return F.embedding(bags, weight).float().mean(dim=-2).to(weight.dtype)
