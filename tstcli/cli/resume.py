"""`tst resume RUN_DIR`: continue a stopped or killed run from its latest complete checkpoint."""
from __future__ import annotations

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

    info = rundir.read_info(run_dir)
    r = recipes.load(run_dir / rundir.RECIPE)
    ckpt = checkpoint.latest(run_dir / rundir.CHECKPOINTS)
    rundir.check_resumable(run_dir, info, r, ckpt, allow_changed_data, log)
    data, _ = open_data(r, Path(info["data_dir"]))
    log(f"resume: {run_dir} from {ckpt.name if ckpt else 'the start (no complete checkpoint yet)'}")
    result = Trainer(r, run_dir, data).run(resume=ckpt)
    emit(result, json_, summary_lines(result))
