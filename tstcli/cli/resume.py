"""`tst resume RUN_DIR`: continue a stopped or killed run from its latest complete checkpoint."""
from __future__ import annotations

import os
from pathlib import Path

import typer

from tstcli import recipe as recipes
from tstcli.cli.common import JsonOption, emit, log
from tstcli.cli.summary import summary_lines
from tstcli.train import rundir


def resume(
    run_dir: Path = typer.Argument(..., help="run directory written by `tst train`"),
    allow_changed_data: bool = typer.Option(False, "--allow-changed-data",
                                            help="continue even though the prepared data changed since the run began"),
    json_: bool = JsonOption,
):
    """Continue a run exactly where its latest complete checkpoint left it (needs only the run directory)."""
    from tstcli.train import checkpoint
    from tstcli.train.loop import Trainer, open_data  # torch: imported only when needed

    from tstcli.train import distributed

    info = rundir.read_info(run_dir)
    r = recipes.load(run_dir / rundir.RECIPE)
    world, device = distributed.start(r, os.environ)
    try:
        ckpt = checkpoint.latest(run_dir / rundir.CHECKPOINTS)
        distributed.barrier()  # every rank picked its checkpoint before rank 0 may touch the run directory
        if world.main:
            rundir.check_resumable(run_dir, info, r, ckpt, allow_changed_data, log)
            log(f"resume: {run_dir} from {ckpt.name if ckpt else 'the start (no complete checkpoint yet)'}")
        distributed.barrier()
        data, _ = open_data(r, Path(rundir.read_info(run_dir)["data_dir"]))
        result = Trainer(r, run_dir, data, world=world, device=device).run(resume=ckpt)
    finally:
        distributed.shutdown()
    if world.main:
        emit(result, json_, summary_lines(result))
