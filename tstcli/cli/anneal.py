"""`tst anneal RUN_DIR --step N --decay-steps K`: decay a WSD run's learning rate from its checkpoint of step N
into a finished model, in a new run directory (the source run is only read)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from tstcli.cli.common import JsonOption, emit, eval_data_dir, log


def anneal(
    run_dir: Path = typer.Argument(..., help="a wsd run directory written by `tst train` (only read)"),
    step: int = typer.Option(..., "--step", help="its checkpoint to start from: a step of the stable phase"),
    decay_steps: int = typer.Option(..., "--decay-steps", help="steps of the decay (train.decay_shape, to "
                                    "train.min_lr_ratio); the run ends at step + decay-steps"),
    new_dir: Optional[Path] = typer.Option(None, "--run-dir", help="the new run's directory (new or empty); "
                                           "default: RUN_DIR-anneal-STEP+DECAY_STEPS beside it"),
    json_: bool = JsonOption,
):
    """Start a new run from step N of a WSD run (weights, optimizer state, data position) that decays the learning
    rate over K steps, reading the data the source run would have read next. Stopped, it continues with
    `tst resume NEW_DIR`; `tst compare` draws it as a branch of its source."""
    from tstcli.cli.report import summary_lines
    from tstcli.run.branch import anneal_recipe, default_dir
    from tstcli.train.session import resume_run  # torch: imported only when needed

    r = anneal_recipe(run_dir, step, decay_steps)
    target = new_dir if new_dir is not None else default_dir(run_dir, step, decay_steps)
    world, result = resume_run(target, False, os.environ, eval_data_dir(), log, branch=(run_dir, r))
    if world.main:
        emit(result, json_, summary_lines(result))
