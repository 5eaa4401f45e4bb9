"""`tst resume RUN_DIR`: continue a stopped or killed run from its latest complete checkpoint."""
from __future__ import annotations

from pathlib import Path

import typer

from tstcli import recipe as recipes
from tstcli.cli.common import JsonOption, log, train_in_world
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

    def body(world, device):
        ckpt = checkpoint.latest(run_dir / rundir.CHECKPOINTS)
        distributed.barrier()  # every rank picked its checkpoint before rank 0 may touch the run directory
        if world.main:
            rundir.check_resumable(run_dir, info, r, ckpt, allow_changed_data, log)
            log(f"resume: {run_dir} from {ckpt.name if ckpt else 'the start (no complete checkpoint yet)'}")
        distributed.barrier()
        data, _ = open_data(r, Path(rundir.read_info(run_dir)["data_dir"]))
        return Trainer(r, run_dir, data, world=world, device=device).run(resume=ckpt)

    train_in_world(r, json_, body)
