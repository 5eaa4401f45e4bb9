"""Several documents packed in one row, each seen as if alone: a position attends only to earlier positions of its
own document, and RoPE positions restart at 0 at each document's first position. `documents` (B, T) holds each
position's document number, non-decreasing along a row.

Why restart the positions: a document's hidden states are then exactly those it gets alone in a row (the
exactness test), and inference, which sees one document from position 0, is what training saw; continuing the
positions would be equal only up to RoPE's relative-position identity in floating point, and a document that
starts deep into a row would train positions inference never uses at its start.

Two implementations of the same mask: an additive (B, 1, T, T) mask for SDPA (in the compute dtype: a boolean mask
is converted in every block), and on CUDA flex_attention with a `BlockMask`, which skips the blocks between
different documents instead of computing and masking them."""
from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

__all__ = ["BlockMask", "document_positions", "additive_mask", "block_mask", "flex_attention", "kept_pairs"]


def document_positions(documents: torch.Tensor) -> torch.Tensor:
    """(B, T) each position's index within its document."""
    T = documents.shape[1]
    idx = torch.arange(T, device=documents.device).expand_as(documents)
    first = torch.ones_like(documents, dtype=torch.bool)
    first[:, 1:] = documents[:, 1:] != documents[:, :-1]
    return idx - torch.where(first, idx, 0).cummax(dim=1).values


def _allowed(documents: torch.Tensor) -> torch.Tensor:
    T = documents.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=documents.device).tril()
    return (documents[:, :, None] == documents[:, None, :]) & causal


def additive_mask(documents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, T): 0 where query i may see key j (same document, j <= i), −inf elsewhere."""
    allowed = _allowed(documents)[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=documents.device).masked_fill_(~allowed, float("-inf"))


def block_mask(documents: torch.Tensor) -> BlockMask:
    """The same mask for flex_attention (sparse in blocks of 128 positions)."""
    B, T = documents.shape

    def same_document_causal(b, h, q, k):
        return (documents[b, q] == documents[b, k]) & (q >= k)

    return create_block_mask(same_document_causal, B, None, T, T, device=documents.device)


def kept_pairs(documents: torch.Tensor) -> torch.Tensor:
    """Share of the causal (query, key) pairs the document mask keeps, over the batch: a scalar. Query i keeps its
    position-in-document + 1 keys, so no (T, T) mask is built for it (on CUDA the mask itself is a sparse BlockMask)."""
    T = documents.shape[1]
    return (document_positions(documents) + 1).sum() / (documents.shape[0] * T * (T + 1) / 2)
