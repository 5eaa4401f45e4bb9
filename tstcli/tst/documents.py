"""Documents in a phase's rows: which document each latent position belongs to (for `train.attention =
"document"`), and document-aware bags (`tst.bag_boundaries = "document"`).

A row is a window over documents joined by end-of-text tokens; the end-of-text token belongs to the document it
ends. A token's document is the number of end-of-text tokens before it in the row.

- Bags across boundaries ("cross", the paper's): bags as `make_bags` cuts them; a latent position belongs to the
  document of its bag's last input token (the document its next bag continues).
- Document-aware bags ("document"): each stretch of a document in the row is cut into bags of s from its own start,
  a short last bag is dropped; the row's bags, in order, fill the L latent positions (positions left over at the
  row's end are padding, each its own document, never scored). Position i's target is bag i + 1 — its first token
  in the input mode — scored only if that bag is of the same document. In the output mode (single-token inputs) a
  target window that reaches into the next document is not scored. Nothing else changes: rows, packing and the
  loader are those of the cross bags, so every loader property holds as it did.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tstcli.phases import PhaseSpec
from tstcli.tst.bags import make_bags


@dataclass
class Arranged:
    """One batch of rows as the model and the loss take it."""
    inputs: torch.Tensor  # (B, L, k) ids averaged into each latent position
    targets: torch.Tensor  # (B, L, m)
    documents: torch.Tensor | None  # (B, L) each position's document, for document attention; None: causal
    scored: torch.Tensor | None  # (B, L) bool, targets in the loss; None: all of them
    dropped: torch.Tensor | None  # scalar: share of the rows' tokens in no bag (document-aware bags)


def token_documents(rows: torch.Tensor, eot: int) -> torch.Tensor:
    """(B, W) each token's document within its row."""
    is_eot = (rows == eot).to(torch.int64)
    return is_eot.cumsum(dim=1) - is_eot


def arrange(rows: torch.Tensor, spec: PhaseSpec, eot: int, attention: str, bag_boundaries: str) -> Arranged:
    """Bags, targets and (as the settings ask) documents, scored targets and dropped tokens of one batch."""
    if bag_boundaries == "document" and spec.mode != "ntp":
        return _document_bags(rows, spec, eot, attention)
    inputs, targets = make_bags(rows, spec)
    if attention != "document":
        return Arranged(inputs, targets, None, None, None)
    tdoc = token_documents(rows, eot)
    s, L = spec.input_width, spec.seq_len
    return Arranged(inputs, targets, tdoc[:, s - 1: s * L: s], None, None)


def _document_bags(rows: torch.Tensor, spec: PhaseSpec, eot: int, attention: str) -> Arranged:
    if spec.mode == "output":
        return _output_windows(rows, spec, eot, attention)
    B, W = rows.shape
    s, L = spec.bag_size, spec.seq_len
    tdoc = token_documents(rows, eot)
    idx = torch.arange(W, device=rows.device).expand(B, W)
    first = torch.ones_like(rows, dtype=torch.bool)
    first[:, 1:] = tdoc[:, 1:] != tdoc[:, :-1]
    start = torch.where(first, idx, 0).cummax(dim=1).values  # where each token's stretch of its document starts
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    end = torch.where(last, idx, W).flip(1).cummin(dim=1).values.flip(1)  # ... and where it ends
    offset = idx - start
    complete = (offset - offset % s + s) <= (end - start + 1)  # the bag holding this token fits in the stretch
    bag_start = complete & (offset % s == 0)
    key = torch.where(bag_start, idx, W)
    starts = key.sort(dim=1).values[:, :L + 1]  # the row's bags in order; W marks a bag that does not exist
    real = starts < W
    at = starts.clamp(max=W - 1)
    bags = rows.gather(1, (at[:, :, None] + torch.arange(s, device=rows.device)).clamp(max=W - 1).flatten(1))
    bags = bags.view(B, L + 1, s).masked_fill(~real[:, :, None], eot)  # padding: inert ids, never scored
    bag_doc = torch.where(real, tdoc.gather(1, at), W + torch.arange(L + 1, device=rows.device))
    scored = real[:, :L] & real[:, 1:] & (bag_doc[:, 1:] == bag_doc[:, :-1])
    targets = bags[:, 1:] if spec.mode == "full" else bags[:, 1:, :1]
    dropped = 1.0 - real.sum() * s / rows.numel()
    return Arranged(bags[:, :L], targets, bag_doc[:, :L] if attention == "document" else None, scored, dropped)


def _output_windows(rows: torch.Tensor, spec: PhaseSpec, eot: int, attention: str) -> Arranged:
    s, L = spec.bag_size, spec.seq_len
    inputs, targets = make_bags(rows, spec)
    tdoc = token_documents(rows, eot)
    scored = tdoc[:, s: L + s] == tdoc[:, :L]  # the window x[i+1 .. i+s] ends in x[i]'s document
    return Arranged(inputs, targets, tdoc[:, :L] if attention == "document" else None, scored,
                    torch.zeros((), device=rows.device))
