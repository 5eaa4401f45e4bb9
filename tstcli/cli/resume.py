"""`tst resume RUN_DIR`: continue a stopped or killed run from its latest complete checkpoint."""
from __future__ import annotations

import os
from pathlib import Path

import typer

from tstcli.cli.common import JsonOption, emit, eval_data_dir, log


def resume(
    run_dir: Path = typer.Argument(..., help="run directory written by `tst train`"),
    allow_changed_data: bool = typer.Option(False, "--allow-changed-data",
                                            help="continue even though the prepared data changed since the run began"),
    json_: bool = JsonOption,
):
    """Continue a run exactly where its latest complete checkpoint left it (needs only the run directory)."""
    from tstcli.cli.report import summary_lines
    from tstcli.train.session import resume_run  # torch: imported only when needed

    world, result = resume_run(run_dir, allow_changed_data, os.environ, eval_data_dir(), log)
    if world.main:
        emit(result, json_, summary_lines(result))
