"""`tst eval`: one evaluation of a run or an export — held-out loss (the run's own rows, or a given corpus) and
multiple-choice benchmarks — as one JSON-able result and the per-item samples. Under torchrun every rank scores
its share and gets every score: the result is the single process's, bit for bit (rank 0 writes it)."""
from __future__ import annotations

from pathlib import Path

import torch

from tstcli.eval.heldout import corpus_heldout, run_heldout
from tstcli.eval.ranks import join, scored_line
from tstcli.eval.runner import evaluate
from tstcli.parallel.world import World, deterministic_kernels
from tstcli.run.load import load_model
from tstcli.run.placement import CPU_FP32, Placement


def run_evaluation(path: Path, step: int | None, names: list[str], limit: int | None, num_fewshot: int,
                   data_dir: Path, batch_size: int, corpus: Path | None, log,
                   world: World = World(), placement: Placement = CPU_FP32) -> tuple[dict, list[dict]]:
    deterministic_kernels(compiled=False)  # scoring runs eagerly
    lm = load_model(path, step, placement)
    if lm.recipe is not None and lm.recipe.train.threads:  # the run's thread count: the same float summation order
        torch.set_num_threads(lm.recipe.train.threads)
    log(f"eval: {lm.source} ({placement.device}, {placement.dtype_name})")
    out: dict = {"model": lm.source, **placement.describe(), "num_fewshot": num_fewshot, "limit": limit,
                 "results": {}}
    share = join(world, next(lm.model.parameters()).device, lm.recipe)
    if corpus is not None:
        out["heldout"] = corpus_heldout(lm, corpus, batch_size, share=share)
    elif lm.run_dir is not None:
        out["heldout"] = run_heldout(lm, share)
    samples: list[dict] = []
    if names:
        out["results"], samples, out["data_files"] = evaluate(lm.model, lm.encode_many, lm.eot_id, lm.max_len, names,
                                                              data_dir, limit, num_fewshot, batch_size, share)
    if share is not None:
        log(scored_line(share))
    return out, samples
