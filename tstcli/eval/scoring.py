"""Log-likelihood scoring exactly as lm-evaluation-harness's HFLM does it.

- `encode_pairs`: trailing spaces of the context move to the continuation; the pair is encoded whole and the
  continuation is what follows the context's own encoding (the harness's context/continuation token split). A
  task's distinct texts are encoded in one batch.
- Inputs are `(context + continuation)[-(max_len + 1):][:-1]`; the continuation's log-probability is the sum of
  log-softmax scores of its tokens.
- Fast paths that keep results exact: requests that share a context share its positions. A row is the context
  once, then each distinct continuation (without its last token) after it, each at the positions it would have
  alone and seeing only the context and itself (`Llama.forward`'s `positions` and `mask`): HellaSwag's four
  endings or ARC's choices cost the context once, and all choices of an MMLU question (one token each) are one
  plain sequence. Rows are sorted by length (longest first) and batched with right padding (no query looks
  right); only the positions that predict continuation tokens go through the output head and the log-softmax,
  each position once. The model computes a row's attention in query chunks (`llama.causal_chunks`), the last
  block only from the batch's first scored position (`keep_last`), and in fp32 on a CPU its linear layers through
  oneDNN (`cpu_linear.py`).
- Across ranks (`share`), the batches above are dealt whole to the ranks, balanced by the positions they compute,
  and the scores gathered: every number is the one a single process computes.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tstcli.eval.cpu_linear import cpu_linear


def encode_pairs(encode_many, pairs: list[tuple[str, str]], prefix_id: int) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) of each (context, continuation) pair, split as the harness splits
    them. `encode_many` encodes a list of texts: every distinct text once, in one call (a tokenizer's
    `encode_batch` runs on all cores; one text at a time was ~5% of HellaSwag's time)."""
    split = []
    for context, continuation in pairs:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        split.append((context, continuation))
    texts = list(dict.fromkeys(t for c, x in split for t in ((c, c + x) if c else (x,))))
    ids = dict(zip(texts, encode_many(texts)))
    out = []
    for context, continuation in split:
        if context == "":
            out.append(([prefix_id], ids[continuation]))
        else:
            ctx = ids[context]
            out.append((ctx, ids[context + continuation][len(ctx):]))
    return out


def logits_per_chunk(device: torch.device) -> int:
    """Logits the output head and log-softmax compute at a time: on a CPU a chunk that stays in cache (8 MiB of
    fp32; a whole batch's logits at once made HellaSwag ~10% slower), on a GPU 256 MiB (V = 128k: 512 positions)."""
    return 1 << 21 if device.type == "cpu" else 1 << 26


@dataclass
class Row:
    """One row of a batch: a shared `prefix` and the `branches` after it, each {its input tokens: [(continuation,
    request index)]}. A request's own sequence is the prefix followed by its branch's tokens; its continuation's
    scores come from the last len(continuation) positions of that sequence."""
    prefix: tuple[int, ...]
    branches: dict[tuple[int, ...], list[tuple[list[int], int]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prefix) + sum(len(b) for b in self.branches)

    @property
    def plain(self) -> bool:
        """One branch or none: an ordinary sequence, causal attention and positions 0..n-1."""
        return len(self.branches) <= 1


def rows_of(requests: list[tuple[list[int], list[int]]], max_len: int) -> list[Row]:
    """Requests packed into rows of at most `max_len` positions, longest first."""
    shared: dict[tuple[int, ...], dict[tuple[int, ...], list]] = {}
    for i, (ctx, cont) in enumerate(requests):
        if ctx and len(ctx) + len(cont) <= max_len + 1:
            prefix, branch = tuple(ctx), tuple(cont[:-1])
        else:  # the window cuts the context (or there is none): the request's own input, shared only if identical
            prefix, branch = tuple((ctx + cont)[-(max_len + 1):][:-1]), ()
        shared.setdefault(prefix, {}).setdefault(branch, []).append((cont, i))
    rows = []
    for prefix, branches in shared.items():
        row = Row(prefix)
        for branch, reqs in branches.items():
            if row.branches and len(row) + len(branch) > max_len:  # full: the same prefix again in a new row
                rows.append(row)
                row = Row(prefix)
            row.branches[branch] = reqs
        rows.append(row)
    return sorted(rows, key=lambda r: -len(r))


def batches_of(requests: list[tuple[list[int], list[int]]], max_len: int, batch_size: int) -> list[list[Row]]:
    """The rows of `requests`, longest first, cut into batches of `batch_size`."""
    rows = rows_of(requests, max_len)
    return [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]


@torch.no_grad()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], max_len: int, batch_size: int,
                   desc: str = "score", share=None) -> list[float]:
    """The log-likelihood of each request's continuation. With a `share` (`parallel.dealing.Share`) this rank
    scores the batches dealt to it, whole, and every rank gets all the scores: the same numbers, bit for bit."""
    batches = batches_of(requests, max_len, batch_size)
    mine, pads = range(len(batches)), 0
    if share is not None:  # the cost of a batch: the positions its forward pass computes, padding included
        mine, pads = share.take([len(b) * len(b[0]) for b in batches])
    out: dict[int, float] = {}
    weight = next(model.parameters())
    device = weight.device
    bar = tqdm(total=sum(len(reqs) for k in mine for row in batches[k] for reqs in row.branches.values()),
               desc=desc, unit="req", file=sys.stderr,
               disable=not sys.stderr.isatty() or (share is not None and not share.world.main))
    with cpu_linear(device, weight.dtype):
        for k in mine:
            _score(model, batches[k], device, out, bar)
        for _ in range(pads):  # the forward pass is a collective here: as many as the busiest rank, results dropped
            model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
    bar.close()
    if share is not None:
        out = share.gather(out)
    return [out[i] for i in range(len(requests))]


