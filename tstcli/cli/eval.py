"""`tst eval RUN_DIR|EXPORT_DIR`: held-out loss and multiple-choice benchmarks (lm-evaluation-harness scoring)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from tstcli.cli.common import JsonOption, emit, log
from tstcli.errors import RecipeError

DEFAULT_DATA_DIR = Path(os.environ.get("TST_EVAL_DATA", Path.home() / ".cache" / "tst" / "eval"))


def eval_(
    path: Path = typer.Argument(..., help="run directory or export directory"),
    bench: str = typer.Option("", "--bench", help="comma-separated: hellaswag, arc_easy, arc_challenge, arc, mmlu, "
                              "mmlu:SUBJECT, boolq, openbookqa, piqa, winogrande, paper (all eight); empty: "
                              "held-out loss only"),
    limit: Optional[int] = typer.Option(None, "--limit", help="first N items of each task (each MMLU subject)"),
    num_fewshot: int = typer.Option(0, "--num-fewshot", help="few-shot examples per prompt (default 0, as the paper)"),
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="benchmark files (shared data set layout); "
                                  "default $TST_EVAL_DATA or ~/.cache/tst/eval; HellaSwag, ARC and MMLU files not "
                                  "there come from the Hugging Face hub"),
    batch_size: int = typer.Option(32, "--batch-size", help="sequences per forward pass"),
    step: Optional[int] = typer.Option(None, "--step", help="checkpoint step of a run directory (default: latest)"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="held-out loss on this corpus (file or directory of "
                                          ".txt/.jsonl[.gz]); default for a run: its validation split"),
    samples: Optional[Path] = typer.Option(None, "--samples", help="write per-item results (JSON lines) here"),
    json_: bool = JsonOption,
):
    """Evaluate a run or an export: held-out next-token loss and multiple-choice benchmarks."""
    import torch

    from tstcli.eval import model_source
    from tstcli.eval.runner import evaluate
    from tstcli.eval.tasks import parse_bench

    names = parse_bench(bench) if bench else []
    if limit is not None and limit < 1:
        raise RecipeError(f"--limit {limit}: expected a positive number of items")
    if num_fewshot < 0 or batch_size < 1:
        raise RecipeError("--num-fewshot must be >= 0 and --batch-size >= 1")
    torch.use_deterministic_algorithms(True)
    em = model_source.load(path, step)
    log(f"eval: {em.source}")
    out: dict = {"model": em.source, "num_fewshot": num_fewshot, "limit": limit, "results": {}}
    lines = [f"model: {em.source}"]
    if corpus is not None:
        held = model_source.corpus_loss(em, corpus, batch_size)
        out["heldout"] = held
        lines.append(f"held-out loss: {held['val_loss']:.4f} ({held['tokens']:,} tokens of {corpus})")
    elif em.run_dir is not None:
        held = model_source.heldout_loss(em, batch_size)
        out["heldout"] = held
        lines.append(f"held-out loss: {held['val_loss']:.4f} ({held['tokens']:,} tokens of the run's validation split)")
    if names:
        results, rows, files = evaluate(em.model, em.encode, em.eot_id, em.max_len, names, data_dir, limit,
                                        num_fewshot, batch_size)
        out["results"], out["data_files"] = results, files
        for name, res in results.items():
            metrics = ", ".join(f"{m} {res[m]:.4f} ± {res[m + '_stderr']:.4f}" for m in ("acc", "acc_norm") if m in res)
            lines.append(f"{name}: {metrics} (n={res['n']}, {num_fewshot}-shot)")
            for cat, c in res.get("categories", {}).items():
                lines.append(f"  {cat}: acc {c['acc']:.4f} ± {c['acc_stderr']:.4f} (n={c['n']})")
        if samples:
            samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    emit(out, json_, lines)
