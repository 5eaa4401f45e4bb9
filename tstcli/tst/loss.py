"""The per-position losses on logits, in two forms: the plain reference (autograd through torch's own functions, on
the full logits) and the analytic form the chunked head loss uses (loss and d loss / d logits of one chunk).

- mce   multi-hot CE: MCE_i = logsumexp(z_i) − Σ_j w_j · z_i[T_ij], one log-sum-exp per position. With uniform
        weights it equals the mean of m ordinary cross-entropies against the m targets, at the cost of one; with
        m = 1 it is ordinary next-token cross-entropy. Gradient: softmax(z_i) − Σ_j w_j · onehot(T_ij).
- bce   binary cross-entropy of every vocabulary entry against the bag's multi-hot indicator y (1 for a token in
        the bag, duplicates once), summed over the vocabulary (a mean over V classes would shrink the gradient V-fold)
        — the paper's first negative result. Gradient: sigmoid(z) − y.
- hinge torch's multi-label margin loss Σ_j Σ_{v ∉ T_i} max(0, 1 − z[T_ij] + z[v]) / V, averaged over the bag's m
        targets (so it does not grow with s) — the paper's second negative result.

bce and hinge take no weights (a bag is a set for them); mce takes uniform (None) or per-target weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def target_weights(m: int, weighting: str, alpha: float) -> torch.Tensor | None:
    """None for uniform weights (a plain mean), else w_j ∝ (j+1)^−alpha normalised to sum 1."""
    if weighting == "uniform" or m == 1:
        return None
    w = torch.arange(1, m + 1, dtype=torch.float64).pow(-alpha)
    return (w / w.sum()).float()


def _target_weights(targets: torch.Tensor, weights: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """(n, m) weight of each target in the logits' dtype: 1/m each, or the given weights."""
    m = targets.shape[-1]
    if weights is None:
        return torch.full(targets.shape, 1.0 / m, device=targets.device, dtype=dtype)
    return weights.to(targets.device, dtype).expand(targets.shape)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses are taken in fp32 (or fp64, for fp64 inputs: the tests' references)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _bag_indicator(z: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """1 where a vocabulary entry is in the position's bag, shaped like `z` (in `dtype`, default z's)."""
    return torch.zeros_like(z, dtype=dtype).scatter_(-1, targets, 1)


# ---- the reference: full logits, torch's functions, autograd ----

def multi_hot_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                 keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean MCE over all positions. logits (..., V), targets (..., m) int64, weights (m,) or None."""
    z = at_least_fp32(logits)
    lse = torch.logsumexp(z, dim=-1)
    picked = z.gather(-1, targets)
    target_term = picked.mean(dim=-1) if weights is None else (picked * weights.to(z.device)).sum(dim=-1)
    return _mean(lse - target_term, keep)


def _mean(per_position: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The mean over all positions; with `keep` (1 scored, 0 not) the others count as 0: Σ kept / all, a
    denominator that does not depend on the rows, so micro-batches and ranks add up to the whole batch exactly."""
    if keep is None:
        return per_position.mean()
    return (per_position * keep.reshape(per_position.shape).to(per_position.dtype)).sum() / per_position.numel()


def reference_loss(kind: str, logits: torch.Tensor, targets: torch.Tensor,
                   weights: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over positions from the full logits (..., V): what the chunked path must equal."""
    if kind == "mce":
        return multi_hot_ce(logits, targets, weights, keep)
    z, t = at_least_fp32(logits).reshape(-1, logits.shape[-1]), targets.reshape(-1, targets.shape[-1])
    if kind == "bce":
        return _mean(F.binary_cross_entropy_with_logits(z, _bag_indicator(z, t), reduction="none").sum(-1), keep)
    if kind == "hinge":
        padded = torch.full_like(z, -1, dtype=torch.long)  # torch's format: the targets, then -1
        padded[:, :t.shape[-1]] = t
        return _mean(F.multilabel_margin_loss(z, padded, reduction="none") / t.shape[-1], keep)
    raise ValueError(f"unknown loss {kind!r}")


# ---- the analytic form: one chunk of fp32 logits (n, V), targets (n, m) ----

def chunk_loss(kind: str, z: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
               with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-position loss (n,), d loss_i / d z_i (n, V) or None without `with_grad`). Consumes `z`: the gradient
    is built in its memory (a chunk's logits are the largest tensor of the step; a second one would double it)."""
    if kind == "mce":
        w = _target_weights(targets, weights, z.dtype)
        target_term = (z.gather(-1, targets) * w).sum(-1)
        top = z.amax(dim=-1, keepdim=True)
        total = z.sub_(top).exp_().sum(dim=-1, keepdim=True)  # z now holds exp(z − max): no second (n, V) tensor
        loss = (total.log() + top).squeeze(-1) - target_term  # logsumexp − Σ_j w_j z[T_j]
        if not with_grad:
            return loss, None
        return loss, z.div_(total).scatter_add_(-1, targets, -w)  # softmax − Σ_j w_j onehot(T_j)
    if kind == "bce":
        y = _bag_indicator(z, targets)
        loss = F.softplus(z).sum(-1) - (y * z).sum(-1)
        return loss, (z.sigmoid_().sub_(y) if with_grad else None)
    if kind == "hinge":
        return _hinge(z, targets, with_grad)
    raise ValueError(f"unknown loss {kind!r}")


def _hinge(z: torch.Tensor, targets: torch.Tensor, with_grad: bool):
    n, V = z.shape
    m = targets.shape[-1]
    inside = _bag_indicator(z, targets, torch.bool)  # margins are taken against the tokens outside the bag
    picked = z.gather(-1, targets)
    loss = z.new_zeros(n)
    grad = torch.zeros_like(z) if with_grad else None
    margin = torch.empty_like(z)  # reused for every target: (n, V) buffers z, margin, grad and two masks, never m
    for j in range(m):
        margin.copy_(z).sub_(picked[:, j:j + 1] - 1).clamp_min_(0).masked_fill_(inside, 0)  # max(0, 1 − z_t + z_v)
        loss += margin.sum(-1)
        if with_grad:
            active = margin > 0
            grad.add_(active)
            grad.scatter_add_(-1, targets[:, j:j + 1], -active.sum(-1, keepdim=True).to(z.dtype))
    scale = 1.0 / (V * m)
    return loss * scale, (grad.mul_(scale) if with_grad else None)