@dataclass
class Layout:
    """A batch of rows as tensors: input `ids` (B, width), right-padded; `positions` and `mask` for rows with
    branches (None when every row is plain); and what to score: the flat indices (into B * width) of the positions
    whose next-token scores are summed, their `targets`, and per request `sizes` (how many of those it owns, in
    order) and `owners` (its index); `first`, the first position scored in any row (the model need compute the
    last block only from there)."""
    ids: torch.Tensor
    positions: torch.Tensor | None
    mask: torch.Tensor | None
    scored: list[int]
    targets: list[int]
    sizes: list[int]
    owners: list[int]
    first: int


def _layout(batch: list[Row]) -> Layout:
    """The layout of a batch of rows, built in Python lists (ranges, not elements), one tensor each at the end."""
    width = len(batch[0])
    ids, positions, segment = [], [], []  # segment 0: the prefix, k: branch k, -1: padding
    scored, targets, sizes, owners, first = [], [], [], [], width - 1
    for j, row in enumerate(batch):
        p, base = len(row.prefix), j * width
        row_ids, row_pos, row_seg = list(row.prefix), list(range(p)), [0] * p
        for k, (branch, reqs) in enumerate(row.branches.items(), start=1):
            at, e = len(row_ids), len(branch)
            row_ids += branch
            row_pos += range(p, p + e)
            row_seg += [0 if row.plain else k] * e
            for cont, i in reqs:  # the request's own sequence is the prefix, then its branch at `at`
                n = min(len(cont), p + e)  # a continuation longer than the window: its last tokens only
                if n > e:
                    scored += range(base + p - (n - e), base + p)
                scored += range(base + at + e - min(n, e), base + at + e)
                first = min(first, p - (n - e) if n > e else at + e - n)
                targets += cont[len(cont) - n:]
                sizes.append(n)
                owners.append(i)
        pad = width - len(row_ids)
        ids.append(row_ids + [0] * pad)
        positions.append(row_pos + [0] * pad)
        segment.append(row_seg + [-1] * pad)
    ids = torch.tensor(ids, dtype=torch.long)
    if all(row.plain for row in batch):
        return Layout(ids, None, None, scored, targets, sizes, owners, first)
    segment = torch.tensor(segment, dtype=torch.long)
    q, kv = segment[:, :, None], segment[:, None, :]
    mask = ((kv == 0) | (kv == q)) & torch.ones(width, width, dtype=torch.bool).tril()
    return Layout(ids, torch.tensor(positions, dtype=torch.long), mask[:, None], scored, targets, sizes, owners,
                  first)


def _score(model, batch: list[Row], device, out: dict, bar) -> None:
    """Score one batch of rows into `out[request index]`."""
    lay = _layout(batch)
    positions, mask = lay.positions, lay.mask
    if positions is not None:
        # additive, in the compute dtype: SDPA would convert a boolean mask in every block
        dtype = model.get_input_embeddings().weight.dtype
        mask = torch.where(mask, torch.zeros((), dtype=dtype), torch.full((), float("-inf"), dtype=dtype))
        positions, mask = positions.to(device), mask.to(device)
    width = lay.ids.shape[1]
    # The last block only from the first scored position on: the hidden states (B, width - first, dim).
    hidden = model(input_ids=lay.ids.to(device), positions=positions, mask=mask, keep_last=width - lay.first)
    # Only the positions that predict continuation tokens go through the output head and the log-softmax
    # (most of a request is context), each once: a question's choices all start at its context's last position.
    rows = torch.tensor(lay.scored, dtype=torch.long)
    rows = (rows - lay.first * (rows // width + 1)).to(device)  # row j, position x -> into the kept positions
    targets = torch.tensor(lay.targets, dtype=torch.long, device=device)
    unique, which = torch.unique(rows, return_inverse=True)
    picked, step = hidden.flatten(0, 1)[unique], max(1, logits_per_chunk(device) // model.vocab_size)
    scores = torch.empty(len(rows), device=device)
    for a in range(0, len(unique), step):
        logp = F.log_softmax(model.logits(picked[a:a + step]).float(), dim=-1)
        here = (which >= a) & (which < a + step)
        scores[here] = logp[which[here] - a, targets[here]]
    sums = torch.stack([s.sum() for s in scores.split(lay.sizes)]).tolist()  # one copy to the host
    out.update(zip(lay.owners, sums))
    bar.update(len(lay.owners))
