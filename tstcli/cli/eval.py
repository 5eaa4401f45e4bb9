"""`tst eval RUN_DIR|EXPORT_DIR`: held-out loss and multiple-choice benchmarks (lm-evaluation-harness scoring)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tstcli.cli.common import JsonOption, emit, eval_data_dir, log
from tstcli.errors import RecipeError


def eval_(
    path: Path = typer.Argument(..., help="run directory or export directory"),
    bench: str = typer.Option("", "--bench", help="comma-separated: hellaswag, arc_easy, arc_challenge, arc, mmlu, "
                              "mmlu:SUBJECT, boolq, openbookqa, piqa, winogrande, paper (all eight); empty: "
                              "held-out loss only"),
    limit: Optional[int] = typer.Option(None, "--limit", help="first N items of each task (each MMLU subject)"),
    num_fewshot: int = typer.Option(0, "--num-fewshot", help="few-shot examples per prompt (default 0, as the paper)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="benchmark files (shared data set layout); "
                                            "default $TST_EVAL_DATA or ~/.cache/tst/eval; HellaSwag, ARC and MMLU "
                                            "files not there come from the Hugging Face hub"),
    batch_size: int = typer.Option(32, "--batch-size", help="sequences per forward pass (benchmarks, --corpus)"),
    step: Optional[int] = typer.Option(None, "--step", help="checkpoint step of a run directory (default: latest)"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="held-out loss on this corpus (file or directory of "
                                          ".txt/.jsonl[.gz]); default for a run: its validation split"),
    samples: Optional[Path] = typer.Option(None, "--samples", help="write per-item results (JSON lines) here"),
    json_: bool = JsonOption,
):
    """Evaluate a run or an export: held-out next-token loss and multiple-choice benchmarks."""
    import torch

    from tstcli.cli.report import eval_lines
    from tstcli.eval.heldout import corpus_heldout, run_heldout
    from tstcli.eval.runner import evaluate
    from tstcli.eval.tasks import parse_bench
    from tstcli.run.load import load_model

    names = parse_bench(bench) if bench else []
    if limit is not None and limit < 1:
        raise RecipeError(f"--limit {limit}: expected a positive number of items")
    if num_fewshot < 0 or batch_size < 1:
        raise RecipeError("--num-fewshot must be >= 0 and --batch-size >= 1")
    torch.use_deterministic_algorithms(True)
    lm = load_model(path, step)
    log(f"eval: {lm.source}")
    out: dict = {"model": lm.source, "num_fewshot": num_fewshot, "limit": limit, "results": {}}
    if corpus is not None:
        out["heldout"] = corpus_heldout(lm, corpus, batch_size)
    elif lm.run_dir is not None:
        out["heldout"] = run_heldout(lm)
    rows = []
    if names:
        out["results"], rows, out["data_files"] = evaluate(lm.model, lm.encode, lm.eot_id, lm.max_len, names,
                                                           data_dir or eval_data_dir(), limit, num_fewshot,
                                                           batch_size)
    if samples and names:
        samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    emit(out, json_, eval_lines(out))
