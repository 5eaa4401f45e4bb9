"""What treating documents as units costs, known before training from the manifest (documents and tokens of the
training split): the share of causal attention pairs the document mask keeps (`train.attention = "document"`) and
the share of phase-1 tokens document-aware bags drop (`tst.bag_boundaries = "document"`). `tst prepare` and the dry
run print it. An estimate: document ends are taken to fall at random (a Poisson process) at the split's mean
document length; every train row reports the step's exact figures (`attention_kept`, `bag_tokens_dropped`,
`scored_share`)."""
from __future__ import annotations

import math


def kept_share(n: int, mean_len: float) -> float:
    """Expected share of a row's n(n+1)/2 causal pairs whose two positions are in one document, for documents of
    mean length `mean_len` positions: E[Σ lᵢ(lᵢ+1)/2] over the row's stretches, E[Σ lᵢ²] = 2m²(n/m − 1 + e^(−n/m))."""
    lam = n / mean_len
    if lam < 1e-9:
        return 1.0
    sum_sq = 2 * mean_len ** 2 * (lam - 1 + math.exp(-lam))
    return (sum_sq + n) / (n * (n + 1))


def dropped_share(width: int, s: int, mean_len: float) -> float:
    """Expected share of a phase-1 row's `width` tokens in no bag: each stretch of a document in the row (one more
    than the document ends in it) drops its length modulo s, (s − 1)/2 tokens on average."""
    return min(1.0, (1 + width / mean_len) * (s - 1) / 2 / width)


def effects(r, manifest: dict) -> dict | None:
    """The estimate for recipe `r` on the prepared data of `manifest`; None for the paper's setup (nothing to say)."""
    attention, bags = r.train.attention, r.tst.bag_boundaries
    if attention == "causal" and bags == "cross":
        return None
    split = manifest["splits"]["train"]
    mean = split["tokens"] / max(split["documents"], 1)
    p1, L = r.plan.phase1, r.plan.seq_len
    out: dict = {"attention": attention, "bag_boundaries": bags, "mean_document_tokens": mean}
    if attention == "document":  # phase-1 latent positions average k tokens: documents are k times shorter there
        out["attention_kept"] = {"1": kept_share(L, mean / p1.input_width), "2": kept_share(L, mean)}
    if bags == "document" and r.plan.phase1_steps and p1.mode in ("full", "input"):
        out["bag_tokens_dropped"] = dropped_share(p1.row_width, p1.bag_size, mean)
    return out
