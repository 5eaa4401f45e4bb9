"""Multi-hot cross-entropy: MCE_i = logsumexp(z_i) − Σ_j w_j · z_i[T_ij], one log-sum-exp per position.

With uniform weights this equals the mean of m ordinary cross-entropies against the m targets, at the cost of
one; with m = 1 it is ordinary next-token cross-entropy.
"""
from __future__ import annotations

import torch


def target_weights(m: int, weighting: str, alpha: float) -> torch.Tensor | None:
    """None for uniform weights (a plain mean), else w_j ∝ (j+1)^−alpha normalised to sum 1."""
    if weighting == "uniform" or m == 1:
        return None
    w = torch.arange(1, m + 1, dtype=torch.float64).pow(-alpha)
    return (w / w.sum()).float()


def multi_hot_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean MCE over all positions. logits (..., V), targets (..., m) int64, weights (m,) or None."""
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)
    picked = z.gather(-1, targets)
    target_term = picked.mean(dim=-1) if weights is None else (picked * weights.to(z.device)).sum(dim=-1)
    return (lse - target_term).mean()
