"""A Qwen3-MoE-style feed-forward block: softmax router, top-k experts (SwiGLU), optional shared expert.

Dropless: every token reaches its k experts (no capacity, nothing dropped). The expert computation groups tokens
by expert: the (token, slot) pairs are sorted by expert id, the experts' matrices are applied to their contiguous
slices with one grouped matmul (`torch._grouped_mm`) where the shapes allow it, else one matmul per expert slice
(a loop over experts, never over tokens), and the results are put back in token order and summed over the k slots
without atomics (deterministic). `reference_forward` is the plain loop-over-experts-with-masks form, used only by
the tests to check this one (outputs and gradients).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tstcli.model.layers import SwiGLU


@dataclass
class RouterStats:
    """Summed over the MoE blocks of one forward pass (divide by their number for a mean)."""
    aux_loss: torch.Tensor  # load balancing E·Σ_e f_e·P_e; equals top_k when perfectly balanced
    z_loss: torch.Tensor  # mean(logsumexp(router logits)^2)
    load: torch.Tensor  # (E,) fraction of routed (token, slot) pairs per expert; 1/E each when balanced

    def __add__(self, other: "RouterStats") -> "RouterStats":
        return RouterStats(self.aux_loss + other.aux_loss, self.z_loss + other.z_loss, self.load + other.load)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def grouped_mm(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of `x` sorted by group (counts[e] rows for group e) times w[e] (E, in, out) -> (rows, out)."""
    w = w.to(x.dtype)
    aligned = (x.shape[1] * x.element_size()) % 16 == 0 and (w.shape[2] * w.element_size()) % 16 == 0
    if hasattr(torch, "_grouped_mm") and aligned:
        return torch._grouped_mm(x, w, offs=torch.cumsum(counts, 0).to(torch.int32))
    outs, start = [], 0
    for e, n in enumerate(counts.tolist()):
        outs.append(x[start:start + n] @ w[e])
        start += n
    return torch.cat(outs)


class MoEFeedForward(nn.Module):
    def __init__(self, dim: int, n_experts: int, top_k: int, ffn_dim: int, norm_topk: bool, shared_ffn_dim: int):
        super().__init__()
        self.n_experts, self.top_k, self.norm_topk = n_experts, top_k, norm_topk
        self.router = nn.Linear(dim, n_experts, bias=False)
        # Experts as 3-D parameters laid out for x @ w: gate and up (E, dim, ffn), down (E, ffn, dim).
        self.w1 = nn.Parameter(torch.empty(n_experts, dim, ffn_dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, dim, ffn_dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, ffn_dim, dim))
        self.shared = SwiGLU(dim, shared_ffn_dim) if shared_ffn_dim else None

    def route(self, h: torch.Tensor):
        logits = self.router(h).float()
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        if self.norm_topk:
            top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        counts = torch.bincount(top_i.reshape(-1), minlength=self.n_experts)
        n = h.shape[0]
        load = counts.float() / (n * self.top_k)
        stats = RouterStats(aux_loss=self.n_experts * (counts.float() / n * probs.mean(0)).sum(),
                            z_loss=torch.logsumexp(logits, dim=-1).pow(2).mean(), load=load.detach())
        return top_p, top_i, counts, stats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        top_p, top_i, counts, stats = self.route(h)
        order = top_i.reshape(-1).argsort(stable=True)  # (token, slot) pairs grouped by expert
        token = order // self.top_k
        xs = h[token].to(_compute_dtype(h))
        y = grouped_mm(F.silu(grouped_mm(xs, self.w1, counts)) * grouped_mm(xs, self.w3, counts), self.w2, counts)
        y = y * top_p.reshape(-1)[order].unsqueeze(-1).to(y.dtype)
        unsorted = torch.empty_like(y).index_copy_(0, order, y)  # back to (token, slot) order: a permutation
        out = unsorted.view(h.shape[0], self.top_k, -1).sum(dim=1).to(x.dtype)
        if self.shared is not None:
            out = out + self.shared(h).to(x.dtype)
        return out.view(shape), stats

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain form (tests only): for each expert, the tokens that chose it, weighted, added up."""
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        top_p, top_i, _, _ = self.route(h)
        out = torch.zeros_like(h)
        for e in range(self.n_experts):
            tok, slot = torch.where(top_i == e)
            if len(tok):
                y = (F.silu(h[tok] @ self.w1[e]) * (h[tok] @ self.w3[e])) @ self.w2[e]
                out = out.index_add(0, tok, y * top_p[tok, slot].unsqueeze(-1).to(y.dtype))
        if self.shared is not None:
            out = out + self.shared(h)
        return out.view(shape)

    def active_matmul_params(self) -> int:
        per_expert = self.w1[0].numel() + self.w3[0].numel() + self.w2[0].numel()
        shared = sum(p.numel() for p in self.shared.parameters()) if self.shared is not None else 0
        return self.router.weight.numel() + self.top_k * per_expert + shared
