"""Scoring a model that FSDP2 shards, on every rank, without gathering it whole on any: a plain model whose root
parameters (embedding, final norm, head) are full copies and whose blocks gather their full weights, one block at
a time, at each call (`DTensor.full_tensor`, a collective: every rank must make as many calls).

Why not FSDP2's own forward: it gathers in the training's parameter dtype (bf16 under `train.dtype = "bf16"`) and
runs the compiled blocks (one compile per batch shape); this runs the fp32 weights eagerly, as `tst eval` does on a
checkpoint, so the scores are the same. The root's parameters are outside every block's forward, and calling the
model outside the root's forward would meet sharded tensors (`model.logits` included), hence the copies.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from tstcli.model import Llama
from tstcli.parallel.world import full_value

WRAPPED = "_checkpoint_wrapped_module."  # activation checkpointing's wrapper, absent from a plain model's names


def _full(module: nn.Module, skip: str = "") -> dict[str, torch.Tensor]:
    return {name.replace(WRAPPED, ""): full_value(p.detach()) for name, p in module.named_parameters()
            if not (skip and name.startswith(skip))}


class _GatheringBlock(nn.Module):
    """Runs `template` (a block on the meta device: no memory) with the full weights of the sharded `block`."""

    def __init__(self, block: nn.Module, template: nn.Module):
        super().__init__()
        self._refs = (block, template)  # a tuple: neither becomes a submodule (no parameters of their own)

    def forward(self, x, cos, sin, cache=None, mask=None, keep_last=None):
        block, template = self._refs
        return functional_call(template, _full(block), (x, cos, sin, cache, mask, keep_last))


@torch.no_grad()
def gathered_model(model: Llama) -> Llama:
    """A plain model with `model`'s weights that gathers one block at a time; every rank calls this together.
    `model`'s FSDP2 root must be resharded first (its parameters the fp32 shards)."""
    with torch.device("meta"):
        plain = Llama(model.cfg, model.vocab_size)
    template = plain.layers[0]
    plain.layers = nn.ModuleList(_GatheringBlock(b, template) for b in model.layers)
    plain.materialize(model.rope_cos.device, torch.float32)  # the root only: the blocks hold no parameters
    root = _full(model, skip="layers.")
    for name, p in plain.named_parameters():
        p.copy_(root[name])
    return plain.eval()
