"""The training objective and the held-out loss: bags -> superposed embeddings -> model -> multi-hot CE.

`Objective` holds the model and computes one phase's loss as one module's forward, so that a data-parallel wrapper
(DDP or FSDP2) sees the whole step: FSDP2 gathers the embedding and the head inside that forward, which it could not
do if the embedding gather ran outside the model's own call. Phase 2 is the same code with bags of one token. The
model's own auxiliary loss (a mixture of experts' router losses) is added here without naming it.

`heldout_loss` is the one held-out-loss function: training's validation and `tst eval` both call it, on the same
rows (the phase plan's `heldout_count` rows of seq_len+1 tokens drawn evenly across the validation split), so one
checkpoint has one held-out loss. It is always ordinary next-token loss, in every phase.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tstcli.model import Llama
from tstcli.model.documents import kept_pairs
from tstcli.recipe import TrainConfig
from tstcli.phases import PhaseSpec
from tstcli.tst import LossSpec, arrange, head_loss, make_bags, superposed_embeddings


@dataclass(frozen=True)
class Documents:
    """How documents in a row are treated (`train.attention`, `tst.bag_boundaries`); `eot`: the id that ends one."""
    eot: int
    attention: str = "causal"
    bag_boundaries: str = "cross"

    @property
    def plain(self) -> bool:  # the paper's setup: rows are plain token streams
        return self.attention == "causal" and self.bag_boundaries == "cross"

    @classmethod
    def of(cls, recipe, eot: int) -> "Documents":
        return cls(eot, recipe.train.attention, recipe.tst.bag_boundaries)


def _scored(model: Llama, rows: torch.Tensor, spec: PhaseSpec, loss: LossSpec, amp_dtype,
            documents: Documents | None = None):
    """(the phase's loss of the rows, the model's AuxOutput, statistics of the documents' treatment). The head is
    applied by the loss (chunked: the full logits never exist), not by the model."""
    with torch.autocast(rows.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        embedding = model.get_input_embeddings().weight
        if documents is None or documents.plain:
            inputs, targets = make_bags(rows, spec)
            hidden, aux = model(inputs_embeds=superposed_embeddings(embedding, inputs), with_aux=True)
            return head_loss(hidden, model.head_weight(), targets, loss), aux, {}
        a = arrange(rows, spec, documents.eot, documents.attention, documents.bag_boundaries)
        hidden, aux = model(inputs_embeds=superposed_embeddings(embedding, a.inputs), with_aux=True,
                            documents=a.documents)
        stats = {}
        if a.documents is not None:
            stats["attention_kept"] = kept_pairs(a.documents)
        if a.scored is not None:
            stats.update(scored_share=a.scored.float().mean(), bag_tokens_dropped=a.dropped)
        return head_loss(hidden, model.head_weight(), a.targets, loss, a.scored), aux, stats


def phase_loss(model: Llama, rows: torch.Tensor, spec: PhaseSpec, loss: LossSpec, amp_dtype,
               documents: Documents | None = None) -> torch.Tensor:
    """Loss of one batch of rows in one phase (without the model's auxiliary loss: what held-out loss and the tests
    measure)."""
    return _scored(model, rows, spec, loss, amp_dtype, documents)[0]


class Objective(nn.Module):
    def __init__(self, model: Llama, specs: dict[int, PhaseSpec], losses: dict[int, LossSpec], amp_dtype,
                 documents: Documents | None = None):
        super().__init__()
        self.model, self.specs, self.losses, self.amp_dtype = model, specs, losses, amp_dtype
        self.documents = documents

    def forward(self, rows: torch.Tensor, phase: int) -> tuple[torch.Tensor, dict]:
        """(loss to differentiate, detached statistics): the statistics hold `ce` (the phase's loss alone, what is
        logged as the loss), the model's own metrics and the documents' (`scored_share`: the share of positions
        in the loss, whose mean `ce` is over all); the loss adds the model's auxiliary loss, if any."""
        ce, aux, stats = _scored(self.model, rows, self.specs[phase], self.losses[phase], self.amp_dtype,
                                 self.documents)
        loss = ce if aux.loss is None else ce + aux.loss
        return loss, {"ce": ce.detach(), **aux.metrics, **{k: v.detach() for k, v in stats.items()}}


@dataclass(frozen=True)
class HeldOut:
    val_loss: float
    rows: int
    tokens: int  # predicted tokens scored: rows x seq_len


@torch.no_grad()
def heldout_loss(ce_of, rows: torch.Tensor, batch_size: int, share=None) -> HeldOut:
    """Row-weighted mean of `ce_of(batch)` (a next-token CE) over `rows` of L+1 tokens, `batch_size` at a time.
    With a `share` (`parallel.dealing.Share`) this rank scores the micro-batches dealt to it and the terms are
    summed in the single-process order: the same number, bit for bit."""
    starts = range(0, len(rows), batch_size)
    mine, pads = starts, 0
    if share is not None:
        taken, pads = share.take([batch_size] * len(starts))
        mine = [starts[k] for k in taken]
    terms = {}
    for i in mine:
        part = rows[i:i + batch_size]
        terms[i] = ce_of(part).item() * len(part)
    for _ in range(pads):  # a collective forward pass: as many as the busiest rank, results dropped
        ce_of(rows[:batch_size])
    if share is not None:
        terms = share.gather(terms)
    total = 0.0
    for i in starts:
        total += terms[i]
    return HeldOut(total / len(rows), len(rows), len(rows) * (rows.shape[1] - 1))


def next_token_loss(model: Llama, rows: torch.Tensor, batch_size: int, amp_dtype=None,
                    chunk_size: int = TrainConfig.loss_chunk_size, share=None,
                    documents: Documents | None = None) -> HeldOut:
    """Held-out loss of a plain model (no training engine around it): `tst eval`, tests. `documents`: a run
    trained with document attention is scored with it, as its validation was."""
    spec, loss = PhaseSpec.next_token(rows.shape[1] - 1), LossSpec("mce", None, chunk_size)
    device = model.get_input_embeddings().weight.device  # the rows go where the model is (a GPU for `tst eval`)
    return heldout_loss(lambda part: phase_loss(model, part.to(device), spec, loss, amp_dtype, documents), rows,
                        batch_size, share)
