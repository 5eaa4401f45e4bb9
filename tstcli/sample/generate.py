"""Autoregressive generation with the native model and a KV cache.

Each step takes the last position's logits, divides them by the temperature, keeps the top-k and then the top-p
(nucleus) of them — transformers' order of logits processors — and draws from the softmax with the caller's seeded
generator; temperature 0 is greedy (argmax). A sequence stops at the end-of-text token (not included in the output),
after `max_new_tokens`, or at the model's context length. `use_cache=False` recomputes the whole sequence every
step: the reference the KV-cache path is tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tstcli.model import Llama


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter


@dataclass
class Sample:
    token_ids: list[int]  # the continuation, prompt excluded
    stop: str  # "eot" | "max_new_tokens" | "context"


def filtered_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """(V,) logits -> temperature-scaled logits with everything outside top-k / top-p set to -inf."""
    z = logits.float()
    z = (z - z.max()) / s.temperature  # the largest is 0: a tiny temperature gives -inf, never inf - inf = nan
    if 0 < s.top_k < z.numel():
        kth = torch.topk(z, s.top_k).values[-1]
        z = z.masked_fill(z < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_z, order = torch.sort(z, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
        drop = before > s.top_p  # keep the smallest set whose mass reaches top_p (at least one token)
        z = z.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return z


def pick(logits: torch.Tensor, s: Sampling, generator: torch.Generator) -> int:
    if s.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(filtered_logits(logits, s), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(model: Llama, prompt: list[int], s: Sampling, generator: torch.Generator, stop_id: int | None,
             on_token: Callable[[int], None] | None = None, use_cache: bool = True) -> Sample:
    """One continuation of `prompt` (non-empty token ids)."""
    limit = model.cfg.max_seq_len
    if not 0 < len(prompt) < limit:
        raise ValueError(f"the prompt has {len(prompt)} tokens; the model's context holds {limit}")
    cache = model.new_cache(1, min(limit, len(prompt) + s.max_new_tokens)) if use_cache else None
    device = model.tok_embeddings.weight.device
    seq, out = list(prompt), []
    feed = torch.tensor([prompt], device=device)
    while True:
        hidden = model(input_ids=feed if use_cache else torch.tensor([seq], device=device), cache=cache)
        # Drawn on the CPU in fp32 from the same seeded generator wherever the model runs: a GPU's logits give the
        # same choices as the CPU's whenever they agree.
        token = pick(model.logits(hidden[0, -1]).float().cpu(), s, generator)
        if token == stop_id:
            return Sample(out, "eot")
        out.append(token)
        seq.append(token)
        if on_token is not None:
            on_token(token)
        if len(out) == s.max_new_tokens:
            return Sample(out, "max_new_tokens")
        if len(seq) == limit:
            return Sample(out, "context")
        feed = torch.tensor([[token]], device=device)
