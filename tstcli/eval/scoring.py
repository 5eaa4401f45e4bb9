"""Log-likelihood scoring exactly as lm-evaluation-harness's HFLM does it.

- `encode_pair`: trailing spaces of the context move to the continuation; the pair is encoded whole and the
  continuation is what follows the context's own encoding (the harness's context/continuation token split).
- Inputs are `(context + continuation)[-(max_len + 1):][:-1]`; the continuation's log-probability is the sum of
  log-softmax scores of its tokens.
- Fast paths that keep results exact: requests are sorted by length (longest first) and batched with right
  padding (causal attention never looks right); requests whose model inputs are identical — all choices of an
  MMLU question, whose continuations are one token each — share one forward pass; only the positions that predict
  continuation tokens go through the output head and the log-softmax.
- Across ranks (`share`), the batches above are dealt whole to the ranks, balanced by the positions they compute,
  and the scores gathered: every number is the one a single process computes.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm


def encode_pair(encode, context: str, continuation: str, prefix_id: int) -> tuple[list[int], list[int]]:
    if context == "":
        return [prefix_id], encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx):]


def batches_of(requests: list[tuple[list[int], list[int]]], max_len: int, batch_size: int) -> tuple[dict, list]:
    """({model input: [(continuation, request index)]}, the model inputs longest first cut into batches)."""
    groups: dict[tuple[int, ...], list[tuple[list[int], int]]] = {}
    for i, (ctx, cont) in enumerate(requests):
        whole = (ctx + cont)[-(max_len + 1):]
        groups.setdefault(tuple(whole[:-1]), []).append((cont, i))
    order = sorted(groups, key=lambda inp: -len(inp))
    return groups, [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], max_len: int, batch_size: int,
                   desc: str = "score", share=None) -> list[float]:
    """The log-likelihood of each request's continuation. With a `share` (`parallel.dealing.Share`) this rank
    scores the batches dealt to it, whole, and every rank gets all the scores: the same numbers, bit for bit."""
    groups, batches = batches_of(requests, max_len, batch_size)
    mine, pads = range(len(batches)), 0
    if share is not None:  # the cost of a batch: the positions its forward pass computes, padding included
        mine, pads = share.take([len(b) * len(b[0]) for b in batches])
    out: dict[int, float] = {}
    device = next(model.parameters()).device
    bar = tqdm(total=sum(len(groups[inp]) for k in mine for inp in batches[k]), desc=desc, unit="req",
               disable=not sys.stderr.isatty() or (share is not None and not share.world.main), file=sys.stderr)
    for k in mine:
        _score(model, batches[k], groups, device, out, bar)
    for _ in range(pads):  # the forward pass is a collective here: as many as the busiest rank, results dropped
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
    bar.close()
    if share is not None:
        out = share.gather(out)
    return [out[i] for i in range(len(requests))]


def _score(model, batch: list[tuple[int, ...]], groups: dict, device, out: dict, bar) -> None:
    """Score one batch of model inputs (right-padded) into `out[request index]`."""
    width = max(len(inp) for inp in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    for j, inp in enumerate(batch):
        ids[j, :len(inp)] = torch.tensor(inp, dtype=torch.long)
    hidden = model(input_ids=ids.to(device))
    # Only the positions that predict continuation tokens go through the output head and the log-softmax
    # (most of a request is context): the same numbers for a fraction of the head's work.
    picks, targets, owners = [], [], []
    for j, inp in enumerate(batch):
        for cont, i in groups[inp]:
            n = min(len(cont), len(inp))  # a continuation longer than the window: its last tokens only
            picks.append(hidden[j, len(inp) - n:len(inp)])
            targets.append(torch.tensor(cont[-n:], dtype=torch.long, device=device))
            owners.append(i)
    logp = F.log_softmax(model.logits(torch.cat(picks)).float(), dim=-1)
    scores = logp.gather(-1, torch.cat(targets)[:, None]).squeeze(-1)
    start_row = 0
    for t, i in zip(targets, owners):
        out[i] = scores[start_row:start_row + len(t)].sum().item()
        start_row += len(t)
        bar.update(1)
