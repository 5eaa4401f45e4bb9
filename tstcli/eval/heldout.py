"""Held-out loss in `tst eval`, through the same function and on the same rows as training's validation (under
torchrun: the micro-batches dealt to the ranks, `share`)."""
from __future__ import annotations

from pathlib import Path

import torch

from tstcli.data.opener import open_prepared
from tstcli.errors import DataError
from tstcli.objective import Documents, next_token_loss
from tstcli.prep import sources
from tstcli.run import rundir
from tstcli.run.load import LoadedModel


def run_heldout(lm: LoadedModel, share=None) -> dict:
    """A run's held-out loss as its training measured it: the recipe's held-out rows (eval.batches x
    train.batch_size rows of seq_len+1 drawn evenly across the validation split), its micro-batch and compute dtype."""
    r = lm.recipe
    data_dir, _ = rundir.run_data_dir(lm.run_dir)  # exit 3 if it no longer holds the data the run recorded
    data = open_prepared(data_dir)
    rows = torch.from_numpy(data.heldout_batch(r))  # the rows training's validation scores
    amp = torch.bfloat16 if r.train.dtype == "bf16" else None
    documents = Documents.of(r, data.manifest["tokenizer"]["eot_id"])
    h = next_token_loss(lm.model, rows, r.train.rows_per_micro_batch(1), amp, r.train.loss_chunk_size, share,
                        documents)
    part = data.heldout_share(r)
    return {"val_loss": h.val_loss, "rows": h.rows, "tokens": h.tokens, "share": part,
            "scored": f"the run's held-out rows, {part:.1%} of its validation split drawn evenly across it, as "
                      "training's validation scores them"}


def corpus_heldout(lm: LoadedModel, corpus: Path, batch_size: int, max_rows: int = 256, share=None) -> dict:
    """Next-token loss on a given corpus (any `tst prepare` source), documents joined by the end-of-text token and
    cut into rows of the model's context + 1 (at most 1,024), at most `max_rows` of them (fp32)."""
    L = min(lm.max_len, 1024)
    width, need = L + 1, max_rows * (L + 1)
    stream: list[int] = []
    for f in sources.resolve([str(corpus)]):
        for doc in sources.iter_documents(f, "text", "blank_line"):
            stream += lm.encode(doc) + [lm.eot_id]
            if len(stream) >= need:
                break
        if len(stream) >= need:
            break
    n = min(len(stream) // width, max_rows)
    if n == 0:
        raise DataError(f"--corpus {corpus}: fewer than {width} tokens, not one row of the model's context")
    rows = torch.tensor(stream[: n * width], dtype=torch.long).view(n, width)
    h = next_token_loss(lm.model, rows, batch_size, share=share)
    return {"val_loss": h.val_loss, "rows": h.rows, "tokens": h.tokens, "corpus": str(corpus)}
