"""`tst eval RUN_DIR|EXPORT_DIR`: held-out loss and multiple-choice benchmarks (lm-evaluation-harness scoring)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from tstcli.cli.common import DeviceOption, DtypeOption, JsonOption, check_output_file, emit, eval_data_dir, log
from tstcli.errors import UsageError


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
    batch_size: int = typer.Option(32, "--batch-size",
                                   help="rows per forward pass (benchmarks: a context and its choices; --corpus)"),
    step: Optional[int] = typer.Option(None, "--step", help="checkpoint step of a run directory (default: latest)"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="held-out loss on this corpus (file or directory of "
                                          ".txt/.jsonl[.gz]); default for a run: its validation split"),
    samples: Optional[Path] = typer.Option(None, "--samples", help="write per-item results (JSON lines) here"),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    json_: bool = JsonOption,
):
    """Evaluate a run or an export: held-out next-token loss and multiple-choice benchmarks."""
    from tstcli.cli.report import eval_lines
    from tstcli.eval.evaluation import run_evaluation
    from tstcli.eval.tasks import parse_bench
    from tstcli.parallel.world import shutdown, world_from_env
    from tstcli.run import placement, rundir

    names = parse_bench(bench) if bench else []
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: expected a positive number of items")
    if num_fewshot < 0 or batch_size < 1:
        raise UsageError("--num-fewshot must be >= 0 and --batch-size >= 1")
    if not names and corpus is None and (path / "config.json").is_file() and not rundir.holds_run(path):
        raise UsageError(f"{path}: nothing to evaluate — an export has no held-out split of its own; give --bench "
                         "and/or --corpus")
    world = world_from_env(os.environ)  # under torchrun every rank scores its share; rank 0 alone writes
    if samples and names and world.main:
        check_output_file(samples, "--samples")
    where = placement.resolve(device, dtype, world.local_rank if world.distributed else None)
    try:
        out, rows = run_evaluation(path, step, names, limit, num_fewshot, data_dir or eval_data_dir(), batch_size,
                                   corpus, log if world.main else lambda _: None, world, where)
    finally:
        shutdown()
    if not world.main:
        return
    emit(out, json_, eval_lines(out))  # the scores first: a samples file that cannot be written loses nothing
    if samples and names:
        samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
