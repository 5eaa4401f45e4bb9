"""The training objective of one phase: bags -> superposed embeddings -> model -> multi-hot CE.

`Objective` holds the model and computes this as one module's forward, so that a data-parallel wrapper (DDP or
FSDP2) sees the whole step: FSDP2 gathers the embedding and the head inside that forward, which it could not do
if the embedding gather ran outside the model's own call. Phase 2 is the same code with bags of one token.
"""
from __future__ import annotations

import torch
from torch import nn

from tstcli.model import Llama
from tstcli.tst import PhaseSpec, make_bags, multi_hot_ce, superposed_embeddings


def _scored(model: Llama, rows: torch.Tensor, spec: PhaseSpec, weights, amp_dtype, router_stats: bool):
    """(multi-hot CE of the rows, router statistics or None)."""
    with torch.autocast(rows.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        inputs, targets = make_bags(rows, spec)
        out = model(inputs_embeds=superposed_embeddings(model.get_input_embeddings().weight, inputs),
                    router_stats=router_stats)
        hidden, router = out if router_stats else (out, None)
        return multi_hot_ce(model.logits(hidden), targets, weights), router


def phase_loss(model: Llama, rows: torch.Tensor, spec: PhaseSpec, weights, amp_dtype) -> torch.Tensor:
    """Loss of one batch of rows in one phase (the CE alone: what held-out loss and the tests measure)."""
    return _scored(model, rows, spec, weights, amp_dtype, router_stats=False)[0]


class Objective(nn.Module):
    def __init__(self, model: Llama, specs: dict[int, PhaseSpec], weights: dict, amp_dtype):
        super().__init__()
        self.model, self.specs, self.weights, self.amp_dtype = model, specs, weights, amp_dtype

    def forward(self, rows: torch.Tensor, phase: int) -> tuple[torch.Tensor, dict]:
        """(loss to differentiate, detached statistics). For a mixture of experts the loss adds the routers'
        load-balancing and z-losses to the CE, and the statistics hold the CE, those losses and the expert load."""
        ce, router = _scored(self.model, rows, self.specs[phase], self.weights[phase], self.amp_dtype, True)
        if router is None:
            return ce, {}
        m = self.model.cfg
        total = ce + m.moe_aux_loss_coef * router.aux_loss + m.moe_z_loss_coef * router.z_loss
        return total, {"ce": ce.detach(), "moe_aux_loss": router.aux_loss.detach(),
                       "moe_z_loss": router.z_loss.detach(), "expert_load": router.load}


def cross_entropy_of(loss: torch.Tensor, stats: dict) -> torch.Tensor:
    """The CE part of an `Objective` output (the loss itself for a dense model)."""
    return stats.get("ce", loss)


@torch.no_grad()
def mean_loss(loss_of, rows: torch.Tensor, batch_size: int) -> float:
    """Row-weighted mean of `loss_of(batch)` over `rows`, `batch_size` rows at a time (held-out loss)."""
    total = 0.0
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        total += loss_of(part).item() * len(part)
    return total / len(rows)


def next_token_loss(model: Llama, rows: torch.Tensor, batch_size: int, amp_dtype=None) -> float:
    """Ordinary next-token loss of rows of L+1 tokens: what held-out loss always is, in every phase."""
    spec = PhaseSpec.next_token(rows.shape[1] - 1)
    return mean_loss(lambda part: phase_loss(model, part, spec, None, amp_dtype), rows, batch_size)
